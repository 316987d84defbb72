//! Structured pruning as pure tensor slicing over HF-named weights: `prune` decides which
//! units to keep ([`plan`]) and slices every tensor consistently ([`apply`]).
//!
//! Axes (Minitron, homogeneous: every layer gets the same new sizes):
//! - hidden channels: one global index set, applied to the embedding, every norm (weights and,
//!   for LayerNorm1p, biases), q/k/v/gate/up input columns, o/down output rows and `lm_head`;
//! - MLP neurons: per layer, gate (when the MLP is gated) and up rows and down columns;
//! - attention heads under GQA: KV groups ranked by group score, then the same number of query
//!   heads kept in every kept group, ranked within the group; `head_dim` is unchanged, so
//!   Qwen3's per-head q/k norms (over `head_dim`) are kept as they are;
//! - depth: whole layers dropped and the rest renumbered.

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use pollard_model::names::{self, LayerTensor as T};

use crate::checkpoint::Checkpoint;
use crate::error::{CandleContext, Result, StageError};
use crate::scores::{top_k, Scores};
use crate::shape::ModelShape;

/// New sizes; any subset. Absent axes keep the model's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
}

/// How width units are ranked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Activation importance from a `score` stage (Minitron's method).
    #[default]
    Activation,
    /// Weight norms: neurons by the L2 norm of their `gate_proj` row (`up_proj` in an MLP
    /// without a gate), heads by their q_proj rows
    /// and o_proj columns, KV groups by those of their heads plus their k/v rows, channels by
    /// their embedding column.
    Magnitude,
    /// A seeded random choice (the baseline the paper's importance beats).
    Random,
}

/// A per-layer importance metric computed by `score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerMetric {
    LmLoss,
    BlockInfluence,
}

impl LayerMetric {
    pub fn tensor_name(self) -> &'static str {
        match self {
            LayerMetric::LmLoss => "layers.lm_loss",
            LayerMetric::BlockInfluence => "layers.block_influence",
        }
    }
}

/// How layers are removed: an explicit list, or the least important by a metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Depth {
    /// 0-based indices of the layers to drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<Vec<usize>>,
    /// Drop the layers (down to `target.layers`) that matter least by this metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<LayerMetric>,
    /// With `by`: drop one contiguous block (the one whose summed importance is smallest), as
    /// Minitron's Llama-3.1 depth recipe does, instead of the individually least important.
    #[serde(default)]
    pub contiguous: bool,
}

/// What survives pruning; layer-indexed vectors follow `layers` (original indices, ascending).
#[derive(Debug, Clone, PartialEq)]
pub struct KeepPlan {
    pub layers: Vec<usize>,
    /// Kept hidden channels (all when hidden is not pruned).
    pub channels: Vec<usize>,
    /// Per kept layer: kept MLP neurons.
    pub neurons: Vec<Vec<usize>>,
    /// Per kept layer: kept query heads (original head indices).
    pub heads: Vec<Vec<usize>>,
    /// Per kept layer: kept KV groups.
    pub groups: Vec<Vec<usize>>,
    pub shape: ModelShape,
}

/// The new shape a target asks for, or the first impossible field. Used both by planning and
/// by `describe()` (which has only the shape, no weights).
pub fn target_shape(s: &ModelShape, t: &Target, depth: Option<&Depth>) -> Result<ModelShape> {
    let over = |field: &str, want: usize, have: usize| {
        StageError::param(
            format!("target.{field}"),
            format!("{want} is larger than the model's {have}"),
        )
    };
    let zero = |field: &str| StageError::param(format!("target.{field}"), "must be positive");
    let mut n = *s;
    for (field, want, have, slot) in [
        ("hidden", t.hidden, s.hidden, &mut n.hidden),
        ("ffn", t.ffn, s.ffn, &mut n.ffn),
    ] {
        if let Some(w) = want {
            if w == 0 {
                return Err(zero(field));
            }
            if w > have {
                return Err(over(field, w, have));
            }
            *slot = w;
        }
    }
    let (heads, groups) = head_targets(s, t)?;
    n.heads = heads;
    n.kv_heads = groups;
    if let Some(drop) = depth.and_then(|d| d.drop.as_ref()) {
        if let Some(&bad) = drop.iter().find(|&&i| i >= s.layers) {
            return Err(StageError::param(
                "depth.drop",
                format!(
                    "layer {bad} does not exist (the model has {} layers, numbered from 0)",
                    s.layers
                ),
            ));
        }
    }
    let layers = match (t.layers, depth.and_then(|d| d.drop.as_ref())) {
        (Some(0), _) => return Err(zero("layers")),
        (Some(w), _) if w > s.layers => return Err(over("layers", w, s.layers)),
        (Some(w), Some(drop)) if w + drop.len() != s.layers => {
            return Err(StageError::param(
                "depth.drop",
                format!("dropping {} of {} layers leaves {}, but target.layers is {w}", drop.len(), s.layers, s.layers.saturating_sub(drop.len())),
            ))
        }
        (Some(w), None) if w < s.layers && depth.and_then(|d| d.by).is_none() => {
            return Err(StageError::param("depth", format!("target.layers {w} < {} needs `depth: {{ drop: [...] }}` or `depth: {{ by: lm_loss }}`", s.layers)))
        }
        (Some(w), _) => w,
        (None, Some(drop)) => {
            let mut d = drop.clone();
            d.sort_unstable();
            d.dedup();
            if d.len() != drop.len() {
                return Err(StageError::param("depth.drop", "lists a layer twice"));
            }
            if d.len() >= s.layers {
                return Err(StageError::param("depth.drop", "drops every layer"));
            }
            s.layers - d.len()
        }
        (None, None) => {
            if depth.and_then(|d| d.by).is_some() {
                return Err(StageError::param("target.layers", "`depth.by` needs target.layers (how many layers to keep)"));
            }
            s.layers
        }
    };
    n.layers = layers;
    Ok(n)
}

/// (query heads, KV groups) after pruning. Only the KV count given: keep the per-group count.
/// Only heads given: keep every group and prune within groups (Minitron never drops a group
/// unless asked).
fn head_targets(s: &ModelShape, t: &Target) -> Result<(usize, usize)> {
    let groups = t.kv_heads.unwrap_or(s.kv_heads);
    if groups == 0 {
        return Err(StageError::param("target.kv_heads", "must be positive"));
    }
    if groups > s.kv_heads {
        return Err(StageError::param(
            "target.kv_heads",
            format!("{groups} is larger than the model's {}", s.kv_heads),
        ));
    }
    let heads = t.heads.unwrap_or(groups * s.group_size());
    if heads == 0 {
        return Err(StageError::param("target.heads", "must be positive"));
    }
    if heads > s.heads {
        return Err(StageError::param(
            "target.heads",
            format!("{heads} is larger than the model's {}", s.heads),
        ));
    }
    if !heads.is_multiple_of(groups) {
        return Err(StageError::param(
            "target.heads",
            format!("{heads} heads cannot be split evenly over {groups} KV groups"),
        ));
    }
    if heads / groups > s.group_size() {
        return Err(StageError::param(
            "target.heads",
            format!(
                "{heads} heads over {groups} KV groups needs {} per group, the model has {}",
                heads / groups,
                s.group_size()
            ),
        ));
    }
    Ok((heads, groups))
}

/// L2 norms along `dim` of a 2-D tensor, in f64 (so near-ties rank the way a float64 reference does).
fn norms(t: &Tensor, sum_dim: usize, what: &str) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.sqr())
        .and_then(|t| t.sum(sum_dim))
        .and_then(|t| t.sqrt())
        .and_then(|t| t.to_vec1::<f64>())
        .ctx(|| format!("weight norms of `{what}`"))
}

/// Sum of squares of consecutive blocks of `size` entries (per-head rows/columns).
fn block_sq(v: &[f64], size: usize) -> Vec<f64> {
    v.chunks(size)
        .map(|c| c.iter().map(|x| x * x).sum())
        .collect()
}

/// Per-unit importance for the axes being pruned.
struct Importance {
    channels: Vec<f64>,
    heads: Vec<Vec<f64>>,
    groups: Vec<Vec<f64>>,
    neurons: Vec<Vec<f64>>,
}

fn magnitude(ck: &Checkpoint) -> Result<Importance> {
    let s = ck.shape;
    let channels = norms(ck.get(names::EMBED)?, 0, names::EMBED)?;
    let mut imp = Importance {
        channels,
        heads: vec![],
        groups: vec![],
        neurons: vec![],
    };
    for l in 0..s.layers {
        let gate = names::layer(l, T::Gate);
        let gate = if ck.tensors.contains_key(&gate) {
            gate
        } else {
            names::layer(l, T::Up)
        };
        imp.neurons.push(norms(ck.get(&gate)?, 1, &gate)?);
        let q = names::layer(l, T::Q);
        let o = names::layer(l, T::O);
        let k = names::layer(l, T::K);
        let v = names::layer(l, T::V);
        let q_rows = block_sq(&norms(ck.get(&q)?, 1, &q)?, s.head_dim);
        let o_cols = block_sq(&norms(ck.get(&o)?, 0, &o)?, s.head_dim);
        let k_rows = block_sq(&norms(ck.get(&k)?, 1, &k)?, s.head_dim);
        let v_rows = block_sq(&norms(ck.get(&v)?, 1, &v)?, s.head_dim);
        let head_sq: Vec<f64> = q_rows.iter().zip(&o_cols).map(|(a, b)| a + b).collect();
        let groups = (0..s.kv_heads)
            .map(|g| {
                let heads: f64 = head_sq[g * s.group_size()..(g + 1) * s.group_size()]
                    .iter()
                    .sum();
                (heads + k_rows[g] + v_rows[g]).sqrt()
            })
            .collect();
        imp.heads.push(head_sq.iter().map(|x| x.sqrt()).collect());
        imp.groups.push(groups);
    }
    Ok(imp)
}

fn random(s: &ModelShape, seed: u64) -> Importance {
    // One stream per (axis, layer), so the choice on one axis does not depend on which other
    // axes are pruned.
    let draw = |stream: u64, n: usize| -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        (0..n).map(|_| rng.random::<f64>()).collect()
    };
    let per_layer = |axis: u64, n: usize| -> Vec<Vec<f64>> {
        (0..s.layers)
            .map(|l| draw(axis << 32 | l as u64, n))
            .collect()
    };
    Importance {
        channels: draw(0, s.hidden),
        heads: per_layer(1, s.heads),
        groups: per_layer(2, s.kv_heads),
        neurons: per_layer(3, s.ffn),
    }
}

fn activation(s: &ModelShape, sc: &Scores, t: &ModelShape) -> Result<Importance> {
    let mismatch = |name: &str, got: String, want: String| {
        StageError::input("scores", format!("`{name}` has shape {got} but the model needs {want}: were the scores computed on this model?"))
    };
    let need_2d = |name: &str,
                   v: &Option<Vec<Vec<f32>>>,
                   cols: usize,
                   used: bool|
     -> Result<Vec<Vec<f64>>> {
        match v {
            None if used => Err(StageError::input("scores", format!("no `{name}` scores: add `{name}` to the score stage's axes, or use method magnitude"))),
            None => Ok(vec![]),
            Some(v) => {
                if v.len() != s.layers || v.iter().any(|r| r.len() != cols) {
                    return Err(mismatch(name, format!("[{}, {}]", v.len(), v.first().map_or(0, Vec::len)), format!("[{}, {cols}]", s.layers)));
                }
                Ok(v.iter().map(|r| r.iter().map(|&x| x as f64).collect()).collect())
            }
        }
    };
    let heads = need_2d(
        "heads",
        &sc.heads,
        s.heads,
        t.heads != s.heads || t.kv_heads != s.kv_heads,
    )?;
    let neurons = need_2d("neurons", &sc.neurons, s.ffn, t.ffn != s.ffn)?;
    let channels: Vec<f64> = match &sc.channels {
        None if t.hidden != s.hidden => {
            return Err(StageError::input("scores", "no `channels` scores: add `channels` to the score stage's axes, or use method magnitude"))
        }
        None => vec![],
        Some(c) if c.len() != s.hidden => return Err(mismatch("channels", format!("[{}]", c.len()), format!("[{}]", s.hidden))),
        Some(c) => c.iter().map(|&x| x as f64).collect(),
    };
    // A group's score is the L2 norm over its heads' scores (ModelOpt's query-group score).
    let groups = heads
        .iter()
        .map(|row| {
            (0..s.kv_heads)
                .map(|g| {
                    row[g * s.group_size()..(g + 1) * s.group_size()]
                        .iter()
                        .map(|x| x * x)
                        .sum::<f64>()
                        .sqrt()
                })
                .collect()
        })
        .collect();
    Ok(Importance {
        channels,
        heads,
        groups,
        neurons,
    })
}

/// Which layers survive.
fn keep_layers(
    s: &ModelShape,
    new_layers: usize,
    depth: Option<&Depth>,
    scores: Option<&Scores>,
) -> Result<Vec<usize>> {
    let n_drop = s.layers - new_layers;
    if let Some(drop) = depth.and_then(|d| d.drop.as_ref()) {
        return Ok((0..s.layers).filter(|i| !drop.contains(i)).collect());
    }
    if n_drop == 0 {
        return Ok((0..s.layers).collect());
    }
    let d = depth.expect("target_shape refuses fewer layers without a depth rule");
    let metric =
        d.by.expect("target_shape refuses fewer layers without a depth rule");
    let name = metric.tensor_name();
    let sc = scores.ok_or_else(|| {
        StageError::input(
            "scores",
            format!("`depth.by` needs a scores input with `{name}`"),
        )
    })?;
    let v = match metric {
        LayerMetric::LmLoss => &sc.layer_lm_loss,
        LayerMetric::BlockInfluence => &sc.layer_block_influence,
    }
    .as_ref()
    .ok_or_else(|| {
        StageError::input(
            "scores",
            format!("no `{name}` scores: set the score stage's layer_metric accordingly"),
        )
    })?;
    if v.len() != s.layers {
        return Err(StageError::input(
            "scores",
            format!(
                "`{name}` scores {} layers, the model has {}",
                v.len(),
                s.layers
            ),
        ));
    }
    if d.contiguous {
        // The block whose summed importance is smallest; the earliest on ties.
        let start = (0..=s.layers - n_drop)
            .min_by(|&a, &b| {
                let sa: f64 = v[a..a + n_drop].iter().map(|&x| x as f64).sum();
                let sb: f64 = v[b..b + n_drop].iter().map(|&x| x as f64).sum();
                sa.total_cmp(&sb).then(a.cmp(&b))
            })
            .expect("at least one window exists since n_drop <= layers");
        Ok((0..s.layers)
            .filter(|i| *i < start || *i >= start + n_drop)
            .collect())
    } else {
        top_k(name, v, new_layers)
    }
}

/// Decides what to keep. `scores` is needed for `Method::Activation` and `depth.by`.
pub fn plan(
    ck: &Checkpoint,
    target: &Target,
    method: Method,
    depth: Option<&Depth>,
    scores: Option<&Scores>,
    seed: u64,
) -> Result<KeepPlan> {
    let s = ck.shape;
    let t = target_shape(&s, target, depth)?;
    let layers = keep_layers(&s, t.layers, depth, scores)?;
    let width_pruned =
        t.hidden != s.hidden || t.ffn != s.ffn || t.heads != s.heads || t.kv_heads != s.kv_heads;
    let imp = if !width_pruned {
        None
    } else {
        Some(match method {
            Method::Magnitude => magnitude(ck)?,
            Method::Random => random(&s, seed),
            Method::Activation => {
                let sc = scores.ok_or_else(|| StageError::input("scores", "method `activation` needs a `scores` input (a score stage), or use method magnitude/random"))?;
                activation(&s, sc, &t)?
            }
        })
    };
    let all = |n: usize| (0..n).collect::<Vec<_>>();
    let channels = match &imp {
        Some(i) if t.hidden != s.hidden => top_k("channels", &i.channels, t.hidden)?,
        _ => all(s.hidden),
    };
    let mut plan = KeepPlan {
        layers: layers.clone(),
        channels,
        neurons: vec![],
        heads: vec![],
        groups: vec![],
        shape: t,
    };
    let per_group = t.heads / t.kv_heads;
    for &l in &layers {
        plan.neurons.push(match &imp {
            Some(i) if t.ffn != s.ffn => {
                top_k(&format!("neurons of layer {l}"), &i.neurons[l], t.ffn)?
            }
            _ => all(s.ffn),
        });
        let (groups, heads) = match &imp {
            Some(i) if t.heads != s.heads || t.kv_heads != s.kv_heads => {
                let groups = top_k(&format!("KV groups of layer {l}"), &i.groups[l], t.kv_heads)?;
                let mut heads = Vec::with_capacity(t.heads);
                for &g in &groups {
                    let base = g * s.group_size();
                    let within = top_k(
                        &format!("heads of layer {l} group {g}"),
                        &i.heads[l][base..base + s.group_size()],
                        per_group,
                    )?;
                    heads.extend(within.into_iter().map(|h| base + h));
                }
                (groups, heads)
            }
            _ => (all(s.kv_heads), all(s.heads)),
        };
        plan.groups.push(groups);
        plan.heads.push(heads);
    }
    Ok(plan)
}

/// Rows (or columns) of whole heads: head `h` owns `h*head_dim .. (h+1)*head_dim`.
fn head_rows(heads: &[usize], head_dim: usize) -> Vec<usize> {
    heads
        .iter()
        .flat_map(|&h| h * head_dim..(h + 1) * head_dim)
        .collect()
}

/// Keeps `idx` along `dim`, unless that is every index (then the tensor is returned as is, so
/// untouched tensors stay bit-identical without a copy).
fn select(t: &Tensor, dim: usize, idx: &[usize], name: &str) -> Result<Tensor> {
    let n = t.dim(dim).ctx(|| format!("`{name}` dimension {dim}"))?;
    if idx.len() == n && idx.iter().enumerate().all(|(i, &j)| i == j) {
        return Ok(t.clone());
    }
    let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let ids = Tensor::new(ids.as_slice(), t.device()).ctx(|| format!("indices for `{name}`"))?;
    t.index_select(&ids, dim)
        .ctx(|| format!("slicing `{name}` along dimension {dim}"))
}

/// Slices every tensor of `ck` according to `plan`, renumbering kept layers from 0.
pub fn apply(ck: &Checkpoint, plan: &KeepPlan) -> Result<Checkpoint> {
    let s = ck.shape;
    let hd = s.head_dim;
    let ch = &plan.channels;
    let mut out = std::collections::BTreeMap::new();
    for (name, t) in &ck.tensors {
        if let Some(split) = names::split_layer(name) {
            let (old, field) = split.map_err(|why| StageError::tensor(name, why))?;
            if old >= s.layers {
                return Err(StageError::tensor(
                    name,
                    format!("layer {old} is past num_hidden_layers {}", s.layers),
                ));
            }
            let Some(pos) = plan.layers.iter().position(|&l| l == old) else {
                continue;
            };
            let lt = T::from_suffix(field).ok_or_else(|| {
                StageError::tensor(name, "unknown layer tensor: cannot tell how to prune it")
            })?;
            let q_rows = head_rows(&plan.heads[pos], hd);
            let kv_rows = head_rows(&plan.groups[pos], hd);
            let neurons = &plan.neurons[pos];
            let sliced = match lt {
                T::AttnNorm | T::AttnNormBias | T::MlpNorm | T::MlpNormBias => {
                    select(t, 0, ch, name)?
                }
                T::Q => select(&select(t, 0, &q_rows, name)?, 1, ch, name)?,
                T::K | T::V => select(&select(t, 0, &kv_rows, name)?, 1, ch, name)?,
                T::O => select(&select(t, 0, ch, name)?, 1, &q_rows, name)?,
                // Per-head norms act over head_dim, which pruning keeps.
                T::QNorm | T::KNorm => t.clone(),
                T::Gate | T::Up => select(&select(t, 0, neurons, name)?, 1, ch, name)?,
                T::Down => select(&select(t, 0, ch, name)?, 1, neurons, name)?,
            };
            out.insert(names::layer(pos, lt), sliced);
            continue;
        }
        let new = match name.as_str() {
            names::EMBED | names::LM_HEAD => select(t, 1, ch, name)?,
            names::FINAL_NORM | names::FINAL_NORM_BIAS => select(t, 0, ch, name)?,
            _ => {
                return Err(StageError::tensor(
                    name,
                    "unknown tensor: cannot tell how to prune it",
                ))
            }
        };
        out.insert(name.clone(), new);
    }
    let mut config = ck.config.clone();
    // Per-layer config lists (Qwen3's `layer_types`) follow the kept layers: transformers refuses
    // a list whose length differs from num_hidden_layers.
    if let Some(serde_json::Value::Array(types)) = config.get_mut("layer_types") {
        if types.len() == s.layers {
            *types = plan.layers.iter().map(|&l| types[l].clone()).collect();
        }
    }
    let pruned = Checkpoint {
        config,
        shape: plan.shape,
        tensors: out,
    };
    pruned.check_shapes()?;
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn shape() -> ModelShape {
        ModelShape {
            vocab: 16,
            hidden: 8,
            ffn: 12,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
            layers: 3,
            tied: false,
            family: pollard_model::Family::Llama,
        }
    }

    /// A small random checkpoint with the Llama layout.
    fn synthetic(s: ModelShape) -> Checkpoint {
        let dev = Device::Cpu;
        let mut tensors = std::collections::BTreeMap::new();
        let mut seed = 0u64;
        let mut rnd = |dims: &[usize]| {
            seed += 1;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
            Tensor::from_vec(v, dims, &dev).unwrap()
        };
        let cfg = pollard_model::LlamaConfig::new(
            s.vocab, s.hidden, s.ffn, s.layers, s.heads, s.kv_heads, s.head_dim,
        )
        .with_family(s.family);
        for (name, dims) in cfg.expected_tensors() {
            tensors.insert(name, rnd(&dims));
        }
        let serde_json::Value::Object(config) = cfg.to_hf_json() else {
            unreachable!("to_hf_json writes an object")
        };
        Checkpoint {
            config,
            shape: s,
            tensors,
        }
    }

    #[test]
    fn targets_larger_than_the_model_or_uneven_groups_are_refused_by_field() {
        let s = shape();
        let e = |t: Target| target_shape(&s, &t, None).unwrap_err().to_string();
        assert!(e(Target {
            hidden: Some(9),
            ..Default::default()
        })
        .contains("target.hidden"));
        assert!(e(Target {
            heads: Some(3),
            ..Default::default()
        })
        .contains("cannot be split evenly over 2"));
        assert!(e(Target {
            kv_heads: Some(3),
            ..Default::default()
        })
        .contains("target.kv_heads"));
        assert!(e(Target {
            layers: Some(2),
            ..Default::default()
        })
        .contains("needs `depth"));
        let drop = Depth {
            drop: Some(vec![3]),
            ..Default::default()
        };
        assert!(target_shape(&s, &Target::default(), Some(&drop))
            .unwrap_err()
            .to_string()
            .contains("layer 3 does not exist"));
        // Only kv_heads given: the per-group head count is kept.
        let t = target_shape(
            &s,
            &Target {
                kv_heads: Some(1),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!((t.heads, t.kv_heads), (2, 1));
    }

    #[test]
    fn gqa_heads_are_ranked_within_groups_and_groups_by_their_score() {
        let s = shape();
        let ck = synthetic(s);
        // Head scores: group 0 = heads {0,1}, group 1 = heads {2,3}.
        let scores = Scores {
            heads: Some(vec![vec![1.0, 5.0, 3.0, 2.0]; 3]),
            ..Default::default()
        };
        let p = plan(
            &ck,
            &Target {
                heads: Some(2),
                ..Default::default()
            },
            Method::Activation,
            None,
            Some(&scores),
            0,
        )
        .unwrap();
        assert_eq!(p.heads[0], vec![1, 2], "the best head of each group");
        assert_eq!(p.groups[0], vec![0, 1]);
        let p = plan(
            &ck,
            &Target {
                kv_heads: Some(1),
                ..Default::default()
            },
            Method::Activation,
            None,
            Some(&scores),
            0,
        )
        .unwrap();
        assert_eq!(
            (p.groups[0].clone(), p.heads[0].clone()),
            (vec![0], vec![0, 1]),
            "group 0 scores sqrt(26) > sqrt(13)"
        );
        let pruned = apply(&ck, &p).unwrap();
        // k_proj keeps group 0's rows (head_dim 2), q keeps heads 0 and 1 (rows 0..4).
        let k = pruned
            .get("model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        let k0 = ck
            .get("model.layers.0.self_attn.k_proj.weight")
            .unwrap()
            .narrow(0, 0, 2)
            .unwrap();
        assert_eq!(k.to_vec2::<f32>().unwrap(), k0.to_vec2::<f32>().unwrap());
        assert_eq!(
            pruned
                .get("model.layers.0.self_attn.o_proj.weight")
                .unwrap()
                .dims(),
            &[8, 4]
        );
    }

    #[test]
    fn hidden_pruning_trims_every_tensor_consistently() {
        let s = shape();
        let ck = synthetic(s);
        let scores = Scores {
            channels: Some(vec![8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0]),
            ..Default::default()
        };
        let p = plan(
            &ck,
            &Target {
                hidden: Some(4),
                ..Default::default()
            },
            Method::Activation,
            None,
            Some(&scores),
            0,
        )
        .unwrap();
        assert_eq!(p.channels, vec![0, 2, 4, 6]);
        let pruned = apply(&ck, &p).unwrap();
        assert_eq!(pruned.shape.hidden, 4);
        assert_eq!(
            pruned.shape.head_dim, 2,
            "head_dim is kept under hidden pruning"
        );
        let emb = pruned
            .get("model.embed_tokens.weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let orig = ck
            .get("model.embed_tokens.weight")
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(emb[3], vec![orig[3][0], orig[3][2], orig[3][4], orig[3][6]]);
        let down = pruned.get("model.layers.2.mlp.down_proj.weight").unwrap();
        assert_eq!(down.dims(), &[4, 12]);
    }

    #[test]
    fn depth_by_metric_drops_least_important_or_best_contiguous_block() {
        let s = ModelShape {
            layers: 5,
            ..shape()
        };
        let ck = synthetic(s);
        let scores = Scores {
            layer_lm_loss: Some(vec![5.0, 0.1, 3.0, 0.2, 4.0]),
            ..Default::default()
        };
        let by = |contiguous| Depth {
            by: Some(LayerMetric::LmLoss),
            contiguous,
            ..Default::default()
        };
        let t = Target {
            layers: Some(3),
            ..Default::default()
        };
        let p = plan(
            &ck,
            &t,
            Method::Magnitude,
            Some(&by(false)),
            Some(&scores),
            0,
        )
        .unwrap();
        assert_eq!(p.layers, vec![0, 2, 4]);
        // Contiguous pairs: (0,1)=5.1 (1,2)=3.1 (2,3)=3.2 (3,4)=4.2 -> drop 1,2.
        let p = plan(
            &ck,
            &t,
            Method::Magnitude,
            Some(&by(true)),
            Some(&scores),
            0,
        )
        .unwrap();
        assert_eq!(p.layers, vec![0, 3, 4]);
        let pruned = apply(&ck, &p).unwrap();
        assert_eq!(
            pruned
                .get("model.layers.1.mlp.up_proj.weight")
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            ck.get("model.layers.3.mlp.up_proj.weight")
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        assert!(!pruned
            .tensors
            .contains_key("model.layers.3.mlp.up_proj.weight"));
    }

    #[test]
    fn random_is_seeded_and_activation_without_scores_is_refused() {
        let ck = synthetic(shape());
        let t = Target {
            ffn: Some(6),
            ..Default::default()
        };
        let a = plan(&ck, &t, Method::Random, None, None, 7).unwrap();
        let b = plan(&ck, &t, Method::Random, None, None, 7).unwrap();
        let c = plan(&ck, &t, Method::Random, None, None, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.neurons, c.neurons);
        let err = plan(&ck, &t, Method::Activation, None, None, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("scores"), "{err}");
    }
}
