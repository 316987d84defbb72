//! A model's architecture as planning sees it: read from a Hugging Face `config.json`, passed
//! between stages as `describe()` JSON (`{"model": {...}}`) so that downstream kinds can count
//! parameters and estimate memory for a dry run without any weights.

use std::path::Path;

use pollard_model::{Family, MlpKind, NormKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, StageError};

/// The shape of a decoder of any supported family. `head_dim` is explicit because width pruning
/// keeps it while `hidden` shrinks (Minitron's 4B-Width has 32 x 128 != 3072); `family` decides
/// which tensors a layer has (gate or not, norm biases, q/k norms).
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
    /// Omitted (Llama) in `describe()` output, so Llama plans read as before.
    #[serde(default, skip_serializing_if = "is_llama")]
    pub family: Family,
}

fn is_llama(f: &Family) -> bool {
    *f == Family::Llama
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
        let family = match cfg.get("model_type").and_then(Value::as_str) {
            None | Some("llama") | Some("mistral") => Family::Llama,
            Some("nemotron") => Family::Nemotron,
            Some("qwen3") => Family::Qwen3,
            Some(other) => {
                return Err(StageError::Config {
                    path: path.to_path_buf(),
                    field: "model_type".into(),
                    message: format!(
                        "unsupported architecture {other:?} (supported: llama, mistral, nemotron, qwen3)"
                    ),
                })
            }
        };
        let shape = Self {
            family,
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
            if v > max_size(name) {
                return Err((
                    name.into(),
                    format!("must be at most {}, got {v}", max_size(name)),
                ));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
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

    /// Parameters of one norm over the hidden size (a LayerNorm has a bias too).
    fn norm_params(&self) -> u64 {
        match self.family.norm() {
            NormKind::Rms => self.hidden as u64,
            NormKind::LayerNorm1p => mul(2, self.hidden as u64),
        }
    }

    /// Parameters of one decoder layer (two norms, attention with its q/k norms, the MLP).
    /// Saturating like every count here: a shape read from an unchecked source cannot wrap
    /// around to a small number (sizes past [`max_size`] are refused by `check`).
    pub fn layer_params(&self) -> u64 {
        let (h, f) = (self.hidden as u64, self.ffn as u64);
        let q = mul(self.heads as u64, self.head_dim as u64);
        let kv = mul(self.kv_heads as u64, self.head_dim as u64);
        let mlp = match self.family.mlp() {
            MlpKind::GatedSilu => 3,
            MlpKind::Relu2 => 2,
        };
        let qk = if self.family.qk_norm() {
            mul(2, self.head_dim as u64)
        } else {
            0
        };
        sum(&[
            mul(2, self.norm_params()),
            mul(h, q),
            mul(mul(2, h), kv),
            mul(q, h),
            qk,
            mul(mul(mlp, h), f),
        ])
    }

    /// Embedding matrix plus an untied `lm_head`.
    pub fn embedding_params(&self) -> u64 {
        let e = mul(self.vocab as u64, self.hidden as u64);
        if self.tied {
            e
        } else {
            mul(2, e)
        }
    }

    /// Decoder layers plus the final norm: what Minitron's "non-embedding parameters" counts.
    pub fn non_embedding_params(&self) -> u64 {
        mul(self.layers as u64, self.layer_params()).saturating_add(self.norm_params())
    }

    pub fn params(&self) -> u64 {
        self.embedding_params()
            .saturating_add(self.non_embedding_params())
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
            family: m
                .get("family")
                .and_then(|f| serde_json::from_value(f.clone()).ok())
                .unwrap_or_default(),
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

/// The largest size a manifest or a checkpoint's config may give each dimension. Far above any
/// published model (hidden 16,384, ffn 53,248, vocabulary 262,144, 126 layers), low enough
/// that every estimate below fits in a u64 and an absurd value is refused at validation
/// instead of allocating until the machine kills the process.
pub fn max_size(name: &str) -> usize {
    match name {
        "vocab" | "vocab_size" => 1 << 24,
        "layers" | "num_hidden_layers" => 1 << 14,
        "heads" | "kv_heads" | "num_attention_heads" | "num_key_value_heads" => 1 << 14,
        "batch" | "micro_batch" | "seq_len" => 1 << 24,
        _ => 1 << 20,
    }
}

/// `field: must be at most N, got V` for each size past [`max_size`] (`name` is the last part
/// of the field).
pub fn check_sizes(
    fields: &[(&str, Option<usize>)],
    prefix: &str,
    errs: &mut Vec<pollard_engine::ParamError>,
) {
    for &(name, v) in fields {
        if let Some(v) = v.filter(|&v| v > max_size(name)) {
            errs.push(pollard_engine::ParamError::new(
                format!("{prefix}{name}"),
                format!("must be at most {}, got {v}", max_size(name)),
            ));
        }
    }
}

/// Bytes per element of a weight dtype name (`f32`, `bf16`, `f16`).
pub fn dtype_bytes(dtype: &str) -> u64 {
    match dtype {
        "bf16" | "f16" => 2,
        _ => 4,
    }
}

fn mul(a: u64, b: u64) -> u64 {
    a.saturating_mul(b)
}

fn sum(xs: &[u64]) -> u64 {
    xs.iter().fold(0u64, |a, &b| a.saturating_add(b))
}

/// Memory estimates for a stage's `resources()`: weights, optimizer state and activations.
/// Saturating: an estimate too large for a u64 stays the largest u64, which no machine meets.
pub mod memory {
    use super::{mul, sum, ModelShape};

    /// Bytes to hold the weights.
    pub fn weights(s: &ModelShape, bytes: u64) -> u64 {
        mul(s.params(), bytes)
    }

    /// Activations kept for the backward pass of one micro-batch: per layer the residual,
    /// norms, q/k/v/o and attention's row log-sum-exp (f32; attention is blockwise, so no
    /// `seq x seq` probabilities are kept), the MLP's gate/up/act/product, and the logits with
    /// their softmax and gradient; plus the working set of one attention block (its f32 scores,
    /// their exponentials and gradient). A coarse upper estimate (no recomputation).
    pub fn activations(s: &ModelShape, micro_batch: u64, seq: u64, bytes: u64) -> u64 {
        let tokens = mul(micro_batch, seq);
        let h = s.hidden as u64;
        let q = mul(s.heads as u64, s.head_dim as u64);
        let kv = mul(s.kv_heads as u64, s.head_dim as u64);
        let width = sum(&[mul(4, h), mul(2, q), mul(2, kv), mul(4, s.ffn as u64)]);
        // Row log-sum-exp of attention, f32.
        let lse = mul(mul(mul(micro_batch, s.heads as u64), seq), 4);
        let per_layer = mul(mul(tokens, width), bytes).saturating_add(lse);
        let logits = mul(mul(mul(tokens, s.vocab as u64), 3), bytes);
        let rows =
            pollard_model::ops::blockwise::block_rows(micro_batch as usize, s.heads, seq as usize)
                as u64;
        let attention_block = mul(
            mul(mul(3, micro_batch), s.heads as u64),
            mul(mul(rows.min(seq), seq), 4),
        );
        sum(&[mul(s.layers as u64, per_layer), logits, attention_block])
    }

    /// Forward only (scoring, evaluation, a teacher): weights plus one layer's working set and
    /// the logits, since nothing is kept for backward.
    pub fn inference(s: &ModelShape, micro_batch: u64, seq: u64, bytes: u64) -> u64 {
        let one_layer = ModelShape { layers: 1, ..*s };
        weights(s, bytes).saturating_add(activations(&one_layer, micro_batch, seq, bytes))
    }

    /// Training: weights and gradients in the compute dtype, the two f32 AdamW moments, and for
    /// bf16/f16 the f32 master weights; plus activations.
    pub fn training(s: &ModelShape, micro_batch: u64, seq: u64, bytes: u64) -> u64 {
        let master = if bytes < 4 { 4 } else { 0 };
        sum(&[
            mul(2, weights(s, bytes)),
            mul(s.params(), 8 + master),
            activations(s, micro_batch, seq, bytes),
        ])
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
            family: Family::Llama,
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
    fn huge_arch_sizes_saturate_instead_of_wrapping() {
        let s = ModelShape {
            hidden: usize::MAX / 2,
            ffn: usize::MAX,
            ..llama_8b()
        };
        assert_eq!(memory::training(&s, 8, 4096, 4), u64::MAX);
        assert!(s.check().unwrap_err().1.starts_with("must be at most"));
    }

    #[test]
    fn description_round_trips() {
        for family in [Family::Llama, Family::Nemotron, Family::Qwen3] {
            let s = ModelShape {
                family,
                ..llama_8b()
            };
            assert_eq!(ModelShape::from_description(&s.describe()), Some(s));
        }
    }

    /// Nemotron-4 15B (hidden 6144, MLP 24576, 48 heads / 8 KV, 32 layers, vocab 256000) has
    /// about 15.6B parameters: its MLP has no gate and its norms have biases.
    #[test]
    fn nemotron_15b_has_15_6b_params_and_counts_match_the_model_config() {
        let s = ModelShape {
            vocab: 256000,
            hidden: 6144,
            ffn: 24576,
            heads: 48,
            kv_heads: 8,
            head_dim: 128,
            layers: 32,
            tied: false,
            family: Family::Nemotron,
        };
        let p = s.params() as f64 / 1e9;
        assert!((15.5..15.7).contains(&p), "{p}");
        // The same count as the model layer's config, for every family.
        for family in [Family::Llama, Family::Nemotron, Family::Qwen3] {
            let s = ModelShape {
                family,
                vocab: 50,
                hidden: 16,
                ffn: 24,
                heads: 4,
                kv_heads: 2,
                head_dim: 6,
                layers: 2,
                tied: false,
            };
            let cfg = pollard_model::LlamaConfig::new(50, 16, 24, 2, 4, 2, 6).with_family(family);
            assert_eq!(s.params(), cfg.param_count().total(), "{family:?}");
        }
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
