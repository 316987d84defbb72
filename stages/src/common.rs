//! Pieces every kind shares: the dtype names of `with`, the device a stage runs on, reading
//! upstream descriptions while planning, and small JSON file helpers.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use pollard_engine::{PlanInputs, StageCtx};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, StageError};
use crate::shape::ModelShape;
use pollard_model::{Llama, Mode};

/// Weight dtype of a stage's model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn candle(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
            Dtype::F16 => DType::F16,
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

/// The device granted to the stage: the first granted GPU, else the CPU.
pub fn device(ctx: &StageCtx) -> Result<Device> {
    match ctx.gpus().first() {
        None => Ok(Device::Cpu),
        Some(&ordinal) => {
            let device = Device::new_cuda(ordinal as usize).map_err(|e| {
                StageError::Device(format!(
                    "cannot open GPU {ordinal} (was pollard built with --features cuda?): {e}"
                ))
            })?;
            // A GPU declared with --gpus skipped the probe's driver check; an old driver opens
            // the device and fails only at the first kernel.
            pollard_engine::cuda_driver::check()
                .map_err(|why| StageError::Device(format!("GPU {ordinal}: {why}")))?;
            Ok(device)
        }
    }
}

/// A freshly initialised (f32) model in the stage's `dtype`: the f32 values rounded once, so
/// that bf16/f16 training computes in that dtype (AdamW keeps the f32 masters).
pub fn in_dtype(model: Llama, dtype: Dtype) -> Result<Llama> {
    if dtype == Dtype::F32 {
        return Ok(model);
    }
    let weights = model
        .weights()?
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype.candle())?)))
        .collect::<candle_core::Result<pollard_model::Weights>>()
        .map_err(pollard_model::ModelError::from)?;
    Ok(Llama::new(
        model.config().clone(),
        weights,
        Mode::Trainable,
    )?)
}

/// The shape of the model bound to `slot`, when planning can know it.
pub fn plan_shape(inputs: &PlanInputs, slot: &str) -> Option<ModelShape> {
    if let Some(s) = inputs
        .description(slot)
        .and_then(ModelShape::from_description)
    {
        return Some(s);
    }
    // An already-cached upstream artifact can be read directly.
    let dir = inputs.slots.get(slot)?.path.as_ref()?;
    ModelShape::from_dir(dir).ok()
}

/// The vocabulary size of the dataset bound to `slot`, when planning can know it: from the
/// upstream description (`{"dataset": {"vocab_size": N}}`) or a cached artifact's `meta.json`.
pub fn plan_vocab(inputs: &PlanInputs, slot: &str) -> Option<usize> {
    if let Some(d) = inputs.description(slot) {
        let d = d.get("dataset").unwrap_or(d);
        if let Some(v) = d
            .get("vocab_size")
            .or_else(|| d.get("vocab"))
            .and_then(Value::as_u64)
        {
            return Some(v as usize);
        }
    }
    let dir = inputs.slots.get(slot)?.path.as_ref()?;
    pollard_data::read_meta(dir)
        .ok()
        .map(|m| m.vocab_size as usize)
}

/// Refuses, while planning, a dataset whose token ids the model bound to `model_slot` has no
/// embedding rows for (the dataset's vocabulary larger than the model's), when both are known.
/// A larger model vocabulary is fine: checkpoints often pad their embedding past the tokenizer.
pub fn check_plan_vocab(inputs: &PlanInputs, model_slot: &str, vocab: Option<usize>) -> Result<()> {
    let (Some(model), Some(data)) = (vocab, plan_vocab(inputs, "data")) else {
        return Ok(());
    };
    if data > model {
        let from = |slot: &str| {
            inputs
                .slots
                .get(slot)
                .map_or(String::new(), |s| format!(" from `{}`", s.stage))
        };
        return Err(StageError::input(
            model_slot,
            format!(
                "the model{} has a vocabulary of {model}, the dataset{} {data}: token ids past {} have no embedding",
                from(model_slot),
                from("data"),
                model.saturating_sub(1)
            ),
        ));
    }
    Ok(())
}

/// Resolves a path from `with` against the manifest's folder.
pub fn resolve(ctx: &StageCtx, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        ctx.workdir().join(p)
    }
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| StageError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values always serialize");
    std::fs::write(path, text + "\n").map_err(|e| StageError::io(path, e))
}

/// Provenance a training kind leaves in its model folder (`pollard.json`): tokens seen by this
/// model's own training and by its ancestors, read by `evaluate` and `report`.
pub const PROVENANCE: &str = "pollard.json";

pub fn tokens_seen(model_dir: &Path) -> u64 {
    read_json(&model_dir.join(PROVENANCE))
        .ok()
        .and_then(|v| v.get("tokens").and_then(Value::as_u64))
        .unwrap_or(0)
}

/// The window settings `score` and `evaluate` share: how many sequences, how long, how many at once.
pub fn check_windows(
    errs: &mut Vec<pollard_engine::ParamError>,
    samples: u64,
    seq_len: usize,
    batch: usize,
) {
    use pollard_engine::ParamError;
    if samples == 0 {
        errs.push(ParamError::new("samples", "must be positive"));
    }
    if seq_len < 2 {
        errs.push(ParamError::new(
            "seq_len",
            format!("must be at least 2, got {seq_len}"),
        ));
    }
    if batch == 0 {
        errs.push(ParamError::new("batch", "must be at least 1"));
    }
}

/// Learning-rate and step sanity shared by `train` and `distill`.
pub fn check_optim(
    errs: &mut Vec<pollard_engine::ParamError>,
    lr: f64,
    min_lr: Option<f64>,
    batch: usize,
    micro: Option<usize>,
    seq_len: usize,
    tokens: u64,
) {
    use pollard_engine::ParamError;
    crate::shape::check_sizes(
        &[
            ("batch", Some(batch)),
            ("micro_batch", micro),
            ("seq_len", Some(seq_len)),
        ],
        "",
        errs,
    );
    if !(lr.is_finite() && lr > 0.0) {
        errs.push(ParamError::new(
            "lr",
            format!("must be a positive number, got {lr}"),
        ));
    }
    if let Some(m) = min_lr {
        if !(m.is_finite() && m >= 0.0 && m <= lr) {
            errs.push(ParamError::new(
                "min_lr",
                format!("must be between 0 and lr ({lr}), got {m}"),
            ));
        }
    }
    if batch == 0 {
        errs.push(ParamError::new("batch", "must be at least 1"));
    }
    if let Some(m) = micro {
        if m == 0 || (batch > 0 && !batch.is_multiple_of(m)) {
            errs.push(ParamError::new(
                "micro_batch",
                format!("must divide batch ({batch}), got {m}"),
            ));
        }
    }
    if seq_len < 2 {
        errs.push(ParamError::new(
            "seq_len",
            format!("must be at least 2, got {seq_len}"),
        ));
    }
    if tokens == 0 {
        errs.push(ParamError::new("tokens", "must be positive"));
    } else if batch > 0 && seq_len > 0 && tokens < (batch * seq_len) as u64 {
        errs.push(ParamError::new(
            "tokens",
            format!(
                "{tokens} is less than one step of batch x seq_len = {}",
                batch * seq_len
            ),
        ));
    }
}

/// A model stage's request: the memory a GPU would need (what `run --dry-run` shows), but no
/// GPU demanded, so the stage also runs on a machine without one (on the CPU). A recipe that
/// wants the stage on a GPU says `resources: { gpus: 1 }`, and the scheduler then checks the
/// estimate against the devices.
pub fn gpu_estimate(bytes: u64) -> pollard_engine::Resources {
    pollard_engine::Resources {
        gpus: 0,
        gpu_memory: bytes,
        cpus: 0,
        host_memory: bytes,
    }
}
