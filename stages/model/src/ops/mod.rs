//! Differentiable building blocks of the decoder forward pass: the Linear projection, RMSNorm,
//! LayerNorm1p, RoPE (full and partial), causal softmax, SwiGLU, squared ReLU.
//!
//! candle-nn's fused versions of these have no backward and silently cut the gradient, so they
//! are never used here. On CPU each op is a `CustomOp` with a hand-written f32 kernel and an
//! analytic backward (itself a fused kernel); on other devices the same maths is composed from
//! candle primitives, whose autograd is exact. Non-f32 inputs are computed in f32 and cast back,
//! as transformers does for norms and softmax.

pub mod attention;
pub mod blockwise;
mod cpu;
pub mod exp;
pub mod flash;
pub mod layer_norm;
pub mod linear;
pub mod partial_rope;
mod reference;
pub mod relu2;
pub mod rms_norm;
pub mod rope;
pub mod softmax;
pub mod swiglu;

pub use attention::causal_attention;
pub use exp::fast_exp;
pub use layer_norm::layer_norm1p;
pub use linear::{linear, linear_as};
pub use partial_rope::partial_rope;
pub use relu2::relu2;
pub use rms_norm::rms_norm;
pub use rope::{rope, RopeTables};
pub use softmax::causal_softmax;
pub use swiglu::swiglu;

#[cfg(test)]
pub(crate) mod gradcheck;

/// Reference (primitive-op) versions of the ops, used on non-CPU devices and in tests to
/// cross-check the fused kernels.
pub mod primitive {
    pub use super::linear::composed as linear;
    pub use super::reference::{causal_softmax, layer_norm1p, relu2, rms_norm, rope, swiglu};
}
