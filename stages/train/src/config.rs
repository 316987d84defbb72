//! The training loop's configuration (what a `train`/`distill` stage's params map onto), with
//! validation that names the field, and the derived numbers: steps, tokens per step, schedule.

use serde::{Deserialize, Serialize};

use crate::adamw::AdamWConfig;
use crate::error::{Result, TrainError};
use crate::schedule::CosineSchedule;

/// How long to train: a number of optimizer steps, or a token budget (rounded up to whole steps
/// of `batch * seq_len * accumulation` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Budget {
    Steps(u64),
    Tokens(u64),
}

/// Hyper-parameters and cadence of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub budget: Budget,
    /// Sequences per micro-batch.
    pub batch: usize,
    pub seq_len: usize,
    /// Micro-batches summed into one optimizer step.
    #[serde(default = "one")]
    pub accumulation: u32,
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup: u64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decay 1-D parameters (norm weights, biases) too.
    #[serde(default)]
    pub decay_1d: bool,
    /// Global gradient-norm clip; 0 turns clipping off.
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    /// Recorded with the run; the loop itself draws no random numbers (the batch source and
    /// the model's initialisation take their seed from the caller).
    #[serde(default)]
    pub seed: u64,
    /// Write a `log.jsonl` line (and call the progress callback) every this many steps, and
    /// on the last step.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Run the eval closure every this many steps and on the last step; 0 = only the last.
    #[serde(default)]
    pub eval_every: u64,
    /// Write a checkpoint every this many steps and on the last step; 0 = only the last.
    #[serde(default)]
    pub checkpoint_every: u64,
    /// How many checkpoints to keep in the scratch folder (at least 1).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Also write a checkpoint when this many seconds have passed since the last one (and
    /// always when the run is cancelled), so an interrupt or a kill loses at most this much
    /// work; 0 = no time cadence. Only used when a checkpoint folder is set.
    #[serde(default)]
    pub checkpoint_secs: f64,
}

fn one() -> u32 {
    1
}
fn default_wd() -> f64 {
    AdamWConfig::default().weight_decay
}
fn default_beta1() -> f64 {
    AdamWConfig::default().beta1
}
fn default_beta2() -> f64 {
    AdamWConfig::default().beta2
}
fn default_eps() -> f64 {
    AdamWConfig::default().eps
}
fn default_clip() -> f64 {
    1.0
}
fn default_log_every() -> u64 {
    10
}
fn default_keep() -> usize {
    2
}

impl TrainConfig {
    /// A config with the given budget, shape and peak rate, and defaults for everything else.
    pub fn new(budget: Budget, batch: usize, seq_len: usize, lr: f64) -> Self {
        Self {
            budget,
            batch,
            seq_len,
            accumulation: 1,
            lr,
            min_lr: 0.0,
            warmup: 0,
            weight_decay: default_wd(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            decay_1d: false,
            grad_clip: default_clip(),
            seed: 0,
            log_every: default_log_every(),
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: default_keep(),
            checkpoint_secs: 0.0,
        }
    }

    /// Tokens consumed by one optimizer step.
    pub fn tokens_per_step(&self) -> u64 {
        self.batch as u64 * self.seq_len as u64 * self.accumulation as u64
    }

    /// The number of optimizer steps the budget buys.
    pub fn total_steps(&self) -> Result<u64> {
        let bad = |field, reason: String| Err(TrainError::Config { field, reason });
        if self.batch == 0 {
            return bad("batch", "must be at least 1".into());
        }
        if self.seq_len == 0 {
            return bad("seq_len", "must be at least 1".into());
        }
        if self.accumulation == 0 {
            return bad("accumulation", "must be at least 1".into());
        }
        let steps = match self.budget {
            Budget::Steps(s) => s,
            Budget::Tokens(t) => t.div_ceil(self.tokens_per_step()),
        };
        if steps == 0 {
            return bad("budget", format!("{:?} gives zero steps", self.budget));
        }
        Ok(steps)
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decay_1d: self.decay_1d,
        }
    }

    pub fn schedule(&self) -> Result<CosineSchedule> {
        CosineSchedule::new(self.lr, self.min_lr, self.warmup, self.total_steps()?)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.schedule()?;
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(TrainError::Config {
                field: "grad_clip",
                reason: format!("must be >= 0, got {}", self.grad_clip),
            });
        }
        if self.log_every == 0 {
            return Err(TrainError::Config {
                field: "log_every",
                reason: "must be at least 1".into(),
            });
        }
        // AdamW checks its own fields.
        crate::AdamW::new(Vec::new(), self.adamw())?;
        Ok(())
    }

    /// The fields that change what is computed; cadence fields (log, eval, checkpoint, keep) are
    /// left out so they can change between a run and its resume.
    pub(crate) fn fingerprint(&self) -> serde_json::Value {
        let mut v =
            serde_json::to_value(self).expect("TrainConfig is plain data and always serialises");
        if let Some(map) = v.as_object_mut() {
            for k in [
                "log_every",
                "eval_every",
                "checkpoint_every",
                "keep_checkpoints",
                "checkpoint_secs",
            ] {
                map.remove(k);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_budget_rounds_up_to_whole_steps() {
        let mut c = TrainConfig::new(Budget::Tokens(1000), 2, 64, 1e-3);
        c.accumulation = 2;
        assert_eq!(c.tokens_per_step(), 256);
        assert_eq!(c.total_steps().unwrap(), 4);
        c.budget = Budget::Steps(7);
        assert_eq!(c.total_steps().unwrap(), 7);
    }

    #[test]
    fn yaml_style_config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: TrainConfig = serde_json::from_str(
            r#"{"budget": {"tokens": 5000}, "batch": 4, "seq_len": 32, "lr": 0.01, "warmup": 2}"#,
        )
        .unwrap();
        assert_eq!(c.budget, Budget::Tokens(5000));
        assert_eq!(c.grad_clip, 1.0);
        assert_eq!(c.accumulation, 1);
        c.validate().unwrap();
        let e = serde_json::from_str::<TrainConfig>(
            r#"{"budget": {"steps": 5}, "batch": 4, "seq_len": 32, "lr": 0.01, "lr_max": 1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("lr_max"), "{e}");
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut c = TrainConfig::new(Budget::Steps(10), 0, 8, 1e-3);
        assert!(c.validate().unwrap_err().to_string().contains("`batch`"));
        c.batch = 1;
        c.grad_clip = -1.0;
        assert!(c.validate().unwrap_err().to_string().contains("grad_clip"));
        c.grad_clip = 1.0;
        c.beta1 = 1.5;
        assert!(c.validate().unwrap_err().to_string().contains("beta1"));
        c.beta1 = 0.9;
        c.budget = Budget::Tokens(0);
        assert!(c.validate().unwrap_err().to_string().contains("budget"));
    }
}
