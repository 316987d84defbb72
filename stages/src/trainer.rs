//! How `train` and `distill` run pollard-train's [`Trainer`]: their params become a
//! [`TrainConfig`], the seeded [`WindowSampler`] becomes the [`BatchSource`] (its position, the
//! number of micro-batches drawn, is what a checkpoint saves), progress, cancellation and the
//! validation loss go through the [`StageCtx`]. Checkpoints live in the stage's scratch folder,
//! so a run killed mid-way resumes exactly (parameters, optimizer moments, step and data
//! position are restored bit for bit); `log.jsonl` is written there too (cut back on resume) and
//! copied into the output folder at the end.

use std::path::Path;

use candle_core::Var;
use pollard_data::{Batch, WindowSampler};
use pollard_engine::{Progress, StageCtx};
use pollard_train::{
    BatchSource, BoxError, Budget, Hooks, LogOptions, TrainConfig, TrainError, Trainer,
};
use serde_json::{json, Value};

use candle_core::Device;
use pollard_model::Llama;

use crate::common::{write_json, PROVENANCE};
use crate::validate::finite;

use crate::error::{Result, StageError};

pub use pollard_train::StepLoss;

/// Loop settings, resolved from a kind's params.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub steps: u64,
    /// Windows per forward pass.
    pub micro: usize,
    pub seq_len: usize,
    /// Micro-batches summed per optimizer step.
    pub accumulation: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub log_every: u64,
    /// 0: only at the end.
    pub eval_every: u64,
    /// 0: never (no resumption).
    pub checkpoint_every: u64,
}

/// What the loop reports when it finishes.
#[derive(Debug, Clone)]
pub struct LoopOutcome {
    pub final_loss: f64,
    pub final_val_loss: Option<f64>,
    pub tokens: u64,
    pub resumed_from: Option<u64>,
}

const CKPT: &str = "checkpoint";

/// Besides `checkpoint_every`, a training stage checkpoints every this many seconds and when it
/// is interrupted, so Ctrl-C or a kill loses at most this much work even when a recipe sets
/// no step cadence.
pub const CHECKPOINT_SECS: f64 = 300.0;
const LOG: &str = "log.jsonl";

/// The sampler as pollard-train's batch source: one `next_batch` per micro-batch, so after `s`
/// steps the position is `s * accumulation`, the same windows at the same steps as ever.
struct Windows<'a>(WindowSampler<'a>);

impl BatchSource for Windows<'_> {
    type Batch = Batch;
    fn next_batch(&mut self) -> Result<Batch, BoxError> {
        Ok(self.0.next_batch())
    }
    fn position(&self) -> u64 {
        self.0.position()
    }
    fn seek(&mut self, position: u64) -> Result<(), BoxError> {
        self.0.set_position(position);
        Ok(())
    }
}

impl LoopConfig {
    pub fn tokens_per_step(&self) -> u64 {
        self.micro as u64 * self.seq_len as u64 * self.accumulation
    }
}

fn train_config(cfg: &LoopConfig) -> TrainConfig {
    let mut t = TrainConfig::new(Budget::Steps(cfg.steps), cfg.micro, cfg.seq_len, cfg.lr);
    t.accumulation = u32::try_from(cfg.accumulation).unwrap_or(u32::MAX);
    t.min_lr = cfg.min_lr;
    t.warmup = cfg.warmup.min(cfg.steps);
    t.weight_decay = cfg.weight_decay;
    t.grad_clip = cfg.grad_clip;
    t.log_every = cfg.log_every.max(1);
    t.eval_every = cfg.eval_every;
    t.checkpoint_every = cfg.checkpoint_every;
    t.checkpoint_secs = CHECKPOINT_SECS;
    t
}

/// A stage error raised inside a closure comes back as itself; cancellation is the stage's
/// `Cancelled`; everything else is a training error.
fn stage_error(e: TrainError) -> StageError {
    match e {
        TrainError::Cancelled { .. } => StageError::Cancelled,
        TrainError::Batch { source, .. }
        | TrainError::Loss { source, .. }
        | TrainError::Eval { source, .. }
            if source.is::<StageError>() =>
        {
            *source
                .downcast::<StageError>()
                .expect("checked by the guard")
        }
        e => e.into(),
    }
}

/// The last logged loss and validation loss (for a run that resumed from its final checkpoint
/// and so took no step in this call).
fn last_logged(path: &Path) -> (Option<f64>, Option<f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .next_back();
    let get = |k: &str| last.as_ref().and_then(|v| v.get(k)).and_then(Value::as_f64);
    (get("loss"), get("val_loss"))
}

/// Runs the loop over `sampler` (which draws `cfg.micro` windows a batch). `loss(batch)` returns the
/// loss of one micro-batch with named parts to log; `eval()` returns a validation loss. The log
/// goes to `ctx.out_dir()/log.jsonl` at the end.
pub fn run_loop(
    ctx: &StageCtx,
    vars: Vec<(String, Var)>,
    cfg: &LoopConfig,
    sampler: WindowSampler<'_>,
    mut loss: impl FnMut(&Batch) -> Result<StepLoss>,
    mut eval: impl FnMut() -> Result<f64>,
) -> Result<LoopOutcome> {
    let scratch = ctx.scratch_dir();
    std::fs::create_dir_all(scratch).map_err(|e| StageError::io(scratch, e))?;
    let log_path = scratch.join(LOG);
    // No wall-clock fields: a rerun reproduces the log byte for byte (early cutoff downstream).
    let log_options = LogOptions {
        wall_clock: false,
        eval_key: "val_loss".into(),
        first_step: true,
    };
    let mut trainer = Trainer::new(train_config(cfg), vars)?
        .with_log(&log_path)
        .with_log_options(log_options);
    // Always: the time cadence and interrupts write checkpoints even without a step cadence.
    trainer = trainer.with_checkpoints(scratch.join(CKPT));
    let mut source = Windows(sampler);
    let resumed = trainer.resume(&mut source).map_err(stage_error)?;
    if let Some(step) = resumed {
        ctx.log(&format!("resuming from step {step} of {}", cfg.steps));
    }
    let hooks = Hooks {
        eval: Some(Box::new(|_step| {
            eval().map_err(|e| Box::new(e) as BoxError)
        })),
        progress: Some(Box::new(|p: &pollard_train::Progress| {
            ctx.progress(Progress {
                step: p.step,
                total: Some(p.total),
                loss: Some(p.loss),
                tokens_per_s: Some(p.tokens_per_s),
                message: None,
            })
        })),
        cancel: Some(Box::new(|| ctx.cancelled())),
    };
    let summary = trainer
        .run_with_parts(
            &mut source,
            |b| loss(b).map_err(|e| Box::new(e) as BoxError),
            hooks,
        )
        .map_err(stage_error)?;
    let (final_loss, final_val_loss) = match summary.final_loss {
        Some(l) => (l, summary.final_eval_loss),
        None => {
            let (l, v) = last_logged(&log_path);
            (l.unwrap_or(f64::NAN), v)
        }
    };
    let dst = ctx.out_dir().join(LOG);
    std::fs::copy(&log_path, &dst).map_err(|e| StageError::io(&dst, e))?;
    Ok(LoopOutcome {
        final_loss,
        final_val_loss,
        tokens: summary.tokens,
        resumed_from: resumed,
    })
}

/// Everything a training kind writes besides the loop's log: the model (with the dataset's
/// tokenizer), `metrics.json`, and the provenance `evaluate` and `report` read (tokens seen by
/// this model's own training and by its ancestors).
pub fn write_outputs(
    ctx: &StageCtx,
    kind: &str,
    model: &Llama,
    data_dir: &Path,
    outcome: &LoopOutcome,
    steps: u64,
    upstream_tokens: u64,
) -> Result<()> {
    save_model(ctx, model, data_dir)?;
    let metrics = json!({
        "train_loss": finite("train_loss", outcome.final_loss)?,
        "val_loss": outcome.final_val_loss.map(|v| finite("val_loss", v)).transpose()?,
        "tokens": outcome.tokens,
        "steps": steps,
        "params": crate::runtime::param_count(model),
    });
    write_json(&ctx.out_dir().join("metrics.json"), &metrics)?;
    write_json(
        &ctx.out_dir().join(PROVENANCE),
        &json!({ "kind": kind, "tokens": upstream_tokens + outcome.tokens, "own_tokens": outcome.tokens }),
    )
}

/// Writes the trained model with the dataset's tokenizer.
fn save_model(ctx: &StageCtx, model: &Llama, data_dir: &Path) -> Result<()> {
    let weights = model.weights()?;
    // Saved on the CPU: a GPU run writes the same file.
    let weights = weights
        .into_iter()
        .map(|(n, t)| t.to_device(&Device::Cpu).map(|t| (n, t)))
        .collect::<candle_core::Result<pollard_model::Weights>>()
        .map_err(|source| StageError::Candle {
            context: "moving weights to the CPU".into(),
            source,
        })?;
    let tok = data_dir.join(pollard_data::TOKENIZER_FILE);
    pollard_model::save_hf(
        ctx.out_dir(),
        model.config(),
        &weights,
        tok.is_file().then_some(tok.as_path()),
    )?;
    Ok(())
}
