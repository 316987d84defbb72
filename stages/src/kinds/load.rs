//! `load`: a local Hugging Face folder -> a model artifact (the first stage of every recipe that
//! starts from released weights). The folder's content enters the cache key through `deps`;
//! `expect` states the architecture so a recipe can be planned (and its memory estimated) on a
//! machine without the weights, and is checked against the checkpoint when it is there.

use std::path::PathBuf;

use pollard_engine::{BoxError, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{copy_tokenizer, Checkpoint};
use crate::common::{resolve, Dtype};
use crate::error::StageError;
use crate::shape::ModelShape;

pub struct Load;

/// The architecture a recipe expects (any subset; all of them for planning without weights).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    /// Defaults to hidden / heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tied: Option<bool>,
    /// `llama` (the default), `nemotron` or `qwen3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<pollard_model::Family>,
}

impl Expect {
    /// The full shape, when every size is given.
    pub fn shape(&self) -> Option<ModelShape> {
        let (hidden, heads) = (self.hidden?, self.heads?);
        Some(ModelShape {
            vocab: self.vocab?,
            hidden,
            ffn: self.ffn?,
            heads,
            kv_heads: self.kv_heads.unwrap_or(heads),
            head_dim: self
                .head_dim
                .unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
            layers: self.layers?,
            tied: self.tied.unwrap_or(false),
            family: self.family.unwrap_or_default(),
        })
    }

    /// Every expected field that differs from the checkpoint, as `field: expected X, found Y`.
    pub fn mismatches(&self, s: &ModelShape) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, want: Option<usize>, have: usize| {
            if let Some(w) = want {
                if w != have {
                    out.push(format!(
                        "expect.{name}: expected {w}, the checkpoint has {have}"
                    ));
                }
            }
        };
        check("hidden", self.hidden, s.hidden);
        check("ffn", self.ffn, s.ffn);
        check("heads", self.heads, s.heads);
        check("kv_heads", self.kv_heads, s.kv_heads);
        check("layers", self.layers, s.layers);
        check("vocab", self.vocab, s.vocab);
        check("head_dim", self.head_dim, s.head_dim);
        if let Some(f) = self.family {
            if f != s.family {
                out.push(format!(
                    "expect.family: expected {}, the checkpoint is {}",
                    f.name(),
                    s.family.name()
                ));
            }
        }
        if let Some(t) = self.tied {
            if t != s.tied {
                out.push(format!(
                    "expect.tied: expected {t}, the checkpoint has {}",
                    s.tied
                ));
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    /// A Hugging Face folder (config.json + model.safetensors or its shards), relative to the
    /// manifest's folder or absolute.
    pub path: PathBuf,
    /// Weights are converted to this dtype.
    #[serde(default)]
    pub dtype: Dtype,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
}

impl Stage for Load {
    const KIND: &'static str = "load";
    const VERSION: u32 = 1;
    type Params = LoadParams;

    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &[],
            optional: &[],
        }
    }

    fn validate(&self, p: &LoadParams) -> Result<(), Vec<ParamError>> {
        let mut errs = Vec::new();
        if p.path.as_os_str().is_empty() {
            errs.push(ParamError::new("path", "must name a Hugging Face folder"));
        }
        if let Some(e) = &p.expect {
            crate::shape::check_sizes(
                &[
                    ("hidden", e.hidden),
                    ("ffn", e.ffn),
                    ("heads", e.heads),
                    ("kv_heads", e.kv_heads),
                    ("layers", e.layers),
                    ("vocab", e.vocab),
                    ("head_dim", e.head_dim),
                ],
                "expect.",
                &mut errs,
            );
            if let (Some(h), Some(k)) = (e.heads, e.kv_heads) {
                if k == 0 || h % k != 0 {
                    errs.push(ParamError::new(
                        "expect.kv_heads",
                        format!("heads {h} is not divisible by kv_heads {k}"),
                    ));
                }
            }
            if let (Some(h), Some(n), None) = (e.hidden, e.heads, e.head_dim) {
                if n == 0 || h % n != 0 {
                    errs.push(ParamError::new(
                        "expect.head_dim",
                        format!("needed: hidden {h} is not divisible by heads {n}"),
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn deps(&self, p: &LoadParams) -> Vec<PathBuf> {
        // Planning works without the weights (dry runs of the paper recipes); once the folder
        // exists its content keys the stage.
        vec![p.path.clone()]
    }

    fn describe(
        &self,
        p: &LoadParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        // Relative to the manifest's folder, as when running.
        let dir = inputs.resolve(&p.path);
        if dir.join("config.json").is_file() {
            let s = ModelShape::from_dir(&dir)?;
            if let Some(e) = &p.expect {
                let bad = e.mismatches(&s);
                if !bad.is_empty() {
                    return Err(StageError::param(
                        "expect",
                        format!("{} does not match: {}", p.path.display(), bad.join("; ")),
                    )
                    .into());
                }
            }
            return Ok(Some(s.describe()));
        }
        Ok(p.expect
            .as_ref()
            .and_then(Expect::shape)
            .map(|s| s.describe()))
    }

    fn resources(&self, p: &LoadParams, inputs: &PlanInputs) -> Result<Resources, BoxError> {
        // Loading is a host-side copy: it needs the weights in host memory once, no GPU.
        let host_memory = match self.describe(p, inputs)? {
            Some(d) => ModelShape::from_description(&d).map_or(0, |s| s.params() * p.dtype.bytes()),
            None => 0,
        };
        Ok(Resources {
            gpus: 0,
            gpu_memory: 0,
            cpus: 1,
            host_memory,
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &LoadParams, _inputs: &Inputs) -> Result<(), BoxError> {
        let dir = resolve(ctx, &p.path);
        if !dir.join("config.json").is_file() {
            return Err(StageError::param(
                "path",
                format!(
                    "{} is not a Hugging Face folder (no config.json)",
                    dir.display()
                ),
            )
            .into());
        }
        ctx.log(&format!("loading {}", dir.display()));
        let ck = Checkpoint::load(&dir, &candle_core::Device::Cpu, Some(p.dtype.candle()))?;
        crate::validate::finite_weights(&ck.tensors).and(crate::validate::tokenizer_loads(&dir))?;
        if let Some(e) = &p.expect {
            let bad = e.mismatches(&ck.shape);
            if !bad.is_empty() {
                return Err(StageError::param(
                    "expect",
                    format!("{} does not match: {}", dir.display(), bad.join("; ")),
                )
                .into());
            }
        }
        ck.save(ctx.out_dir())?;
        copy_tokenizer(&dir, ctx.out_dir())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_mismatch_names_the_field_and_both_values() {
        let s = ModelShape {
            vocab: 256,
            hidden: 64,
            ffn: 176,
            heads: 8,
            kv_heads: 4,
            head_dim: 8,
            layers: 4,
            tied: false,
            family: pollard_model::Family::Llama,
        };
        let e = Expect {
            hidden: Some(64),
            layers: Some(5),
            ..Default::default()
        };
        assert_eq!(
            e.mismatches(&s),
            vec!["expect.layers: expected 5, the checkpoint has 4".to_string()]
        );
        assert_eq!(e.shape(), None, "a partial expectation cannot plan");
    }

    #[test]
    fn bad_expectations_are_refused_at_validation() {
        let p: LoadParams = pollard_engine::yaml::from_str(
            "{ path: x, expect: { hidden: 100, heads: 8, kv_heads: 3 } }",
        )
        .unwrap();
        let errs = Load.validate(&p).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["expect.kv_heads", "expect.head_dim"]);
        assert!(pollard_engine::yaml::from_str::<LoadParams>("{ path: x, dtype: f64 }").is_err());
    }
}
