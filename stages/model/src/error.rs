//! The model layer's error type: every failure names the file, field or tensor it is about.

use std::path::PathBuf;

/// Errors from loading, saving, building or running a Llama-family model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A config field is missing, has the wrong type or an unsupported value.
    #[error("config{}: field `{field}`: {msg}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Config {
        path: Option<PathBuf>,
        field: String,
        msg: String,
    },
    #[error("{path}: corrupt or unreadable safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("tensor `{name}` is missing{}", .path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    MissingTensor { name: String, path: Option<PathBuf> },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?} from the config")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error(
        "tensor `{name}` has dtype {dtype}, expected a floating-point dtype (F32, F16, BF16, F64)"
    )]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}`{}: not part of a Llama checkpoint with this config", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    UnexpectedTensor { name: String, path: Option<PathBuf> },
    /// Bad caller input (token ids, tap requests, shapes of activations).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Config {
            path: None,
            field: field.into(),
            msg: msg.into(),
        }
    }
}
