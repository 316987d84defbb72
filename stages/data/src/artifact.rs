//! The dataset artifact, written by the `dataset` stage and read by `train`, `score`, `distill`
//! and `evaluate`: `tokenizer.json`, `train.bin`, `val.bin` (little-endian u32 ids) and
//! `meta.json`, which says what the shards hold and where they came from.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shard::TokenShard;
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
    /// The id put before every document, if the tokenizer defines one (absent otherwise, so
    /// datasets of tokenizers without one read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_id: Option<u32>,
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

/// Writes a dataset artifact document by document, so a corpus larger than memory streams
/// through: each document is encoded followed by a newline, then the end-of-text id when the
/// tokenizer has one, and appended to `train.bin` or `val.bin` by its running index
/// ([`is_val`]); train and val keep the documents' order.
pub struct DatasetWriter<'t> {
    out_dir: PathBuf,
    tokenizer: &'t Tokenizer,
    val_fraction: f64,
    train: ShardWriter,
    val: ShardWriter,
    /// Documents seen so far: the next document's index.
    documents: usize,
}

/// An open shard being appended to, with its token and document counts.
struct ShardWriter {
    path: PathBuf,
    out: BufWriter<File>,
    tokens: u64,
    documents: u64,
}

impl ShardWriter {
    fn create(path: PathBuf) -> Result<Self> {
        let file = File::create(&path).map_err(Error::io("create", &path))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            tokens: 0,
            documents: 0,
        })
    }

    fn append(&mut self, ids: &[u32]) -> Result<()> {
        self.out
            .write_all(bytemuck::cast_slice(ids))
            .map_err(Error::io("write", &self.path))?;
        self.tokens += ids.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let file = self.out.into_inner().map_err(|e| Error::Io {
            op: "write",
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(Error::io("sync", &self.path))
    }
}

impl<'t> DatasetWriter<'t> {
    /// Creates `train.bin` and `val.bin` in `out_dir`.
    pub fn create(out_dir: &Path, tokenizer: &'t Tokenizer, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::ValFraction(val_fraction));
        }
        Ok(Self {
            out_dir: out_dir.to_owned(),
            tokenizer,
            val_fraction,
            train: ShardWriter::create(out_dir.join(TRAIN_FILE))?,
            val: ShardWriter::create(out_dir.join(VAL_FILE))?,
            documents: 0,
        })
    }

    /// Encodes and appends `documents` (in parallel chunks on the current rayon pool).
    pub fn add<S: AsRef<str> + Sync>(&mut self, documents: &[S]) -> Result<()> {
        // Chunks bound the per-document vectors held at once.
        const CHUNK: usize = 4096;
        for chunk in documents.chunks(CHUNK) {
            let texts: Vec<String> = chunk.iter().map(|d| format!("{}\n", d.as_ref())).collect();
            for ids in self.tokenizer.encode_batch(&texts)? {
                let shard = if is_val(self.documents, self.val_fraction) {
                    &mut self.val
                } else {
                    &mut self.train
                };
                if let Some(bos) = self.tokenizer.bos_id() {
                    shard.append(&[bos])?;
                }
                shard.append(&ids)?;
                if let Some(eos) = self.tokenizer.eos_id() {
                    shard.append(&[eos])?;
                }
                shard.documents += 1;
                self.documents += 1;
            }
        }
        Ok(())
    }

    /// Documents added so far.
    pub fn documents(&self) -> usize {
        self.documents
    }

    /// Flushes the shards, writes `tokenizer.json` and `meta.json`, and returns the meta.
    /// `vocab_size` is the model vocabulary to record (raised to the tokenizer's if below it).
    pub fn finish(self, vocab_size: usize, source: String, seed: Option<u64>) -> Result<Meta> {
        if self.documents == 0 {
            return Err(Error::NoDocuments);
        }
        let vocab_size = vocab_size.max(self.tokenizer.vocab_size());
        let meta = Meta {
            format: FORMAT.to_owned(),
            dtype: "u32le".to_owned(),
            tokenizer: self.tokenizer.kind(),
            vocab_size: to_u32(vocab_size),
            tokenizer_vocab_size: to_u32(self.tokenizer.vocab_size()),
            eos_id: self.tokenizer.eos_id(),
            bos_id: self.tokenizer.bos_id(),
            train_tokens: self.train.tokens,
            val_tokens: self.val.tokens,
            train_documents: self.train.documents,
            val_documents: self.val.documents,
            source,
            seed,
            val_fraction: self.val_fraction,
        };
        self.train.finish()?;
        self.val.finish()?;
        self.tokenizer.save(&self.out_dir.join(TOKENIZER_FILE))?;
        let path = self.out_dir.join(META_FILE);
        let json =
            serde_json::to_string_pretty(&meta).expect("Meta has only plain fields and serializes");
        std::fs::write(&path, json + "\n").map_err(Error::io("write", &path))?;
        Ok(meta)
    }
}

/// The whole artifact from documents in memory: [`DatasetWriter`] in one call.
pub fn write_dataset<S: AsRef<str> + Sync>(
    out_dir: &Path,
    documents: &[S],
    tokenizer: &Tokenizer,
    vocab_size: usize,
    val_fraction: f64,
    source: String,
    seed: Option<u64>,
) -> Result<Meta> {
    let mut w = DatasetWriter::create(out_dir, tokenizer, val_fraction)?;
    w.add(documents)?;
    w.finish(vocab_size, source, seed)
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
    fn streaming_in_pieces_writes_the_same_bytes_as_one_call() {
        let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let t = Tokenizer::train_bpe(&docs(), 300).unwrap();
        let a = write_dataset(one.path(), &docs(), &t, 300, 0.2, "s".into(), None).unwrap();
        let mut w = DatasetWriter::create(many.path(), &t, 0.2).unwrap();
        for piece in docs().chunks(7) {
            w.add(piece).unwrap();
        }
        assert_eq!(w.documents(), 40);
        let b = w.finish(300, "s".into(), None).unwrap();
        assert_eq!(a, b);
        for f in [TRAIN_FILE, VAL_FILE, META_FILE, TOKENIZER_FILE] {
            assert_eq!(
                std::fs::read(one.path().join(f)).unwrap(),
                std::fs::read(many.path().join(f)).unwrap(),
                "{f}"
            );
        }
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

    /// A tokenizer that defines a BOS (here `<s>`, as Llama 2's and Nemotron's) starts every
    /// document with it, and the meta records it.
    #[test]
    fn documents_start_with_bos_when_the_tokenizer_defines_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut hf = Tokenizer::train_bpe(&docs(), 300).unwrap().hf().clone();
        hf.add_special_tokens([tokenizers::AddedToken::from("<s>", true)])
            .unwrap();
        let path = dir.path().join("with-bos.json");
        hf.save(&path, false).unwrap();
        let t = Tokenizer::load(&path).unwrap();
        let bos = t.bos_id().expect("<s> is a BOS");
        let out = dir.path().join("ds");
        std::fs::create_dir_all(&out).unwrap();
        let meta = write_dataset(&out, &docs(), &t, 512, 0.0, "test".into(), None).unwrap();
        assert_eq!(meta.bos_id, Some(bos));
        let ds = Dataset::open(&out).unwrap();
        let train = ds.train();
        assert_eq!(train[0], bos);
        assert_eq!(train.iter().filter(|&&id| id == bos).count(), 40);
        // Every BOS follows an EOS (the previous document's end), except the first.
        for (i, _) in train
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == bos)
            .skip(1)
        {
            assert_eq!(Some(train[i - 1]), meta.eos_id);
        }
        // Tokenizers without one read as before: no `bos_id` in meta.json.
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        write_dataset(
            &plain,
            &docs(),
            &Tokenizer::byte(),
            256,
            0.0,
            "t".into(),
            None,
        )
        .unwrap();
        let text = std::fs::read_to_string(plain.join("meta.json")).unwrap();
        assert!(!text.contains("bos_id"), "{text}");
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
