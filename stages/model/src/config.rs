//! `config.json` of a Hugging Face decoder checkpoint (Llama, Mistral, Nemotron, Qwen3) ->
//! [`LlamaConfig`] (validated), and back.
//!
//! The families differ only in data: which MLP ([`MlpKind`]), which norm ([`NormKind`]), how much
//! of each head RoPE rotates, and whether queries/keys are normalised per head. The one forward
//! pass reads these fields; nothing else knows the family.
//!
//! Both config styles are accepted: transformers 5's `rope_parameters` object and the classic
//! top-level `rope_theta` + `rope_scaling` (+ `partial_rotary_factor`) of released checkpoints.
//! Fields are read one by one (not with a derived `Deserialize`) so that every error names the
//! field and the value.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};
use crate::names::{self, LayerTensor};

/// A model family: fixes the class transformers loads and the per-family choices below.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `LlamaForCausalLM` / `MistralForCausalLM`: SwiGLU, RMSNorm, full RoPE.
    #[default]
    Llama,
    /// `NemotronForCausalLM`: squared-ReLU MLP, LayerNorm1p with bias, partial RoPE.
    Nemotron,
    /// `Qwen3ForCausalLM`: SwiGLU, RMSNorm, per-head q/k RMSNorm before RoPE.
    Qwen3,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Nemotron => "nemotron",
            Family::Qwen3 => "qwen3",
        }
    }

    pub fn mlp(self) -> MlpKind {
        match self {
            Family::Nemotron => MlpKind::Relu2,
            _ => MlpKind::GatedSilu,
        }
    }

    pub fn norm(self) -> NormKind {
        match self {
            Family::Nemotron => NormKind::LayerNorm1p,
            _ => NormKind::Rms,
        }
    }

    pub fn qk_norm(self) -> bool {
        self == Family::Qwen3
    }

    /// The `hidden_act` transformers' class uses for this family's MLP.
    pub fn hidden_act(self) -> &'static str {
        match self.mlp() {
            MlpKind::GatedSilu => "silu",
            MlpKind::Relu2 => "relu2",
        }
    }

    /// The config key of the norms' epsilon.
    pub fn eps_key(self) -> &'static str {
        match self {
            Family::Nemotron => "norm_eps",
            _ => "rms_norm_eps",
        }
    }
}

/// The MLP of every layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `down(silu(gate(x)) * up(x))`.
    #[default]
    GatedSilu,
    /// `down(relu(up(x))^2)`: no gate.
    Relu2,
}

/// The norm before attention, before the MLP and at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `x / sqrt(mean(x^2) + eps) * w`.
    #[default]
    Rms,
    /// `(x - mean) / sqrt(var + eps) * (1 + w) + b` (the stored weight is gamma - 1).
    LayerNorm1p,
}

fn one() -> f64 {
    1.0
}

/// How RoPE frequencies are derived from `rope_theta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/head_dim)`.
    Default,
    /// Positions divided by `factor` (transformers' "linear").
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// A validated Llama-family architecture. All sizes are resolved (e.g. `head_dim` is explicit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `"llama"`, `"mistral"`, `"nemotron"` or `"qwen3"` (the `model_type` field).
    pub model_type: String,
    #[serde(default)]
    pub family: Family,
    #[serde(default)]
    pub mlp: MlpKind,
    #[serde(default)]
    pub norm: NormKind,
    /// Per-head RMSNorm of queries and keys (over `head_dim`) before RoPE.
    #[serde(default)]
    pub qk_norm: bool,
    /// The leading fraction of each head's dims that RoPE rotates; the rest pass through.
    #[serde(default = "one")]
    pub partial_rotary_factor: f64,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head width; may differ from `hidden_size / num_attention_heads` (pruned models).
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    /// Epsilon of every norm (`rms_norm_eps`, or `norm_eps` for Nemotron).
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Mistral-style sliding-window attention: a query sees at most this many keys (itself included).
    pub sliding_window: Option<usize>,
    /// The checkpoint's declared dtype (`dtype` or `torch_dtype`), e.g. "float32", "bfloat16".
    pub torch_dtype: Option<String>,
    /// Std of the normal initialiser used by [`crate::Llama::init`] (`initializer_range`, default 0.02).
    pub initializer_range: f64,
    /// Every other field of the original file (token ids, `transformers_version`, ...), written back
    /// unchanged by [`LlamaConfig::to_hf_json`].
    #[serde(default)]
    pub extra: BTreeMap<String, Value>,
}

/// Parameter counts of a model by part (exact integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCount {
    /// `model.embed_tokens.weight`.
    pub embed: u64,
    /// q, k, v, o projections over all layers.
    pub attention: u64,
    /// gate (when gated), up, down projections over all layers.
    pub mlp: u64,
    /// All norm weights and biases (2 per layer + the final norm, plus q/k norms).
    pub norms: u64,
    /// `lm_head.weight`; 0 when tied to the embedding.
    pub lm_head: u64,
}

impl ParamCount {
    pub fn total(&self) -> u64 {
        self.embed + self.attention + self.mlp + self.norms + self.lm_head
    }
}

/// Keys this module interprets; everything else goes to `extra`.
const KNOWN: &[&str] = &[
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "norm_eps",
    "partial_rotary_factor",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "sliding_window",
    "torch_dtype",
    "dtype",
    "initializer_range",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "pretraining_tp",
];

fn get_usize(m: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
            ModelError::config(key, format!("expected a non-negative integer, got {v}"))
        }),
    }
}

fn req_usize(m: &Map<String, Value>, key: &str) -> Result<usize> {
    let v = get_usize(m, key)?.ok_or_else(|| ModelError::config(key, "missing"))?;
    if v == 0 {
        return Err(ModelError::config(key, "must be at least 1, got 0"));
    }
    Ok(v)
}

fn get_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::config(key, format!("expected a number, got {v}"))),
    }
}

fn get_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ModelError::config(key, format!("expected true or false, got {v}"))),
    }
}

fn get_str<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| ModelError::config(key, format!("expected a string, got {v}"))),
    }
}

/// Reads a RoPE scaling object (`rope_parameters` or `rope_scaling`); `field` names it in errors.
fn parse_scaling(obj: &Map<String, Value>, field: &str) -> Result<RopeScaling> {
    let f = |k: &str| format!("{field}.{k}");
    let ty = match obj.get("rope_type").or_else(|| obj.get("type")) {
        None | Some(Value::Null) => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(v) => {
            return Err(ModelError::config(
                f("rope_type"),
                format!("expected a string, got {v}"),
            ))
        }
    };
    let num = |k: &str| -> Result<f64> {
        get_f64(obj, k)
            .map_err(|_| ModelError::config(f(k), "expected a number"))?
            .ok_or_else(|| ModelError::config(f(k), "missing"))
    };
    match ty {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => {
            let s = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: get_usize(
                    obj,
                    "original_max_position_embeddings",
                )
                .map_err(|_| {
                    ModelError::config(f("original_max_position_embeddings"), "expected an integer")
                })?
                .ok_or_else(|| {
                    ModelError::config(f("original_max_position_embeddings"), "missing")
                })?,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = &s
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(ModelError::config(
                        f("high_freq_factor"),
                        format!(
                            "must exceed low_freq_factor ({high_freq_factor} <= {low_freq_factor})"
                        ),
                    ));
                }
            }
            Ok(s)
        }
        other => Err(ModelError::config(
            f("rope_type"),
            format!("unsupported rope type {other:?} (supported: default, linear, llama3)"),
        )),
    }
}

impl LlamaConfig {
    /// Reads and validates `config.json` (either style). Errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&value).map_err(|e| match e {
            ModelError::Config { field, msg, .. } => ModelError::Config {
                path: Some(path.to_owned()),
                field,
                msg,
            },
            other => other,
        })
    }

    /// Validates a parsed `config.json`.
    pub fn from_json(value: &Value) -> Result<Self> {
        let m = value
            .as_object()
            .ok_or_else(|| ModelError::config("<root>", "expected a JSON object"))?;
        let model_type = get_str(m, "model_type")?.unwrap_or("llama").to_owned();
        let family = match model_type.as_str() {
            "llama" | "mistral" => Family::Llama,
            "nemotron" => Family::Nemotron,
            "qwen3" => Family::Qwen3,
            _ => {
                return Err(ModelError::config(
                    "model_type",
                    format!("unsupported architecture {model_type:?} (supported: llama, mistral, nemotron, qwen3)"),
                ))
            }
        };
        let class = hf_class(&model_type);
        if let Some(archs) = m.get("architectures").and_then(Value::as_array) {
            for a in archs {
                let a = a.as_str().unwrap_or("");
                if a != class {
                    return Err(ModelError::config(
                        "architectures",
                        format!("unsupported architecture {a:?} for model_type {model_type:?} (expected {class})"),
                    ));
                }
            }
        }
        if let Some(act) = get_str(m, "hidden_act")? {
            if act != family.hidden_act() {
                return Err(ModelError::config(
                    "hidden_act",
                    format!(
                        "unsupported activation {act:?} for model_type {model_type:?} (only {})",
                        family.hidden_act()
                    ),
                ));
            }
        }
        if get_bool(m, "use_sliding_window")? == Some(true) {
            return Err(ModelError::config(
                "use_sliding_window",
                "sliding-window attention is supported for mistral only (expected false)",
            ));
        }
        for key in ["attention_bias", "mlp_bias"] {
            if get_bool(m, key)? == Some(true) {
                return Err(ModelError::config(
                    key,
                    "biases are not supported (expected false)",
                ));
            }
        }
        if let Some(tp) = get_usize(m, "pretraining_tp")? {
            if tp != 1 {
                return Err(ModelError::config(
                    "pretraining_tp",
                    format!("only 1 is supported, got {tp}"),
                ));
            }
        }

        let hidden_size = req_usize(m, "hidden_size")?;
        let num_attention_heads = req_usize(m, "num_attention_heads")?;
        let num_key_value_heads =
            get_usize(m, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must divide num_attention_heads ({num_attention_heads})"
                ),
            ));
        }
        let head_dim = match get_usize(m, "head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(ModelError::config(
                        "head_dim",
                        format!("missing, and hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 {
            return Err(ModelError::config("head_dim", "must be positive, got 0"));
        }

        // RoPE: transformers 5 style first, then the classic top-level fields.
        let (rope_theta, rope_scaling) = match m.get("rope_parameters") {
            Some(Value::Object(rp)) => {
                let theta = get_f64(rp, "rope_theta")
                    .map_err(|_| {
                        ModelError::config("rope_parameters.rope_theta", "expected a number")
                    })?
                    .or(get_f64(m, "rope_theta")?)
                    .ok_or_else(|| ModelError::config("rope_parameters.rope_theta", "missing"))?;
                (theta, parse_scaling(rp, "rope_parameters")?)
            }
            Some(Value::Null) | None => {
                let theta = get_f64(m, "rope_theta")?.unwrap_or(10000.0);
                let scaling = match m.get("rope_scaling") {
                    None | Some(Value::Null) => RopeScaling::Default,
                    Some(Value::Object(rs)) => parse_scaling(rs, "rope_scaling")?,
                    Some(v) => {
                        return Err(ModelError::config(
                            "rope_scaling",
                            format!("expected an object or null, got {v}"),
                        ))
                    }
                };
                (theta, scaling)
            }
            Some(v) => {
                return Err(ModelError::config(
                    "rope_parameters",
                    format!("expected an object, got {v}"),
                ))
            }
        };
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(ModelError::config(
                "rope_theta",
                format!("must be positive, got {rope_theta}"),
            ));
        }

        let partial_rotary_factor = match m.get("rope_parameters") {
            Some(Value::Object(rp)) if rp.contains_key("partial_rotary_factor") => {
                get_f64(rp, "partial_rotary_factor").map_err(|_| {
                    ModelError::config("rope_parameters.partial_rotary_factor", "expected a number")
                })?
            }
            _ => get_f64(m, "partial_rotary_factor")?,
        }
        .unwrap_or(1.0);
        if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
            return Err(ModelError::config(
                "partial_rotary_factor",
                format!("must be in (0, 1], got {partial_rotary_factor}"),
            ));
        }
        let rot = rotary_dim(head_dim, partial_rotary_factor);
        if rot == 0 || !rot.is_multiple_of(2) {
            return Err(ModelError::config(
                "head_dim",
                format!("RoPE rotates pairs: head_dim {head_dim} x partial_rotary_factor {partial_rotary_factor} = {rot} dims, which must be even and positive"),
            ));
        }

        let eps_key = family.eps_key();
        let rms_norm_eps = get_f64(m, eps_key)?.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(ModelError::config(
                eps_key,
                format!("must be >= 0, got {rms_norm_eps}"),
            ));
        }
        let torch_dtype = match get_str(m, "dtype")? {
            Some(d) => Some(d.to_owned()),
            None => get_str(m, "torch_dtype")?.map(str::to_owned),
        };
        let sliding_window = match model_type.as_str() {
            "mistral" => get_usize(m, "sliding_window")?,
            _ => None,
        };
        let extra = m
            .iter()
            .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(LlamaConfig {
            model_type,
            family,
            mlp: family.mlp(),
            norm: family.norm(),
            qk_norm: family.qk_norm(),
            partial_rotary_factor,
            vocab_size: req_usize(m, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(m, "intermediate_size")?,
            num_hidden_layers: req_usize(m, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: get_usize(m, "max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: get_bool(m, "tie_word_embeddings")?.unwrap_or(false),
            sliding_window,
            torch_dtype,
            initializer_range: get_f64(m, "initializer_range")?.unwrap_or(0.02),
            extra,
        })
    }

    /// A config for a fresh model (no file), e.g. for [`crate::Llama::init`] and tests.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        head_dim: usize,
    ) -> Self {
        LlamaConfig {
            model_type: "llama".into(),
            family: Family::Llama,
            mlp: MlpKind::GatedSilu,
            norm: NormKind::Rms,
            qk_norm: false,
            partial_rotary_factor: 1.0,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Default,
            tie_word_embeddings: false,
            sliding_window: None,
            torch_dtype: Some("float32".into()),
            initializer_range: 0.02,
            extra: BTreeMap::new(),
        }
    }

    /// This config as another family with the family's MLP, norm and q/k-norm choices (for a
    /// model built from scratch; a loaded checkpoint gets them from its `model_type`).
    pub fn with_family(mut self, family: Family) -> Self {
        self.family = family;
        self.model_type = family.name().into();
        self.mlp = family.mlp();
        self.norm = family.norm();
        self.qk_norm = family.qk_norm();
        self
    }

    /// `config.json` as transformers' class for the family reads it. RoPE settings are written in
    /// the classic top-level style (`rope_theta`, `rope_scaling`, `partial_rotary_factor`), which
    /// transformers 4 and 5 both read; `head_dim` is always explicit because pruning can make it
    /// differ from hidden/heads.
    pub fn to_hf_json(&self) -> Value {
        let mut m: Map<String, Value> = self.extra.clone().into_iter().collect();
        m.insert(
            "architectures".into(),
            Value::from(vec![hf_class(&self.model_type)]),
        );
        m.insert("model_type".into(), self.model_type.clone().into());
        m.insert("vocab_size".into(), self.vocab_size.into());
        m.insert("hidden_size".into(), self.hidden_size.into());
        m.insert("intermediate_size".into(), self.intermediate_size.into());
        m.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
        m.insert(
            "num_attention_heads".into(),
            self.num_attention_heads.into(),
        );
        m.insert(
            "num_key_value_heads".into(),
            self.num_key_value_heads.into(),
        );
        m.insert("head_dim".into(), self.head_dim.into());
        m.insert(
            "max_position_embeddings".into(),
            self.max_position_embeddings.into(),
        );
        m.insert(self.family.eps_key().into(), self.rms_norm_eps.into());
        m.insert("rope_theta".into(), self.rope_theta.into());
        if self.partial_rotary_factor != 1.0 || self.family == Family::Nemotron {
            m.insert(
                "partial_rotary_factor".into(),
                self.partial_rotary_factor.into(),
            );
        }
        let scaling = match &self.rope_scaling {
            RopeScaling::Default => Value::Null,
            s => serde_json::to_value(s).expect("RopeScaling serialises to a JSON object"),
        };
        m.insert("rope_scaling".into(), scaling);
        m.insert(
            "tie_word_embeddings".into(),
            self.tie_word_embeddings.into(),
        );
        m.insert("hidden_act".into(), self.family.hidden_act().into());
        m.insert("attention_bias".into(), false.into());
        if self.family != Family::Qwen3 {
            m.insert("mlp_bias".into(), false.into());
        }
        m.insert("initializer_range".into(), self.initializer_range.into());
        if self.model_type == "mistral" {
            m.insert(
                "sliding_window".into(),
                self.sliding_window.map(Value::from).unwrap_or(Value::Null),
            );
        }
        if let Some(d) = &self.torch_dtype {
            // transformers 5 reads `dtype`, transformers 4 `torch_dtype`: write both.
            m.insert("dtype".into(), d.clone().into());
            m.insert("torch_dtype".into(), d.clone().into());
        }
        Value::Object(m)
    }

    /// Number of query heads that share one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Exact parameter counts by part.
    pub fn param_count(&self) -> ParamCount {
        let (v, h, i, l) = (
            self.vocab_size as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.num_hidden_layers as u64,
        );
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let mlp_mats = match self.mlp {
            MlpKind::GatedSilu => 3,
            MlpKind::Relu2 => 2,
        };
        let per_norm = match self.norm {
            NormKind::Rms => h,
            NormKind::LayerNorm1p => 2 * h,
        };
        let qk = if self.qk_norm {
            2 * self.head_dim as u64
        } else {
            0
        };
        ParamCount {
            embed: v * h,
            attention: l * (h * q + 2 * h * kv + q * h),
            mlp: l * mlp_mats * h * i,
            norms: (2 * l + 1) * per_norm + l * qk,
            lm_head: if self.tie_word_embeddings { 0 } else { v * h },
        }
    }

    /// Every tensor of a checkpoint with this config, in HF naming, with its shape
    /// (`[out_features, in_features]` for linear weights). Sorted by name.
    pub fn expected_tensors(&self) -> BTreeMap<String, Vec<usize>> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let d = self.head_dim;
        let bias = self.norm == NormKind::LayerNorm1p;
        let mut t = BTreeMap::new();
        t.insert(names::EMBED.to_owned(), vec![self.vocab_size, h]);
        t.insert(names::FINAL_NORM.to_owned(), vec![h]);
        if bias {
            t.insert(names::FINAL_NORM_BIAS.to_owned(), vec![h]);
        }
        if !self.tie_word_embeddings {
            t.insert(names::LM_HEAD.to_owned(), vec![self.vocab_size, h]);
        }
        for l in 0..self.num_hidden_layers {
            for lt in LayerTensor::ALL {
                let shape = match lt {
                    LayerTensor::AttnNorm | LayerTensor::MlpNorm => vec![h],
                    LayerTensor::AttnNormBias | LayerTensor::MlpNormBias if bias => vec![h],
                    LayerTensor::AttnNormBias | LayerTensor::MlpNormBias => continue,
                    LayerTensor::Q => vec![q, h],
                    LayerTensor::K | LayerTensor::V => vec![kv, h],
                    LayerTensor::O => vec![h, q],
                    LayerTensor::QNorm | LayerTensor::KNorm if self.qk_norm => vec![d],
                    LayerTensor::QNorm | LayerTensor::KNorm => continue,
                    LayerTensor::Gate if self.mlp == MlpKind::GatedSilu => vec![i, h],
                    LayerTensor::Gate => continue,
                    LayerTensor::Up => vec![i, h],
                    LayerTensor::Down => vec![h, i],
                };
                t.insert(names::layer(l, lt), shape);
            }
        }
        t
    }

    /// How many leading dims of each head RoPE rotates (`int(head_dim * partial_rotary_factor)`,
    /// as transformers computes it).
    pub fn rotary_dim(&self) -> usize {
        rotary_dim(self.head_dim, self.partial_rotary_factor)
    }

    /// RoPE inverse frequencies (length `rotary_dim / 2`), as transformers computes them (in f32).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.rotary_dim();
        let base: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        match &self.rope_scaling {
            RopeScaling::Default | RopeScaling::Linear { .. } => base,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, lo, hi) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let old = *original_max_position_embeddings as f32;
                let low_freq_wavelen = old / lo;
                let high_freq_wavelen = old / hi;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Position multiplier of linear RoPE scaling (1 otherwise).
    pub fn rope_position_scale(&self) -> f32 {
        match &self.rope_scaling {
            RopeScaling::Linear { factor } => 1.0 / *factor as f32,
            _ => 1.0,
        }
    }
}

/// transformers' class for a `model_type`.
fn hf_class(model_type: &str) -> &'static str {
    match model_type {
        "mistral" => "MistralForCausalLM",
        "nemotron" => "NemotronForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        _ => "LlamaForCausalLM",
    }
}

fn rotary_dim(head_dim: usize, factor: f64) -> usize {
    (head_dim as f64 * factor) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 176,
               "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
               "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "bos_token_id": 1})
    }

    #[test]
    fn both_rope_styles_parse_to_the_same_config() {
        let mut a = base();
        a["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let mut b = base();
        b["rope_theta"] = json!(500000.0);
        b["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let (a, b) = (
            LlamaConfig::from_json(&a).unwrap(),
            LlamaConfig::from_json(&b).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert!(matches!(
            a.rope_scaling,
            RopeScaling::Llama3 {
                original_max_position_embeddings: 64,
                ..
            }
        ));
    }

    fn fixture_config(name: &str, file: &str) -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
            .join(file);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn nemotron_and_qwen3_parse_in_both_styles_and_round_trip() {
        for (name, family) in [
            ("tiny-nemotron", Family::Nemotron),
            ("tiny-qwen3", Family::Qwen3),
        ] {
            let a = LlamaConfig::from_json(&fixture_config(name, "config.json")).unwrap();
            let b = LlamaConfig::from_json(&fixture_config(name, "config.legacy.json")).unwrap();
            assert_eq!(a, b, "{name}: both styles give one config");
            assert_eq!(a.family, family);
            assert_eq!(LlamaConfig::from_json(&a.to_hf_json()).unwrap(), a);
        }
        let n = LlamaConfig::from_json(&fixture_config("tiny-nemotron", "config.json")).unwrap();
        assert_eq!(
            (n.mlp, n.norm, n.qk_norm),
            (MlpKind::Relu2, NormKind::LayerNorm1p, false)
        );
        assert_eq!((n.rotary_dim(), n.rope_inv_freq().len()), (4, 2));
        assert_eq!(n.rms_norm_eps, 1e-5);
        assert_eq!(
            n.to_hf_json()["architectures"],
            json!(["NemotronForCausalLM"])
        );
        assert_eq!(n.to_hf_json()["norm_eps"], json!(1e-5));
        let q = LlamaConfig::from_json(&fixture_config("tiny-qwen3", "config.json")).unwrap();
        assert_eq!(
            (q.mlp, q.norm, q.qk_norm),
            (MlpKind::GatedSilu, NormKind::Rms, true)
        );
        assert_eq!((q.head_dim, q.rope_theta), (32, 1e6));
        // Unknown families and activations name their field.
        let mut v = fixture_config("tiny-nemotron", "config.json");
        v["hidden_act"] = json!("silu");
        let e = LlamaConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("`hidden_act`") && e.contains("relu2"), "{e}");
        let mut v = fixture_config("tiny-qwen3", "config.json");
        v["model_type"] = json!("qwen2_moe");
        let e = LlamaConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("`model_type`") && e.contains("qwen3"), "{e}");
    }

    #[test]
    fn head_dim_defaults_to_hidden_over_heads_and_explicit_wins() {
        let c = LlamaConfig::from_json(&base()).unwrap();
        assert_eq!(c.head_dim, 8);
        let mut v = base();
        v["head_dim"] = json!(16);
        assert_eq!(LlamaConfig::from_json(&v).unwrap().head_dim, 16);
    }

    #[test]
    fn hf_json_round_trips_and_writes_head_dim_and_extras() {
        let mut v = base();
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let c = LlamaConfig::from_json(&v).unwrap();
        let out = c.to_hf_json();
        assert_eq!(out["head_dim"], json!(8));
        assert_eq!(out["bos_token_id"], json!(1));
        assert_eq!(out["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(LlamaConfig::from_json(&out).unwrap(), c);
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let cases = [
            ("model_type", json!("gpt2"), "model_type"),
            ("num_key_value_heads", json!(3), "num_key_value_heads"),
            ("hidden_size", json!("big"), "hidden_size"),
            ("hidden_act", json!("gelu"), "hidden_act"),
            (
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 4.0}),
                "rope_scaling.rope_type",
            ),
            (
                "rope_parameters",
                json!({"rope_type": "llama3", "rope_theta": 1.0}),
                "rope_parameters.factor",
            ),
        ];
        for (key, val, field) in cases {
            let mut v = base();
            v[key] = val.clone();
            let err = LlamaConfig::from_json(&v).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{key}={val}: {err}");
        }
        let mut v = base();
        v.as_object_mut().unwrap().remove("vocab_size");
        assert!(LlamaConfig::from_json(&v)
            .unwrap_err()
            .to_string()
            .contains("`vocab_size`: missing"));
    }

    #[test]
    fn param_count_by_part_matches_expected_tensors() {
        for tied in [false, true] {
            let mut v = base();
            v["tie_word_embeddings"] = json!(tied);
            let c = LlamaConfig::from_json(&v).unwrap();
            let from_shapes: u64 = c
                .expected_tensors()
                .values()
                .map(|s| s.iter().product::<usize>() as u64)
                .sum();
            let p = c.param_count();
            assert_eq!(p.total(), from_shapes);
            assert_eq!(p.embed, 256 * 64);
            assert_eq!(p.lm_head, if tied { 0 } else { 256 * 64 });
            assert_eq!(p.mlp, 4 * 3 * 64 * 176);
            assert_eq!(p.attention, 4 * (64 * 64 + 2 * 64 * 32 + 64 * 64));
            assert_eq!(p.norms, 9 * 64);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut v = base();
        v["head_dim"] = json!(16);
        v["rope_theta"] = json!(500000.0);
        let plain = LlamaConfig::from_json(&v).unwrap().rope_inv_freq();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let scaled = LlamaConfig::from_json(&v).unwrap().rope_inv_freq();
        assert_eq!(plain[0], scaled[0]); // wavelength 2*pi < 16: unchanged
        let last = plain.len() - 1; // longest wavelength > 64: divided by the factor
        assert!((scaled[last] - plain[last] / 8.0).abs() < 1e-12);
    }
}
