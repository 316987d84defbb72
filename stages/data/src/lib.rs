//! pollard's data layer, below the `dataset` stage kind and beside the model: text ->
//! tokenizer -> token shards -> training batches and validation windows. No candle: batches are
//! plain `Vec<u32>`, which the stage kinds turn into tensors.
//!
//! - [`synthetic::generate`]: the deterministic synthetic corpus (exact word count).
//! - [`sources`]: `text.files` globs -> files -> UTF-8 text.
//! - [`split`]: text -> documents (blank-line separated) -> train/val assignment.
//! - [`Tokenizer`]: byte, trained byte-level BPE, or a loaded `tokenizer.json`.
//! - [`write_dataset`] / [`Dataset::open`]: the dataset artifact (`tokenizer.json`,
//!   `train.bin`, `val.bin`, `meta.json`), memory-mapped and validated on open.
//! - [`WindowSampler`]: seeded, resumable training windows; [`validation_windows`]: the fixed
//!   validation set.

pub mod artifact;
pub mod error;
pub mod hf_files;
pub mod rng;
pub mod sampler;
pub mod shard;
pub mod sources;
pub mod split;
pub mod synthetic;
pub mod tokenizer;

pub use artifact::{
    read_meta, write_dataset, Dataset, DatasetWriter, Meta, META_FILE, TOKENIZER_FILE, TRAIN_FILE,
    VAL_FILE,
};
pub use error::{Error, Result};
pub use sampler::{validation_windows, Batch, WindowSampler};
pub use shard::{write_tokens, TokenShard};
pub use tokenizer::{Tokenizer, TokenizerKind, END_OF_TEXT, MIN_BPE_VOCAB};
