//! Learning-rate schedule of the training loop: linear warm-up to `lr`, then a cosine decay to
//! `min_lr` at the last step. Pure arithmetic on the step index, so a resumed run gets the
//! same rate bits as an uninterrupted one.

use crate::error::{Result, TrainError};

/// Cosine schedule with linear warm-up.
///
/// Step `s` (0-based, the step about to be taken) gets
/// - `lr * (s + 1) / warmup` while `s < warmup` (so the first step is not a wasted zero-rate step),
/// - then `min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2` with `p = (s - warmup) / (total - warmup - 1)`,
///   reaching exactly `min_lr` on the last step `total - 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl CosineSchedule {
    pub fn new(lr: f64, min_lr: f64, warmup: u64, total: u64) -> Result<Self> {
        let bad = |field, reason: String| Err(TrainError::Config { field, reason });
        if !(lr.is_finite() && lr > 0.0) {
            return bad("lr", format!("must be a positive number, got {lr}"));
        }
        if !(min_lr.is_finite() && min_lr >= 0.0 && min_lr <= lr) {
            return bad("min_lr", format!("must be in [0, lr = {lr}], got {min_lr}"));
        }
        if total == 0 {
            return bad("steps", "must be at least 1".into());
        }
        if warmup > total {
            return bad(
                "warmup",
                format!("({warmup}) exceeds the total number of steps ({total})"),
            );
        }
        Ok(Self {
            lr,
            min_lr,
            warmup,
            total,
        })
    }

    /// The learning rate for step `step` (0-based). Steps past the end keep `min_lr`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.total - self.warmup;
        if decay_steps <= 1 {
            // Zero or one post-warm-up step: nothing to decay over, keep the peak.
            return if step < self.total {
                self.lr
            } else {
                self.min_lr
            };
        }
        let p = ((step - self.warmup) as f64 / (decay_steps - 1) as f64).min(1.0);
        self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_then_cosine_reaches_min_lr_on_last_step() {
        let s = CosineSchedule::new(1e-3, 1e-4, 4, 14).unwrap();
        assert!((s.lr_at(0) - 0.25e-3).abs() < 1e-15);
        assert!((s.lr_at(1) - 0.5e-3).abs() < 1e-15);
        assert!((s.lr_at(3) - 1e-3).abs() < 1e-15);
        assert!(
            (s.lr_at(4) - 1e-3).abs() < 1e-15,
            "first decay step is the peak"
        );
        assert!((s.lr_at(13) - 1e-4).abs() < 1e-15, "last step is min_lr");
        // Half-way through the decay is the midpoint of lr and min_lr.
        let mid = CosineSchedule::new(1.0, 0.0, 0, 11).unwrap();
        assert!((mid.lr_at(5) - 0.5).abs() < 1e-12);
        // Monotone non-increasing after warm-up.
        for k in 4..13 {
            assert!(s.lr_at(k + 1) <= s.lr_at(k));
        }
    }

    #[test]
    fn bad_schedules_are_rejected_with_the_field() {
        let e = CosineSchedule::new(1e-3, 1e-2, 0, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("min_lr"), "{e}");
        let e = CosineSchedule::new(1e-3, 0.0, 11, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("warmup"), "{e}");
        let e = CosineSchedule::new(f64::NAN, 0.0, 0, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lr`"), "{e}");
    }
}
