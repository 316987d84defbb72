//! The engine's error type. Manifest problems come as one [`Diagnostics`] holding all of them.

use std::path::PathBuf;

use crate::diag::Diagnostics;
use crate::lockfile::LockError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Everything wrong with a manifest (exit code 2).
    #[error("{0}")]
    Manifest(Diagnostics),
    /// A bad command-line value: unknown stage, bad `--gpus` (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("cannot read manifest {path}: {source}")]
    ReadManifest {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stage `{stage}`: cannot hash deps `{path}`: {source}")]
    Deps {
        stage: String,
        path: String,
        source: Box<pollard_cache::Error>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Boxed: the cache's error is large and most results here are Ok.
    #[error(transparent)]
    Cache(Box<pollard_cache::Error>),
}

impl From<pollard_cache::Error> for EngineError {
    fn from(e: pollard_cache::Error) -> Self {
        EngineError::Cache(Box::new(e))
    }
}
