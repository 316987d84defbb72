//! `select`: the `<group>.best` stage a `matrix` group's `select:` adds (see the engine's
//! `select` module). It reads the ranking metric from each candidate's `metrics.json` (slot
//! `by-<copy>`), picks the smallest (`mode: min`) or largest (`max`), ties to the first copy,
//! hard-links the winner's `result` files (slot `<copy>`) into its output, so they are the same
//! bytes and the same cache objects, and writes `selection.json`: every candidate's metric and
//! rank, the winner, and with `compare` a second ranking and the two rankings' Spearman
//! correlation.

use std::path::Path;

use pollard_engine::{BoxError, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::common::{read_json, write_json};
use crate::error::{Result, StageError};

pub struct Select;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectParams {
    /// `<stage>.<metric>` as written (for `selection.json`).
    pub by: String,
    /// The metric's dotted path inside the ranking stage's `metrics.json`.
    pub metric: String,
    pub mode: Mode,
    /// The group's copies, in manifest order.
    pub candidates: Vec<String>,
    /// A second ranking, `<stage>.<metric>` (same `mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<String>,
}

/// A metric by dotted path (`tasks.agreement.acc`).
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

fn metric_of(inputs: &Inputs, slot: &str, metric: &str, copy: &str) -> Result<f64> {
    let dir = inputs
        .path(slot)
        .map_err(|e| StageError::input(slot, e.to_string()))?;
    let path = dir.join("metrics.json");
    let m = read_json(&path)?;
    lookup(&m, metric)
        .and_then(Value::as_f64)
        .filter(|x| !x.is_nan())
        .ok_or_else(|| {
            StageError::input(
                slot,
                format!(
                    "candidate `{copy}`: {} has no number at `{metric}`",
                    path.display()
                ),
            )
        })
}

/// Ranks (1 = best) of `values` under `mode`; ties share the mean of their ranks.
pub fn ranks(values: &[f64], mode: Mode) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let key = |i: usize| match mode {
        Mode::Min => values[i],
        Mode::Max => -values[i],
    };
    idx.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    let mut r = vec![0.0; values.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && key(idx[j + 1]) == key(idx[i]) {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson's r of the ranks); None below 2 items or with a
/// constant ranking.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    if a.len() < 2 || a.len() != b.len() {
        return None;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Hard-links every file under `from` into `to` (same relative paths), copying only where the
/// filesystem refuses a link.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from).map_err(|e| StageError::io(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().map_err(|e| StageError::io(&src, e))?;
        if ty.is_dir() {
            std::fs::create_dir_all(&dst).map_err(|e| StageError::io(&dst, e))?;
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| StageError::io(&dst, e))?;
        }
    }
    Ok(())
}

impl Stage for Select {
    const KIND: &'static str = "select";
    const VERSION: u32 = 1;
    type Params = SelectParams;

    fn slots(&self) -> Slots {
        Slots::Any
    }

    fn validate(&self, p: &SelectParams) -> Result<(), Vec<ParamError>> {
        if p.candidates.is_empty() {
            return Err(vec![ParamError::new("candidates", "lists no candidate")]);
        }
        Ok(())
    }

    fn resources(&self, _p: &SelectParams, _inputs: &PlanInputs) -> Result<Resources, BoxError> {
        Ok(Resources {
            cpus: 1,
            ..Resources::default()
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &SelectParams, inputs: &Inputs) -> Result<(), BoxError> {
        let values = p
            .candidates
            .iter()
            .map(|c| metric_of(inputs, &format!("by-{c}"), &p.metric, c))
            .collect::<Result<Vec<f64>>>()?;
        let compared = match &p.compare {
            Some(cmp) => {
                let metric = cmp.split_once('.').map_or(cmp.as_str(), |(_, m)| m);
                Some(
                    p.candidates
                        .iter()
                        .map(|c| metric_of(inputs, &format!("compare-{c}"), metric, c))
                        .collect::<Result<Vec<f64>>>()?,
                )
            }
            None => None,
        };
        let r = ranks(&values, p.mode);
        // The winner: the best value, the first copy among equals.
        let winner = (0..values.len())
            .min_by(|&a, &b| r[a].total_cmp(&r[b]).then(a.cmp(&b)))
            .expect("validate ensures at least one candidate");
        let name = &p.candidates[winner];
        let from = inputs
            .path(name)
            .map_err(|e| StageError::input(name.as_str(), e.to_string()))?;
        link_tree(from, ctx.out_dir())?;
        let cr = compared.as_ref().map(|v| ranks(v, p.mode));
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| r[a].total_cmp(&r[b]).then(a.cmp(&b)));
        let candidates: Vec<Value> = order
            .iter()
            .map(|&i| {
                let mut c = json!({ "name": p.candidates[i], "value": values[i], "rank": r[i] });
                if let (Some(v), Some(cr)) = (&compared, &cr) {
                    c["compare_value"] = json!(v[i]);
                    c["compare_rank"] = json!(cr[i]);
                }
                c
            })
            .collect();
        let mut sel = json!({
            "by": p.by,
            "mode": p.mode,
            "winner": name,
            "candidates": candidates,
        });
        if let (Some(cmp), Some(cr)) = (&p.compare, &cr) {
            sel["compare"] = json!({ "by": cmp, "spearman": spearman(&r, cr) });
        }
        ctx.log(&format!(
            "best of {} candidates by {} ({:?}): {name} ({})",
            values.len(),
            p.by,
            p.mode,
            values[winner]
        ));
        write_json(&ctx.out_dir().join("selection.json"), &sel)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_share_ties_and_follow_the_mode() {
        assert_eq!(ranks(&[3.0, 1.0, 2.0], Mode::Min), vec![3.0, 1.0, 2.0]);
        assert_eq!(ranks(&[3.0, 1.0, 2.0], Mode::Max), vec![1.0, 3.0, 2.0]);
        assert_eq!(ranks(&[1.0, 1.0, 2.0], Mode::Min), vec![1.5, 1.5, 3.0]);
    }

    #[test]
    fn spearman_is_one_for_the_same_order_and_minus_one_reversed() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(spearman(&a, &a), Some(1.0));
        assert_eq!(spearman(&a, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0], &[1.0]), None);
    }
}
