//! `prune`: a model (+ optional scores) -> a smaller model, by structured slicing (see
//! [`crate::surgery`]). The output is a valid Hugging Face checkpoint with an explicit
//! `head_dim`, plus `pruning.json` saying which units of the input were kept.

use pollard_engine::{BoxError, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{copy_tokenizer, Checkpoint};
use crate::common::{plan_shape, write_json};
use crate::error::StageError;
use crate::scores::Scores;
use crate::shape::ModelShape;
use crate::surgery::{apply, plan, target_shape, Depth, Method, Target};

pub struct Prune;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub method: Method,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<Depth>,
    /// Seed of `method: random`.
    #[serde(default)]
    pub seed: u64,
    /// Write a Llama whose hidden size is not a multiple of its head count, which pollard runs
    /// but transformers' `LlamaConfig` refuses to load (off by default: planning refuses it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unloadable_shape: bool,
}

/// transformers' `LlamaConfig` (5.24) refuses `hidden_size` not divisible by
/// `num_attention_heads` ("The hidden size (128) is not a multiple of the number of attention
/// heads (6)"), although the computation is well defined with an explicit `head_dim`. Names the
/// nearest head counts that load and that the input's KV groups can hold.
fn check_loadable(input: &ModelShape, out: &ModelShape, t: &Target) -> Result<(), StageError> {
    if out.family != pollard_model::Family::Llama || out.hidden.is_multiple_of(out.heads) {
        return Ok(());
    }
    let fits = |h: usize| {
        h > 0
            && out.hidden.is_multiple_of(h)
            && h.is_multiple_of(out.kv_heads)
            && h / out.kv_heads <= input.group_size()
    };
    let below = (1..out.heads).rev().find(|&h| fits(h));
    let above = (out.heads + 1..=input.heads).find(|&h| fits(h));
    let nearest: Vec<String> = below
        .into_iter()
        .chain(above)
        .map(|h| h.to_string())
        .collect();
    let field = if t.heads.is_some() {
        "target.heads"
    } else {
        "target.hidden"
    };
    let hint = if nearest.is_empty() {
        "no head count over these KV groups divides it".to_string()
    } else {
        format!("head counts that load: {}", nearest.join(" or "))
    };
    Err(StageError::param(
        field,
        format!(
            "hidden {} is not a multiple of {} heads, which transformers' LlamaConfig refuses to load ({hint}); set `allow_unloadable_shape: true` to write it anyway",
            out.hidden, out.heads
        ),
    ))
}

impl Stage for Prune {
    const KIND: &'static str = "prune";
    const VERSION: u32 = 1;
    type Params = PruneParams;

    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &["model"],
            optional: &["scores"],
        }
    }

    fn validate(&self, p: &PruneParams) -> Result<(), Vec<ParamError>> {
        let mut errs = Vec::new();
        let t = &p.target;
        for (name, v) in [
            ("hidden", t.hidden),
            ("ffn", t.ffn),
            ("heads", t.heads),
            ("kv_heads", t.kv_heads),
            ("layers", t.layers),
        ] {
            if v == Some(0) {
                errs.push(ParamError::new(
                    format!("target.{name}"),
                    "must be positive",
                ));
            }
        }
        if let (Some(h), Some(k)) = (t.heads, t.kv_heads) {
            if k > 0 && h % k != 0 {
                errs.push(ParamError::new("target.heads", format!("{h} heads are not divisible by kv_heads {k}: every KV group keeps the same number of query heads")));
            }
        }
        if let Some(d) = &p.depth {
            match (&d.drop, d.by) {
                (Some(_), Some(_)) => errs.push(ParamError::new(
                    "depth",
                    "give either `drop` or `by`, not both",
                )),
                (None, None) => errs.push(ParamError::new(
                    "depth",
                    "needs `drop: [layers]` or `by: lm_loss | block_influence`",
                )),
                (Some(_), None) if d.contiguous => errs.push(ParamError::new(
                    "depth.contiguous",
                    "only applies with `by`",
                )),
                (None, Some(_)) if t.layers.is_none() => errs.push(ParamError::new(
                    "target.layers",
                    "`depth.by` needs the number of layers to keep",
                )),
                (Some(drop), None) => {
                    let mut seen = drop.clone();
                    seen.sort_unstable();
                    seen.dedup();
                    if seen.len() != drop.len() {
                        errs.push(ParamError::new("depth.drop", "lists a layer twice"));
                    }
                }
                _ => {}
            }
        } else if t.layers.is_some() {
            errs.push(ParamError::new(
                "depth",
                "target.layers needs `depth: { drop: [...] }` or `depth: { by: lm_loss }`",
            ));
        }
        let width =
            t.hidden.is_some() || t.ffn.is_some() || t.heads.is_some() || t.kv_heads.is_some();
        if !width && p.depth.is_none() && t.layers.is_none() {
            errs.push(ParamError::new(
                "target",
                "prunes nothing: give at least one of hidden, ffn, heads, kv_heads, layers",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn describe(
        &self,
        p: &PruneParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        match plan_shape(inputs, "model") {
            // A target larger than the input model is refused here, while planning, naming
            // the field (validation alone cannot see the upstream shape).
            Some(s) => {
                let out =
                    target_shape(&s, &p.target, p.depth.as_ref()).map_err(StageError::planning)?;
                if !p.allow_unloadable_shape {
                    check_loadable(&s, &out, &p.target).map_err(StageError::planning)?;
                }
                Ok(Some(out.describe()))
            }
            None => Ok(None),
        }
    }

    fn resources(&self, _p: &PruneParams, inputs: &PlanInputs) -> Result<Resources, BoxError> {
        // Slicing runs on the host: input and output weights in memory at once.
        let host_memory = plan_shape(inputs, "model").map_or(0, |s| 2 * s.params() * 4);
        Ok(Resources {
            gpus: 0,
            gpu_memory: 0,
            cpus: 1,
            host_memory,
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &PruneParams, inputs: &Inputs) -> Result<(), BoxError> {
        let model_dir = inputs.path("model")?;
        let ck = Checkpoint::load(model_dir, &candle_core::Device::Cpu, None)?;
        let scores = match inputs.optional("scores") {
            Some(dir) => Some(Scores::load(dir)?),
            None => None,
        };
        let keep = plan(
            &ck,
            &p.target,
            p.method,
            p.depth.as_ref(),
            scores.as_ref(),
            p.seed,
        )?;
        let pruned = apply(&ck, &keep)?;
        ctx.log(&format!(
            "pruned {} -> {} parameters ({:.1}%)",
            ck.shape.params(),
            pruned.shape.params(),
            100.0 * pruned.shape.params() as f64 / ck.shape.params() as f64
        ));
        pruned.save(ctx.out_dir())?;
        copy_tokenizer(model_dir, ctx.out_dir())?;
        let record = serde_json::json!({
            "method": p.method,
            "from": ck.shape,
            "to": pruned.shape,
            "kept_layers": keep.layers,
            "kept_channels": if keep.channels.len() == ck.shape.hidden { None } else { Some(&keep.channels) },
            "kept_heads_per_layer": keep.heads,
            "kept_kv_groups_per_layer": keep.groups,
            "kept_neurons_per_layer": keep.neurons,
        });
        write_json(&ctx.out_dir().join("pruning.json"), &record)?;
        // Pruning is not training: the provenance (tokens seen) carries over unchanged.
        let prov = model_dir.join(crate::common::PROVENANCE);
        if prov.is_file() {
            let dst = ctx.out_dir().join(crate::common::PROVENANCE);
            std::fs::copy(&prov, &dst).map_err(|e| StageError::io(&dst, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The measured case: a Llama pruned to 6 heads with hidden 128 does not load in
    /// transformers, so planning refuses it unless asked, naming head counts that load.
    #[test]
    fn heads_that_do_not_divide_hidden_are_refused_for_llama_unless_allowed() {
        let s = ModelShape {
            vocab: 256,
            hidden: 256,
            ffn: 512,
            heads: 8,
            kv_heads: 2,
            head_dim: 32,
            layers: 2,
            tied: false,
            family: pollard_model::Family::Llama,
        };
        let t = Target {
            hidden: Some(128),
            heads: Some(6),
            ..Default::default()
        };
        let out = target_shape(&s, &t, None).unwrap();
        let e = check_loadable(&s, &out, &t).unwrap_err().to_string();
        assert!(
            e.contains("target.heads")
                && e.contains("4 or 8")
                && e.contains("allow_unloadable_shape"),
            "{e}"
        );
        // Nemotron and Qwen3 configs take an explicit head_dim without the check.
        let n = ModelShape {
            family: pollard_model::Family::Nemotron,
            ..out
        };
        assert!(check_loadable(&s, &n, &t).is_ok());
    }
    use std::path::{Path, PathBuf};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    fn params(yaml: &str) -> PruneParams {
        pollard_engine::yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn magnitude_neurons_and_drop_2_reproduce_the_reference_pruned_fixture() {
        let out = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let mut ctx = StageCtx::detached(
            "prune",
            out.path().to_path_buf(),
            scratch.path().to_path_buf(),
        );
        let mut inputs = Inputs::default();
        inputs.slots.insert(
            "model".into(),
            pollard_engine::InputArtifact {
                stage: "load".into(),
                path: fixture("tiny-llama"),
                artifact: pollard_engine::Digest::of(b"test").into(),
            },
        );
        let p = params("{ method: magnitude, target: { ffn: 128 }, depth: { drop: [2] } }");
        Prune.validate(&p).unwrap();
        Prune.run(&mut ctx, &p, &inputs).unwrap();

        let got = candle_core::safetensors::load(
            out.path().join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let want = candle_core::safetensors::load(
            fixture("tiny-llama-pruned").join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut names: Vec<_> = want.keys().collect();
        names.sort();
        let mut got_names: Vec<_> = got.keys().collect();
        got_names.sort();
        assert_eq!(got_names, names);
        for n in names {
            let (a, b) = (&got[n], &want[n]);
            assert_eq!(a.dims(), b.dims(), "{n}");
            let a: Vec<u32> = a
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let b: Vec<u32> = b
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert!(a == b, "tensor {n} differs from the reference");
        }
        let cfg = crate::shape::ModelShape::from_dir(out.path()).unwrap();
        assert_eq!(
            cfg,
            crate::shape::ModelShape::from_dir(&fixture("tiny-llama-pruned")).unwrap()
        );
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("pruning.json")).unwrap(),
        )
        .unwrap();
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("tiny-llama-pruned").join("reference.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(rec["kept_layers"], serde_json::json!([0, 1, 3]));
        assert_eq!(
            rec["kept_neurons_per_layer"][2],
            reference["pruning"]["mlp_kept_neurons_by_original_layer"]["3"]
        );
    }

    #[test]
    fn bad_params_are_refused_with_their_field() {
        let fields = |yaml: &str| -> Vec<String> {
            Prune
                .validate(&params(yaml))
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields("{ target: { heads: 6, kv_heads: 4 } }"),
            vec!["target.heads"]
        );
        assert_eq!(fields("{ target: { ffn: 0 } }"), vec!["target.ffn"]);
        assert_eq!(fields("{ target: { layers: 2 } }"), vec!["depth"]);
        assert_eq!(
            fields("{ depth: { drop: [1], by: lm_loss } }"),
            vec!["depth"]
        );
        assert_eq!(fields("{}"), vec!["target"]);
        let unknown = pollard_engine::yaml::from_str::<PruneParams>("{ method: l1 }")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown variant `l1`"), "{unknown}");
        assert!(pollard_engine::yaml::from_str::<PruneParams>("{ target: { width: 3 } }").is_err());
    }

    #[test]
    fn a_target_larger_than_the_model_is_refused_while_planning() {
        let mut inputs = PlanInputs::default();
        let shape = crate::shape::ModelShape::from_dir(&fixture("tiny-llama")).unwrap();
        inputs.slots.insert(
            "model".into(),
            pollard_engine::PlanInput {
                stage: "load".into(),
                description: Some(shape.describe()),
                path: None,
            },
        );
        let err = Prune
            .describe(&params("{ target: { hidden: 128 } }"), &inputs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("target.hidden") && err.contains("128 is larger than the model's 64"),
            "{err}"
        );
        let d = Prune
            .describe(&params("{ target: { hidden: 32, heads: 4 } }"), &inputs)
            .unwrap()
            .unwrap();
        assert_eq!(d["model"]["hidden"], 32);
        assert_eq!(d["model"]["heads"], 4);
        assert_eq!(d["model"]["head_dim"], 8);
    }
}
