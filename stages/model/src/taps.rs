//! What a forward pass records besides logits ([`TapSpec`] in, [`Taps`] out), and which
//! layers it skips. Scoring (Minitron-style importance) reads these activations.
//!
//! Shapes, with `b` batch, `t` positions, `H` hidden size, `h` query heads, `d` head_dim and
//! `I` MLP width:
//! - `residual_in` / `residual_out`: `[b, t, H]`, the residual stream entering / leaving layer i
//!   (`residual_out` of layer i is transformers' `hidden_states[i+1]`, except that transformers
//!   replaces the last one by the final-norm output);
//! - `attn_norm` / `mlp_norm`: `[b, t, H]`, outputs of `input_layernorm` /
//!   `post_attention_layernorm` (the inputs of q/k/v and of gate/up);
//! - `attn_heads`: `[b, t, h, d]`, each head's attention output before `o_proj`
//!   (flattening the last two dims gives `o_proj`'s input);
//! - `mlp_act`: `[b, t, I]`, `silu(gate) * up`, the input of `down_proj`;
//! - `final_norm`: `[b, t, H]`, output of `model.norm` (the input of `lm_head`).
//!
//! Taps are taken from the graph itself (no detach): on a trainable model they can carry
//! gradients; on a frozen one they cost only the memory they hold.

use std::collections::BTreeSet;

use candle_core::Tensor;

/// Which activations to record, for which layers, and which layers to skip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapSpec {
    /// Layers to record (by index); `None` means all layers.
    pub layers: Option<BTreeSet<usize>>,
    pub residual_in: bool,
    pub residual_out: bool,
    pub attn_norm: bool,
    pub attn_heads: bool,
    pub mlp_norm: bool,
    pub mlp_act: bool,
    pub final_norm: bool,
    /// Layers treated as identity (the residual passes through unchanged): scores the model with
    /// these layers removed without copying any weights. Skipped layers record nothing.
    pub skip_layers: BTreeSet<usize>,
}

impl TapSpec {
    /// Record nothing, skip nothing: a plain forward.
    pub fn none() -> Self {
        Self::default()
    }

    /// Record every activation of every layer.
    pub fn all() -> Self {
        TapSpec {
            layers: None,
            residual_in: true,
            residual_out: true,
            attn_norm: true,
            attn_heads: true,
            mlp_norm: true,
            mlp_act: true,
            final_norm: true,
            skip_layers: BTreeSet::new(),
        }
    }

    /// A plain forward with `layers` skipped (depth importance: loss without a layer).
    pub fn skipping(layers: impl IntoIterator<Item = usize>) -> Self {
        TapSpec {
            skip_layers: layers.into_iter().collect(),
            ..Self::default()
        }
    }

    pub(crate) fn records(&self, layer: usize) -> bool {
        self.layers.as_ref().is_none_or(|s| s.contains(&layer))
    }
}

/// Activations of one decoder layer; a field is `Some` when requested and the layer ran.
#[derive(Debug, Clone, Default)]
pub struct LayerTaps {
    pub residual_in: Option<Tensor>,
    pub residual_out: Option<Tensor>,
    pub attn_norm: Option<Tensor>,
    pub attn_heads: Option<Tensor>,
    pub mlp_norm: Option<Tensor>,
    pub mlp_act: Option<Tensor>,
}

/// Everything a forward pass recorded.
#[derive(Debug, Clone, Default)]
pub struct Taps {
    /// One entry per decoder layer (index = layer index), empty for unrecorded or skipped layers.
    pub layers: Vec<LayerTaps>,
    pub final_norm: Option<Tensor>,
}
