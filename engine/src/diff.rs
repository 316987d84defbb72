//! Comparing two records of a pipeline (lock files, read from disk or from a git revision):
//! `pollard params diff` and `pollard metrics diff` build their tables here. Values are
//! flattened to dotted paths (`optimizer.lr`, `tasks.hellaswag.acc`) so nested fields compare
//! one by one, like `dvc params diff` and `dvc metrics diff`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::lockfile::LockFile;

/// One changed (or, with `all`, unchanged) field of one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffRow {
    pub stage: String,
    /// Dotted path of the field inside the stage's params or metrics.
    pub field: String,
    /// `None` when the field (or the whole stage) is absent on that side.
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
    /// `new - old` for two numbers, else `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<f64>,
}

/// Which part of each lock entry to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffWhat {
    Params,
    Metrics,
}

/// Every leaf of `v` under a dotted path; arrays count as leaves (a list of layer indices is one
/// value to a reader).
pub fn flatten(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&path, child, out);
            }
        }
        _ if prefix.is_empty() => {}
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

/// The numeric leaves of a stage's `metrics.json`, flattened: what the lock file keeps as the
/// stage's metrics. Non-numeric fields (names, lists) are not metrics.
pub fn numeric_metrics(m: &serde_json::Value) -> Option<serde_json::Value> {
    let nums: serde_json::Map<String, serde_json::Value> = flatten(m)
        .into_iter()
        .filter(|(_, v)| v.is_number())
        .collect();
    if nums.is_empty() {
        None
    } else {
        Some(serde_json::Value::Object(nums))
    }
}

/// The rows that differ between `old` and `new` (every row with `all`), by stage then field.
/// A stage missing on one side shows each of its fields with `None` there.
pub fn diff(old: &LockFile, new: &LockFile, what: DiffWhat, all: bool) -> Vec<DiffRow> {
    let part = |lock: &LockFile| -> BTreeMap<String, BTreeMap<String, serde_json::Value>> {
        lock.stages
            .iter()
            .map(|(id, e)| {
                let fields = match what {
                    DiffWhat::Params => flatten(&e.params),
                    DiffWhat::Metrics => e.metrics.as_ref().map(flatten).unwrap_or_default(),
                };
                (id.to_string(), fields)
            })
            .collect()
    };
    let (a, b) = (part(old), part(new));
    let empty = BTreeMap::new();
    let mut stages: Vec<&String> = a.keys().chain(b.keys()).collect();
    stages.sort();
    stages.dedup();
    let mut rows = Vec::new();
    for stage in stages {
        let (fa, fb) = (
            a.get(stage).unwrap_or(&empty),
            b.get(stage).unwrap_or(&empty),
        );
        let mut fields: Vec<&String> = fa.keys().chain(fb.keys()).collect();
        fields.sort();
        fields.dedup();
        for field in fields {
            let (va, vb) = (fa.get(field), fb.get(field));
            if va == vb && !all {
                continue;
            }
            let change = match (va.and_then(|v| v.as_f64()), vb.and_then(|v| v.as_f64())) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            };
            rows.push(DiffRow {
                stage: stage.clone(),
                field: field.clone(),
                old: va.cloned(),
                new: vb.cloned(),
                change,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockfile::{LockEntry, LOCK_VERSION};

    fn lock(stages: &[(&str, serde_json::Value, Option<serde_json::Value>)]) -> LockFile {
        LockFile {
            version: LOCK_VERSION,
            pipeline: "p".into(),
            stages: stages
                .iter()
                .map(|(id, params, metrics)| {
                    (
                        crate::StageId::from(*id),
                        LockEntry {
                            kind: "train".into(),
                            kind_version: 1,
                            key: pollard_cache::CacheKey::of(b"k"),
                            params: params.clone(),
                            inputs: BTreeMap::new(),
                            deps: BTreeMap::new(),
                            output: pollard_cache::ArtifactId(pollard_cache::Digest::of(b"o")),
                            metrics: metrics.clone(),
                            devices: vec![],
                            uses: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn nested_fields_compare_one_by_one_with_numeric_change() {
        let old = lock(&[(
            "distill",
            serde_json::json!({"lr": 1e-3, "optimizer": {"beta2": 0.95}, "loss": "kl"}),
            Some(serde_json::json!({"val_loss": 1.25, "tasks.agree.acc": 0.5})),
        )]);
        let new = lock(&[(
            "distill",
            serde_json::json!({"lr": 1e-4, "optimizer": {"beta2": 0.95}, "loss": "kl"}),
            Some(serde_json::json!({"val_loss": 1.5, "tasks.agree.acc": 0.5})),
        )]);
        let p = diff(&old, &new, DiffWhat::Params, false);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "lr");
        assert!((p[0].change.unwrap() - (1e-4 - 1e-3)).abs() < 1e-12);
        let m = diff(&old, &new, DiffWhat::Metrics, false);
        assert_eq!(
            m,
            vec![DiffRow {
                stage: "distill".into(),
                field: "val_loss".into(),
                old: Some(serde_json::json!(1.25)),
                new: Some(serde_json::json!(1.5)),
                change: Some(0.25),
            }]
        );
        assert_eq!(diff(&old, &new, DiffWhat::Metrics, true).len(), 2);
    }

    #[test]
    fn a_stage_on_one_side_only_shows_its_fields_as_absent() {
        let old = lock(&[]);
        let new = lock(&[(
            "eval",
            serde_json::json!({}),
            Some(serde_json::json!({"acc": 0.7})),
        )]);
        let m = diff(&old, &new, DiffWhat::Metrics, false);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].old, None);
        assert_eq!(m[0].change, None);
    }

    #[test]
    fn metrics_keep_every_numeric_leaf_not_only_the_top_level() {
        let m = serde_json::json!({
            "val_loss": 1.5, "name": "x",
            "tasks": {"hellaswag": {"acc": 0.25, "n": 100}, "arc": {"acc_norm": 0.5}}
        });
        let kept = numeric_metrics(&m).unwrap();
        let keys: Vec<&String> = kept.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            vec![
                "tasks.arc.acc_norm",
                "tasks.hellaswag.acc",
                "tasks.hellaswag.n",
                "val_loss"
            ]
        );
        assert_eq!(numeric_metrics(&serde_json::json!({"name": "x"})), None);
    }
}
