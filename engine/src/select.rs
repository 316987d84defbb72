//! A `matrix` group's choice: `select: { by: <stage>.<metric>, mode: min|max, result: <stage> }`
//! (and optionally `compare: <stage>.<metric>`, a second ranking, e.g. before a light
//! distillation, that `selection.json` sets beside the first with their Spearman correlation)
//! on the group (parsed here from the manifest's group mapping) adds one more flat stage,
//! `<group>.best`, of kind `select`, bound to every copy's `by` stage (slot `by-<copy>`) and
//! `result` stage (slot `<copy>`). The kind (in pollard-stages) reads the metric from each
//! candidate's `metrics.json`, links the winner's result files into its output and writes
//! `selection.json`. Expansion stays a pure function of the manifest: the stage exists (and
//! `pollard dag` shows it) before anything runs.

use std::path::Path;

use crate::yaml::{Mapping, Value};
use serde::{Deserialize, Serialize};

use crate::expand::{FlatInput, FlatStage};
use crate::manifest::{Collector, RawStage};
use crate::yaml::inline;

/// The stage kind of `<group>.best`.
pub const KIND: &str = "select";
/// The id of the choice inside its group.
pub const BEST: &str = "best";
const FIELDS: &[&str] = &["by", "mode", "result", "compare"];

/// A parsed `select:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// Span path of the `select` mapping.
    pub path: String,
    /// The body stage whose `metrics.json` ranks the copies.
    pub by_stage: String,
    /// The metric's dotted path inside that file (`val_loss`, `tasks.agreement.acc`).
    pub metric: String,
    /// `min` or `max`.
    pub mode: String,
    /// The body stage whose output is the choice.
    pub result: String,
    /// A second ranking's (stage, metric), reported beside the first.
    pub compare: Option<(String, String)>,
}

/// What a finished `<group>.best` chose, as its `selection.json` records it (the file the
/// `select` kind writes); `status` prints it beside the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub winner: String,
    /// `<stage>.<metric>` as written in the manifest.
    pub by: String,
    pub mode: String,
    /// The winner's metric.
    pub value: f64,
    /// How many candidates were ranked.
    pub candidates: usize,
}

/// The choice recorded in a `select` output folder; `None` when the file is missing or not
/// what the kind writes (a status line is no place to fail over it).
pub fn choice_in(dir: &Path) -> Option<Choice> {
    let text = std::fs::read_to_string(dir.join("selection.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let winner = v.get("winner")?.as_str()?.to_string();
    let candidates = v.get("candidates")?.as_array()?;
    let value = candidates
        .iter()
        .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(winner.as_str()))?
        .get("value")?
        .as_f64()?;
    Some(Choice {
        by: v.get("by")?.as_str()?.to_string(),
        mode: v.get("mode")?.as_str()?.to_string(),
        value,
        candidates: candidates.len(),
        winner,
    })
}

/// The slot of a candidate's ranking stage.
pub fn by_slot(copy: &str) -> String {
    format!("by-{copy}")
}

/// The slot of a candidate's second-ranking stage.
pub fn compare_slot(copy: &str) -> String {
    format!("compare-{copy}")
}

/// Reports every key of `m` (the `block` at `path`) that is not in `fields`.
pub(crate) fn check_fields(
    c: &mut Collector,
    path: &str,
    stage: Option<&str>,
    m: &Mapping,
    block: &str,
    fields: &[&str],
) {
    for k in m.keys() {
        if !fields.contains(&k.as_str()) {
            c.at_key(
                &format!("{path}.{k}"),
                stage,
                format!(
                    "unknown field `{k}` in `{block}` (expected one of: {})",
                    fields.join(", ")
                ),
            );
        }
    }
}

/// Parses `select:` of group `id` (at span path `path`) against the group's body.
pub fn parse(
    c: &mut Collector,
    id: &str,
    path: &str,
    v: &Value,
    body: &[RawStage],
) -> Option<Select> {
    let stage = Some(id);
    let Value::Object(m) = v else {
        c.at(
            path,
            stage,
            "`select` must be a map `{ by: <stage>.<metric>, mode: min|max, result: <stage> }`",
        );
        return None;
    };
    check_fields(c, path, stage, m, "select", FIELDS);
    let text = |c: &mut Collector, m: &Mapping, f: &str| -> Option<String> {
        match m.get(f) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(other) => {
                c.at(
                    &format!("{path}.{f}"),
                    stage,
                    format!("`select.{f}` must be a string, found `{}`", inline(other)),
                );
                None
            }
            None => {
                c.at_key(path, stage, format!("`select` needs `{f}`"));
                None
            }
        }
    };
    let by = text(c, m, "by");
    let mode = m
        .get("mode")
        .map(|_| text(c, m, "mode"))
        .unwrap_or_else(|| Some("min".into()));
    let result = text(c, m, "result");
    let in_body = |s: &str| body.iter().any(|b| b.id == s);
    let mut ok = true;
    let (by_stage, metric) = match by.as_deref().and_then(|b| b.split_once('.')) {
        Some((s, metric)) if !metric.is_empty() => (s.to_string(), metric.to_string()),
        _ => {
            if let Some(b) = &by {
                c.at(
                    &format!("{path}.by"),
                    stage,
                    format!("`select.by: {b}` must be `<stage>.<metric>`, e.g. `eval.val_loss`"),
                );
            }
            return None;
        }
    };
    if !in_body(&by_stage) {
        c.at(
            &format!("{path}.by"),
            stage,
            format!("`select.by`: `{by_stage}` is not a stage of this group's body"),
        );
        ok = false;
    }
    if let Some(r) = &result {
        if !in_body(r) {
            c.at(
                &format!("{path}.result"),
                stage,
                format!("`select.result: {r}` is not a stage of this group's body"),
            );
            ok = false;
        }
    }
    if let Some(md) = &mode {
        if md != "min" && md != "max" {
            c.at(
                &format!("{path}.mode"),
                stage,
                format!("`select.mode: {md}` must be `min` or `max`"),
            );
            ok = false;
        }
    }
    let compare = match m.get("compare") {
        None => None,
        Some(_) => {
            match text(c, m, "compare")
                .as_deref()
                .and_then(|t| t.split_once('.'))
            {
                Some((s, metric)) if !metric.is_empty() && in_body(s) => {
                    Some((s.to_string(), metric.to_string()))
                }
                _ => {
                    c.at(&format!("{path}.compare"), stage, "`select.compare` must be `<stage>.<metric>` with a stage of this group's body");
                    ok = false;
                    None
                }
            }
        }
    };
    if body.iter().any(|b| b.id == BEST) {
        c.at_key(path, stage, format!("`select` adds the stage `{id}.{BEST}`: the body cannot have a stage named `{BEST}`"));
        ok = false;
    }
    Some(Select {
        path: path.to_string(),
        by_stage,
        metric,
        mode: mode?,
        result: result?,
        compare,
    })
    .filter(|_| ok)
}

/// The `<group>.best` stage over the group's copies (`copies` are the copy names, in order).
pub fn best_stage(group: &str, sel: &Select, copies: &[String]) -> FlatStage {
    let mut inputs = Vec::new();
    for copy in copies {
        inputs.push(FlatInput {
            slot: copy.clone(),
            stage: format!("{group}.{copy}.{}", sel.result),
            path: format!("{}.result", sel.path),
        });
        inputs.push(FlatInput {
            slot: by_slot(copy),
            stage: format!("{group}.{copy}.{}", sel.by_stage),
            path: format!("{}.by", sel.path),
        });
    }
    if let Some((cs, _)) = &sel.compare {
        for copy in copies {
            inputs.push(FlatInput {
                slot: compare_slot(copy),
                stage: format!("{group}.{copy}.{cs}"),
                path: format!("{}.compare", sel.path),
            });
        }
    }
    let mut with = Mapping::new();
    with.insert(
        "by".into(),
        format!("{}.{}", sel.by_stage, sel.metric).into(),
    );
    with.insert("metric".into(), sel.metric.clone().into());
    with.insert("mode".into(), sel.mode.clone().into());
    if let Some((cs, cm)) = &sel.compare {
        with.insert("compare".into(), format!("{cs}.{cm}").into());
    }
    with.insert(
        "candidates".into(),
        Value::Array(copies.iter().map(|c| Value::String(c.clone())).collect()),
    );
    FlatStage {
        id: format!("{group}.{BEST}"),
        path: sel.path.clone(),
        kind: KIND.to_string(),
        inputs,
        with: Value::Object(with),
        resources: None,
        cache: true,
        unresolved: false,
        uses: Default::default(),
    }
}
