//! What the running kinds share below their params: opening a dataset input, turning token
//! windows into tensors, and the validation loss/accuracy that `evaluate`, `train` and `distill`
//! all report the same way (mean next-token cross-entropy in nats on `val.bin` windows).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use pollard_model::Llama;

use crate::error::{CandleContext, Result, StageError};

/// Opens the dataset artifact at `dir` (the `data` input).
pub fn open_dataset(dir: &Path) -> Result<pollard_data::Dataset> {
    pollard_data::Dataset::open(dir).map_err(StageError::from)
}

/// Windows of `seq_len + 1` ids -> (inputs, targets), each `[windows, seq_len]` u32.
pub fn window_tensors(windows: &[&[u32]], dev: &Device) -> Result<(Tensor, Tensor)> {
    let b = windows.len();
    let t = windows.first().map_or(0, |w| w.len().saturating_sub(1));
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * t);
    for w in windows {
        inputs.extend_from_slice(&w[..t]);
        targets.extend_from_slice(&w[1..=t]);
    }
    let i = Tensor::from_vec(inputs, (b, t), dev).ctx(|| "building input ids".into())?;
    let o = Tensor::from_vec(targets, (b, t), dev).ctx(|| "building target ids".into())?;
    Ok((i, o))
}

/// A training batch -> (inputs, targets) tensors `[batch, seq_len]`.
pub fn batch_tensors(b: &pollard_data::Batch, dev: &Device) -> Result<(Tensor, Tensor)> {
    let i = Tensor::from_vec(b.inputs(), (b.batch, b.seq_len), dev)
        .ctx(|| "building input ids".into())?;
    let o = Tensor::from_vec(b.targets(), (b.batch, b.seq_len), dev)
        .ctx(|| "building target ids".into())?;
    Ok((i, o))
}

/// Validation results over a fixed set of windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    /// Mean next-token cross-entropy in nats.
    pub loss: f64,
    /// Fraction of positions whose argmax is the next token.
    pub accuracy: f64,
    /// Positions scored.
    pub tokens: u64,
    /// Wall time of the forward passes.
    pub seconds: f64,
}

/// Sum of next-token log-probs and of argmax hits for one batch of logits `[b, t, v]`.
fn score_logits(logits: &Tensor, targets: &Tensor) -> Result<(f64, u64)> {
    let logits = logits.to_dtype(DType::F32).ctx(|| "logits to f32".into())?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).ctx(|| "log_softmax".into())?;
    let picked = logp
        .gather(
            &targets
                .unsqueeze(2)
                .ctx(|| "targets".into())?
                .contiguous()
                .ctx(|| "targets".into())?,
            2,
        )
        .ctx(|| "gathering target log-probs".into())?;
    let lp = picked
        .to_dtype(DType::F64)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.to_scalar::<f64>())
        .ctx(|| "summing log-probs".into())?;
    let hits = logits
        .argmax(D::Minus1)
        .and_then(|a| a.eq(targets))
        .and_then(|e| e.to_dtype(DType::U32))
        .and_then(|e| e.sum_all())
        .and_then(|e| e.to_scalar::<u32>())
        .ctx(|| "counting argmax hits".into())?;
    Ok((lp, hits as u64))
}

/// Validation loss and accuracy of `model` on `windows`, `batch` windows per forward.
/// `skip` layers are treated as identity (depth importance).
pub fn evaluate(
    model: &Llama,
    windows: &[&[u32]],
    batch: usize,
    skip: &[usize],
) -> Result<EvalResult> {
    let start = Instant::now();
    let spec = pollard_model::TapSpec::skipping(skip.iter().copied());
    let (mut lp, mut hits, mut n) = (0f64, 0u64, 0u64);
    for chunk in windows.chunks(batch.max(1)) {
        let (ids, targets) = window_tensors(chunk, model.device())?;
        let (logits, _) = model.forward_with_taps(&ids, &spec)?;
        let (l, h) = score_logits(&logits, &targets)?;
        lp += l;
        hits += h;
        n += targets.elem_count() as u64;
    }
    if n == 0 {
        return Err(StageError::input(
            "data",
            "no validation windows to evaluate on",
        ));
    }
    Ok(EvalResult {
        loss: -lp / n as f64,
        accuracy: hits as f64 / n as f64,
        tokens: n,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Number of parameters a loaded model really holds (counted from its tensors).
pub fn param_count(model: &Llama) -> u64 {
    model.params().values().map(|t| t.elem_count() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_loss_matches_the_reference_mean_logprob() {
        // tiny-llama's reference.json holds transformers' mean next-token log-prob on its ids.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama");
        let model =
            Llama::load_hf(&dir, DType::F32, &Device::Cpu, pollard_model::Mode::Frozen).unwrap();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(r["input_ids"].clone()).unwrap();
        let windows: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
        let e = evaluate(&model, &windows, 1, &[]).unwrap();
        let want = -r["mean_next_token_logprob"].as_f64().unwrap();
        assert!((e.loss - want).abs() < 1e-5, "{} vs {want}", e.loss);
        assert_eq!(e.tokens, 46);
        assert!((0.0..=1.0).contains(&e.accuracy));
    }
}
