//! `distill`: student + teacher + data -> the student retrained to match the teacher (Minitron
//! §3): logit loss forward KL (default, temperature 1), reverse KL, or plain cross-entropy on
//! labels, with an optional `ce_weight` mix; an optional intermediate loss (cosine or MSE between
//! chosen teacher:student layer outputs, through a learned linear map where widths differ,
//! weighted by L_logits / L_intermediate when `weight: auto`). Shares the loop, log and exact
//! resumption of `train`.

use candle_core::{DType, Tensor, Var};
use pollard_engine::{
    BoxError, Count, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx,
};
use pollard_model::{Llama, Mode, TapSpec};
use serde::{Deserialize, Serialize};

use crate::common::{
    check_optim, check_plan_vocab, device, gpu_estimate, plan_shape, tokens_seen, Dtype,
};
use crate::error::{CandleContext, Result, StageError};
use crate::kinds::train::{
    default_batch, default_ckpt, default_clip, default_log_every, default_seq_len,
    default_val_samples, default_wd, schedule,
};
use crate::runtime::{batch_tensors, evaluate, open_dataset};
use crate::shape::memory;
use crate::trainer::{run_loop, write_outputs, LoopConfig, StepLoss};

pub struct Distill;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogitLoss {
    /// KL(teacher || student): the paper's best.
    #[default]
    ForwardKl,
    /// KL(student || teacher).
    ReverseKl,
    /// Cross-entropy on the data's next tokens (no teacher signal on the logits).
    Ce,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenLoss {
    #[default]
    Cosine,
    Mse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auto {
    Auto,
}

/// `auto` (the paper's dynamic alpha = L_logits / L_intermediate) or a fixed weight.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Weight {
    Auto(Auto),
    Fixed(f64),
}

impl Default for Weight {
    fn default() -> Self {
        Weight::Auto(Auto::Auto)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intermediate {
    /// `[teacher_layer, student_layer]` pairs of block outputs (0-based).
    pub layers: Vec<[usize; 2]>,
    #[serde(default)]
    pub kind: HiddenLoss,
    #[serde(default)]
    pub weight: Weight,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillLoss {
    #[serde(default)]
    pub logits: LogitLoss,
    #[serde(default = "one")]
    pub temperature: f64,
    /// Adds ce_weight x cross-entropy on labels to a KL logit loss.
    #[serde(default)]
    pub ce_weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<Intermediate>,
}

fn one() -> f64 {
    1.0
}

impl Default for DistillLoss {
    fn default() -> Self {
        Self {
            logits: LogitLoss::ForwardKl,
            temperature: 1.0,
            ce_weight: 0.0,
            intermediate: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillParams {
    pub tokens: Count,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Llama-3.1-Minitron: peak 1e-4, min 1e-5, cosine.
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_min_lr")]
    pub min_lr: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Count>,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    #[serde(default)]
    pub loss: DistillLoss,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub dtype: Dtype,
    #[serde(default)]
    pub eval_every: u64,
    #[serde(default = "default_val_samples")]
    pub val_samples: Count,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: u64,
}

fn default_lr() -> f64 {
    1e-4
}
fn default_min_lr() -> f64 {
    1e-5
}

impl Stage for Distill {
    const KIND: &'static str = "distill";
    const VERSION: u32 = 1;
    type Params = DistillParams;

    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &["student", "teacher", "data"],
            optional: &[],
        }
    }

    fn validate(&self, p: &DistillParams) -> Result<(), Vec<ParamError>> {
        let mut errs = Vec::new();
        check_optim(
            &mut errs,
            p.lr,
            Some(p.min_lr),
            p.batch,
            p.micro_batch,
            p.seq_len,
            p.tokens.get(),
        );
        let l = &p.loss;
        if !(l.temperature.is_finite() && l.temperature > 0.0) {
            errs.push(ParamError::new(
                "loss.temperature",
                format!("must be positive, got {}", l.temperature),
            ));
        }
        if !(l.ce_weight.is_finite() && l.ce_weight >= 0.0) {
            errs.push(ParamError::new(
                "loss.ce_weight",
                format!("must be non-negative, got {}", l.ce_weight),
            ));
        }
        if l.logits == LogitLoss::Ce && l.ce_weight > 0.0 {
            errs.push(ParamError::new(
                "loss.ce_weight",
                "mixes cross-entropy into a KL loss; with `logits: ce` it has no meaning",
            ));
        }
        if let Some(i) = &l.intermediate {
            if i.layers.is_empty() {
                errs.push(ParamError::new(
                    "loss.intermediate.layers",
                    "needs at least one [teacher, student] pair",
                ));
            }
            if let Weight::Fixed(w) = i.weight {
                if !(w.is_finite() && w >= 0.0) {
                    errs.push(ParamError::new(
                        "loss.intermediate.weight",
                        format!("must be `auto` or a non-negative number, got {w}"),
                    ));
                }
            }
        }
        if !(p.weight_decay.is_finite() && p.weight_decay >= 0.0) {
            errs.push(ParamError::new("weight_decay", "must be non-negative"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn describe(
        &self,
        p: &DistillParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        let (Some(s), t) = (plan_shape(inputs, "student"), plan_shape(inputs, "teacher")) else {
            return Ok(None);
        };
        check_plan_vocab(inputs, "student", Some(s.vocab))?;
        if let Some(t) = t {
            if t.vocab != s.vocab {
                return Err(StageError::input(
                    "teacher",
                    format!(
                        "vocabulary {} differs from the student's {}",
                        t.vocab, s.vocab
                    ),
                )
                .into());
            }
            if let Some(i) = &p.loss.intermediate {
                check_pairs(i, t.layers, s.layers).map_err(StageError::planning)?;
            }
        }
        Ok(Some(s.describe()))
    }

    fn resources(&self, p: &DistillParams, inputs: &PlanInputs) -> Result<Resources, BoxError> {
        let Some(s) = plan_shape(inputs, "student") else {
            return Ok(Resources::default());
        };
        let micro = p.micro_batch.unwrap_or(p.batch) as u64;
        let seq = p.seq_len as u64;
        let mut need = memory::training(&s, micro, seq, p.dtype.bytes());
        if let Some(t) = plan_shape(inputs, "teacher") {
            // The teacher runs forward only, next to the student, plus its logits for the loss.
            need += memory::inference(&t, micro, seq, p.dtype.bytes());
        }
        Ok(gpu_estimate(need))
    }

    fn run(&self, ctx: &mut StageCtx, p: &DistillParams, inputs: &Inputs) -> Result<(), BoxError> {
        Ok(distill(ctx, p, inputs)?)
    }
}

fn check_pairs(i: &Intermediate, teacher_layers: usize, student_layers: usize) -> Result<()> {
    for (k, [t, s]) in i.layers.iter().enumerate() {
        if *t >= teacher_layers {
            return Err(StageError::param(
                format!("loss.intermediate.layers.{k}"),
                format!("teacher layer {t} does not exist (it has {teacher_layers})"),
            ));
        }
        if *s >= student_layers {
            return Err(StageError::param(
                format!("loss.intermediate.layers.{k}"),
                format!("student layer {s} does not exist (it has {student_layers})"),
            ));
        }
    }
    Ok(())
}

fn distill(ctx: &mut StageCtx, p: &DistillParams, inputs: &Inputs) -> Result<()> {
    let dev = device(ctx)?;
    let slot = |s: &str| {
        inputs
            .path(s)
            .map_err(|e| StageError::input(s, e.to_string()))
    };
    let (student_dir, teacher_dir, data_dir) = (slot("student")?, slot("teacher")?, slot("data")?);
    let student = Llama::load_hf(student_dir, p.dtype.candle(), &dev, Mode::Trainable)?;
    let teacher = Llama::load_hf(teacher_dir, p.dtype.candle(), &dev, Mode::Frozen)?;
    let data = open_dataset(data_dir)?;
    let (sc, tc) = (student.config(), teacher.config());
    if sc.vocab_size != tc.vocab_size {
        return Err(StageError::input(
            "teacher",
            format!(
                "vocabulary {} differs from the student's {}",
                tc.vocab_size, sc.vocab_size
            ),
        ));
    }
    if sc.vocab_size < data.vocab_size() {
        return Err(StageError::input(
            "data",
            format!(
                "the dataset's vocabulary ({}) is larger than the student's ({})",
                data.vocab_size(),
                sc.vocab_size
            ),
        ));
    }
    let inter = p.loss.intermediate.clone();
    let mut vars = student.vars();
    // One learned map per intermediate pair where widths differ (student -> teacher width);
    // trained with the student, not part of the saved model.
    let mut maps: Vec<Option<Var>> = Vec::new();
    if let Some(i) = &inter {
        check_pairs(i, tc.num_hidden_layers, sc.num_hidden_layers)?;
        for (k, _) in i.layers.iter().enumerate() {
            if sc.hidden_size == tc.hidden_size {
                maps.push(None);
                continue;
            }
            let n = tc.hidden_size * sc.hidden_size;
            let init = pollard_model::SeededRng::derive(p.seed, &format!("distill.projection.{k}"))
                .normal_vec(n, 0.0, 1.0 / (sc.hidden_size as f64).sqrt());
            let t = Tensor::from_vec(init, (tc.hidden_size, sc.hidden_size), &dev)
                .ctx(|| "projection init".into())?;
            let v = Var::from_tensor(&t).ctx(|| "projection".into())?;
            vars.push((format!("distill.projection.{k}"), v.clone()));
            maps.push(Some(v));
        }
    }
    let (steps, accumulation, warmup, micro) =
        schedule(p.tokens.get(), p.batch, p.micro_batch, p.seq_len, p.warmup);
    let cfg = LoopConfig {
        steps,
        micro,
        seq_len: p.seq_len,
        accumulation,
        lr: p.lr,
        min_lr: p.min_lr,
        warmup,
        weight_decay: p.weight_decay,
        grad_clip: p.grad_clip,
        log_every: p.log_every,
        eval_every: p.eval_every,
        checkpoint_every: p.checkpoint_every,
    };
    let sampler = pollard_data::WindowSampler::new(data.train(), p.seq_len, micro, p.seed)?;
    let val = pollard_data::validation_windows(
        data.val(),
        p.seq_len,
        Some(p.val_samples.get() as usize),
    )?;
    let spec = |pairs: &[[usize; 2]], teacher_side: bool| TapSpec {
        layers: Some(
            pairs
                .iter()
                .map(|[t, s]| if teacher_side { *t } else { *s })
                .collect(),
        ),
        residual_out: true,
        ..TapSpec::none()
    };
    let (t_spec, s_spec) = match &inter {
        Some(i) => (spec(&i.layers, true), spec(&i.layers, false)),
        None => (TapSpec::none(), TapSpec::none()),
    };
    let temp = p.loss.temperature;
    let outcome = run_loop(
        ctx,
        vars,
        &cfg,
        sampler,
        |b| {
            let (ids, targets) = batch_tensors(b, &dev)?;
            let (s_logits, s_taps) = student.forward_with_taps(&ids, &s_spec)?;
            // The teacher runs once per micro-batch: logits when a KL needs them, block outputs
            // when an intermediate loss does (then without the vocabulary projection if only those).
            let (t_logits, t_taps) = match (p.loss.logits, &inter) {
                (LogitLoss::Ce, None) => (None, None),
                (LogitLoss::Ce, Some(_)) => (None, Some(teacher.hidden(&ids, &t_spec)?.1)),
                _ => {
                    let (l, t) = teacher.forward_with_taps(&ids, &t_spec)?;
                    (Some(l.detach()), Some(t))
                }
            };
            let mut parts = Vec::new();
            let logit_loss = match (p.loss.logits, &t_logits) {
                (LogitLoss::ForwardKl | LogitLoss::ReverseKl, Some(t_logits)) => {
                    let kl = match p.loss.logits {
                        LogitLoss::ForwardKl => {
                            pollard_train::forward_kl(&s_logits, t_logits, temp)?
                        }
                        _ => pollard_train::reverse_kl(&s_logits, t_logits, temp)?,
                    };
                    // Hinton's T^2 keeps gradient magnitudes comparable across temperatures.
                    let kl = kl
                        .affine(temp * temp, 0.0)
                        .ctx(|| "scaling the KL".into())?;
                    parts.push(("kl".to_string(), scalar(&kl)?));
                    if p.loss.ce_weight > 0.0 {
                        let ce = pollard_train::cross_entropy(&s_logits, &targets)?;
                        parts.push(("ce".to_string(), scalar(&ce)?));
                        (kl + ce
                            .affine(p.loss.ce_weight, 0.0)
                            .ctx(|| "ce weight".into())?)
                        .ctx(|| "kl + ce".into())?
                    } else {
                        kl
                    }
                }
                _ => {
                    let ce = pollard_train::cross_entropy(&s_logits, &targets)?;
                    parts.push(("ce".to_string(), scalar(&ce)?));
                    ce
                }
            };
            let Some(i) = &inter else {
                return Ok(StepLoss {
                    loss: logit_loss,
                    parts,
                });
            };
            let t_taps =
                t_taps.expect("the teacher ran with taps when an intermediate loss is set");
            let mut total_is: Option<Tensor> = None;
            for (pair, map) in i.layers.iter().zip(&maps) {
                let [tl, sl] = *pair;
                let th = t_taps.layers[tl].residual_out.as_ref().ok_or_else(|| {
                    StageError::tensor(format!("teacher layer {tl}"), "no output recorded")
                })?;
                let sh = s_taps.layers[sl].residual_out.as_ref().ok_or_else(|| {
                    StageError::tensor(format!("student layer {sl}"), "no output recorded")
                })?;
                let sh = match map {
                    Some(w) => {
                        let (b, t, h) = sh.dims3().ctx(|| "student hidden".into())?;
                        sh.reshape((b * t, h))
                            .and_then(|x| x.matmul(&w.as_tensor().t()?))
                            .ctx(|| "projecting student hidden states".into())?
                    }
                    None => sh.clone(),
                };
                let th = th.detach();
                let th = th.reshape(sh.dims()).ctx(|| "teacher hidden".into())?;
                let l = match i.kind {
                    HiddenLoss::Cosine => pollard_train::cosine(&sh, &th)?,
                    HiddenLoss::Mse => pollard_train::mse(&sh, &th)?,
                };
                total_is = Some(match total_is {
                    None => l,
                    Some(acc) => (acc + l).ctx(|| "summing intermediate losses".into())?,
                });
            }
            let l_is = total_is.expect("validated: at least one pair");
            let is_value = scalar(&l_is)?;
            parts.push(("intermediate".to_string(), is_value));
            let alpha = match i.weight {
                // The paper's dynamic weight: the logit loss over the intermediate loss, detached.
                Weight::Auto(_) => scalar(&logit_loss)? / is_value.max(1e-12),
                Weight::Fixed(w) => w,
            };
            let loss = (logit_loss
                + l_is
                    .affine(alpha, 0.0)
                    .ctx(|| "intermediate weight".into())?)
            .ctx(|| "total loss".into())?;
            Ok(StepLoss { loss, parts })
        },
        || Ok(evaluate(&student, &val, micro, &[])?.loss),
    )?;
    write_outputs(
        ctx,
        "distill",
        &student,
        data_dir,
        &outcome,
        steps,
        tokens_seen(student_dir),
    )?;
    crate::checkpoint::carry_companions(student_dir, ctx.out_dir())
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.to_scalar::<f64>())
        .ctx(|| "reading a loss".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_losses_and_bad_weights_are_refused_by_field() {
        let e =
            pollard_engine::yaml::from_str::<DistillParams>("{ tokens: 1M, loss: { logits: kl } }")
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown variant `kl`"), "{e}");
        let p: DistillParams = pollard_engine::yaml::from_str(
            "{ tokens: 1M, loss: { logits: ce, ce_weight: 0.5, temperature: 0 } }",
        )
        .unwrap();
        let f: Vec<String> = Distill
            .validate(&p)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(f, vec!["loss.temperature", "loss.ce_weight"]);
        let p: DistillParams = pollard_engine::yaml::from_str(
            "{ tokens: 1M, loss: { intermediate: { layers: [[3, 1]], weight: auto } } }",
        )
        .unwrap();
        assert_eq!(
            p.loss.intermediate.unwrap().weight,
            Weight::Auto(Auto::Auto)
        );
        let p: DistillParams = pollard_engine::yaml::from_str(
            "{ tokens: 1M, loss: { intermediate: { layers: [[3, 1]], weight: 0.5 } } }",
        )
        .unwrap();
        assert_eq!(p.loss.intermediate.unwrap().weight, Weight::Fixed(0.5));
    }

    #[test]
    fn the_engine_decodes_losses_and_names_the_bad_field() {
        let mut reg = pollard_engine::Registry::new();
        reg.register(Distill);
        let kind = reg.get("distill").unwrap();
        let with =
            |y: &str| -> pollard_engine::yaml::Value { pollard_engine::yaml::from_str(y).unwrap() };
        let err = kind
            .decode(&with("{ tokens: 1M, loss: { logits: kl } }"))
            .unwrap_err();
        assert_eq!(err.field, "loss.logits");
        assert!(err.message.contains("forward_kl"), "{}", err.message);
        let ok = kind
            .decode(&with(
                "{ tokens: 1M, loss: { intermediate: { layers: [[3, 1]], weight: auto } } }",
            ))
            .unwrap();
        assert_eq!(ok.canonical["loss"]["intermediate"]["weight"], "auto");
        let ok = kind
            .decode(&with(
                "{ tokens: 1M, loss: { intermediate: { layers: [[3, 1]], weight: 0.25 } } }",
            ))
            .unwrap();
        assert_eq!(ok.canonical["loss"]["intermediate"]["weight"], 0.25);
        assert!(kind
            .validate(&kind.decode(&with("{ tokens: 1M, lr: 0 }")).unwrap())
            .iter()
            .any(|e| e.field == "lr"));
    }
}
