//! Hugging Face tensor names: the one place that spells `model.layers.N.*`. The config lists a
//! checkpoint's tensors from here, the model picks its parameters by these names, and surgery
//! parses them back to know how to slice each one.

/// The token embedding `[vocab, hidden]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The final norm's weight `[hidden]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// The final norm's bias `[hidden]` (LayerNorm families only).
pub const FINAL_NORM_BIAS: &str = "model.norm.bias";
/// The output projection `[vocab, hidden]`; absent when tied to [`EMBED`].
pub const LM_HEAD: &str = "lm_head.weight";

/// One tensor of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerTensor {
    AttnNorm,
    AttnNormBias,
    Q,
    K,
    V,
    O,
    /// Qwen3's per-head RMSNorm of queries `[head_dim]`.
    QNorm,
    /// Qwen3's per-head RMSNorm of keys `[head_dim]`.
    KNorm,
    MlpNorm,
    MlpNormBias,
    Gate,
    Up,
    Down,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 13] = [
        LayerTensor::AttnNorm,
        LayerTensor::AttnNormBias,
        LayerTensor::Q,
        LayerTensor::K,
        LayerTensor::V,
        LayerTensor::O,
        LayerTensor::QNorm,
        LayerTensor::KNorm,
        LayerTensor::MlpNorm,
        LayerTensor::MlpNormBias,
        LayerTensor::Gate,
        LayerTensor::Up,
        LayerTensor::Down,
    ];

    /// The name after `model.layers.N.`.
    pub fn suffix(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "input_layernorm.weight",
            LayerTensor::AttnNormBias => "input_layernorm.bias",
            LayerTensor::Q => "self_attn.q_proj.weight",
            LayerTensor::K => "self_attn.k_proj.weight",
            LayerTensor::V => "self_attn.v_proj.weight",
            LayerTensor::O => "self_attn.o_proj.weight",
            LayerTensor::QNorm => "self_attn.q_norm.weight",
            LayerTensor::KNorm => "self_attn.k_norm.weight",
            LayerTensor::MlpNorm => "post_attention_layernorm.weight",
            LayerTensor::MlpNormBias => "post_attention_layernorm.bias",
            LayerTensor::Gate => "mlp.gate_proj.weight",
            LayerTensor::Up => "mlp.up_proj.weight",
            LayerTensor::Down => "mlp.down_proj.weight",
        }
    }

    pub fn from_suffix(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.suffix() == s)
    }
}

const LAYER_PREFIX: &str = "model.layers.";

/// `model.layers.{i}.{suffix}`.
pub fn layer(i: usize, t: LayerTensor) -> String {
    format!("{LAYER_PREFIX}{i}.{}", t.suffix())
}

/// A layer tensor's name split into (layer index, the rest), or `None` for a name outside
/// `model.layers.`; `Err` carries why a `model.layers.` name is malformed.
pub fn split_layer(name: &str) -> Option<Result<(usize, &str), String>> {
    let rest = name.strip_prefix(LAYER_PREFIX)?;
    Some(match rest.split_once('.') {
        None => Err("not a `model.layers.N.*` name".into()),
        Some((idx, field)) => idx
            .parse()
            .map(|i| (i, field))
            .map_err(|_| format!("layer index `{idx}` is not a number")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in LayerTensor::ALL {
            let n = layer(7, t);
            let (i, field) = split_layer(&n).unwrap().unwrap();
            assert_eq!((i, LayerTensor::from_suffix(field)), (7, Some(t)));
        }
        assert!(split_layer(EMBED).is_none());
        assert!(split_layer("model.layers.x.mlp").unwrap().is_err());
    }
}
