//! The error type of every built-in stage kind: what a stage returns to the engine (as a
//! `BoxError`), naming the file, tensor, field or value that was wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// A model's `config.json` lacks a field or holds an impossible value.
    #[error("{path}: config field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// A checkpoint tensor is missing, misnamed or has the wrong shape.
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },

    /// A tensor operation failed; `context` says which step.
    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: candle_core::Error,
    },

    /// A parameter that is valid on its own but impossible for this input (a target larger than
    /// the model, a layer index past the end); `field` is the dotted path inside `with`.
    #[error("field `{field}`: {message}")]
    Param { field: String, message: String },

    /// An input artifact is missing or unusable.
    #[error("input `{slot}`: {message}")]
    Input { slot: String, message: String },

    /// Plotting for the report failed.
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },

    /// The user interrupted the run.
    #[error("cancelled")]
    Cancelled,

    /// The model layer (pollard-model) refused something.
    #[error("model: {0}")]
    Model(#[from] pollard_model::ModelError),

    /// The training layer (pollard-train) refused something.
    #[error("training: {0}")]
    Train(#[from] pollard_train::TrainError),

    /// The data layer (pollard-data) refused something.
    #[error("data: {0}")]
    Data(#[from] pollard_data::Error),

    /// A device could not be opened.
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T, E = StageError> = std::result::Result<T, E>;

impl StageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// For `describe`: a `Param` error becomes the engine's [`pollard_engine::ParamError`],
    /// which planning reports at the field's place in the manifest; others stay as they are.
    pub fn planning(self) -> pollard_engine::BoxError {
        match self {
            Self::Param { field, message } => {
                Box::new(pollard_engine::ParamError::new(field, message))
            }
            other => Box::new(other),
        }
    }

    pub fn param(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Param {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn tensor(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Tensor {
            name: name.into(),
            message: message.into(),
        }
    }

    pub fn input(slot: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Input {
            slot: slot.into(),
            message: message.into(),
        }
    }
}

/// Attaches a description of the step to a candle error.
pub trait CandleContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CandleContext<T> for std::result::Result<T, candle_core::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StageError::Candle {
            context: context(),
            source,
        })
    }
}
