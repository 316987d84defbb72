//! The Hugging Face companions of a `tokenizer.json`: `tokenizer_config.json` and
//! `special_tokens_map.json` naming the BOS, EOS and padding tokens, and the same tokens as
//! `bos_token_id` / `eos_token_id` / `pad_token_id` for a model's `config.json`. Without them
//! `transformers.AutoTokenizer` loads a tokenizer with no BOS/EOS, and tools that condition on
//! one (lm-evaluation-harness's `prefix_token_id`) fail. The dataset stage writes them beside its
//! tokenizer; a model trained from scratch carries them in its folder.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";

/// Beginning-of-text spellings recognised in a loaded tokenizer (Llama 2, Llama 3, Gemma).
const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|bos|>"];

/// A special token: its text and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Special {
    pub text: String,
    pub id: u32,
}

/// The BOS, EOS and padding tokens of a tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specials {
    pub bos: Special,
    pub eos: Special,
    pub pad: Special,
}

/// The tokenizer's special tokens, when it has an end-of-text token: BOS is a usual BOS spelling
/// when the vocabulary has one, else the end-of-text token (GPT-2's convention, and the document
/// separator pollard's BPE reserves); padding is the end-of-text token.
pub fn specials(tok: &Tokenizer) -> Option<Specials> {
    let hf = tok.hf();
    let eos_id = tok.eos_id()?;
    let eos = Special {
        text: hf.id_to_token(eos_id)?,
        id: eos_id,
    };
    let bos = BOS_NAMES
        .iter()
        .find_map(|name| {
            hf.token_to_id(name).map(|id| Special {
                text: (*name).to_owned(),
                id,
            })
        })
        .unwrap_or_else(|| eos.clone());
    Some(Specials {
        bos,
        pad: eos.clone(),
        eos,
    })
}

/// `{bos_token_id, eos_token_id, pad_token_id}` for a model's `config.json`.
pub fn token_ids(s: &Specials) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("bos_token_id".into(), json!(s.bos.id));
    m.insert("eos_token_id".into(), json!(s.eos.id));
    m.insert("pad_token_id".into(), json!(s.pad.id));
    m
}

/// Writes `tokenizer_config.json` and `special_tokens_map.json` into `dir` when the tokenizer
/// has special tokens (a plain byte tokenizer has none, and gets neither file).
pub fn write_tokenizer_files(dir: &Path, tok: &Tokenizer) -> Result<()> {
    let Some(s) = specials(tok) else {
        return Ok(());
    };
    let map = json!({
        "bos_token": s.bos.text,
        "eos_token": s.eos.text,
        "pad_token": s.pad.text,
    });
    let mut cfg = map.clone();
    let extra = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        // The tokenizer.json has no post-processor: encoding adds no BOS (as the model was
        // trained); decoding keeps text as it is.
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1_000_000_000_000_000_000u64,
    });
    for (k, v) in extra.as_object().expect("a literal object") {
        cfg[k] = v.clone();
    }
    for (name, v) in [(TOKENIZER_CONFIG_FILE, cfg), (SPECIAL_TOKENS_FILE, map)] {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&v).expect("JSON values always serialize") + "\n";
        std::fs::write(&path, text).map_err(Error::io("write", &path))?;
    }
    Ok(())
}

/// The token that conditions a continuation with an empty context, as lm-evaluation-harness's
/// `prefix_token_id` picks it: the BOS of `dir/tokenizer_config.json`, else its EOS, else the
/// tokenizer's end-of-text token.
pub fn prefix_token(dir: &Path, tok: &Tokenizer) -> Option<u32> {
    let cfg: Option<Value> = std::fs::read_to_string(dir.join(TOKENIZER_CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let named = |key: &str| -> Option<u32> {
        let v = cfg.as_ref()?.get(key)?;
        // A token is a string or an AddedToken object `{ "content": ... }`.
        let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
        tok.hf().token_to_id(text)
    };
    named("bos_token")
        .or_else(|| named("eos_token"))
        .or_else(|| tok.eos_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trained_bpe_names_end_of_text_as_bos_eos_and_pad() {
        let docs = ["the cat sat on the mat", "a dog ran"];
        let tok = Tokenizer::train_bpe(&docs, 300).unwrap();
        let s = specials(&tok).unwrap();
        assert_eq!((s.bos.text.as_str(), s.bos.id), ("<|endoftext|>", 0));
        assert_eq!(s.eos, s.bos);
        assert_eq!(s.pad, s.bos);
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer_files(dir.path(), &tok).unwrap();
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["bos_token"], "<|endoftext|>");
        assert_eq!(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
        assert!(dir.path().join(SPECIAL_TOKENS_FILE).is_file());
        assert_eq!(prefix_token(dir.path(), &tok), Some(0));
        assert_eq!(
            Value::Object(token_ids(&s)),
            json!({"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
        );
    }

    #[test]
    fn the_byte_tokenizer_gets_no_special_token_files() {
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer_files(dir.path(), &Tokenizer::byte()).unwrap();
        assert!(!dir.path().join(TOKENIZER_CONFIG_FILE).exists());
        assert_eq!(prefix_token(dir.path(), &Tokenizer::byte()), None);
    }
}
