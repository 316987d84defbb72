//! `evaluate`: a model + data -> `metrics.json` (val_loss in nats on fixed `val.bin` windows,
//! perplexity, next-token accuracy, parameter counts, tokens/s, tokens the model was trained on).
//! It also carries the model's `log.jsonl` along, so a `report` over evaluations can draw the
//! training curves. With `tasks`, it also scores multiple-choice task files as
//! lm-evaluation-harness does (see `crate::tasks`): `tasks.<name>` in `metrics.json` holds acc,
//! acc_norm, their standard errors and n, and `tasks/<name>.jsonl` every item's log-likelihoods.

use pollard_engine::{
    BoxError, Count, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx,
};
use pollard_model::{Llama, Mode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

use crate::common::{
    check_plan_vocab, check_windows, device, gpu_estimate, plan_shape, resolve, tokens_seen,
    write_json, Dtype,
};
use crate::error::StageError;
use crate::runtime::{evaluate, open_dataset, param_count};
use crate::shape::{memory, ModelShape};
use crate::tasks::{self, score::PairEncoder, TaskSpec};
use crate::validate::finite;

pub struct Evaluate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Loss,
    Perplexity,
    Accuracy,
    Throughput,
}

fn all_metrics() -> Vec<Metric> {
    vec![
        Metric::Loss,
        Metric::Perplexity,
        Metric::Accuracy,
        Metric::Throughput,
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Validation windows (evenly spread over `val.bin`; all of them when there are fewer).
    #[serde(default = "default_samples")]
    pub samples: Count,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Windows per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "all_metrics")]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub dtype: Dtype,
    /// Multiple-choice tasks to score (`batch` requests per forward pass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSpec>,
}

fn default_samples() -> Count {
    Count(256)
}
fn default_seq_len() -> usize {
    256
}
fn default_batch() -> usize {
    8
}

impl Stage for Evaluate {
    const KIND: &'static str = "evaluate";
    const VERSION: u32 = 1;
    type Params = EvaluateParams;

    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &["model", "data"],
            optional: &[],
        }
    }

    fn validate(&self, p: &EvaluateParams) -> Result<(), Vec<ParamError>> {
        let mut errs = Vec::new();
        check_windows(&mut errs, p.samples.get(), p.seq_len, p.batch);
        if p.metrics.is_empty() {
            errs.push(ParamError::new(
                "metrics",
                "measures nothing: list at least one of loss, perplexity, accuracy, throughput",
            ));
        }
        tasks::validate("tasks", &p.tasks, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn deps(&self, p: &EvaluateParams) -> Vec<PathBuf> {
        p.tasks.iter().filter_map(|t| t.path.clone()).collect()
    }

    fn describe(
        &self,
        _p: &EvaluateParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        // Metrics of a model of this shape: report can show its parameter count while planning.
        let shape = plan_shape(inputs, "model");
        check_plan_vocab(inputs, "model", shape.map(|s| s.vocab))?;
        Ok(shape.map(|s| s.describe()))
    }

    fn resources(&self, p: &EvaluateParams, inputs: &PlanInputs) -> Result<Resources, BoxError> {
        Ok(match plan_shape(inputs, "model") {
            Some(s) => {
                let need = memory::inference(&s, p.batch as u64, p.seq_len as u64, p.dtype.bytes());
                gpu_estimate(need)
            }
            None => Resources::default(),
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &EvaluateParams, inputs: &Inputs) -> Result<(), BoxError> {
        let dev = device(ctx)?;
        let model_dir = inputs.path("model")?;
        let model = Llama::load_hf(model_dir, p.dtype.candle(), &dev, Mode::Frozen)?;
        let data = open_dataset(inputs.path("data")?)?;
        let windows = pollard_data::validation_windows(
            data.val(),
            p.seq_len,
            Some(p.samples.get() as usize),
        )?;
        let e = evaluate(&model, &windows, p.batch, &[])?;
        let shape = ModelShape::from_dir(model_dir)?;
        let want = |m: Metric| p.metrics.contains(&m);
        let mut m = json!({
            "params": param_count(&model),
            "non_embedding_params": shape.non_embedding_params(),
            "tokens_seen": tokens_seen(model_dir),
            "eval_tokens": e.tokens,
            "model": shape,
        });
        if want(Metric::Loss) {
            m["val_loss"] = json!(finite("val_loss", e.loss)?);
        }
        if want(Metric::Perplexity) {
            m["perplexity"] = json!(finite("perplexity", e.loss.exp())?);
        }
        if want(Metric::Accuracy) {
            m["accuracy"] = json!(finite("accuracy", e.accuracy)?);
        }
        if want(Metric::Throughput) {
            m["tokens_per_s"] = json!(e.tokens as f64 / e.seconds.max(1e-9));
        }
        ctx.log(&format!(
            "val_loss {:.4}, accuracy {:.3}",
            e.loss, e.accuracy
        ));
        if !p.tasks.is_empty() {
            m["tasks"] = score_tasks(ctx, p, &model, model_dir, data.dir())?;
        }
        write_json(&ctx.out_dir().join("metrics.json"), &m)?;
        let log = model_dir.join("log.jsonl");
        if log.is_file() {
            let dst = ctx.out_dir().join("log.jsonl");
            std::fs::copy(&log, &dst).map_err(|e| StageError::io(&dst, e))?;
        }
        Ok(())
    }
}

/// Scores every task of `p.tasks`, writes `tasks/<name>.jsonl`, returns `{name: metrics}`.
fn score_tasks(
    ctx: &StageCtx,
    p: &EvaluateParams,
    model: &Llama,
    model_dir: &Path,
    data_dir: &Path,
) -> Result<serde_json::Value, BoxError> {
    // The model's own tokenizer when its folder has one (a loaded checkpoint), else the dataset's.
    let tok_dir = if model_dir.join(pollard_data::TOKENIZER_FILE).is_file() {
        model_dir
    } else {
        data_dir
    };
    let tok = pollard_data::Tokenizer::load(&tok_dir.join(pollard_data::TOKENIZER_FILE))?;
    let prefix = pollard_data::hf_files::prefix_token(tok_dir, &tok);
    let enc = PairEncoder::new(tok.hf(), prefix);
    let out = ctx.out_dir().join("tasks");
    std::fs::create_dir_all(&out).map_err(|e| StageError::io(&out, e))?;
    let mut all = serde_json::Map::new();
    for (i, t) in p.tasks.iter().enumerate() {
        let file = match &t.path {
            Some(path) => resolve(ctx, path),
            None => data_dir.join(tasks::data_task_file(&t.name)),
        };
        let items = tasks::layout::read_items(&file).map_err(|e| {
            StageError::param(format!("tasks[{i}]"), format!("task {}: {e}", t.name))
        })?;
        ctx.log(&format!(
            "task {}: {} items, {} shots",
            t.name,
            items.len(),
            t.shots
        ));
        let r = tasks::run(model, &enc, t, &items, p.batch, &|| ctx.cancelled())?;
        ctx.log(&format!(
            "task {}: acc {:.3}, acc_norm {:.3} (n {})",
            t.name,
            r.metrics["acc"].as_f64().unwrap_or(f64::NAN),
            r.metrics["acc_norm"].as_f64().unwrap_or(f64::NAN),
            r.items.len()
        ));
        let lines: String = r
            .items
            .iter()
            .map(|it| serde_json::to_string(it).expect("an item result always serializes") + "\n")
            .collect();
        let dst = out.join(format!("{}.jsonl", t.name));
        std::fs::write(&dst, lines).map_err(|e| StageError::io(&dst, e))?;
        all.insert(t.name.clone(), r.metrics);
    }
    Ok(serde_json::Value::Object(all))
}
