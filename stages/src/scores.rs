//! Importance scores as files: what `score` writes and `prune` reads.
//!
//! `scores.safetensors` holds F32 tensors with these names (all optional; absent = not scored):
//! - `heads`    `[layers, heads]`  per layer, per attention head: the head's output before
//!   `o_proj`, aggregated over sequence then batch per channel, L2 over the head's channels;
//! - `neurons`  `[layers, ffn]`    per layer, per MLP neuron (input of `down_proj`);
//! - `channels` `[hidden]`         per embedding channel, summed over every RMSNorm output;
//! - `layers.lm_loss` `[layers]`   validation loss with the layer removed minus the full model's;
//! - `layers.block_influence` `[layers]` 1 - cosine(layer input, layer output), token mean.
//!
//! Larger is more important on every axis. `scores.json` repeats the rankings for people.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{CandleContext, Result, StageError};

pub const FILE: &str = "scores.safetensors";
pub const JSON: &str = "scores.json";

/// Scores in memory, as plain vectors (they are small: layers x ffn at most).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub heads: Option<Vec<Vec<f32>>>,
    pub neurons: Option<Vec<Vec<f32>>>,
    pub channels: Option<Vec<f32>>,
    pub layer_lm_loss: Option<Vec<f32>>,
    pub layer_block_influence: Option<Vec<f32>>,
}

fn to_2d(name: &str, t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t
        .to_dtype(candle_core::DType::F32)
        .ctx(|| format!("scores `{name}`"))?;
    t.to_vec2::<f32>()
        .map_err(|e| StageError::tensor(name, format!("expected a 2-D score tensor: {e}")))
}

fn to_1d(name: &str, t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .to_dtype(candle_core::DType::F32)
        .ctx(|| format!("scores `{name}`"))?;
    t.to_vec1::<f32>()
        .map_err(|e| StageError::tensor(name, format!("expected a 1-D score tensor: {e}")))
}

impl Scores {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let m = candle_core::safetensors::load(&path, &Device::Cpu)
            .ctx(|| format!("reading {}", path.display()))?;
        let mut s = Scores::default();
        for (name, t) in &m {
            match name.as_str() {
                "heads" => s.heads = Some(to_2d(name, t)?),
                "neurons" => s.neurons = Some(to_2d(name, t)?),
                "channels" => s.channels = Some(to_1d(name, t)?),
                "layers.lm_loss" => s.layer_lm_loss = Some(to_1d(name, t)?),
                "layers.block_influence" => s.layer_block_influence = Some(to_1d(name, t)?),
                other => {
                    return Err(StageError::tensor(
                        other,
                        format!("unknown score tensor in {}", path.display()),
                    ))
                }
            }
        }
        Ok(s)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut m: BTreeMap<String, Tensor> = BTreeMap::new();
        let dev = Device::Cpu;
        let two = |v: &Vec<Vec<f32>>| -> Result<Tensor> {
            let rows = v.len();
            let cols = v.first().map_or(0, Vec::len);
            let flat: Vec<f32> = v.iter().flatten().copied().collect();
            Tensor::from_vec(flat, (rows, cols), &dev).ctx(|| "packing 2-D scores".into())
        };
        if let Some(v) = &self.heads {
            m.insert("heads".into(), two(v)?);
        }
        if let Some(v) = &self.neurons {
            m.insert("neurons".into(), two(v)?);
        }
        if let Some(v) = &self.channels {
            m.insert(
                "channels".into(),
                Tensor::new(v.as_slice(), &dev).ctx(|| "packing channel scores".into())?,
            );
        }
        if let Some(v) = &self.layer_lm_loss {
            m.insert(
                "layers.lm_loss".into(),
                Tensor::new(v.as_slice(), &dev).ctx(|| "packing layer scores".into())?,
            );
        }
        if let Some(v) = &self.layer_block_influence {
            m.insert(
                "layers.block_influence".into(),
                Tensor::new(v.as_slice(), &dev).ctx(|| "packing layer scores".into())?,
            );
        }
        let path = dir.join(FILE);
        let m: std::collections::HashMap<String, Tensor> = m.into_iter().collect();
        candle_core::safetensors::save(&m, &path).ctx(|| format!("writing {}", path.display()))?;
        let json = serde_json::json!({
            "note": "rankings list unit indices from most to least important; larger score = more important",
            "channels": self.channels.as_ref().map(|v| ranking(v)),
            "heads_per_layer": self.heads.as_ref().map(|v| v.iter().map(|r| ranking(r)).collect::<Vec<_>>()),
            "neurons_per_layer_top10": self.neurons.as_ref().map(|v| v.iter().map(|r| ranking(r).into_iter().take(10).collect::<Vec<_>>()).collect::<Vec<_>>()),
            "layers_by_lm_loss": self.layer_lm_loss.as_ref().map(|v| ranking(v)),
            "layers_by_block_influence": self.layer_block_influence.as_ref().map(|v| ranking(v)),
            "layer_lm_loss": self.layer_lm_loss,
            "layer_block_influence": self.layer_block_influence,
        });
        let jpath = dir.join(JSON);
        let text = serde_json::to_string_pretty(&json).expect("plain JSON values serialize");
        std::fs::write(&jpath, text + "\n").map_err(|e| StageError::io(&jpath, e))
    }
}

/// Indices sorted by score, most important first; ties keep the lower index first.
pub fn ranking<T: Copy + Into<f64>>(scores: &[T]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .into()
            .total_cmp(&scores[a].into())
            .then(a.cmp(&b))
    });
    idx
}

/// The `k` most important indices, in ascending index order (the order the slices keep).
/// Refuses NaN scores, which would make the selection arbitrary.
pub fn top_k<T: Copy + Into<f64>>(what: &str, scores: &[T], k: usize) -> Result<Vec<usize>> {
    if let Some(i) = scores.iter().position(|s| (*s).into().is_nan()) {
        return Err(StageError::tensor(
            what,
            format!("score of unit {i} is NaN"),
        ));
    }
    if k > scores.len() {
        return Err(StageError::tensor(
            what,
            format!("cannot keep {k} of {} units", scores.len()),
        ));
    }
    let mut keep: Vec<usize> = ranking(scores).into_iter().take(k).collect();
    keep.sort_unstable();
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_in_index_order_and_breaks_ties_low() {
        assert_eq!(top_k("x", &[0.1f32, 3.0, 2.0, 3.0], 2).unwrap(), vec![1, 3]);
        assert_eq!(top_k("x", &[1.0f32, 1.0, 1.0], 2).unwrap(), vec![0, 1]);
        assert!(top_k("x", &[1.0f64, f64::NAN], 1)
            .unwrap_err()
            .to_string()
            .contains("NaN"));
    }

    #[test]
    fn scores_round_trip_through_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scores {
            heads: Some(vec![vec![1.0, 2.0], vec![3.0, 4.0]]),
            neurons: None,
            channels: Some(vec![0.5, 0.25, 0.75]),
            layer_lm_loss: Some(vec![0.1, 0.2]),
            layer_block_influence: None,
        };
        s.save(dir.path()).unwrap();
        assert_eq!(Scores::load(dir.path()).unwrap(), s);
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(JSON)).unwrap()).unwrap();
        assert_eq!(j["channels"], serde_json::json!([2, 0, 1]));
    }
}
