//! The crate's one error type: every failure of the optimizer, the losses, checkpointing and the
//! training loop, each variant naming the step, file, parameter or value involved.

use std::path::PathBuf;

/// A boxed error from caller-supplied code (the batch source, the loss or eval closure), kept
/// whole so the binary can print its cause chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `pollard-train`.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("invalid training config: `{field}` {reason}")]
    Config { field: &'static str, reason: String },

    #[error("loss `{loss}`: {reason}")]
    LossInput { loss: &'static str, reason: String },

    #[error("parameter `{name}`: {reason}")]
    Param { name: String, reason: String },

    #[error("non-finite {what} ({value}) at step {step}: training stopped")]
    NonFinite {
        step: u64,
        what: &'static str,
        value: f64,
    },

    #[error("training cancelled at step {step}")]
    Cancelled { step: u64 },

    #[error("batch source failed at step {step}: {source}")]
    Batch {
        step: u64,
        #[source]
        source: BoxError,
    },

    #[error("loss closure failed at step {step}: {source}")]
    Loss {
        step: u64,
        #[source]
        source: BoxError,
    },

    #[error("eval closure failed at step {step}: {source}")]
    Eval {
        step: u64,
        #[source]
        source: BoxError,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error, so every file error names its file.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
