//! pollard-model: decoder LMs in candle (Llama, Mistral, Nemotron, Qwen3: one model described by
//! its config), the one place below the stages that knows tensors.
//!
//! Flow: a Hugging Face folder --[`load_hf`]--> ([`LlamaConfig`], [`Weights`]) --[`Llama::new`]-->
//! a frozen or trainable [`Llama`] --[`Llama::forward_with_taps`]--> logits + [`Taps`]
//! --[`Llama::weights`] + [`save_hf`]--> a folder transformers loads. [`ops`] holds the
//! differentiable RMSNorm / LayerNorm1p / RoPE / causal softmax / SwiGLU / relu² (custom CPU
//! kernels with analytic backward; never candle-nn's fused no-backward versions). [`names`] spells
//! every tensor name.

pub mod config;
pub mod error;
pub mod host;
pub mod io;
pub mod metrics;
pub mod model;
pub mod names;
pub mod ops;
pub mod rng;
pub mod taps;

pub use candle_core;
pub use config::{Family, LlamaConfig, MlpKind, NormKind, ParamCount, RopeScaling};
pub use error::{ModelError, Result};
pub use io::{
    inspect_hf, load_hf, save_hf, validate_weights, write_weights, TensorInfo, Weights,
    DEFAULT_SHARD_BYTES,
};
pub use metrics::{mean_next_token_logprob, next_token_logprobs};
pub use model::{Llama, Mode};
pub use rng::SeededRng;
pub use taps::{LayerTaps, TapSpec, Taps};

/// Parses a dtype name as used in configs and on the command line.
pub fn parse_dtype(s: &str) -> Result<candle_core::DType> {
    use candle_core::DType;
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => {
            return Err(ModelError::Input(format!(
                "unknown dtype {other:?} (expected f32, bf16 or f16)"
            )))
        }
    })
}
