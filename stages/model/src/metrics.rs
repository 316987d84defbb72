//! Next-token log-probabilities of logits against the ids that produced them: the language
//! modelling quality `pollard model forward`, parity tests and evaluation report.

use candle_core::{DType, Tensor, D};

use crate::error::{ModelError, Result};

/// `log_softmax(logits[b, p])[ids[b, p+1]]` for `p = 0..t-1`: `[b, t-1]` f32 (differentiable).
pub fn next_token_logprobs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t, _v) = logits.dims3()?;
    if ids.dims() != [b, t] {
        return Err(ModelError::Input(format!(
            "ids shape {:?} does not match logits {:?}",
            ids.dims(),
            logits.dims()
        )));
    }
    if t < 2 {
        return Err(ModelError::Input(format!(
            "need at least 2 positions for next-token log-probs, got {t}"
        )));
    }
    let lp = candle_nn::ops::log_softmax(
        &logits.narrow(1, 0, t - 1)?.to_dtype(DType::F32)?,
        D::Minus1,
    )?;
    let target = ids.narrow(1, 1, t - 1)?.contiguous()?.unsqueeze(2)?;
    Ok(lp.gather(&target, 2)?.squeeze(2)?)
}

/// Mean of [`next_token_logprobs`] over all sequences and positions, accumulated in f64.
pub fn mean_next_token_logprob(logits: &Tensor, ids: &Tensor) -> Result<f64> {
    let lp = next_token_logprobs(logits, ids)?.to_dtype(DType::F64)?;
    Ok(lp.mean_all()?.to_scalar::<f64>()?)
}
