//! `report`: any number of `evaluate` / `train` / `distill` artifacts -> `report.md` (a Markdown
//! table of every input's metrics, in slot order) and PNG plots: training-loss curves from each
//! input's `log.jsonl` against tokens, and validation loss against parameter count. The plots
//! carry no text (no font stack needed); `report.md` gives their axes, ranges and colours.

use std::path::Path;

use plotters::prelude::*;
use pollard_engine::{BoxError, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{read_json, write_json};
use crate::error::{Result, StageError};

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
    /// (tokens, training loss) points.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
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

/// The Markdown table (what `pollard show` prints).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from("| input | stage | params | non-emb params | val loss | perplexity | accuracy | tokens seen |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.stage,
            fmt_count(r.params),
            fmt_count(r.non_embedding_params),
            fmt_f(r.val_loss, 4),
            fmt_f(r.perplexity, 2),
            fmt_f(r.accuracy, 3),
            fmt_count(r.tokens)
        );
    }
    s
}

const COLOURS: [(RGBColor, &str); 8] = [
    (RGBColor(31, 119, 180), "blue"),
    (RGBColor(255, 127, 14), "orange"),
    (RGBColor(44, 160, 44), "green"),
    (RGBColor(214, 39, 40), "red"),
    (RGBColor(148, 103, 189), "purple"),
    (RGBColor(140, 86, 75), "brown"),
    (RGBColor(227, 119, 194), "pink"),
    (RGBColor(127, 127, 127), "grey"),
];

fn range(values: impl Iterator<Item = f64> + Clone) -> Option<(f64, f64)> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    Some((lo - pad, hi + pad))
}

fn plot_err(path: &Path) -> impl Fn(String) -> StageError + '_ {
    move |message| StageError::Plot {
        path: path.to_path_buf(),
        message,
    }
}

/// Loss curves; returns the Markdown legend, or None when no input has a log.
fn plot_curves(rows: &[Row], path: &Path) -> Result<Option<String>> {
    let series: Vec<&Row> = rows.iter().filter(|r| !r.curve.is_empty()).collect();
    let Some(xr) = range(series.iter().flat_map(|r| r.curve.iter().map(|p| p.0))) else {
        return Ok(None);
    };
    let yr = range(series.iter().flat_map(|r| r.curve.iter().map(|p| p.1)))
        .expect("points exist when x does");
    let e = plot_err(path);
    {
        let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
            .map_err(|x| e(x.to_string()))?;
        chart
            .plotting_area()
            .draw(&Rectangle::new(
                [(xr.0, yr.0), (xr.1, yr.1)],
                BLACK.stroke_width(1),
            ))
            .map_err(|x| e(x.to_string()))?;
        for (i, r) in series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()].0;
            chart
                .draw_series(LineSeries::new(r.curve.iter().copied(), c.stroke_width(2)))
                .map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    let mut legend = format!(
        "Training loss (y, {:.3} to {:.3} nats) against tokens (x, {} to {}):",
        yr.0,
        yr.1,
        fmt_count(Some(xr.0.max(0.0) as u64)),
        fmt_count(Some(xr.1 as u64))
    );
    for (i, r) in series.iter().enumerate() {
        legend += &format!(" {} = {};", COLOURS[i % COLOURS.len()].1, r.name);
    }
    Ok(Some(legend))
}

/// Validation loss against parameter count; returns the legend.
fn plot_scatter(rows: &[Row], path: &Path) -> Result<Option<String>> {
    let pts: Vec<(usize, f64, f64)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.params? as f64, r.val_loss?)))
        .collect();
    let Some(xr) = range(pts.iter().map(|p| p.1)) else {
        return Ok(None);
    };
    let yr = range(pts.iter().map(|p| p.2)).expect("points exist when x does");
    let e = plot_err(path);
    {
        let root = BitMapBackend::new(path, (600, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
            .map_err(|x| e(x.to_string()))?;
        chart
            .plotting_area()
            .draw(&Rectangle::new(
                [(xr.0, yr.0), (xr.1, yr.1)],
                BLACK.stroke_width(1),
            ))
            .map_err(|x| e(x.to_string()))?;
        for (k, &(_, x, y)) in pts.iter().enumerate() {
            let c = COLOURS[k % COLOURS.len()].0;
            chart
                .draw_series(std::iter::once(Circle::new((x, y), 7, c.filled())))
                .map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    let mut legend = format!(
        "Validation loss (y, {:.3} to {:.3} nats) against parameters (x, {} to {}):",
        yr.0,
        yr.1,
        fmt_count(Some(xr.0.max(0.0) as u64)),
        fmt_count(Some(xr.1 as u64))
    );
    for (k, &(i, _, _)) in pts.iter().enumerate() {
        legend += &format!(" {} = {};", COLOURS[k % COLOURS.len()].1, rows[i].name);
    }
    Ok(Some(legend))
}

/// Writes `report.md`, `report.json` and the plots into `out` (split out for tests).
pub fn write_report(out: &Path, title: &str, rows: &[Row], plots: bool) -> Result<()> {
    let mut md = format!("# {title}\n\n{}", table(rows));
    if plots {
        if let Some(legend) = plot_curves(rows, &out.join("loss_curves.png"))? {
            md += &format!("\n![training loss](loss_curves.png)\n\n{legend}\n");
        }
        if let Some(legend) = plot_scatter(rows, &out.join("val_loss_vs_params.png"))? {
            md += &format!(
                "\n![validation loss against parameters](val_loss_vs_params.png)\n\n{legend}\n"
            );
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
    fn report_has_a_row_per_input_and_png_plots() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            a.join("metrics.json"),
            r#"{"val_loss": 2.5, "params": 1000000, "tokens_seen": 2000000, "accuracy": 0.4}"#,
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
        assert!(md.contains("blue = teacher"), "{md}");
        for png in ["loss_curves.png", "val_loss_vs_params.png"] {
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
