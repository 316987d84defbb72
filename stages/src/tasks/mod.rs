//! Multiple-choice tasks for `evaluate`, scored as lm-evaluation-harness scores its
//! `multiple_choice` tasks: task files are read into items ([`layout`]), turned into
//! (context, continuation) requests with seeded few-shot examples ([`prompt`], [`pyrandom`]),
//! tokenized and scored by summed log-likelihood ([`score`]), then summarised per task.

pub mod layout;
pub mod prompt;
pub mod pyrandom;
pub mod score;

use std::path::PathBuf;

use pollard_engine::ParamError;
use pollard_model::Llama;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::Result;
use layout::Item;
use score::{ItemResult, PairEncoder};

/// One task of `evaluate`'s `tasks` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The task's name in `metrics.json` (`tasks.<name>`) and in reports.
    pub name: String,
    /// A JSONL file relative to the manifest's folder (its content enters the cache key). Without
    /// it the task is the `data` input's `tasks/<name>.jsonl` (the synthetic corpus writes some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Few-shot examples before each item, drawn from the same file without the item.
    #[serde(default)]
    pub shots: usize,
    /// Seed of the few-shot draws (the harness's default `fewshot_random_seed` is 1234).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Between question and answer (the harness's `target_delimiter`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Score only the first `limit` items (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

fn default_seed() -> u64 {
    1234
}
fn default_delimiter() -> String {
    " ".into()
}

/// Where a task's items live in the `data` input when it names no `path`.
pub fn data_task_file(name: &str) -> PathBuf {
    PathBuf::from("tasks").join(format!("{name}.jsonl"))
}

/// Checks a `tasks` list (`field` is its name inside `with`), all errors at once.
pub fn validate(field: &str, tasks: &[TaskSpec], errs: &mut Vec<ParamError>) {
    for (i, t) in tasks.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let valid_name = !t.name.is_empty()
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !valid_name {
            errs.push(ParamError::new(
                at("name"),
                format!(
                    "{:?} must be non-empty letters, digits, `_`, `-` or `.`",
                    t.name
                ),
            ));
        }
        if tasks[..i].iter().any(|o| o.name == t.name) {
            errs.push(ParamError::new(
                at("name"),
                format!("{:?} is listed twice", t.name),
            ));
        }
        if t.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            errs.push(ParamError::new(at("path"), "is empty"));
        }
        if t.limit == Some(0) {
            errs.push(ParamError::new(at("limit"), "must be at least 1"));
        }
    }
}

/// A task's summary and its per-item outcomes.
pub struct TaskOutcome {
    pub metrics: Value,
    pub items: Vec<ItemResult>,
}

/// Scores `items` of task `spec` with `model`.
pub fn run(
    model: &Llama,
    enc: &PairEncoder,
    spec: &TaskSpec,
    items: &[Item],
    batch: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<TaskOutcome> {
    let items = &items[..spec.limit.unwrap_or(items.len()).min(items.len())];
    // Few-shot draws range over the whole file, as the harness's sampler does.
    let per_item = prompt::build(items, spec.shots, spec.seed, &spec.delimiter);
    let mut flat = Vec::new();
    for reqs in &per_item {
        for (ctx, cont) in reqs {
            flat.push(enc.pair(ctx, cont)?);
        }
    }
    let max_len = model.config().max_position_embeddings;
    let lls = score::loglikelihoods(model, &flat, batch, max_len, cancelled)?;
    let mut at = 0;
    let results: Vec<ItemResult> = items
        .iter()
        .map(|item| {
            let n = item.choices.len();
            let r = score::judge(
                item.line,
                item.gold,
                &item.choices,
                lls[at..at + n].to_vec(),
            );
            at += n;
            r
        })
        .collect();
    let hit = |f: fn(&ItemResult) -> usize| -> Vec<f64> {
        results
            .iter()
            .map(|r| if f(r) == r.gold { 1.0 } else { 0.0 })
            .collect()
    };
    let (acc, acc_se) = score::mean_stderr(&hit(|r| r.pred));
    let (norm, norm_se) = score::mean_stderr(&hit(|r| r.pred_norm));
    let (bytes, bytes_se) = score::mean_stderr(&hit(|r| r.pred_bytes));
    let chance = items
        .iter()
        .map(|i| 1.0 / i.choices.len() as f64)
        .sum::<f64>()
        / items.len() as f64;
    Ok(TaskOutcome {
        metrics: json!({
            "acc": acc,
            "acc_stderr": acc_se,
            "acc_norm": norm,
            "acc_norm_stderr": norm_se,
            "acc_bytes": bytes,
            "acc_bytes_stderr": bytes_se,
            "n": results.len(),
            "shots": spec.shots,
            "chance": chance,
        }),
        items: results,
    })
}
