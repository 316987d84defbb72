//! The optimisation loop `train` and `distill` share, on pollard-train's pieces (AdamW, cosine
//! schedule, gradient accumulation and clipping): steps, NaN guard, cancellation, `log.jsonl`,
//! periodic evaluation and checkpoints in the stage's scratch folder, and exact resumption
//! after a kill (parameters, optimizer moments and the step are restored bit for bit; the data
//! order is a pure function of the step).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use pollard_engine::{Progress, StageCtx};
use pollard_train::{clip_factor, AdamW, AdamWConfig, CosineSchedule, Grads};
use serde_json::{json, Value};

use crate::error::{CandleContext, Result, StageError};

/// Loop settings, resolved from a kind's params.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub steps: u64,
    /// Micro-batches summed per optimizer step.
    pub accumulation: u64,
    pub tokens_per_step: u64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub log_every: u64,
    /// 0: only at the end.
    pub eval_every: u64,
    /// 0: never (no resumption).
    pub checkpoint_every: u64,
}

/// One micro-batch's loss, plus named parts to log (e.g. `kl`, `ce`, `intermediate`).
pub struct StepLoss {
    pub loss: Tensor,
    pub parts: Vec<(&'static str, f64)>,
}

/// What the loop reports when it finishes.
#[derive(Debug, Clone)]
pub struct LoopOutcome {
    pub final_loss: f64,
    pub final_val_loss: Option<f64>,
    pub tokens: u64,
    pub resumed_from: Option<u64>,
}

const CKPT: &str = "checkpoint";
const LOG: &str = "log.jsonl";

fn ckpt_dir(scratch: &Path) -> PathBuf {
    scratch.join(CKPT)
}

fn save_checkpoint(scratch: &Path, step: u64, vars: &[(String, Var)], opt: &AdamW) -> Result<()> {
    let tmp = scratch.join(format!("{CKPT}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
    let params: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&params, tmp.join("params.safetensors")).ctx(|| "writing checkpoint parameters".into())?;
    candle_core::safetensors::save(&opt.state_tensors()?, tmp.join("optimizer.safetensors")).ctx(|| "writing optimizer state".into())?;
    let state = json!({ "step": step, "optimizer_steps": opt.step_count() });
    crate::common::write_json(&tmp.join("state.json"), &state)?;
    // Publish by rename so a kill mid-write leaves the previous checkpoint intact.
    let dir = ckpt_dir(scratch);
    let old = scratch.join(format!("{CKPT}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(|e| StageError::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| StageError::io(&dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Restores a checkpoint if one exists; returns the step to continue from.
fn load_checkpoint(scratch: &Path, vars: &[(String, Var)], opt: &mut AdamW) -> Result<Option<u64>> {
    let dir = ckpt_dir(scratch);
    let state_path = dir.join("state.json");
    if !state_path.is_file() {
        return Ok(None);
    }
    let state = crate::common::read_json(&state_path)?;
    let step = state.get("step").and_then(Value::as_u64).ok_or_else(|| StageError::Config {
        path: state_path.clone(),
        field: "step".into(),
        message: "missing".into(),
    })?;
    let opt_steps = state.get("optimizer_steps").and_then(Value::as_u64).unwrap_or(step);
    let params = candle_core::safetensors::load(dir.join("params.safetensors"), &Device::Cpu).ctx(|| "reading checkpoint parameters".into())?;
    for (name, var) in vars {
        let t = params.get(name).ok_or_else(|| StageError::tensor(name, "missing from the checkpoint"))?;
        let t = t.to_device(var.device()).and_then(|t| t.to_dtype(var.dtype())).ctx(|| format!("restoring `{name}`"))?;
        var.set(&t).ctx(|| format!("restoring `{name}`"))?;
    }
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu).ctx(|| "reading optimizer state".into())?;
    opt.load_state(opt_steps, &moments)?;
    Ok(Some(step))
}

/// Keeps the log lines of steps before `step` (a resumed run rewrites the rest).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.get("step").and_then(Value::as_u64)).is_some_and(|s| s <= step))
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| StageError::io(path, e))
}

/// Runs the loop. `micro(step, k)` returns the loss of micro-batch `k` of `step`; `eval()`
/// returns a validation loss. The log goes to `ctx.out_dir()/log.jsonl` at the end.
pub fn run_loop(
    ctx: &StageCtx,
    vars: Vec<(String, Var)>,
    cfg: &LoopConfig,
    mut micro: impl FnMut(u64, u64) -> Result<StepLoss>,
    mut eval: impl FnMut() -> Result<f64>,
) -> Result<LoopOutcome> {
    let schedule = CosineSchedule::new(cfg.lr, cfg.min_lr, cfg.warmup.min(cfg.steps), cfg.steps)?;
    let mut opt = AdamW::new(vars.clone(), AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() })?;
    let scratch = ctx.scratch_dir();
    std::fs::create_dir_all(scratch).map_err(|e| StageError::io(scratch, e))?;
    let log_path = scratch.join(LOG);
    let resumed = if cfg.checkpoint_every > 0 { load_checkpoint(scratch, &vars, &mut opt)? } else { None };
    match resumed {
        Some(step) => {
            truncate_log(&log_path, step)?;
            ctx.log(&format!("resuming from step {step} of {}", cfg.steps));
        }
        None => {
            std::fs::write(&log_path, "").map_err(|e| StageError::io(&log_path, e))?;
        }
    }
    let mut log = std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| StageError::io(&log_path, e))?;
    let var_refs: Vec<Var> = opt.vars().into_iter().cloned().collect();
    let var_refs: Vec<&Var> = var_refs.iter().collect();
    let mut grads = Grads::new(var_refs.len());
    let start = Instant::now();
    let first = resumed.unwrap_or(0);
    let mut last_loss = f64::NAN;
    let mut last_val = None;
    for step in first..cfg.steps {
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        grads.clear();
        let mut loss_sum = 0f64;
        let mut parts_sum: Vec<(&'static str, f64)> = Vec::new();
        for k in 0..cfg.accumulation {
            let StepLoss { loss, parts } = micro(step, k)?;
            let value = loss.to_scalar::<f32>().ctx(|| format!("reading the loss of step {step}"))? as f64;
            if !value.is_finite() {
                return Err(pollard_train::TrainError::NonFinite { step, what: "loss", value }.into());
            }
            loss_sum += value;
            for (name, v) in parts {
                match parts_sum.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 += v,
                    None => parts_sum.push((name, v)),
                }
            }
            let store = loss.backward().ctx(|| format!("backward of step {step}"))?;
            grads.accumulate(&var_refs, &store)?;
        }
        let mean_scale = 1.0 / cfg.accumulation as f64;
        let norm = grads.global_norm(mean_scale)?;
        if !norm.is_finite() {
            return Err(pollard_train::TrainError::NonFinite { step, what: "gradient norm", value: norm }.into());
        }
        let clip = clip_factor(norm, cfg.grad_clip);
        let lr = schedule.lr_at(step);
        opt.step(&grads, lr, mean_scale * clip)?;
        last_loss = loss_sum * mean_scale;
        let done = step + 1;
        let tokens = done * cfg.tokens_per_step;
        let elapsed = start.elapsed().as_secs_f64();
        let evaluate_now = done == cfg.steps || (cfg.eval_every > 0 && done % cfg.eval_every == 0);
        let val = if evaluate_now { Some(eval()?) } else { None };
        if val.is_some() {
            last_val = val;
        }
        if done % cfg.log_every.max(1) == 0 || val.is_some() || done == 1 {
            let mut line = json!({ "step": done, "tokens": tokens, "lr": lr, "loss": last_loss, "grad_norm": norm });
            for (name, v) in &parts_sum {
                line[*name] = json!(v * mean_scale);
            }
            if let Some(v) = val {
                line["val_loss"] = json!(v);
            }
            writeln!(log, "{line}").map_err(|e| StageError::io(&log_path, e))?;
        }
        let tps = (done - first) as f64 * cfg.tokens_per_step as f64 / elapsed.max(1e-9);
        ctx.progress(Progress { step: done, total: Some(cfg.steps), loss: Some(last_loss), tokens_per_s: Some(tps), message: None });
        if cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 && done < cfg.steps {
            log.flush().map_err(|e| StageError::io(&log_path, e))?;
            save_checkpoint(scratch, done, &vars, &opt)?;
        }
    }
    drop(log);
    let dst = ctx.out_dir().join(LOG);
    std::fs::copy(&log_path, &dst).map_err(|e| StageError::io(&dst, e))?;
    Ok(LoopOutcome { final_loss: last_loss, final_val_loss: last_val, tokens: cfg.steps * cfg.tokens_per_step, resumed_from: resumed })
}
