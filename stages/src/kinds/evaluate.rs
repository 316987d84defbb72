//! `evaluate`: a model + data -> `metrics.json` (val_loss in nats on fixed `val.bin` windows,
//! perplexity, next-token accuracy, parameter counts, tokens/s, tokens the model was trained on).
//! It also carries the model's `log.jsonl` along, so a `report` over evaluations can draw the
//! training curves.

use pollard_engine::{
    BoxError, Count, Inputs, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx,
};
use pollard_model::{Llama, Mode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::common::{
    check_windows, device, gpu_estimate, plan_shape, tokens_seen, write_json, Dtype,
};
use crate::error::StageError;
use crate::runtime::{evaluate, open_dataset, param_count};
use crate::shape::{memory, ModelShape};
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
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn describe(
        &self,
        _p: &EvaluateParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        // Metrics of a model of this shape: report can show its parameter count while planning.
        Ok(plan_shape(inputs, "model").map(|s| s.describe()))
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
        write_json(&ctx.out_dir().join("metrics.json"), &m)?;
        let log = model_dir.join("log.jsonl");
        if log.is_file() {
            let dst = ctx.out_dir().join("log.jsonl");
            std::fs::copy(&log, &dst).map_err(|e| StageError::io(&dst, e))?;
        }
        Ok(())
    }
}
