//! Requests -> log-likelihoods -> per-item choices -> acc / acc_norm with standard errors, the
//! way lm-evaluation-harness's Hugging Face backend and `multiple_choice` tasks compute them:
//! tokenization from lm_eval/api/model.py (`TemplateLM._encode_pair`, `loglikelihood`) and
//! lm_eval/models/huggingface.py (`tok_encode`, `_loglikelihood_tokens`), choices from
//! lm_eval/api/task.py (`ConfigurableTask.process_results`), standard errors from
//! lm_eval/api/metrics.py (`mean_stderr`).

use candle_core::{DType, Tensor, D};
use pollard_model::{Llama, TapSpec};
use serde::Serialize;

use crate::error::{CandleContext, Result, StageError};

/// Encodes text as the harness's `tok_encode` does: the tokenizer's own special-token rule
/// (`add_special_tokens` left at the tokenizer's default, true), except that a string already
/// starting with the prefix token's text gets no special tokens added.
pub struct PairEncoder<'t> {
    tok: &'t tokenizers::Tokenizer,
    /// `prefix_token_id`: BOS, else EOS; it conditions a continuation whose context is empty.
    prefix: Option<(u32, String)>,
}

impl<'t> PairEncoder<'t> {
    pub fn new(tok: &'t tokenizers::Tokenizer, prefix: Option<u32>) -> Self {
        let prefix = prefix.map(|id| (id, tok.id_to_token(id).unwrap_or_default()));
        Self { tok, prefix }
    }

    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.tok
            .encode_fast(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| {
                StageError::Data(pollard_data::Error::Tokenize {
                    op: "encode",
                    message: e.to_string(),
                })
            })
    }

    fn tok_encode(&self, text: &str) -> Result<Vec<u32>> {
        let starts_with_prefix = self
            .prefix
            .as_ref()
            .is_some_and(|(_, t)| !t.is_empty() && text.starts_with(t.as_str()));
        self.encode(text, !starts_with_prefix)
    }

    /// (context tokens, continuation tokens) of one request: trailing whitespace of the context
    /// moves to the continuation; context + continuation is encoded whole and the continuation
    /// is what follows the context's own encoding. An empty context becomes the prefix token.
    pub fn pair(&self, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        if context.is_empty() {
            let cont = self.encode(continuation, false)?;
            let (id, _) = self.prefix.as_ref().ok_or_else(|| {
                StageError::input(
                    "model",
                    "a task item has an empty context and the tokenizer has no BOS or EOS token to stand for it",
                )
            })?;
            return Ok(if cont.first() != Some(id) {
                (vec![*id], cont)
            } else {
                (cont[..1].to_vec(), cont[1..].to_vec())
            });
        }
        let kept = context.trim_end();
        let continuation = format!("{}{continuation}", &context[kept.len()..]);
        let whole = self.tok_encode(&format!("{kept}{continuation}"))?;
        let ctx = self.tok_encode(kept)?;
        let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
        Ok((ctx, cont))
    }
}

/// Summed log-probability of each request's continuation given its context, `batch` requests
/// per forward pass, longest first (the harness's order), right-padded; sequences longer than
/// `max_len + 1` tokens lose tokens on the left, as in the harness. `cancelled` is polled
/// between batches.
pub fn loglikelihoods(
    model: &Llama,
    requests: &[(Vec<u32>, Vec<u32>)],
    batch: usize,
    max_len: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<f64>> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(requests[i].0.len() + requests[i].1.len()));
    let mut out = vec![0f64; requests.len()];
    for chunk in order.chunks(batch.max(1)) {
        if cancelled() {
            return Err(StageError::Cancelled);
        }
        let rows: Vec<(Vec<u32>, usize)> = chunk
            .iter()
            .map(|&i| {
                let (ctx, cont) = &requests[i];
                let mut all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
                let keep = all.len().min(max_len + 1);
                all.drain(..all.len() - keep);
                all.pop();
                (all, cont.len())
            })
            .collect();
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        if width == 0 {
            return Err(StageError::input("model", "a task request has no tokens"));
        }
        let mut ids = Vec::with_capacity(rows.len() * width);
        for (inp, _) in &rows {
            ids.extend_from_slice(inp);
            ids.resize(ids.len() + width - inp.len(), 0);
        }
        let ids = Tensor::from_vec(ids, (rows.len(), width), model.device())
            .ctx(|| "building task input ids".into())?;
        let (hidden, _) = model.hidden(&ids, &TapSpec::none())?;
        for (r, (&i, (inp, contlen))) in chunk.iter().zip(&rows).enumerate() {
            let cont = &requests[i].1;
            if *contlen == 0 || *contlen > inp.len() {
                return Err(StageError::input(
                    "model",
                    format!(
                        "a task continuation of {contlen} tokens does not fit the model's {max_len} positions"
                    ),
                ));
            }
            let start = inp.len() - contlen;
            let h = hidden
                .get(r)
                .and_then(|h| h.narrow(0, start, *contlen))
                .ctx(|| "selecting continuation positions".into())?;
            let logits = model.project(&h)?;
            let logp = logits
                .to_dtype(DType::F32)
                .and_then(|l| candle_nn::ops::log_softmax(&l, D::Minus1))
                .ctx(|| "log_softmax over task logits".into())?;
            let target = Tensor::from_slice(cont.as_slice(), (*contlen, 1), model.device())
                .ctx(|| "building continuation ids".into())?;
            let picked: Vec<f32> = logp
                .gather(&target, 1)
                .and_then(|p| p.flatten_all())
                .and_then(|p| p.to_vec1())
                .ctx(|| "gathering continuation log-probs".into())?;
            out[i] = picked.iter().map(|&x| x as f64).sum();
        }
    }
    Ok(out)
}

/// One item's outcome (a line of `tasks/<name>.jsonl` in the output).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemResult {
    /// 1-based line of the item in its task file.
    pub line: usize,
    pub gold: usize,
    /// Summed log-likelihood of each choice.
    pub lls: Vec<f64>,
    /// argmax of `lls`.
    pub pred: usize,
    /// argmax of `lls` / the choice's length in characters (the harness's `acc_norm`).
    pub pred_norm: usize,
    /// argmax of `lls` / the choice's length in UTF-8 bytes (the harness's `acc_bytes`).
    pub pred_bytes: usize,
}

/// numpy's argmax: the first index of the largest value.
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 || i == 0 {
            best = (i, x);
        }
    }
    best.0
}

/// The item's choices from its log-likelihoods. `choices` are `doc_to_choice`'s strings (for
/// Winogrande the filled-in contexts), whose lengths normalise as the harness normalises them.
pub fn judge(line: usize, gold: usize, choices: &[String], lls: Vec<f64>) -> ItemResult {
    let chars = choices.iter().map(|c| c.chars().count() as f64);
    let bytes = choices.iter().map(|c| c.len() as f64);
    ItemResult {
        line,
        gold,
        pred: argmax(lls.iter().copied()),
        pred_norm: argmax(lls.iter().zip(chars).map(|(l, n)| l / n)),
        pred_bytes: argmax(lls.iter().zip(bytes).map(|(l, n)| l / n)),
        lls,
    }
}

/// Mean and standard error of the mean (sample standard deviation / sqrt(n)); the error is
/// `None` below two items, where the harness reports N/A.
pub fn mean_stderr(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mu = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mu, None);
    }
    let var = xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0);
    (mu, Some(var.sqrt() / n.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_keeps_the_first_of_equal_values() {
        assert_eq!(argmax([1.0, 3.0, 3.0].into_iter()), 1);
        assert_eq!(
            argmax([f64::NEG_INFINITY, f64::NEG_INFINITY].into_iter()),
            0
        );
    }

    #[test]
    fn acc_norm_divides_by_characters_and_acc_bytes_by_utf8_bytes() {
        let choices = vec!["ab".to_string(), "é".to_string()];
        // -2/2 = -1 vs -1.5/1 char: norm picks 0; by bytes -1.5/2 = -0.75 picks 1.
        let r = judge(1, 0, &choices, vec![-2.0, -1.5]);
        assert_eq!((r.pred, r.pred_norm, r.pred_bytes), (1, 0, 1));
    }

    #[test]
    fn stderr_is_the_sample_deviation_over_root_n() {
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(m, 0.75);
        // sqrt(0.75 / 3) / 2 = 0.25
        assert!((se.unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]).1, None);
    }
}
