//! The training loop: batches from a caller's [`BatchSource`], a caller's loss closure,
//! accumulation over micro-batches, clipping, AdamW on the cosine schedule, `log.jsonl`,
//! evaluation, checkpoints, and resume from the newest valid checkpoint so that a killed run
//! ends bit-identically to an uninterrupted one.
//!
//! Exactness rests on three things: the loop draws no random numbers of its own, every
//! reduction sums in a fixed order, and a checkpoint holds everything the next step reads
//! (weights, moments, step, the source's position). The caller's loss closure must likewise be
//! a pure function of the batch and the weights.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use crate::adamw::AdamW;
use crate::checkpoint::{self, CheckpointState};
use crate::config::TrainConfig;
use crate::error::{BoxError, Result, TrainError};
use crate::grads::{clip_factor, Grads};
use crate::log::{LogOptions, LogRecord, LogWriter};
use crate::schedule::CosineSchedule;

/// Where batches come from. The position must capture everything about the source's state:
/// after `seek(p)`, the source yields exactly what it yielded after `position()` returned `p`
/// (e.g. the number of windows drawn, with the sampler's RNG derived from seed and index).
pub trait BatchSource {
    type Batch;
    fn next_batch(&mut self) -> Result<Self::Batch, BoxError>;
    fn position(&self) -> u64;
    fn seek(&mut self, position: u64) -> Result<(), BoxError>;
}

/// What a loss closure returns for one micro-batch: the scalar loss to minimise and, optionally,
/// named parts to log (each averaged over the step's micro-batches, written as top-level fields
/// of the step's `log.jsonl` line); see [`Trainer::run_with_parts`].
pub struct StepLoss {
    pub loss: Tensor,
    pub parts: Vec<(String, f64)>,
}

impl From<Tensor> for StepLoss {
    fn from(loss: Tensor) -> Self {
        Self {
            loss,
            parts: Vec::new(),
        }
    }
}

/// What the progress callback sees after a logged step.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub step: u64,
    pub total: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    /// Throughput of this run since it started or resumed.
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub eval_loss: Option<f64>,
}

/// Optional caller hooks. `eval(step)` returns a validation loss; `cancel()` is polled before
/// every step and stops the run with [`TrainError::Cancelled`].
#[derive(Default)]
pub struct Hooks<'a> {
    pub eval: Option<EvalFn<'a>>,
    pub progress: Option<ProgressFn<'a>>,
    pub cancel: Option<CancelFn<'a>>,
}

/// `eval(step)`: the validation loss after `step` steps.
pub type EvalFn<'a> = Box<dyn FnMut(u64) -> Result<f64, BoxError> + 'a>;
/// Called after every logged step.
pub type ProgressFn<'a> = Box<dyn FnMut(&Progress) + 'a>;
/// Polled before every step; `true` stops the run.
pub type CancelFn<'a> = Box<dyn Fn() -> bool + 'a>;

/// The outcome of [`Trainer::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Optimizer steps completed in total (including those before a resume).
    pub steps: u64,
    pub tokens: u64,
    /// Loss of the last step taken in this call (`None` if it resumed at the end already).
    pub final_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    /// The checkpoint step this call resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Training wall time in seconds, summed over resumed runs.
    pub elapsed_s: f64,
}

/// One training run over a fixed set of named parameters.
pub struct Trainer {
    cfg: TrainConfig,
    total: u64,
    schedule: CosineSchedule,
    opt: AdamW,
    step: u64,
    elapsed_before: f64,
    checkpoint_dir: Option<PathBuf>,
    log_path: Option<PathBuf>,
    log_options: LogOptions,
    /// What an explicit [`Trainer::resume`] found, so that [`Trainer::run`] does not load the
    /// checkpoint a second time.
    resumed: Option<Option<u64>>,
    /// Checkpoints that failed validation during the last resume, with the reason.
    skipped: Vec<String>,
}

impl Trainer {
    /// Validates `cfg` and sets up AdamW over `params` (unique names; the order is kept).
    pub fn new(cfg: TrainConfig, params: Vec<(String, Var)>) -> Result<Self> {
        cfg.validate()?;
        let total = cfg.total_steps()?;
        let schedule = cfg.schedule()?;
        let opt = AdamW::new(params, cfg.adamw())?;
        Ok(Self {
            cfg,
            total,
            schedule,
            opt,
            step: 0,
            elapsed_before: 0.0,
            checkpoint_dir: None,
            log_path: None,
            log_options: LogOptions::default(),
            resumed: None,
            skipped: Vec::new(),
        })
    }

    /// Checkpoint into (and resume from) this scratch folder.
    pub fn with_checkpoints(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// Write `log.jsonl` records to this file.
    pub fn with_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_path = Some(path.into());
        self
    }

    /// How `log.jsonl` lines are written (default: with wall-clock fields, `eval_loss`).
    pub fn with_log_options(mut self, options: LogOptions) -> Self {
        self.log_options = options;
        self
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Steps completed so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn total_steps(&self) -> u64 {
        self.total
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// Reasons the checkpoints skipped by the last resume were invalid (newest first).
    pub fn skipped_checkpoints(&self) -> &[String] {
        &self.skipped
    }

    /// Loads the newest valid checkpoint of the scratch folder, if any: weights into the
    /// `Var`s (in place, so the model's tensors see them), optimizer state, step, and the
    /// source's position. Invalid checkpoints are skipped (see [`Trainer::skipped_checkpoints`]);
    /// a valid one written with a different config is an error. A following [`Trainer::run`]
    /// continues from here without loading again.
    pub fn resume<S: BatchSource>(&mut self, source: &mut S) -> Result<Option<u64>> {
        let found = self.load_newest(source)?;
        self.resumed = Some(found);
        Ok(found)
    }

    fn load_newest<S: BatchSource>(&mut self, source: &mut S) -> Result<Option<u64>> {
        let Some(dir) = self.checkpoint_dir.clone() else {
            return Ok(None);
        };
        let (found, bad) = checkpoint::list(&dir)?;
        self.skipped = bad.iter().map(|e| e.to_string()).collect();
        for ckpt in found {
            if ckpt.state.config != self.cfg.fingerprint() {
                return Err(TrainError::Checkpoint {
                    path: ckpt.path.clone(),
                    reason: format!(
                        "was written with a different training config: {} (now {})",
                        ckpt.state.config,
                        self.cfg.fingerprint()
                    ),
                });
            }
            // A checkpoint whose tensors cannot be read falls back to the next older one.
            let (weights, moments) = match ckpt.weights().and_then(|w| Ok((w, ckpt.optimizer()?))) {
                Ok(t) => t,
                Err(e) => {
                    self.skipped.push(e.to_string());
                    continue;
                }
            };
            self.restore_weights(&ckpt.path, &weights)?;
            self.opt.load_state(ckpt.state.step, &moments)?;
            source
                .seek(ckpt.state.data_position)
                .map_err(|e| TrainError::Batch {
                    step: ckpt.state.step,
                    source: e,
                })?;
            self.step = ckpt.state.step;
            self.elapsed_before = ckpt.state.elapsed_s;
            return Ok(Some(self.step));
        }
        Ok(None)
    }

    fn restore_weights(&self, path: &Path, weights: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.opt.names().zip(self.opt.vars()) {
            let bad = |reason: String| TrainError::Checkpoint {
                path: path.to_path_buf(),
                reason,
            };
            let t = weights
                .get(name)
                .ok_or_else(|| bad(format!("has no weight `{name}`")))?;
            if t.dims() != var.dims() || t.dtype() != var.dtype() {
                return Err(bad(format!(
                    "weight `{name}` is {:?} {:?}, the model has {:?} {:?}",
                    t.dtype(),
                    t.dims(),
                    var.dtype(),
                    var.dims()
                )));
            }
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }

    fn save_checkpoint(&self, dir: &Path, position: u64, elapsed_s: f64) -> Result<PathBuf> {
        let mut weights = HashMap::new();
        for (name, var) in self.opt.names().zip(self.opt.vars()) {
            weights.insert(name.to_string(), var.as_tensor().to_device(&Device::Cpu)?);
        }
        let state = CheckpointState {
            format: checkpoint::CHECKPOINT_FORMAT,
            step: self.step,
            data_position: position,
            tokens: self.step * self.cfg.tokens_per_step(),
            elapsed_s,
            config: self.cfg.fingerprint(),
            files: HashMap::new(),
        };
        checkpoint::write(
            dir,
            state,
            &weights,
            &self.opt.state_tensors()?,
            self.cfg.keep_checkpoints,
        )
    }

    /// Trains to the end of the budget, resuming first from the newest valid checkpoint when a
    /// checkpoint folder is set (unless [`Trainer::resume`] was just called). `loss` maps one
    /// micro-batch to a scalar loss tensor.
    pub fn run<S, L>(
        &mut self,
        source: &mut S,
        mut loss: L,
        hooks: Hooks<'_>,
    ) -> Result<TrainSummary>
    where
        S: BatchSource,
        L: FnMut(&S::Batch) -> Result<Tensor, BoxError>,
    {
        self.run_with_parts(source, |b| loss(b).map(StepLoss::from), hooks)
    }

    /// [`Trainer::run`] with a loss closure that also returns named parts of the loss, logged
    /// as their mean over the step's micro-batches.
    pub fn run_with_parts<S, L>(
        &mut self,
        source: &mut S,
        mut loss: L,
        mut hooks: Hooks<'_>,
    ) -> Result<TrainSummary>
    where
        S: BatchSource,
        L: FnMut(&S::Batch) -> Result<StepLoss, BoxError>,
    {
        let resumed_from = match self.resumed.take() {
            Some(found) => found,
            None => self.load_newest(source)?,
        };
        let mut log = match &self.log_path {
            Some(p) => Some(LogWriter::open(p, self.step)?),
            None => None,
        };
        let started = Instant::now();
        let start_step = self.step;
        let tps = self.cfg.tokens_per_step();
        let accum = self.cfg.accumulation;
        let vars: Vec<Var> = self.opt.vars().into_iter().cloned().collect();
        let var_refs: Vec<&Var> = vars.iter().collect();
        let mut grads = Grads::new(vars.len());
        let (mut final_loss, mut final_eval) = (None, None);
        // The step of the newest checkpoint on disk, and when the cadence clock last started.
        let mut saved_step = self.step;
        let mut last_save = Instant::now();

        while self.step < self.total {
            if hooks.cancel.as_ref().is_some_and(|c| c()) {
                // Keep the work done so far: the rerun resumes here instead of at step 1.
                if let Some(dir) = self.checkpoint_dir.clone() {
                    if self.step > saved_step {
                        let elapsed = self.elapsed_before + started.elapsed().as_secs_f64();
                        self.save_checkpoint(&dir, source.position(), elapsed)?;
                    }
                }
                return Err(TrainError::Cancelled { step: self.step });
            }
            let step_no = self.step + 1; // 1-based number of the step being taken, for messages
            grads.clear();
            let mut loss_sum = 0f64;
            let mut parts_sum: BTreeMap<String, f64> = BTreeMap::new();
            for _ in 0..accum {
                let batch = source.next_batch().map_err(|e| TrainError::Batch {
                    step: step_no,
                    source: e,
                })?;
                let StepLoss { loss: l, parts } = loss(&batch).map_err(|e| TrainError::Loss {
                    step: step_no,
                    source: e,
                })?;
                let value = scalar_value(&l).map_err(|e| TrainError::Loss {
                    step: step_no,
                    source: Box::new(e),
                })?;
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: step_no,
                        what: "loss",
                        value,
                    });
                }
                loss_sum += value;
                for (name, v) in parts {
                    *parts_sum.entry(name).or_insert(0.0) += v;
                }
                grads.accumulate(&var_refs, &l.backward()?)?;
            }
            let mean = 1.0 / accum as f64;
            let grad_norm = grads.global_norm(mean)?;
            if !grad_norm.is_finite() {
                return Err(TrainError::NonFinite {
                    step: step_no,
                    what: "gradient norm",
                    value: grad_norm,
                });
            }
            let lr = self.schedule.lr_at(self.step);
            self.opt.step(
                &grads,
                lr,
                mean * clip_factor(grad_norm, self.cfg.grad_clip),
            )?;
            self.step = step_no;
            let step_loss = loss_sum * mean;
            final_loss = Some(step_loss);

            let last = self.step == self.total;
            let every = |n: u64| n > 0 && self.step.is_multiple_of(n);
            let eval_loss = match hooks.eval.as_mut() {
                Some(eval) if last || every(self.cfg.eval_every) => {
                    let v = eval(self.step).map_err(|e| TrainError::Eval {
                        step: self.step,
                        source: e,
                    })?;
                    final_eval = Some(v);
                    Some(v)
                }
                _ => None,
            };
            let run_secs = started.elapsed().as_secs_f64();
            let elapsed = self.elapsed_before + run_secs;
            let first = self.log_options.first_step && self.step == 1;
            if last || every(self.cfg.log_every) || eval_loss.is_some() || first {
                let tokens_per_s = if run_secs > 0.0 {
                    (self.step - start_step) as f64 * tps as f64 / run_secs
                } else {
                    0.0
                };
                let rec = LogRecord {
                    step: self.step,
                    tokens: self.step * tps,
                    lr,
                    loss: step_loss,
                    grad_norm,
                    elapsed,
                    tokens_per_s,
                    eval_loss,
                    parts: parts_sum
                        .iter()
                        .map(|(k, v)| (k.clone(), v * mean))
                        .collect(),
                };
                if let Some(log) = log.as_mut() {
                    log.write_with(&rec, &self.log_options)?;
                }
                if let Some(progress) = hooks.progress.as_mut() {
                    progress(&Progress {
                        step: self.step,
                        total: self.total,
                        loss: step_loss,
                        lr,
                        grad_norm,
                        tokens: rec.tokens,
                        tokens_per_s,
                        elapsed_s: elapsed,
                        eval_loss,
                    });
                }
            }
            if let Some(dir) = self.checkpoint_dir.clone() {
                let due = self.cfg.checkpoint_secs > 0.0
                    && last_save.elapsed().as_secs_f64() >= self.cfg.checkpoint_secs;
                if last || every(self.cfg.checkpoint_every) || due {
                    self.save_checkpoint(&dir, source.position(), elapsed)?;
                    saved_step = self.step;
                    last_save = Instant::now();
                }
            }
        }
        let elapsed_s = self.elapsed_before + started.elapsed().as_secs_f64();
        Ok(TrainSummary {
            steps: self.step,
            tokens: self.step * tps,
            final_loss,
            final_eval_loss: final_eval,
            resumed_from,
            elapsed_s,
        })
    }
}

/// The value of a scalar (or one-element) loss tensor.
fn scalar_value(t: &Tensor) -> std::result::Result<f64, candle_core::Error> {
    if t.elem_count() != 1 {
        return Err(candle_core::Error::Msg(format!(
            "the loss must be a scalar, got shape {:?}",
            t.dims()
        )));
    }
    t.flatten_all()?
        .to_dtype(DType::F64)?
        .get(0)?
        .to_scalar::<f64>()
}
