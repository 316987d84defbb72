//! `train`: data (+ optionally a model) -> a trained model. From an `arch` it trains from
//! scratch (a teacher, or the baseline a distilled model is compared with); from an input model
//! it continues training (Minitron's teacher correction is this on the distillation data with a
//! fifth of the original learning rate). Cross-entropy on next tokens, AdamW, cosine schedule.

use pollard_engine::{
    BoxError, Count, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx,
};
use pollard_model::{Family, Llama, LlamaConfig, Mode};
use serde::{Deserialize, Serialize};

use crate::common::{
    check_optim, check_plan_vocab, device, gpu_estimate, in_dtype, plan_shape, plan_vocab,
    tokens_seen, Dtype,
};
use crate::error::{Result, StageError};
use crate::runtime::{batch_tensors, evaluate, open_dataset};
use crate::shape::{memory, ModelShape};
use crate::trainer::{run_loop, write_outputs, LoopConfig, StepLoss};

pub struct Train;

/// A from-scratch architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    /// Defaults to `heads` (plain multi-head attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    pub layers: usize,
    /// Defaults to hidden / heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Defaults to the dataset's vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    #[serde(default)]
    pub tied: bool,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// `llama` (default: SwiGLU, RMSNorm), `nemotron` (squared ReLU, LayerNorm1p, partial RoPE)
    /// or `qwen3` (SwiGLU, RMSNorm, per-head q/k norms).
    #[serde(default)]
    pub family: Family,
    /// The fraction of each head RoPE rotates; defaults to 0.5 for Nemotron (as Nemotron-4), else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
}

fn default_rope_theta() -> f64 {
    10000.0
}

impl Arch {
    pub fn shape(&self, vocab: usize) -> ModelShape {
        ModelShape {
            vocab: self.vocab.unwrap_or(vocab),
            hidden: self.hidden,
            ffn: self.ffn,
            heads: self.heads,
            kv_heads: self.kv_heads.unwrap_or(self.heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden.checked_div(self.heads).unwrap_or(0)),
            layers: self.layers,
            tied: self.tied,
            family: self.family,
        }
    }

    fn rotary_factor(&self) -> f64 {
        self.partial_rotary_factor.unwrap_or(match self.family {
            Family::Nemotron => 0.5,
            _ => 1.0,
        })
    }

    pub fn check(&self, errs: &mut Vec<ParamError>) {
        let before = errs.len();
        crate::shape::check_sizes(
            &[
                ("hidden", Some(self.hidden)),
                ("ffn", Some(self.ffn)),
                ("heads", Some(self.heads)),
                ("kv_heads", self.kv_heads),
                ("layers", Some(self.layers)),
                ("head_dim", self.head_dim),
                ("vocab", self.vocab),
            ],
            "arch.",
            errs,
        );
        if errs.len() > before {
            return; // the checks below would only restate an absurd size
        }
        for (name, v) in [
            ("hidden", self.hidden),
            ("ffn", self.ffn),
            ("heads", self.heads),
            ("layers", self.layers),
        ] {
            if v == 0 {
                errs.push(ParamError::new(format!("arch.{name}"), "must be positive"));
            }
        }
        let kv = self.kv_heads.unwrap_or(self.heads);
        if kv == 0 || (self.heads > 0 && !self.heads.is_multiple_of(kv)) {
            errs.push(ParamError::new(
                "arch.kv_heads",
                format!("heads {} is not divisible by kv_heads {kv}", self.heads),
            ));
        }
        if self.head_dim.is_none() && self.heads > 0 && !self.hidden.is_multiple_of(self.heads) {
            errs.push(ParamError::new(
                "arch.head_dim",
                format!(
                    "needed: hidden {} is not divisible by heads {}",
                    self.hidden, self.heads
                ),
            ));
        }
        if self.head_dim.is_some_and(|d| d == 0) {
            errs.push(ParamError::new("arch.head_dim", "must be positive"));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            errs.push(ParamError::new("arch.rope_theta", "must be positive"));
        }
        let f = self.rotary_factor();
        let head_dim = self.shape(1).head_dim;
        let rot = (head_dim as f64 * f) as usize;
        if !(f > 0.0 && f <= 1.0) {
            errs.push(ParamError::new(
                "arch.partial_rotary_factor",
                format!("must be in (0, 1], got {f}"),
            ));
        } else if head_dim > 0 && (rot == 0 || !rot.is_multiple_of(2)) {
            errs.push(ParamError::new(
                "arch.partial_rotary_factor",
                format!("head_dim {head_dim} x {f} = {rot} rotated dims, which must be even and positive"),
            ));
        }
    }

    pub fn config(&self, vocab: usize, max_positions: usize) -> LlamaConfig {
        let s = self.shape(vocab);
        let mut cfg = LlamaConfig::new(
            s.vocab, s.hidden, s.ffn, s.layers, s.heads, s.kv_heads, s.head_dim,
        )
        .with_family(self.family);
        cfg.partial_rotary_factor = self.rotary_factor();
        cfg.tie_word_embeddings = s.tied;
        cfg.rope_theta = self.rope_theta;
        cfg.max_position_embeddings = cfg.max_position_embeddings.max(max_positions);
        cfg
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// From scratch with this architecture; omit to continue training the `model` input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Token budget (rounded down to whole steps of batch x seq_len).
    pub tokens: Count,
    /// Windows per optimizer step (the global batch).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Windows per forward pass; the batch is accumulated over batch / micro_batch passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Defaults to lr / 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    /// Warm-up steps; defaults to 5% of the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Count>,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub dtype: Dtype,
    /// Validation every N steps (0: at the end only).
    #[serde(default)]
    pub eval_every: u64,
    /// Validation windows.
    #[serde(default = "default_val_samples")]
    pub val_samples: Count,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Checkpoint every N steps in the scratch folder, for resumption after a kill (0: never).
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: u64,
}

pub(crate) fn default_batch() -> usize {
    32
}
pub(crate) fn default_seq_len() -> usize {
    256
}
fn default_lr() -> f64 {
    3e-4
}
pub(crate) fn default_wd() -> f64 {
    0.1
}
pub(crate) fn default_clip() -> f64 {
    1.0
}
pub(crate) fn default_val_samples() -> Count {
    Count(64)
}
pub(crate) fn default_log_every() -> u64 {
    10
}
pub(crate) fn default_ckpt() -> u64 {
    100
}

/// Steps, accumulation and warm-up from the budget (shared with `distill`).
pub(crate) fn schedule(
    tokens: u64,
    batch: usize,
    micro: Option<usize>,
    seq_len: usize,
    warmup: Option<Count>,
) -> (u64, u64, u64, usize) {
    let per_step = (batch * seq_len) as u64;
    let steps = (tokens / per_step.max(1)).max(1);
    let micro = micro.unwrap_or(batch).max(1);
    let accumulation = (batch / micro).max(1) as u64;
    let warmup = warmup.map_or(steps / 20, |w| w.get()).min(steps);
    (steps, accumulation, warmup, micro)
}

impl Stage for Train {
    const KIND: &'static str = "train";
    const VERSION: u32 = 2;
    type Params = TrainParams;

    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &["data"],
            optional: &["model"],
        }
    }

    fn validate(&self, p: &TrainParams) -> Result<(), Vec<ParamError>> {
        let mut errs = Vec::new();
        if let Some(a) = &p.arch {
            a.check(&mut errs);
        }
        check_optim(
            &mut errs,
            p.lr,
            p.min_lr,
            p.batch,
            p.micro_batch,
            p.seq_len,
            p.tokens.get(),
        );
        if !(p.weight_decay.is_finite() && p.weight_decay >= 0.0) {
            errs.push(ParamError::new("weight_decay", "must be non-negative"));
        }
        if p.val_samples.get() == 0 {
            errs.push(ParamError::new("val_samples", "must be positive"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn describe(
        &self,
        p: &TrainParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        let bound = inputs.slots.contains_key("model");
        match (&p.arch, bound) {
            (Some(_), true) => Err(StageError::param("arch", "give either `arch` (from scratch) or a `model` input (continued training), not both").planning()),
            (None, false) => Err(StageError::param("arch", "needed: without a `model` input, train from scratch needs an architecture").planning()),
            (Some(a), false) => {
                if let (Some(v), Some(d)) = (a.vocab, plan_vocab(inputs, "data")) {
                    if d > v {
                        return Err(StageError::param("arch.vocab", format!("{v} is smaller than the dataset's vocabulary ({d})")).planning());
                    }
                }
                let vocab = a.vocab.or_else(|| plan_vocab(inputs, "data"));
                Ok(vocab.map(|v| a.shape(v).describe()))
            }
            (None, true) => {
                let shape = plan_shape(inputs, "model");
                check_plan_vocab(inputs, "model", shape.map(|s| s.vocab))?;
                Ok(shape.map(|s| s.describe()))
            }
        }
    }

    fn resources(&self, p: &TrainParams, inputs: &PlanInputs) -> Result<Resources, BoxError> {
        let Some(s) = self
            .describe(p, inputs)?
            .as_ref()
            .and_then(ModelShape::from_description)
        else {
            return Ok(Resources::default());
        };
        let micro = p.micro_batch.unwrap_or(p.batch) as u64;
        let need = memory::training(&s, micro, p.seq_len as u64, p.dtype.bytes());
        Ok(gpu_estimate(need))
    }

    fn run(&self, ctx: &mut StageCtx, p: &TrainParams, inputs: &Inputs) -> Result<(), BoxError> {
        Ok(train(ctx, p, inputs)?)
    }
}

fn train(ctx: &mut StageCtx, p: &TrainParams, inputs: &Inputs) -> Result<()> {
    let dev = device(ctx)?;
    let data_dir = inputs
        .path("data")
        .map_err(|e| StageError::input("data", e.to_string()))?;
    let data = open_dataset(data_dir)?;
    let (model, upstream_tokens) = match (&p.arch, inputs.optional("model")) {
        (Some(a), None) => {
            let cfg = a.config(data.vocab_size(), p.seq_len);
            (in_dtype(Llama::init(&cfg, p.seed, &dev)?, p.dtype)?, 0)
        }
        (None, Some(dir)) => (
            Llama::load_hf(dir, p.dtype.candle(), &dev, Mode::Trainable)?,
            tokens_seen(dir),
        ),
        (Some(_), Some(_)) => {
            return Err(StageError::param(
                "arch",
                "give either `arch` or a `model` input, not both",
            ))
        }
        (None, None) => {
            return Err(StageError::param(
                "arch",
                "needed: without a `model` input, train from scratch needs an architecture",
            ))
        }
    };
    if model.config().vocab_size < data.vocab_size() {
        return Err(StageError::input(
            "data",
            format!(
                "the dataset's vocabulary ({}) is larger than the model's ({})",
                data.vocab_size(),
                model.config().vocab_size
            ),
        ));
    }
    let (steps, accumulation, warmup, micro) =
        schedule(p.tokens.get(), p.batch, p.micro_batch, p.seq_len, p.warmup);
    let cfg = LoopConfig {
        steps,
        micro,
        seq_len: p.seq_len,
        accumulation,
        lr: p.lr,
        min_lr: p.min_lr.unwrap_or(p.lr / 10.0),
        warmup,
        weight_decay: p.weight_decay,
        grad_clip: p.grad_clip,
        log_every: p.log_every,
        eval_every: p.eval_every,
        checkpoint_every: p.checkpoint_every,
    };
    ctx.log(&format!(
        "{steps} steps of {} tokens, {} parameters",
        cfg.tokens_per_step(),
        crate::runtime::param_count(&model)
    ));
    let sampler = pollard_data::WindowSampler::new(data.train(), p.seq_len, micro, p.seed)?;
    let val = pollard_data::validation_windows(
        data.val(),
        p.seq_len,
        Some(p.val_samples.get() as usize),
    )?;
    let outcome = run_loop(
        ctx,
        model.vars(),
        &cfg,
        sampler,
        |b| {
            let (ids, targets) = batch_tensors(b, &dev)?;
            let logits = model.forward(&ids)?;
            let loss = pollard_train::cross_entropy(&logits, &targets)?;
            Ok(StepLoss {
                loss,
                parts: vec![],
            })
        },
        || Ok(evaluate(&model, &val, micro, &[])?.loss),
    )?;
    write_outputs(
        ctx,
        "train",
        &model,
        data_dir,
        &outcome,
        steps,
        upstream_tokens,
    )?;
    if p.arch.is_some() {
        // A model from scratch has no folder to inherit its tokenizer's special tokens from.
        crate::hf_tokens::add_tokenizer_files(ctx.out_dir(), data_dir)?;
    }
    match inputs.optional("model") {
        Some(dir) => crate::checkpoint::carry_companions(dir, ctx.out_dir()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_training_params_are_refused_with_their_field() {
        let p: TrainParams =
            pollard_engine::yaml::from_str("{ arch: { hidden: 64, ffn: 128, heads: 6, kv_heads: 4, layers: 2 }, tokens: 10, batch: 4, seq_len: 8, lr: -1 }").unwrap();
        let f: Vec<String> = Train
            .validate(&p)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(f, vec!["arch.kv_heads", "arch.head_dim", "lr", "tokens"]);
        assert!(
            pollard_engine::yaml::from_str::<TrainParams>("{ tokens: 1M, epochs: 3 }").is_err()
        );
    }

    #[test]
    fn the_budget_becomes_whole_steps() {
        assert_eq!(schedule(1_000_000, 16, Some(4), 128, None), (488, 4, 24, 4));
        assert_eq!(schedule(10, 16, None, 128, Some(Count(5))), (1, 1, 1, 16));
    }
}
