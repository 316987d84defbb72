//! `report`: any number of `evaluate` / `train` / `distill` artifacts -> `report.md` (a Markdown
//! table of every input's metrics, in slot order, with a column per multiple-choice task) and
//! PNG plots with titles, axes and legends (see `crate::plot`): training-loss curves from each
//! input's `log.jsonl` against tokens, validation loss against parameter count, and task
//! accuracy against parameter count. An input that is a group's choice (`<group>.best`, with
//! `selection.json`) adds the candidates' ranking.

use std::collections::BTreeMap;
use std::path::Path;

use pollard_engine::{BoxError, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{read_json, write_json};
use crate::error::{Result, StageError};
use crate::plot::{self, Chart, Mark, Series};

pub struct Report;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    #[serde(default = "default_title")]
    pub title: String,
    /// Draw the PNG plots.
    #[serde(default = "yes")]
    pub plots: bool,
}

fn default_title() -> String {
    "pollard report".into()
}
fn yes() -> bool {
    true
}

/// One input's row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    pub stage: String,
    pub params: Option<u64>,
    pub non_embedding_params: Option<u64>,
    pub val_loss: Option<f64>,
    pub perplexity: Option<f64>,
    pub accuracy: Option<f64>,
    pub tokens: Option<u64>,
    /// `tasks.<name>` of an evaluation's metrics: acc, acc_norm, their errors, n.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, TaskCell>,
    /// The `selection.json` of a group's choice, when the input is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<Value>,
    /// (tokens, training loss) points.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

/// One task's result in a row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskCell {
    pub acc: Option<f64>,
    pub acc_stderr: Option<f64>,
    pub acc_norm: Option<f64>,
    pub n: Option<u64>,
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}
fn int(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

/// Reads an input artifact's metrics and log.
pub fn read_row(name: &str, stage: &str, dir: &Path) -> Result<Row> {
    let mut row = Row {
        name: name.into(),
        stage: stage.into(),
        ..Default::default()
    };
    let mpath = dir.join("metrics.json");
    if mpath.is_file() {
        let m = read_json(&mpath)?;
        row.params = int(&m, "params");
        row.non_embedding_params = int(&m, "non_embedding_params");
        row.val_loss = num(&m, "val_loss");
        row.perplexity = num(&m, "perplexity").or(row.val_loss.map(f64::exp));
        row.accuracy = num(&m, "accuracy");
        row.tokens = int(&m, "tokens_seen")
            .filter(|t| *t > 0)
            .or(int(&m, "tokens"));
        if let Some(tasks) = m.get("tasks").and_then(Value::as_object) {
            for (name, t) in tasks {
                row.tasks.insert(
                    name.clone(),
                    TaskCell {
                        acc: num(t, "acc"),
                        acc_stderr: num(t, "acc_stderr"),
                        acc_norm: num(t, "acc_norm"),
                        n: int(t, "n"),
                    },
                );
            }
        }
    }
    let spath = dir.join("selection.json");
    if spath.is_file() {
        row.selection = Some(read_json(&spath)?);
    }
    let lpath = dir.join("log.jsonl");
    if lpath.is_file() {
        let text = std::fs::read_to_string(&lpath).map_err(|e| StageError::io(&lpath, e))?;
        for (i, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line).map_err(|e| StageError::Plot {
                path: lpath.clone(),
                message: format!("line {}: {e}", i + 1),
            })?;
            if let (Some(t), Some(l)) = (num(&v, "tokens"), num(&v, "loss")) {
                if l.is_finite() {
                    row.curve.push((t, l));
                }
            }
        }
    }
    if !mpath.is_file() && !lpath.is_file() {
        return Err(StageError::input(name, format!("{} has neither metrics.json nor log.jsonl: report takes evaluate, train or distill stages", dir.display())));
    }
    Ok(row)
}

fn fmt_count(n: Option<u64>) -> String {
    match n {
        None => "-".into(),
        Some(n) if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        Some(n) if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        Some(n) if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        Some(n) => n.to_string(),
    }
}

fn fmt_f(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// Task names over all rows, in first-seen order.
fn task_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        for k in r.tasks.keys() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    names
}

/// The Markdown table (what `pollard show` prints): a column per task with `acc ± stderr`.
pub fn table(rows: &[Row]) -> String {
    let tasks = task_names(rows);
    let mut s = String::from(
        "| input | stage | params | non-emb params | val loss | perplexity | accuracy | tokens seen |",
    );
    for t in &tasks {
        s += &format!(" {t} |");
    }
    s += "\n|---|---|---:|---:|---:|---:|---:|---:|";
    s += &"---:|".repeat(tasks.len());
    s += "\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.stage,
            fmt_count(r.params),
            fmt_count(r.non_embedding_params),
            fmt_f(r.val_loss, 4),
            fmt_f(r.perplexity, 2),
            fmt_f(r.accuracy, 3),
            fmt_count(r.tokens)
        );
        for t in &tasks {
            let cell = match r.tasks.get(t) {
                Some(TaskCell {
                    acc: Some(a),
                    acc_stderr: Some(se),
                    ..
                }) => {
                    format!("{a:.3} ± {se:.3}")
                }
                Some(TaskCell { acc: Some(a), .. }) => format!("{a:.3}"),
                _ => "-".into(),
            };
            s += &format!(" {cell} |");
        }
        s += "\n";
    }
    if !tasks.is_empty() {
        s += "\nTask columns: acc (summed log-likelihood, lm-evaluation-harness `multiple_choice` scoring) ± its standard error.\n";
    }
    s
}

/// A tick label: `400K`, `1.2M` (no trailing `.0`).
fn count_tick(x: f64) -> String {
    let n = x.max(0.0).round();
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, "B")
    } else if n >= 1e6 {
        (n / 1e6, "M")
    } else if n >= 1e3 {
        (n / 1e3, "K")
    } else {
        (n, "")
    };
    let t = format!("{v:.2}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    format!("{t}{unit}")
}

/// Loss curves; None when no input has a log.
fn plot_curves(rows: &[Row], path: &Path) -> Result<bool> {
    let series: Vec<Series> = rows
        .iter()
        .filter(|r| !r.curve.is_empty())
        .map(|r| Series {
            name: r.name.clone(),
            points: r.curve.clone(),
            mark: Mark::Line,
        })
        .collect();
    plot::draw(
        path,
        &Chart {
            title: "Training loss (distillation: KL to the teacher)",
            x_label: "tokens seen",
            y_label: "loss (nats): cross-entropy, or KL when distilling",
            series: &series,
            x_format: count_tick,
            y_range: None,
        },
        (900, 540),
    )
}

/// Validation loss against parameter count, a point per input.
fn plot_scatter(rows: &[Row], path: &Path) -> Result<bool> {
    let series: Vec<Series> = rows
        .iter()
        .filter_map(|r| {
            Some(Series {
                name: r.name.clone(),
                points: vec![(r.params? as f64, r.val_loss?)],
                mark: Mark::Points,
            })
        })
        .collect();
    plot::draw(
        path,
        &Chart {
            title: "Validation loss against model size",
            x_label: "parameters",
            y_label: "validation loss (nats)",
            series: &series,
            x_format: count_tick,
            y_range: None,
        },
        (760, 520),
    )
}

/// Task accuracy against parameter count: a series per task, a point per input.
fn plot_tasks(rows: &[Row], path: &Path) -> Result<bool> {
    let series: Vec<Series> = task_names(rows)
        .into_iter()
        .map(|t| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| Some((r.params? as f64, r.tasks.get(&t)?.acc?)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: t,
                points,
                mark: Mark::Points,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    plot::draw(
        path,
        &Chart {
            title: "Task accuracy against model size",
            x_label: "parameters",
            y_label: "accuracy (acc)",
            series: &series,
            x_format: count_tick,
            y_range: Some((0.0, 1.0)),
        },
        (760, 520),
    )
}

/// A rank: whole, or halfway for ties (`1.5`).
fn fmt_rank(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r}"))
}

/// The ranking a group's choice recorded (and its second ranking, with their Spearman
/// correlation), as Markdown.
fn selection_md(name: &str, sel: &Value) -> String {
    let by = sel["by"].as_str().unwrap_or("?");
    let cmp = sel["compare"]["by"].as_str();
    let mut s = format!(
        "\n## Choice `{name}`: best by `{by}` ({}): **{}**\n\n| rank by {by} | candidate | {by} |",
        sel["mode"].as_str().unwrap_or("?"),
        sel["winner"].as_str().unwrap_or("?"),
    );
    if let Some(c) = cmp {
        s += &format!(" rank by {c} | {c} |");
    }
    s += "\n|---:|---|---:|";
    if cmp.is_some() {
        s += "---:|---:|";
    }
    s += "\n";
    for c in sel["candidates"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {} |",
            fmt_rank(c["rank"].as_f64()),
            c["name"].as_str().unwrap_or("?"),
            fmt_f(c["value"].as_f64(), 4)
        );
        if cmp.is_some() {
            s += &format!(
                " {} | {} |",
                fmt_rank(c["compare_rank"].as_f64()),
                fmt_f(c["compare_value"].as_f64(), 4)
            );
        }
        s += "\n";
    }
    if let Some(c) = cmp {
        s += &format!(
            "\nSpearman correlation of the rankings by `{c}` and by `{by}`: {}\n",
            fmt_f(sel["compare"]["spearman"].as_f64(), 3)
        );
    }
    s
}

/// Writes `report.md`, `report.json` and the plots into `out` (split out for tests).
pub fn write_report(out: &Path, title: &str, rows: &[Row], plots: bool) -> Result<()> {
    let mut md = format!("# {title}\n\n{}", table(rows));
    for r in rows {
        if let Some(sel) = &r.selection {
            md += &selection_md(&r.name, sel);
        }
    }
    if plots {
        if plot_curves(rows, &out.join("loss_curves.png"))? {
            md += "\n![training loss against tokens seen, a line per input](loss_curves.png)\n";
        }
        if plot_scatter(rows, &out.join("val_loss_vs_params.png"))? {
            md += "\n![validation loss against parameters, a point per input](val_loss_vs_params.png)\n";
        }
        if plot_tasks(rows, &out.join("task_acc_vs_params.png"))? {
            md += "\n![task accuracy against parameters, a colour per task](task_acc_vs_params.png)\n";
        }
    }
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|e| StageError::io(&path, e))?;
    write_json(
        &out.join("report.json"),
        &serde_json::json!({ "title": title, "rows": rows }),
    )
}

impl Stage for Report {
    const KIND: &'static str = "report";
    const VERSION: u32 = 1;
    type Params = ReportParams;

    fn slots(&self) -> Slots {
        Slots::Any
    }

    fn validate(&self, p: &ReportParams) -> Result<(), Vec<ParamError>> {
        if p.title.trim().is_empty() {
            return Err(vec![ParamError::new("title", "must not be empty")]);
        }
        Ok(())
    }

    fn resources(&self, _p: &ReportParams, _inputs: &PlanInputs) -> Result<Resources, BoxError> {
        Ok(Resources {
            gpus: 0,
            gpu_memory: 0,
            cpus: 1,
            host_memory: 64 << 20,
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &ReportParams, inputs: &Inputs) -> Result<(), BoxError> {
        let rows = inputs
            .iter()
            .map(|(slot, a)| read_row(slot, &a.stage, &a.path))
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Err(StageError::input("(none)", "report needs at least one input").into());
        }
        write_report(ctx.out_dir(), &p.title, &rows, p.plots)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_read_as_counts() {
        assert_eq!(count_tick(400_000.0), "400K");
        assert_eq!(count_tick(1_250_000.0), "1.25M");
        assert_eq!(count_tick(12.0), "12");
    }

    #[test]
    fn report_has_a_row_per_input_and_png_plots() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            a.join("metrics.json"),
            r#"{"val_loss": 2.5, "params": 1000000, "tokens_seen": 2000000, "accuracy": 0.4,
                "tasks": {"agreement": {"acc": 0.75, "acc_stderr": 0.1, "acc_norm": 0.7, "n": 20}}}"#,
        )
        .unwrap();
        std::fs::write(
            a.join("log.jsonl"),
            "{\"step\":1,\"tokens\":100,\"loss\":5.0}\n{\"step\":2,\"tokens\":200,\"loss\":4.0}\n",
        )
        .unwrap();
        std::fs::write(
            b.join("metrics.json"),
            r#"{"val_loss": 3.0, "params": 250000, "tokens": 500000}"#,
        )
        .unwrap();
        let rows = vec![
            read_row("teacher", "teacher", &a).unwrap(),
            read_row("baseline", "baseline", &b).unwrap(),
        ];
        let out = tempfile::tempdir().unwrap();
        write_report(out.path(), "t", &rows, true).unwrap();
        let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
        assert!(
            md.contains("| teacher | teacher | 1.00M | - | 2.5000 | 12.18 | 0.400 | 2.00M |"),
            "{md}"
        );
        assert!(md.contains("| baseline | baseline | 250.0K |"), "{md}");
        assert!(md.contains("| tokens seen | agreement |"), "{md}");
        assert!(md.contains("| 2.00M | 0.750 ± 0.100 |"), "{md}");
        assert!(md.contains("| 500.0K | - |"), "{md}");
        assert!(md.contains("![training loss"), "{md}");
        for png in [
            "loss_curves.png",
            "val_loss_vs_params.png",
            "task_acc_vs_params.png",
        ] {
            let bytes = std::fs::read(out.path().join(png)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{png}");
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(read_row("x", "x", empty.path())
            .unwrap_err()
            .to_string()
            .contains("neither metrics.json nor log.jsonl"));
    }
}
