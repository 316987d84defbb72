//! The data layer's error type: every failure names the file, field, token or value involved.

use std::path::PathBuf;

/// Errors of `pollard-data`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === Files ===
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    // === Tokenizers ===
    #[error("tokenizer: BPE vocabulary size {vocab} is too small: it needs at least {min} (256 bytes + the end-of-text token)")]
    VocabTooSmall { vocab: usize, min: usize },

    #[error("tokenizer: BPE training on {documents} documents failed: {message}")]
    Train { documents: usize, message: String },

    #[error("tokenizer {path}: cannot load: {message}")]
    TokenizerLoad { path: PathBuf, message: String },

    #[error("tokenizer: {op} failed: {message}")]
    Tokenize { op: &'static str, message: String },

    // === Token shards ===
    #[error("{path}: {len} bytes is not a whole number of little-endian u32 token ids (length must be a multiple of 4)")]
    ShardLength { path: PathBuf, len: u64 },

    #[error(
        "{path}: token id {id} at position {position} is out of range for vocabulary size {vocab}"
    )]
    TokenOutOfRange {
        path: PathBuf,
        id: u32,
        position: usize,
        vocab: u32,
    },

    #[error("{path}: holds {actual} tokens but meta.json says {field} = {expected}")]
    ShardMismatch {
        path: PathBuf,
        field: &'static str,
        expected: u64,
        actual: u64,
    },

    #[error("{path}: unsupported dataset format `{found}` (this pollard reads `{expected}`)")]
    Format {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },

    #[error("{path}: meta.json field `{field}` is invalid: {message}")]
    Meta {
        path: PathBuf,
        field: &'static str,
        message: String,
    },

    // === Text sources ===
    #[error("text.files[{index}]: `{pattern}` is not a valid glob: {message}")]
    BadGlob {
        index: usize,
        pattern: String,
        message: String,
    },

    #[error("text.files[{index}]: `{pattern}` matches no file in {base}")]
    NoMatch {
        index: usize,
        pattern: String,
        base: PathBuf,
    },

    #[error("{path}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },

    // === Splitting and sampling ===
    #[error("val_fraction {0} must be in [0, 1)")]
    ValFraction(f64),

    #[error("no text: the source holds no non-blank document")]
    NoDocuments,

    #[error("{what}: {tokens} tokens are too few for one window of seq_len + 1 = {needed}")]
    TooFewTokens {
        what: &'static str,
        tokens: usize,
        needed: usize,
    },

    #[error("{field} must be at least 1 (got 0)")]
    Zero { field: &'static str },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
