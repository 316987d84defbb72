//! The dataset artifact, written by the `dataset` stage and read by `train`, `score`, `distill`
//! and `evaluate`: `tokenizer.json`, `train.bin`, `val.bin` (little-endian u32 ids) and
//! `meta.json`, which says what the shards hold and where they came from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shard::{write_tokens, TokenShard};
use crate::split::is_val;
use crate::tokenizer::{Tokenizer, TokenizerKind};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TRAIN_FILE: &str = "train.bin";
pub const VAL_FILE: &str = "val.bin";
pub const META_FILE: &str = "meta.json";

/// The value of `meta.json`'s `format` field; bump on an incompatible change.
pub const FORMAT: &str = "pollard-tokens-v1";

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always `"u32le"`.
    pub dtype: String,
    pub tokenizer: TokenizerKind,
    /// The model vocabulary these shards need: every id is below it. For a trained BPE it is
    /// the requested size even when the text allowed fewer merges (`tokenizer_vocab_size`).
    pub vocab_size: u32,
    /// Ids the tokenizer itself has (added tokens included).
    pub tokenizer_vocab_size: u32,
    /// The id appended after every document, if the tokenizer has one.
    pub eos_id: Option<u32>,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub train_documents: u64,
    pub val_documents: u64,
    /// Where the text came from (`synthetic: 2000000 words, seed 1234`, or the files).
    pub source: String,
    /// The synthetic corpus' seed; `None` for files.
    pub seed: Option<u64>,
    pub val_fraction: f64,
}

/// How documents become shard tokens: each document is encoded followed by a newline, then the
/// end-of-text id when the tokenizer has one; train and val documents keep their order.
/// Returns the written `meta.json` value. `vocab_size` is the model vocabulary to record (at
/// least the tokenizer's).
pub fn write_dataset<S: AsRef<str> + Sync>(
    out_dir: &Path,
    documents: &[S],
    tokenizer: &Tokenizer,
    vocab_size: usize,
    val_fraction: f64,
    source: String,
    seed: Option<u64>,
) -> Result<Meta> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::ValFraction(val_fraction));
    }
    if documents.is_empty() {
        return Err(Error::NoDocuments);
    }
    let vocab_size = vocab_size.max(tokenizer.vocab_size());
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let (mut train_docs, mut val_docs) = (0u64, 0u64);
    // Encode in chunks so peak memory holds one chunk's per-document vectors, not the corpus'.
    const CHUNK: usize = 4096;
    for (c, chunk) in documents.chunks(CHUNK).enumerate() {
        let texts: Vec<String> = chunk.iter().map(|d| format!("{}\n", d.as_ref())).collect();
        for (j, ids) in tokenizer.encode_batch(&texts)?.into_iter().enumerate() {
            let (dest, count) = if is_val(c * CHUNK + j, val_fraction) {
                (&mut val, &mut val_docs)
            } else {
                (&mut train, &mut train_docs)
            };
            dest.extend_from_slice(&ids);
            dest.extend(tokenizer.eos_id());
            *count += 1;
        }
    }
    tokenizer.save(&out_dir.join(TOKENIZER_FILE))?;
    write_tokens(&out_dir.join(TRAIN_FILE), &train)?;
    write_tokens(&out_dir.join(VAL_FILE), &val)?;
    let meta = Meta {
        format: FORMAT.to_owned(),
        dtype: "u32le".to_owned(),
        tokenizer: tokenizer.kind(),
        vocab_size: to_u32(vocab_size),
        tokenizer_vocab_size: to_u32(tokenizer.vocab_size()),
        eos_id: tokenizer.eos_id(),
        train_tokens: train.len() as u64,
        val_tokens: val.len() as u64,
        train_documents: train_docs,
        val_documents: val_docs,
        source,
        seed,
        val_fraction,
    };
    let path = out_dir.join(META_FILE);
    let json =
        serde_json::to_string_pretty(&meta).expect("Meta has only plain fields and serializes");
    std::fs::write(&path, json + "\n").map_err(Error::io("write", &path))?;
    Ok(meta)
}

fn to_u32(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// An opened dataset artifact: its meta, tokenizer and memory-mapped shards, all checked
/// against each other.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    meta: Meta,
    tokenizer: Tokenizer,
    train: TokenShard,
    val: TokenShard,
}

impl Dataset {
    /// Opens the dataset artifact in `dir`: reads `meta.json` and `tokenizer.json`, maps the
    /// shards, and checks token counts against the meta and ids against the vocabulary.
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = read_meta(dir)?;
        let tokenizer = Tokenizer::load_as(&dir.join(TOKENIZER_FILE), meta.tokenizer)?;
        let train = TokenShard::open(&dir.join(TRAIN_FILE), meta.vocab_size)?;
        let val = TokenShard::open(&dir.join(VAL_FILE), meta.vocab_size)?;
        for (shard, field, expected) in [
            (&train, "train_tokens", meta.train_tokens),
            (&val, "val_tokens", meta.val_tokens),
        ] {
            if shard.len() as u64 != expected {
                return Err(Error::ShardMismatch {
                    path: shard.path().to_owned(),
                    field,
                    expected,
                    actual: shard.len() as u64,
                });
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            meta,
            tokenizer,
            train,
            val,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
    /// The model vocabulary size these shards need.
    pub fn vocab_size(&self) -> usize {
        self.meta.vocab_size as usize
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// Training tokens.
    pub fn train(&self) -> &[u32] {
        self.train.tokens()
    }
    /// Validation tokens.
    pub fn val(&self) -> &[u32] {
        self.val.tokens()
    }
}

/// Reads and checks `meta.json` in `dir` (format, dtype, vocabulary sizes, val_fraction).
pub fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path).map_err(Error::io("read", &path))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    if meta.format != FORMAT {
        return Err(Error::Format {
            path,
            found: meta.format,
            expected: FORMAT,
        });
    }
    let bad = |field: &'static str, message: String| Error::Meta {
        path: path.clone(),
        field,
        message,
    };
    if meta.dtype != "u32le" {
        return Err(bad(
            "dtype",
            format!("`{}` (only `u32le` is supported)", meta.dtype),
        ));
    }
    if meta.vocab_size == 0 || meta.vocab_size < meta.tokenizer_vocab_size {
        return Err(bad(
            "vocab_size",
            format!(
                "{} must be at least tokenizer_vocab_size {} and above 0",
                meta.vocab_size, meta.tokenizer_vocab_size
            ),
        ));
    }
    if !(0.0..1.0).contains(&meta.val_fraction) {
        return Err(bad(
            "val_fraction",
            format!("{} is not in [0, 1)", meta.val_fraction),
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<String> {
        (0..40)
            .map(|i| format!("document number {i} says hello."))
            .collect()
    }

    #[test]
    fn write_then_open_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokenizer::byte();
        let meta =
            write_dataset(dir.path(), &docs(), &t, 256, 0.1, "test".into(), Some(7)).unwrap();
        assert_eq!((meta.train_documents, meta.val_documents), (36, 4));
        let ds = Dataset::open(dir.path()).unwrap();
        assert_eq!(ds.meta(), &meta);
        assert_eq!(ds.vocab_size(), 256);
        assert_eq!(
            ds.train().len() as u64 + ds.val().len() as u64,
            docs().iter().map(|d| d.len() as u64 + 1).sum::<u64>()
        );
        // Val holds documents 4, 14, 24, 34 (evenly spaced), each followed by a newline.
        let val_text = ds.tokenizer().decode(ds.val()).unwrap();
        assert_eq!(val_text, "document number 4 says hello.\ndocument number 14 says hello.\ndocument number 24 says hello.\ndocument number 34 says hello.\n");
        let train_text = ds.tokenizer().decode(ds.train()).unwrap();
        assert!(train_text.starts_with("document number 0 says hello.\ndocument number 1 "));
        assert!(!train_text.contains("number 4 "));
    }

    #[test]
    fn bpe_dataset_separates_documents_with_eos() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokenizer::train_bpe(&docs(), 300).unwrap();
        let meta = write_dataset(dir.path(), &docs(), &t, 512, 0.0, "test".into(), None).unwrap();
        assert_eq!(meta.vocab_size, 512);
        assert_eq!(meta.eos_id, Some(0));
        let ds = Dataset::open(dir.path()).unwrap();
        assert_eq!(ds.train().iter().filter(|&&id| id == 0).count(), 40);
        assert!(ds.val().is_empty());
        assert_eq!(ds.tokenizer().kind(), TokenizerKind::Bpe);
    }

    #[test]
    fn truncated_shard_is_caught_against_meta() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(
            dir.path(),
            &docs(),
            &Tokenizer::byte(),
            256,
            0.1,
            "test".into(),
            None,
        )
        .unwrap();
        let train = dir.path().join(TRAIN_FILE);
        let bytes = std::fs::read(&train).unwrap();
        std::fs::write(&train, &bytes[..bytes.len() - 8]).unwrap();
        let err = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("train.bin") && err.contains("train_tokens"),
            "{err}"
        );
    }

    #[test]
    fn bad_meta_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let meta = write_dataset(
            dir.path(),
            &docs(),
            &Tokenizer::byte(),
            256,
            0.1,
            "test".into(),
            None,
        )
        .unwrap();
        let path = dir.path().join(META_FILE);
        let mut bad = meta.clone();
        bad.vocab_size = 100;
        std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
        let err = Dataset::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("vocab_size"), "{err}");
        let mut bad = meta.clone();
        bad.format = "other".into();
        std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
        assert!(Dataset::open(dir.path())
            .unwrap_err()
            .to_string()
            .contains("unsupported dataset format `other`"));
        std::fs::write(&path, "{}").unwrap();
        assert!(Dataset::open(dir.path())
            .unwrap_err()
            .to_string()
            .contains("meta.json"));
    }

    #[test]
    fn bad_val_fraction_and_empty_text_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            write_dataset(
                dir.path(),
                &docs(),
                &Tokenizer::byte(),
                256,
                1.0,
                String::new(),
                None
            ),
            Err(Error::ValFraction(_))
        ));
        let none: Vec<String> = Vec::new();
        assert!(matches!(
            write_dataset(
                dir.path(),
                &none,
                &Tokenizer::byte(),
                256,
                0.1,
                String::new(),
                None
            ),
            Err(Error::NoDocuments)
        ));
    }
}
