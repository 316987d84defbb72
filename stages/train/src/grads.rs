//! Gradients between backward and the optimizer step: summed over micro-batches (gradient
//! accumulation), measured by their global L2 norm (for clipping and the NaN guard).

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::cpu;
use crate::error::Result;

/// Per-parameter gradient sums, in the optimizer's parameter order. A parameter the loss never
/// reached has `None` and is left untouched by the step.
#[derive(Debug, Clone, Default)]
pub struct Grads {
    grads: Vec<Option<Sum>>,
    micro_batches: u32,
}

/// One parameter's sum, copied on write: a single micro-batch never copies its gradients.
#[derive(Debug, Clone)]
enum Sum {
    /// The first micro-batch's gradient: the backward's stored tensor itself, read-only, since
    /// it may share storage with other graph tensors. (candle stores every gradient as the
    /// result of an add, so it is never a parameter's own storage, which AdamW writes.)
    Stored(Tensor),
    /// From the second micro-batch on: a fresh buffer of ours, added into in place.
    Owned(Tensor),
}

impl Sum {
    fn tensor(&self) -> &Tensor {
        match self {
            Sum::Stored(t) | Sum::Owned(t) => t,
        }
    }
}

impl Grads {
    /// Empty sums for `n` parameters.
    pub fn new(n: usize) -> Self {
        Self {
            grads: vec![None; n],
            micro_batches: 0,
        }
    }

    /// Adds one micro-batch's gradients (from `loss.backward()`) for `vars`, which must be in
    /// the same order on every call.
    pub fn accumulate(&mut self, vars: &[&Var], store: &GradStore) -> Result<()> {
        if self.grads.len() != vars.len() {
            self.grads = vec![None; vars.len()];
        }
        for (slot, var) in self.grads.iter_mut().zip(vars) {
            let Some(g) = store.get(var.as_tensor()) else {
                continue;
            };
            match slot {
                None => *slot = Some(Sum::Stored(g.contiguous()?)),
                Some(Sum::Owned(acc))
                    if cpu::is_cpu_f32_contiguous(acc) && g.dtype() == DType::F32 =>
                {
                    acc.inplace_op2(&g.contiguous()?, &cpu::AddAssign)?;
                }
                Some(sum) => *sum = Sum::Owned(sum.tensor().add(g)?),
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Number of micro-batches summed so far.
    pub fn micro_batches(&self) -> u32 {
        self.micro_batches
    }

    /// The summed gradient of parameter `i`, if it received any.
    pub fn get(&self, i: usize) -> Option<&Tensor> {
        self.grads.get(i).and_then(Option::as_ref).map(Sum::tensor)
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Global L2 norm of the summed gradients, times `scale` (pass `1 / micro_batches` to get
    /// the norm of the mean gradient). Computed in f64 with a fixed summation order.
    pub fn global_norm(&self, scale: f64) -> Result<f64> {
        let mut total = 0f64;
        for g in self.grads.iter().flatten().map(Sum::tensor) {
            total += match cpu::with_f32(g, cpu::sum_sq_f32) {
                Some(s) => s,
                None => g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
            };
        }
        Ok(total.sqrt() * scale.abs())
    }

    /// Drops the sums, keeping the parameter count.
    pub fn clear(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = None);
        self.micro_batches = 0;
    }
}

/// The factor that clips a gradient of norm `norm` to at most `max_norm` (1 when it is already
/// inside, or when clipping is off with `max_norm <= 0`). Matches PyTorch's `clip_grad_norm_`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 || norm <= max_norm {
        1.0
    } else {
        max_norm / (norm + 1e-6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn accumulation_sums_micro_batches_and_norm_is_global() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0], &dev).unwrap();
        let b = Var::new(&[[3f32]], &dev).unwrap();
        let unused = Var::new(&[5f32], &dev).unwrap();
        let vars = [&a, &b, &unused];
        let mut g = Grads::new(3);
        for k in 1..=2 {
            // loss = k * (sum(a^2) + b) → da = 2k a, db = k
            let loss = ((a.as_tensor().sqr().unwrap().sum_all().unwrap()
                + b.as_tensor().sum_all().unwrap())
            .unwrap()
                * k as f64)
                .unwrap();
            g.accumulate(&vars, &loss.backward().unwrap()).unwrap();
        }
        assert_eq!(g.micro_batches(), 2);
        assert_eq!(g.get(0).unwrap().to_vec1::<f32>().unwrap(), vec![6.0, 12.0]);
        assert_eq!(
            g.get(1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![3.0]
        );
        assert!(
            g.get(2).is_none(),
            "a parameter the loss never reached has no gradient"
        );
        let norm = g.global_norm(0.5).unwrap();
        let expect = (36f64 + 144.0 + 9.0).sqrt() * 0.5;
        assert!((norm - expect).abs() < 1e-12, "{norm} vs {expect}");
        // The f64 fallback path (non-f32 gradient) gives the same norm.
        let v64 = Var::new(&[6f64, 12.0, 3.0], &dev).unwrap();
        let mut g64 = Grads::new(1);
        let loss = (v64.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        g64.accumulate(&[&v64], &loss.backward().unwrap()).unwrap();
        assert!((g64.global_norm(0.5).unwrap() - expect).abs() < 1e-12);
    }

    /// The first micro-batch's gradients are kept without a copy; summing later micro-batches
    /// must never write into the tensors the first backward returned.
    #[test]
    fn accumulation_never_writes_into_the_backward_store() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        let backward = |k: f64| {
            let loss = (a.as_tensor().sqr().unwrap().sum_all().unwrap() * k).unwrap();
            loss.backward().unwrap()
        };
        let first = backward(1.0);
        let mut g = Grads::new(1);
        g.accumulate(&[&a], &first).unwrap();
        for k in [2.0, 3.0, 4.0] {
            g.accumulate(&[&a], &backward(k)).unwrap();
        }
        assert_eq!(
            g.get(0).unwrap().to_vec1::<f32>().unwrap(),
            vec![20.0, 40.0, 60.0]
        );
        let kept = first.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            kept,
            vec![2.0, 4.0, 6.0],
            "the first backward's gradient was written into"
        );
        // After clear, the next first micro-batch is again read-only.
        g.clear();
        let again = backward(1.0);
        g.accumulate(&[&a], &again).unwrap();
        g.accumulate(&[&a], &backward(1.0)).unwrap();
        g.accumulate(&[&a], &backward(1.0)).unwrap();
        let kept = again.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(kept, vec![2.0, 4.0, 6.0]);
        assert_eq!(
            g.get(0).unwrap().to_vec1::<f32>().unwrap(),
            vec![6.0, 12.0, 18.0]
        );
    }

    #[test]
    fn clip_factor_clips_only_above_the_threshold() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(10.0, 0.0), 1.0, "0 disables clipping");
        let f = clip_factor(4.0, 1.0);
        assert!((f * 4.0 - 1.0).abs() < 1e-6);
    }
}
