//! pollard-train: the training loop every `train`/`distill` stage runs, generic over any candle
//! model. The caller hands over named trainable `Var`s, a batch source with a savable position
//! and a loss closure; this crate owns the optimizer (AdamW), the schedule, clipping,
//! accumulation, the losses, `log.jsonl` and exact checkpoint/resume.
//!
//! ```no_run
//! use pollard_train::{Budget, Hooks, TrainConfig, Trainer, cross_entropy};
//! # fn demo(params: Vec<(String, candle_core::Var)>, source: &mut impl pollard_train::BatchSource<Batch = (candle_core::Tensor, candle_core::Tensor)>,
//! #         forward: impl Fn(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>) -> pollard_train::Result<()> {
//! let mut cfg = TrainConfig::new(Budget::Tokens(1_000_000), 8, 256, 3e-4);
//! cfg.warmup = 20;
//! cfg.checkpoint_every = 100;
//! let mut trainer = Trainer::new(cfg, params)?.with_checkpoints("scratch/ckpt").with_log("out/log.jsonl");
//! let summary = trainer.run(source, |(inputs, targets)| Ok(cross_entropy(&forward(inputs)?, targets)?), Hooks::default())?;
//! println!("{} steps, final loss {:?}", summary.steps, summary.final_loss);
//! # Ok(()) }
//! ```

pub mod adamw;
pub mod checkpoint;
pub mod config;
mod cpu;
pub mod error;
pub mod grads;
pub mod log;
pub mod loss;
pub mod schedule;
pub mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use config::{Budget, TrainConfig};
pub use error::{BoxError, Result, TrainError};
pub use grads::{clip_factor, Grads};
pub use log::{LogOptions, LogRecord};
pub use loss::{cosine, cross_entropy, forward_kl, mse, reverse_kl};
pub use schedule::CosineSchedule;
pub use trainer::{
    BatchSource, CancelFn, EvalFn, Hooks, Progress, ProgressFn, StepLoss, TrainSummary, Trainer,
};
