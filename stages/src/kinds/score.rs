//! `score`: a model + data -> activation-based importance (Minitron §2.2) on a calibration set
//! drawn from the training split: attention heads (output before `o_proj`), MLP neurons (input
//! of `down_proj`), embedding channels (every RMSNorm output, summed over layers), and layer
//! importance by `lm_loss` (validation loss with the layer removed) and `block_influence`
//! (1 - cosine of a layer's input and output). Forward passes only. Writes
//! `scores.safetensors` (names in [`crate::scores`]) and `scores.json`.

use candle_core::{DType, Tensor, D};
use pollard_engine::{
    BoxError, Count, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx,
};
use pollard_model::{Llama, Mode, TapSpec};
use serde::{Deserialize, Serialize};

use crate::common::{check_plan_vocab, check_windows, device, gpu_estimate, plan_shape, Dtype};
use crate::error::{CandleContext, Result, StageError};
use crate::runtime::{batch_tensors, evaluate, open_dataset};
use crate::scores::Scores;
use crate::shape::memory;

pub struct Score;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    Heads,
    Neurons,
    Channels,
    Layers,
}

/// An aggregation over one dimension of |activations|.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    /// (1/n) sum |x|
    Mean,
    /// sqrt(sum x^2)
    L2,
    /// (1/n) sum (x - mean)^2
    Var,
}

/// Over the sequence first, then over the batch. The paper's best is (batch L2, seq mean).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregation {
    #[serde(default = "agg_l2")]
    pub batch: Agg,
    #[serde(default = "agg_mean")]
    pub seq: Agg,
}

fn agg_l2() -> Agg {
    Agg::L2
}
fn agg_mean() -> Agg {
    Agg::Mean
}

impl Default for Aggregation {
    fn default() -> Self {
        Self {
            batch: Agg::L2,
            seq: Agg::Mean,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerMetricChoice {
    LmLoss,
    BlockInfluence,
}

fn default_axes() -> Vec<Axis> {
    vec![Axis::Heads, Axis::Neurons, Axis::Channels, Axis::Layers]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// Calibration windows drawn from the training split (the paper uses 1024).
    #[serde(default = "default_samples")]
    pub samples: Count,
    /// Tokens per calibration window.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Windows per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_axes")]
    pub axes: Vec<Axis>,
    #[serde(default)]
    pub aggregation: Aggregation,
    /// `lm_loss` costs one validation pass per layer; `block_influence` is free. Both are
    /// written when `lm_loss` is chosen.
    #[serde(default = "default_metric")]
    pub layer_metric: LayerMetricChoice,
    /// Validation windows for `lm_loss`.
    #[serde(default = "default_val_samples")]
    pub val_samples: Count,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub dtype: Dtype,
}

fn default_samples() -> Count {
    Count(1024)
}
fn default_seq_len() -> usize {
    4096
}
fn default_batch() -> usize {
    8
}
fn default_metric() -> LayerMetricChoice {
    LayerMetricChoice::LmLoss
}
fn default_val_samples() -> Count {
    Count(64)
}

/// Streaming batch aggregation of per-sample, per-unit values (already sequence-aggregated):
/// sums and sums of squares in f64, so any number of calibration batches fits in memory.
#[derive(Debug, Clone, Default)]
pub struct Accum {
    s1: Vec<f64>,
    s2: Vec<f64>,
    n: u64,
}

impl Accum {
    /// Adds `[samples, units]` values.
    pub fn add(&mut self, rows: &[Vec<f32>]) {
        for r in rows {
            if self.s1.is_empty() {
                self.s1 = vec![0.0; r.len()];
                self.s2 = vec![0.0; r.len()];
            }
            for (i, &x) in r.iter().enumerate() {
                let x = x as f64;
                self.s1[i] += x.abs();
                self.s2[i] += x * x;
            }
            self.n += 1;
        }
    }

    pub fn finish(&self, agg: Agg) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.s1
            .iter()
            .zip(&self.s2)
            .map(|(&s1, &s2)| match agg {
                Agg::Mean => s1 / n,
                Agg::L2 => s2.sqrt(),
                Agg::Var => (s2 / n - (s1 / n) * (s1 / n)).max(0.0),
            })
            .collect()
    }
}

/// Sequence aggregation of `x` `[b, t, units]` -> `[b, units]` per channel.
pub fn seq_aggregate(x: &Tensor, agg: Agg) -> Result<Vec<Vec<f32>>> {
    let x = x.to_dtype(DType::F32).ctx(|| "activations to f32".into())?;
    let r = match agg {
        Agg::Mean => x.abs().and_then(|a| a.mean(1)),
        Agg::L2 => x.sqr().and_then(|a| a.sum(1)).and_then(|a| a.sqrt()),
        Agg::Var => x.var_keepdim(1).and_then(|v| v.squeeze(1)).and_then(|v| {
            // candle's var is unbiased (n-1); the paper's is (1/n).
            let t = x.dim(1)? as f64;
            v.affine((t - 1.0) / t, 0.0)
        }),
    };
    r.and_then(|t| t.to_vec2::<f32>())
        .ctx(|| "aggregating over the sequence".into())
}

impl Stage for Score {
    const KIND: &'static str = "score";
    const VERSION: u32 = 1;
    type Params = ScoreParams;

    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &["model", "data"],
            optional: &[],
        }
    }

    fn validate(&self, p: &ScoreParams) -> Result<(), Vec<ParamError>> {
        let mut errs = Vec::new();
        check_windows(&mut errs, p.samples.get(), p.seq_len, p.batch);
        if p.axes.is_empty() {
            errs.push(ParamError::new(
                "axes",
                "scores nothing: list at least one of heads, neurons, channels, layers",
            ));
        }
        if p.axes.contains(&Axis::Layers)
            && p.layer_metric == LayerMetricChoice::LmLoss
            && p.val_samples.get() == 0
        {
            errs.push(ParamError::new(
                "val_samples",
                "must be positive for layer_metric lm_loss",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn describe(
        &self,
        _p: &ScoreParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        // Scores are not a model: nothing to describe, but the calibration data must fit it.
        check_plan_vocab(
            inputs,
            "model",
            plan_shape(inputs, "model").map(|s| s.vocab),
        )?;
        Ok(None)
    }

    fn resources(&self, p: &ScoreParams, inputs: &PlanInputs) -> Result<Resources, BoxError> {
        // Forward only (nothing kept for backward), plus every layer's tapped tensors for one
        // micro-batch: the two norms' outputs (channels), the heads' outputs and the MLP's
        // activation (neurons). Measured on the tiny recipe: within 1.6x of the peak.
        Ok(match plan_shape(inputs, "model") {
            Some(s) => {
                let (b, t, bytes) = (p.batch as u64, p.seq_len as u64, p.dtype.bytes());
                let per_token = 2 * s.hidden as u64 + (s.heads * s.head_dim) as u64 + s.ffn as u64;
                let taps = s.layers as u64 * b * t * per_token * bytes;
                gpu_estimate(memory::inference(&s, b, t, bytes) + taps)
            }
            None => Resources::default(),
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &ScoreParams, inputs: &Inputs) -> Result<(), BoxError> {
        let dev = device(ctx)?;
        let model = Llama::load_hf(inputs.path("model")?, p.dtype.candle(), &dev, Mode::Frozen)?;
        let data = open_dataset(inputs.path("data")?)?;
        let scores = compute(ctx, &model, &data, p)?;
        scores.save(ctx.out_dir())?;
        Ok(())
    }
}

/// The scores of `model` on `data` (split out of `run` for tests).
pub fn compute(
    ctx: &StageCtx,
    model: &Llama,
    data: &pollard_data::Dataset,
    p: &ScoreParams,
) -> Result<Scores> {
    let cfg = model.config();
    let layers = cfg.num_hidden_layers;
    let want = |a: Axis| p.axes.contains(&a);
    let spec = TapSpec {
        residual_in: want(Axis::Layers),
        residual_out: want(Axis::Layers),
        attn_norm: want(Axis::Channels),
        mlp_norm: want(Axis::Channels),
        attn_heads: want(Axis::Heads),
        mlp_act: want(Axis::Neurons),
        ..TapSpec::none()
    };
    let mut heads = vec![Accum::default(); layers];
    let mut neurons = vec![Accum::default(); layers];
    // Two hooks per layer (input_layernorm, post_attention_layernorm), aggregated separately and
    // summed at the end, as ModelOpt does.
    let mut channels = vec![Accum::default(); 2 * layers];
    let mut bi_sum = vec![0f64; layers];
    let mut bi_n = 0u64;

    let mut sampler = pollard_data::WindowSampler::new(data.train(), p.seq_len, p.batch, p.seed)?;
    let total = p.samples.get() as usize;
    let mut done = 0usize;
    let steps = total.div_ceil(p.batch);
    for step in 0..steps {
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        let batch = sampler.next_batch();
        let (ids, _) = batch_tensors(&batch, model.device())?;
        // The last batch may hold more windows than the remaining sample count: keep `samples` exact.
        let rows = (total - done).min(p.batch);
        let ids = ids
            .narrow(0, 0, rows)
            .ctx(|| "trimming the last calibration batch".into())?;
        done += rows;
        let (_, taps) = model.forward_with_taps(&ids, &spec)?;
        for (l, lt) in taps.layers.iter().enumerate() {
            if let Some(h) = &lt.attn_heads {
                // [b, t, h, d] -> per channel over seq -> [b, h*d]; head score from channels later.
                let (b, t, nh, d) = h.dims4().ctx(|| "attention head taps".into())?;
                let flat = h
                    .reshape((b, t, nh * d))
                    .ctx(|| "flattening heads".into())?;
                heads[l].add(&seq_aggregate(&flat, p.aggregation.seq)?);
            }
            if let Some(a) = &lt.mlp_act {
                neurons[l].add(&seq_aggregate(a, p.aggregation.seq)?);
            }
            if let Some(x) = &lt.attn_norm {
                channels[2 * l].add(&seq_aggregate(x, p.aggregation.seq)?);
            }
            if let Some(x) = &lt.mlp_norm {
                channels[2 * l + 1].add(&seq_aggregate(x, p.aggregation.seq)?);
            }
            if let (Some(i), Some(o)) = (&lt.residual_in, &lt.residual_out) {
                bi_sum[l] += block_influence_sum(i, o)?;
            }
        }
        bi_n += (rows * p.seq_len) as u64;
        ctx.progress(pollard_engine::Progress {
            step: step as u64 + 1,
            total: Some(steps as u64),
            ..Default::default()
        });
    }

    let mut out = Scores::default();
    let hd = cfg.head_dim;
    if want(Axis::Heads) {
        out.heads = Some(
            heads
                .iter()
                .map(|a| {
                    a.finish(p.aggregation.batch)
                        .chunks(hd)
                        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt() as f32)
                        .collect()
                })
                .collect(),
        );
    }
    if want(Axis::Neurons) {
        out.neurons = Some(
            neurons
                .iter()
                .map(|a| {
                    a.finish(p.aggregation.batch)
                        .iter()
                        .map(|&x| x as f32)
                        .collect()
                })
                .collect(),
        );
    }
    if want(Axis::Channels) {
        let mut total = vec![0f64; cfg.hidden_size];
        for a in &channels {
            for (t, v) in total.iter_mut().zip(a.finish(p.aggregation.batch)) {
                *t += v;
            }
        }
        out.channels = Some(total.iter().map(|&x| x as f32).collect());
    }
    if want(Axis::Layers) {
        out.layer_block_influence = Some(
            bi_sum
                .iter()
                .map(|s| (s / bi_n.max(1) as f64) as f32)
                .collect(),
        );
        if p.layer_metric == LayerMetricChoice::LmLoss {
            let val = pollard_data::validation_windows(
                data.val(),
                p.seq_len,
                Some(p.val_samples.get() as usize),
            )?;
            let base = evaluate(model, &val, p.batch, &[])?.loss;
            let mut deltas = Vec::with_capacity(layers);
            for l in 0..layers {
                if ctx.cancelled() {
                    return Err(StageError::Cancelled);
                }
                deltas.push((evaluate(model, &val, p.batch, &[l])?.loss - base) as f32);
                ctx.log(&format!("layer {l}: val loss +{:.4} without it", deltas[l]));
            }
            out.layer_lm_loss = Some(deltas);
        }
    }
    Ok(out)
}

/// Sum over tokens of 1 - cos(input, output) for `[b, t, H]` residuals.
fn block_influence_sum(i: &Tensor, o: &Tensor) -> Result<f64> {
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let (i, o) = (
        f(i).ctx(|| "residual in".into())?,
        f(o).ctx(|| "residual out".into())?,
    );
    let dot = (&i * &o)
        .and_then(|x| x.sum(D::Minus1))
        .ctx(|| "dot".into())?;
    let ni = i
        .sqr()
        .and_then(|x| x.sum(D::Minus1))
        .and_then(|x| x.sqrt())
        .ctx(|| "norm".into())?;
    let no = o
        .sqr()
        .and_then(|x| x.sum(D::Minus1))
        .and_then(|x| x.sqrt())
        .ctx(|| "norm".into())?;
    let cos = (ni * no)
        .and_then(|d| d.clamp(1e-8f32, f32::MAX))
        .and_then(|d| dot.div(&d))
        .ctx(|| "cosine".into())?;
    let n = cos.elem_count() as f64;
    let s = cos
        .to_dtype(DType::F64)
        .and_then(|c| c.sum_all())
        .and_then(|c| c.to_scalar::<f64>())
        .ctx(|| "cosine sum".into())?;
    Ok(n - s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn aggregations_match_their_definitions() {
        // Two samples, two units, three positions.
        let x = Tensor::new(
            &[
                [[1f32, -2.0], [3.0, 0.0], [-2.0, 2.0]],
                [[0f32, 1.0], [0.0, 1.0], [3.0, 1.0]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let m = seq_aggregate(&x, Agg::Mean).unwrap();
        assert_eq!(m, vec![vec![2.0, 4.0 / 3.0], vec![1.0, 1.0]]);
        let l2 = seq_aggregate(&x, Agg::L2).unwrap();
        assert!((l2[0][0] - 14f32.sqrt()).abs() < 1e-6);
        let v = seq_aggregate(&x, Agg::Var).unwrap();
        // Sample 0 unit 0: values 1, 3, -2: mean 2/3, population variance 38/9.
        assert!((v[0][0] - 38.0 / 9.0).abs() < 1e-5, "{}", v[0][0]);
        let mut a = Accum::default();
        a.add(&m);
        let b = a.finish(Agg::L2);
        assert!((b[0] - 5f64.sqrt()).abs() < 1e-9);
        assert!((a.finish(Agg::Mean)[0] - 1.5).abs() < 1e-9);
        assert!((a.finish(Agg::Var)[0] - 0.25).abs() < 1e-9);
    }

    #[test]
    fn unknown_aggregations_and_empty_axes_are_refused() {
        assert!(
            pollard_engine::yaml::from_str::<ScoreParams>("{ aggregation: { batch: max } }")
                .unwrap_err()
                .to_string()
                .contains("unknown variant `max`")
        );
        let p: ScoreParams = pollard_engine::yaml::from_str("{ axes: [], samples: 0 }").unwrap();
        let f: Vec<String> = Score
            .validate(&p)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(f, vec!["samples", "axes"]);
    }
}
