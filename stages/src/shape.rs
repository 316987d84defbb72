//! A model's architecture as planning sees it: read from a Hugging Face `config.json`, passed
//! between stages as `describe()` JSON (`{"model": {...}}`) so that downstream kinds can count
//! parameters and estimate memory for a dry run without any weights.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, StageError};

/// The shape of a Llama-family decoder. `head_dim` is explicit because width pruning keeps it
/// while `hidden` shrinks (Minitron's 4B-Width has 32 x 128 != 3072).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    /// `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tied: bool,
}

fn field(cfg: &Value, path: &Path, name: &str) -> Result<Option<usize>> {
    match cfg.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| StageError::Config {
                path: path.to_path_buf(),
                field: name.into(),
                message: format!("expected a non-negative integer, found {v}"),
            }),
    }
}

fn required(cfg: &Value, path: &Path, name: &str) -> Result<usize> {
    field(cfg, path, name)?.ok_or_else(|| StageError::Config {
        path: path.to_path_buf(),
        field: name.into(),
        message: "missing".into(),
    })
}

impl ModelShape {
    /// Reads the shape from a parsed HF `config.json` (`path` only names it in errors).
    pub fn from_hf_config(cfg: &Value, path: &Path) -> Result<Self> {
        let hidden = required(cfg, path, "hidden_size")?;
        let heads = required(cfg, path, "num_attention_heads")?;
        let kv_heads = field(cfg, path, "num_key_value_heads")?.unwrap_or(heads);
        let head_dim = match field(cfg, path, "head_dim")? {
            Some(d) => d,
            None if heads > 0 && hidden % heads == 0 => hidden / heads,
            None => {
                return Err(StageError::Config {
                    path: path.to_path_buf(),
                    field: "head_dim".into(),
                    message: format!("missing, and hidden_size {hidden} is not divisible by num_attention_heads {heads}"),
                })
            }
        };
        let shape = Self {
            vocab: required(cfg, path, "vocab_size")?,
            hidden,
            ffn: required(cfg, path, "intermediate_size")?,
            heads,
            kv_heads,
            head_dim,
            layers: required(cfg, path, "num_hidden_layers")?,
            tied: cfg
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        shape
            .check()
            .map_err(|(field, message)| StageError::Config {
                path: path.to_path_buf(),
                field,
                message,
            })?;
        Ok(shape)
    }

    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
        let cfg: Value = serde_json::from_str(&text).map_err(|source| StageError::Json {
            path: path.clone(),
            source,
        })?;
        Self::from_hf_config(&cfg, &path)
    }

    /// Structural consistency: every size positive and heads a multiple of the KV groups.
    /// Returns the offending field (HF spelling) and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (name, v) in [
            ("vocab_size", self.vocab),
            ("hidden_size", self.hidden),
            ("intermediate_size", self.ffn),
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("num_hidden_layers", self.layers),
        ] {
            if v == 0 {
                return Err((name.into(), "must be positive".into()));
            }
        }
        if self.heads % self.kv_heads != 0 {
            return Err((
                "num_key_value_heads".into(),
                format!(
                    "num_attention_heads {} is not divisible by num_key_value_heads {}",
                    self.heads, self.kv_heads
                ),
            ));
        }
        Ok(())
    }

    /// Query heads per KV group.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Parameters of one decoder layer (two norms, attention, gated MLP; no biases).
    pub fn layer_params(&self) -> u64 {
        let (h, f) = (self.hidden as u64, self.ffn as u64);
        let q = (self.heads * self.head_dim) as u64;
        let kv = (self.kv_heads * self.head_dim) as u64;
        2 * h + h * q + 2 * h * kv + q * h + 3 * h * f
    }

    /// Embedding matrix plus an untied `lm_head`.
    pub fn embedding_params(&self) -> u64 {
        let e = (self.vocab * self.hidden) as u64;
        if self.tied {
            e
        } else {
            2 * e
        }
    }

    /// Decoder layers plus the final norm: what Minitron's "non-embedding parameters" counts.
    pub fn non_embedding_params(&self) -> u64 {
        self.layers as u64 * self.layer_params() + self.hidden as u64
    }

    pub fn params(&self) -> u64 {
        self.embedding_params() + self.non_embedding_params()
    }

    /// The `describe()` payload of a model artifact.
    pub fn describe(&self) -> Value {
        let mut m = serde_json::to_value(self).expect("a struct of integers always serializes");
        m["params"] = self.params().into();
        m["non_embedding_params"] = self.non_embedding_params().into();
        serde_json::json!({ "model": m })
    }

    /// Reads a shape back from an upstream `describe()` payload (`{"model": {...}}`); the
    /// derived counts are ignored.
    pub fn from_description(v: &Value) -> Option<Self> {
        let m = v.get("model")?;
        let get = |k: &str| m.get(k).and_then(Value::as_u64).map(|n| n as usize);
        Some(Self {
            vocab: get("vocab")?,
            hidden: get("hidden")?,
            ffn: get("ffn")?,
            heads: get("heads")?,
            kv_heads: get("kv_heads")?,
            head_dim: get("head_dim")?,
            layers: get("layers")?,
            tied: m.get("tied").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// Writes these sizes into an HF config object, keeping every other field (rope, eps...).
    pub fn write_into(&self, cfg: &mut serde_json::Map<String, Value>) {
        cfg.insert("vocab_size".into(), self.vocab.into());
        cfg.insert("hidden_size".into(), self.hidden.into());
        cfg.insert("intermediate_size".into(), self.ffn.into());
        cfg.insert("num_attention_heads".into(), self.heads.into());
        cfg.insert("num_key_value_heads".into(), self.kv_heads.into());
        cfg.insert("head_dim".into(), self.head_dim.into());
        cfg.insert("num_hidden_layers".into(), self.layers.into());
        cfg.insert("tie_word_embeddings".into(), self.tied.into());
    }
}

/// Bytes per element of a weight dtype name (`f32`, `bf16`, `f16`).
pub fn dtype_bytes(dtype: &str) -> u64 {
    match dtype {
        "bf16" | "f16" => 2,
        _ => 4,
    }
}

/// Memory estimates for a stage's `resources()`: weights, optimizer state and activations.
pub mod memory {
    use super::ModelShape;

    /// Bytes to hold the weights.
    pub fn weights(s: &ModelShape, bytes: u64) -> u64 {
        s.params() * bytes
    }

    /// Activations kept for the backward pass of one micro-batch: per layer the residual,
    /// norms, q/k/v/o and attention's row log-sum-exp (f32; attention is blockwise, so no
    /// `seq x seq` probabilities are kept), the MLP's gate/up/act/product, and the logits with
    /// their softmax and gradient; plus the working set of one attention block (its f32 scores,
    /// their exponentials and gradient). A coarse upper estimate (no recomputation).
    pub fn activations(s: &ModelShape, micro_batch: u64, seq: u64, bytes: u64) -> u64 {
        let tokens = micro_batch * seq;
        let h = s.hidden as u64;
        let q = (s.heads * s.head_dim) as u64;
        let kv = (s.kv_heads * s.head_dim) as u64;
        let per_layer = tokens * (4 * h + 2 * q + 2 * kv + 4 * s.ffn as u64) * bytes
            + micro_batch * s.heads as u64 * seq * 4;
        let logits = tokens * s.vocab as u64 * 3 * bytes;
        let rows =
            pollard_model::ops::blockwise::block_rows(micro_batch as usize, s.heads, seq as usize)
                as u64;
        let attention_block = 3 * micro_batch * s.heads as u64 * rows.min(seq) * seq * 4;
        s.layers as u64 * per_layer + logits + attention_block
    }

    /// Forward only (scoring, evaluation, a teacher): weights plus one layer's working set and
    /// the logits, since nothing is kept for backward.
    pub fn inference(s: &ModelShape, micro_batch: u64, seq: u64, bytes: u64) -> u64 {
        let one_layer = ModelShape { layers: 1, ..*s };
        weights(s, bytes) + activations(&one_layer, micro_batch, seq, bytes)
    }

    /// Training: weights and gradients in the compute dtype, the two f32 AdamW moments, and for
    /// bf16/f16 the f32 master weights; plus activations.
    pub fn training(s: &ModelShape, micro_batch: u64, seq: u64, bytes: u64) -> u64 {
        let master = if bytes < 4 { 4 } else { 0 };
        2 * weights(s, bytes) + s.params() * (8 + master) + activations(s, micro_batch, seq, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_8b() -> ModelShape {
        ModelShape {
            vocab: 128256,
            hidden: 4096,
            ffn: 14336,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            layers: 32,
            tied: false,
        }
    }

    #[test]
    fn llama_31_8b_has_8b_params() {
        // Meta's published count for Llama-3.1-8B is 8,030,261,248.
        assert_eq!(llama_8b().params(), 8_030_261_248);
    }

    #[test]
    fn minitron_4b_width_has_4_5b_params() {
        let s = ModelShape {
            hidden: 3072,
            ffn: 9216,
            ..llama_8b()
        };
        let p = s.params() as f64 / 1e9;
        assert!((4.4..4.6).contains(&p), "{p}");
        let ne = s.non_embedding_params() as f64 / 1e9;
        assert!((3.6..3.8).contains(&ne), "{ne}");
    }

    #[test]
    fn description_round_trips() {
        let s = llama_8b();
        assert_eq!(ModelShape::from_description(&s.describe()), Some(s));
    }

    #[test]
    fn config_without_head_dim_derives_it_and_bad_groups_are_named() {
        let cfg = serde_json::json!({"vocab_size": 10, "hidden_size": 64, "intermediate_size": 100,
            "num_attention_heads": 8, "num_key_value_heads": 3, "num_hidden_layers": 2});
        let err = ModelShape::from_hf_config(&cfg, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_key_value_heads") && err.contains("not divisible"),
            "{err}"
        );
        let cfg = serde_json::json!({"vocab_size": 10, "hidden_size": 64, "intermediate_size": 100,
            "num_attention_heads": 8, "num_hidden_layers": 2});
        let s = ModelShape::from_hf_config(&cfg, Path::new("c.json")).unwrap();
        assert_eq!((s.head_dim, s.kv_heads), (8, 8));
    }
}
