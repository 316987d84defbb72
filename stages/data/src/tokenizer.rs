//! Text -> token ids for the `dataset` stage: a byte-level BPE trained on the corpus, a
//! `tokenizer.json` loaded from disk, or plain bytes (256 ids) for the smallest tests. Every
//! kind saves as a valid Hugging Face `tokenizer.json`, which the dataset artifact carries and
//! the model artifacts copy.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder,
};

use crate::error::{Error, Result};

/// The end-of-text token a trained BPE reserves at id 0; documents are separated by it.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The smallest BPE vocabulary: the 256 byte symbols plus [`END_OF_TEXT`].
pub const MIN_BPE_VOCAB: usize = 257;

/// End-of-text spellings recognised in a loaded `tokenizer.json` (GPT-2, Llama 3, Llama 2, Gemma).
const EOS_NAMES: &[&str] = &[END_OF_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>"];

/// Beginning-of-text spellings recognised in a loaded `tokenizer.json` (Llama 2, Llama 3, Gemma,
/// Nemotron). Real models saw one before every document in training, so their logits on windows
/// without it are skewed.
const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|bos|>"];

/// Where a tokenizer came from; recorded in a dataset's `meta.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// One id per byte (ids 0..256 are the byte values), no end-of-text token.
    Byte,
    /// A byte-level BPE trained by pollard, with [`END_OF_TEXT`] at id 0.
    Bpe,
    /// Loaded from a user's `tokenizer.json`.
    File,
}

/// A tokenizer: encode, decode, vocabulary size, save as `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    kind: TokenizerKind,
    /// The Hugging Face tokenizer (for `Byte` it is the equivalent byte-level model, used for
    /// saving; encoding bytes takes a direct path that gives the same ids).
    hf: tokenizers::Tokenizer,
    eos: Option<u32>,
    bos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .field("eos", &self.eos)
            .field("bos", &self.bos)
            .finish()
    }
}

impl Tokenizer {
    /// The plain byte tokenizer: id = byte value, 256 ids, no end-of-text token.
    pub fn byte() -> Self {
        let hf = tokenizers::Tokenizer::from_str(&byte_tokenizer_json())
            .expect("the byte tokenizer's JSON is built from constants and always parses");
        Self {
            kind: TokenizerKind::Byte,
            hf,
            eos: None,
            bos: None,
        }
    }

    /// Trains a byte-level BPE (GPT-2 pre-tokenization, no prefix space) with `vocab_size`
    /// entries, [`END_OF_TEXT`] at id 0 and the 256 byte symbols at ids 1..=256, on `documents`.
    ///
    /// Deterministic: the same documents give the same `tokenizer.json` bytes (the trainer
    /// breaks count ties by pair ids, and ids follow the merge order). When the text admits
    /// fewer merges than asked, the vocabulary is smaller than `vocab_size`.
    pub fn train_bpe<S: AsRef<str> + Sync>(documents: &[S], vocab_size: usize) -> Result<Self> {
        if vocab_size < MIN_BPE_VOCAB {
            return Err(Error::VocabTooSmall {
                vocab: vocab_size,
                min: MIN_BPE_VOCAB,
            });
        }
        let train_err = |e: tokenizers::Error| Error::Train {
            documents: documents.len(),
            message: e.to_string(),
        };
        let byte_level = ByteLevel::new(false, true, true);
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut builder = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::default()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
        .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)))
        .build()
        .map_err(train_err)?;
        builder
            .train(&mut trainer, documents.iter().map(|d| d.as_ref()))
            .map_err(train_err)?;
        // Round-trip through JSON into the generic `tokenizers::Tokenizer` (model wrapper types).
        let json = builder.to_string(false).map_err(train_err)?;
        let hf = tokenizers::Tokenizer::from_str(&json).map_err(train_err)?;
        let eos = hf.token_to_id(END_OF_TEXT);
        Ok(Self {
            kind: TokenizerKind::Bpe,
            hf,
            eos,
            bos: None,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. The end-of-text token is found by its usual names.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
        let hf = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::TokenizerLoad {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let eos = EOS_NAMES.iter().find_map(|name| hf.token_to_id(name));
        let bos = BOS_NAMES
            .iter()
            .find_map(|name| hf.token_to_id(name))
            .filter(|&b| Some(b) != eos);
        Ok(Self {
            kind: TokenizerKind::File,
            hf,
            eos,
            bos,
        })
    }

    /// Loads a `tokenizer.json` that pollard wrote, keeping its kind (a dataset's tokenizer).
    pub fn load_as(path: &Path, kind: TokenizerKind) -> Result<Self> {
        let mut t = Self::load(path)?;
        t.kind = kind;
        if kind == TokenizerKind::Byte {
            t.eos = None;
            t.bos = None;
        }
        Ok(t)
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Number of ids, added tokens included; every id this tokenizer emits is below it.
    pub fn vocab_size(&self) -> usize {
        match self.kind {
            TokenizerKind::Byte => 256,
            _ => self.hf.get_vocab_size(true),
        }
    }

    /// The id that starts a document, if the tokenizer defines one (loaded tokenizers only).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The id that ends a document, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Token ids of `text` (no special tokens added: no BOS, no EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.kind {
            TokenizerKind::Byte => Ok(text.bytes().map(u32::from).collect()),
            _ => {
                let enc = self
                    .hf
                    .encode_fast(text, false)
                    .map_err(|e| Error::Tokenize {
                        op: "encode",
                        message: e.to_string(),
                    })?;
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// Token ids of many texts, in parallel on the current rayon pool.
    pub fn encode_batch<S: AsRef<str> + Send + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        match self.kind {
            TokenizerKind::Byte => Ok(texts
                .iter()
                .map(|t| t.as_ref().bytes().map(u32::from).collect())
                .collect()),
            _ => {
                let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
                let encs =
                    self.hf
                        .encode_batch_fast(inputs, false)
                        .map_err(|e| Error::Tokenize {
                            op: "encode",
                            message: e.to_string(),
                        })?;
                Ok(encs.iter().map(|e| e.get_ids().to_vec()).collect())
            }
        }
    }

    /// Text of `ids`; special tokens are kept, invalid UTF-8 is replaced (U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self.kind {
            TokenizerKind::Byte => {
                let bytes = ids
                    .iter()
                    .map(|&id| {
                        u8::try_from(id).map_err(|_| Error::Tokenize {
                            op: "decode",
                            message: format!("id {id} is not a byte (vocabulary 256)"),
                        })
                    })
                    .collect::<Result<Vec<u8>>>()?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => self.hf.decode(ids, false).map_err(|e| Error::Tokenize {
                op: "decode",
                message: e.to_string(),
            }),
        }
    }

    /// The `tokenizer.json` text (compact; deterministic for a given tokenizer).
    pub fn to_json(&self) -> Result<String> {
        self.hf.to_string(false).map_err(|e| Error::Tokenize {
            op: "serialize",
            message: e.to_string(),
        })
    }

    /// Writes `tokenizer.json` to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()?).map_err(Error::io("write", path))
    }

    /// The underlying Hugging Face tokenizer (for callers that need offsets or special tokens).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.hf
    }
}

/// GPT-2's reversible byte -> printable-char map, which the `ByteLevel` pre-tokenizer applies
/// before the model sees a byte: printable Latin-1 bytes map to themselves, the other 68 to
/// U+0100 onwards in byte order. (The crate keeps its copy private; a test checks they agree.)
fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        char::from(b)
    } else {
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + rank).expect("256..324 are valid scalar values")
    }
}

/// A `tokenizer.json` whose BPE has one entry per byte symbol, id = byte value, and no merges:
/// Hugging Face's encoder then gives exactly the raw bytes as ids.
fn byte_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0u8..=255)
        .map(|b| (byte_to_char(b).to_string(), serde_json::Value::from(b)))
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "The farmers that the baker sees walk to the river. Mira's cat is named Pip.\n\
                        Ünïcödé and emoji 🦀 survive a round trip.\n";

    #[test]
    fn byte_tokenizer_ids_are_the_bytes_and_its_json_agrees() {
        let t = Tokenizer::byte();
        let ids = t.encode(TEXT).unwrap();
        assert_eq!(ids, TEXT.bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(t.vocab_size(), 256);
        assert_eq!(t.decode(&ids).unwrap(), TEXT);
        // The saved tokenizer.json, loaded by Hugging Face's own encoder, gives the same ids for
        // every byte value (this also checks our byte -> char map against the crate's).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        t.save(&path).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        assert_eq!(loaded.vocab_size(), 256);
        assert_eq!(loaded.encode(TEXT).unwrap(), ids);
        let all: String = String::from_utf8_lossy(&(0u8..128).collect::<Vec<u8>>()).into_owned();
        assert_eq!(
            loaded.encode(&all).unwrap(),
            (0u32..128).collect::<Vec<_>>()
        );
        assert_eq!(loaded.decode(&ids).unwrap(), TEXT);
    }

    #[test]
    fn byte_decode_rejects_ids_above_255() {
        let err = Tokenizer::byte().decode(&[65, 300]).unwrap_err();
        assert!(err.to_string().contains("id 300"), "{err}");
    }

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| format!("the farmer {i} feeds the dogs. the dogs that the farmer feeds sleep near the river {}.", i % 7))
            .collect()
    }

    #[test]
    fn bpe_training_is_deterministic_and_round_trips() {
        let docs = corpus();
        let a = Tokenizer::train_bpe(&docs, 300).unwrap();
        let b = Tokenizer::train_bpe(&docs, 300).unwrap();
        assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
        assert_eq!(a.vocab_size(), 300);
        assert_eq!(a.eos_id(), Some(0));
        let ids = a.encode(&docs[3]).unwrap();
        assert!(
            ids.len() < docs[3].len() / 2,
            "merges should compress: {} ids for {} bytes",
            ids.len(),
            docs[3].len()
        );
        assert!(ids.iter().all(|&i| (i as usize) < a.vocab_size()));
        assert_eq!(a.decode(&ids).unwrap(), docs[3]);
        // Text the training never saw still encodes (byte fallback through the 256 symbols).
        let odd = "Zebra 🦀 ünïcödé";
        assert_eq!(a.decode(&a.encode(odd).unwrap()).unwrap(), odd);
        // Batch encoding agrees with one-by-one encoding.
        let batch = a.encode_batch(&docs[..5]).unwrap();
        for (d, ids) in docs[..5].iter().zip(&batch) {
            assert_eq!(&a.encode(d).unwrap(), ids);
        }
    }

    #[test]
    fn bpe_save_load_keeps_ids() {
        let docs = corpus();
        let t = Tokenizer::train_bpe(&docs, 280).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        t.save(&path).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        assert_eq!(loaded.eos_id(), Some(0));
        assert_eq!(loaded.vocab_size(), 280);
        assert_eq!(
            loaded.encode(&docs[9]).unwrap(),
            t.encode(&docs[9]).unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            t.to_json().unwrap()
        );
    }

    #[test]
    fn bpe_vocab_below_minimum_is_refused() {
        let err = Tokenizer::train_bpe(&corpus(), 256).unwrap_err();
        assert!(
            matches!(
                err,
                Error::VocabTooSmall {
                    vocab: 256,
                    min: 257
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bpe_vocab_is_capped_by_what_the_text_allows() {
        let t = Tokenizer::train_bpe(&["ab ab ab"], 1000).unwrap();
        assert!(
            t.vocab_size() < 1000 && t.vocab_size() >= MIN_BPE_VOCAB,
            "{}",
            t.vocab_size()
        );
    }

    #[test]
    fn loading_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Tokenizer::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("cannot load"),
            "{err}"
        );
        let missing = Tokenizer::load(&dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.json"), "{missing}");
    }
}
