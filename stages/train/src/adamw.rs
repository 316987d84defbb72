//! The optimizer of the training loop: AdamW (decoupled weight decay, bias correction) over
//! named `Var`s, with state (step, first and second moments per parameter) that saves to and
//! loads from safetensors bit-exactly, so a resumed run continues exactly.
//!
//! Speed: on the CPU each parameter is updated by one in-place pass over its contiguous f32
//! storage (chunks in parallel with rayon), with the moments kept as plain `Vec<f32>`. candle-nn's
//! AdamW builds about 15 temporary tensors per parameter and step instead. Any other device or
//! dtype falls back to the same arithmetic written with tensor ops (moments in f32).
//!
//! Mixed precision: a bf16 or f16 parameter gets an f32 master copy here. The update runs on the
//! master (with f32 moments, by the same kernels as an f32 parameter), and the parameter the
//! model computes with is set to the master rounded to its dtype, so small updates accumulate
//! instead of vanishing in bf16's 8-bit mantissa. The masters are part of the saved state
//! (`master.NAME`), so a resumed run continues exactly.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cpu;
use crate::error::{Result, TrainError};
use crate::grads::Grads;

/// AdamW hyper-parameters other than the learning rate (which the schedule supplies per step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay 1-D parameters (norm weights, biases) too. Off by default, as is usual for LLMs.
    pub decay_1d: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_1d: false,
        }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let bad = |field, reason: String| Err(TrainError::Config { field, reason });
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", format!("must be in [0, 1), got {}", self.beta1));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", format!("must be in [0, 1), got {}", self.beta2));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", format!("must be positive, got {}", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("must be non-negative, got {}", self.weight_decay),
            );
        }
        Ok(())
    }
}

/// First and second moments of one parameter.
#[derive(Debug)]
enum Moments {
    /// CPU f32 contiguous parameter: moments as plain vectors, updated in place.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Anything else: f32 tensors on the parameter's device.
    Device { m: Tensor, v: Tensor },
}

#[derive(Debug)]
struct Param {
    name: String,
    /// What the model computes with.
    var: Var,
    /// The f32 master copy of a bf16/f16 `var` (None for f32 parameters, updated directly).
    master: Option<Var>,
    decay: bool,
    moments: Moments,
}

impl Param {
    /// After an update of the master: round it into the parameter the model uses.
    fn publish(&self) -> Result<()> {
        if let Some(m) = &self.master {
            self.var.set(&m.as_tensor().to_dtype(self.var.dtype())?)?;
        }
        Ok(())
    }
}

/// AdamW over named parameters.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    step: u64,
}

/// The scalars of one update, shared by both paths.
#[derive(Debug, Clone, Copy)]
struct StepScalars {
    lr: f32,
    /// `1 - lr * weight_decay` (1 for parameters without decay).
    keep: f32,
    beta1: f32,
    beta2: f32,
    /// `1 / (1 - beta1^t)` and `1 / (1 - beta2^t)`.
    bc1: f32,
    bc2: f32,
    eps: f32,
    /// Multiplies the gradient first: `1 / micro_batches` times the clip factor.
    grad_scale: f32,
}

impl AdamW {
    /// An optimizer for `params` (names must be unique; the order is the order of [`Grads`]).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            if !seen.insert(name.clone()) {
                return Err(TrainError::Param {
                    name,
                    reason: "appears twice in the parameter list".into(),
                });
            }
            if !var.dtype().is_float() {
                return Err(TrainError::Param {
                    name,
                    reason: format!("has dtype {:?}, which cannot be trained", var.dtype()),
                });
            }
            let decay = cfg.decay_1d || var.rank() > 1;
            let master = match var.dtype() {
                DType::F32 | DType::F64 => None,
                _ => Some(Var::from_tensor(
                    &var.as_tensor().to_dtype(DType::F32)?.contiguous()?,
                )?),
            };
            let target = master.as_ref().unwrap_or(&var);
            let moments = if cpu::is_cpu_f32_contiguous(target.as_tensor()) {
                let n = var.elem_count();
                Moments::Host {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            } else {
                let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())?;
                Moments::Device {
                    m: zeros.clone(),
                    v: zeros,
                }
            };
            out.push(Param {
                name,
                var,
                master,
                decay,
                moments,
            });
        }
        Ok(Self {
            cfg,
            params: out,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of steps taken (the `t` of bias correction).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The parameters' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The parameters' variables, in order (pass these to [`Grads::accumulate`]).
    pub fn vars(&self) -> Vec<&Var> {
        self.params.iter().map(|p| &p.var).collect()
    }

    /// One AdamW step at learning rate `lr`, with every gradient multiplied by `grad_scale`
    /// first (fold the micro-batch mean and the clip factor into it: no extra pass).
    pub fn step(&mut self, grads: &Grads, lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(TrainError::Config {
                field: "grads",
                reason: format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    self.params.len()
                ),
            });
        }
        self.step += 1;
        let t = self.step as i32;
        let base = StepScalars {
            lr: lr as f32,
            keep: 1.0,
            beta1: self.cfg.beta1 as f32,
            beta2: self.cfg.beta2 as f32,
            bc1: (1.0 / (1.0 - self.cfg.beta1.powi(t))) as f32,
            bc2: (1.0 / (1.0 - self.cfg.beta2.powi(t))) as f32,
            eps: self.cfg.eps as f32,
            grad_scale: grad_scale as f32,
        };
        for (i, p) in self.params.iter_mut().enumerate() {
            let Some(g) = grads.get(i) else { continue };
            if g.dims() != p.var.dims() {
                return Err(TrainError::Param {
                    name: p.name.clone(),
                    reason: format!(
                        "gradient shape {:?} differs from parameter shape {:?}",
                        g.dims(),
                        p.var.dims()
                    ),
                });
            }
            let s = StepScalars {
                keep: if p.decay {
                    (1.0 - lr * self.cfg.weight_decay) as f32
                } else {
                    1.0
                },
                ..base
            };
            match &mut p.moments {
                Moments::Host { m, v } if cpu::is_cpu_f32_contiguous(g) => {
                    let op = HostStep {
                        s,
                        mv: RefCell::new((m.as_mut_slice(), v.as_mut_slice())),
                    };
                    p.master
                        .as_ref()
                        .unwrap_or(&p.var)
                        .as_tensor()
                        .inplace_op2(g, &op)?;
                }
                Moments::Host { m, v } => {
                    // A non-f32 or strided gradient for a CPU f32 parameter: make it contiguous f32.
                    let g = g.to_dtype(DType::F32)?.contiguous()?;
                    let op = HostStep {
                        s,
                        mv: RefCell::new((m.as_mut_slice(), v.as_mut_slice())),
                    };
                    p.master
                        .as_ref()
                        .unwrap_or(&p.var)
                        .as_tensor()
                        .inplace_op2(&g, &op)?;
                }
                Moments::Device { m, v } => {
                    device_step(p.master.as_ref().unwrap_or(&p.var), g, m, v, s)?
                }
            }
            p.publish()?;
        }
        Ok(())
    }

    /// The moments as f32 tensors on the CPU, named `m.<param>` and `v.<param>`.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(2 * self.params.len());
        for p in &self.params {
            let (m, v) = match &p.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, p.var.shape(), &Device::Cpu)?,
                    Tensor::from_slice(v, p.var.shape(), &Device::Cpu)?,
                ),
                Moments::Device { m, v } => {
                    (m.to_device(&Device::Cpu)?, v.to_device(&Device::Cpu)?)
                }
            };
            out.insert(format!("m.{}", p.name), m);
            out.insert(format!("v.{}", p.name), v);
            if let Some(master) = &p.master {
                out.insert(
                    format!("master.{}", p.name),
                    master.as_tensor().to_device(&Device::Cpu)?,
                );
            }
        }
        Ok(out)
    }

    /// Restores the step count and the moments written by [`AdamW::state_tensors`]; every
    /// parameter must be present with its shape.
    pub fn load_state(&mut self, step: u64, state: &HashMap<String, Tensor>) -> Result<()> {
        for p in &mut self.params {
            let fetch = |key: String| -> Result<Tensor> {
                let t = state.get(&key).ok_or_else(|| TrainError::Param {
                    name: p.name.clone(),
                    reason: format!("optimizer state has no tensor `{key}`"),
                })?;
                if t.dims() != p.var.dims() || t.dtype() != DType::F32 {
                    return Err(TrainError::Param {
                        name: p.name.clone(),
                        reason: format!(
                            "optimizer tensor `{key}` is {:?} {:?}, expected F32 {:?}",
                            t.dtype(),
                            t.dims(),
                            p.var.dims()
                        ),
                    });
                }
                Ok(t.clone())
            };
            let (m, v) = (
                fetch(format!("m.{}", p.name))?,
                fetch(format!("v.{}", p.name))?,
            );
            if let Some(master) = &p.master {
                master.set(&fetch(format!("master.{}", p.name))?.to_device(master.device())?)?;
                p.publish()?;
            }
            p.moments = match p.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                Moments::Device { .. } => Moments::Device {
                    m: m.to_device(p.var.device())?,
                    v: v.to_device(p.var.device())?,
                },
            };
        }
        self.step = step;
        Ok(())
    }
}

/// The in-place CPU update of one parameter; the moments ride along in the op because candle
/// hands out mutable storage only through in-place ops.
struct HostStep<'a> {
    s: StepScalars,
    mv: RefCell<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for HostStep<'_> {
    fn name(&self) -> &'static str {
        "pollard-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let msg = |m: &str| candle_core::Error::Msg(format!("adamw: {m}"));
        let p = cpu::f32_slice_mut(s1, l1).ok_or_else(|| msg("parameter is not contiguous f32"))?;
        let g = cpu::f32_slice(s2, l2).ok_or_else(|| msg("gradient is not contiguous f32"))?;
        let mut mv = self.mv.borrow_mut();
        let (m, v) = &mut *mv;
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            return Err(msg("parameter, gradient and moments differ in length"));
        }
        let s = self.s;
        let run =
            |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| adamw_kernel(p, g, m, v, &s);
        if p.len() <= cpu::CHUNK {
            run(p, g, m, v);
        } else {
            p.par_chunks_mut(cpu::CHUNK)
                .zip(g.par_chunks(cpu::CHUNK))
                .zip(m.par_chunks_mut(cpu::CHUNK))
                .zip(v.par_chunks_mut(cpu::CHUNK))
                .for_each(|(((p, g), m), v)| run(p, g, m, v));
        }
        Ok(())
    }
}

/// The AdamW arithmetic on one chunk; written as one flat loop so it vectorises.
#[inline]
fn adamw_kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &StepScalars) {
    let (b1, b2) = (s.beta1, s.beta2);
    let (ob1, ob2) = (1.0 - b1, 1.0 - b2);
    let step_size = s.lr * s.bc1;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * s.grad_scale;
        *m = b1 * *m + ob1 * g;
        *v = b2 * *v + ob2 * g * g;
        let denom = (*v * s.bc2).sqrt() + s.eps;
        *p = *p * s.keep - step_size * *m / denom;
    }
}

/// The same update with tensor ops, for parameters off the CPU or not f32.
fn device_step(
    var: &Var,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    s: StepScalars,
) -> Result<()> {
    let g = (g.to_dtype(DType::F32)? * s.grad_scale as f64)?;
    *m = ((&*m * s.beta1 as f64)? + (&g * (1.0 - s.beta1) as f64)?)?;
    *v = ((&*v * s.beta2 as f64)? + (g.sqr()? * (1.0 - s.beta2) as f64)?)?;
    let denom = ((&*v * s.bc2 as f64)?.sqrt()? + s.eps as f64)?;
    let update = ((&*m * (s.lr * s.bc1) as f64)? / denom)?;
    let p = (var.as_tensor().to_dtype(DType::F32)? * s.keep as f64)?;
    var.set(&(p - update)?.to_dtype(var.dtype())?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random vector (splitmix64), so tests need no RNG crate.
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn grads_for(vars: &[&Var], seed: u64) -> Grads {
        // loss = sum(w * r) for a fixed random r → gradient r.
        let mut g = Grads::new(vars.len());
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (k, var) in vars.iter().enumerate() {
            let r = Tensor::from_vec(
                noise(var.elem_count(), seed + k as u64),
                var.shape(),
                &Device::Cpu,
            )
            .unwrap();
            let r = r.to_dtype(var.dtype()).unwrap();
            let term = (var.as_tensor() * r)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            loss = (loss + term).unwrap();
        }
        g.accumulate(vars, &loss.backward().unwrap()).unwrap();
        g
    }

    fn vars(seed: u64) -> Vec<(String, Var)> {
        let w = Var::from_vec(noise(40_000 * 3, seed), (40_000, 3), &Device::Cpu).unwrap();
        let b = Var::from_vec(noise(7, seed + 1), 7, &Device::Cpu).unwrap();
        vec![("w".into(), w), ("b".into(), b)]
    }

    #[test]
    fn matches_candle_nn_adamw_when_both_decay_everything() {
        use candle_nn::optim::Optimizer;
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_1d: true,
        };
        let ours = vars(1);
        let theirs = vars(1);
        let mut opt = AdamW::new(ours.clone(), cfg).unwrap();
        let params = candle_nn::ParamsAdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut reference =
            candle_nn::AdamW::new(theirs.iter().map(|(_, v)| v.clone()).collect(), params).unwrap();
        for step in 0..5 {
            let g = grads_for(&opt.vars(), 100 + step);
            opt.step(&g, 1e-2, 1.0).unwrap();
            let tv: Vec<&Var> = theirs.iter().map(|(_, v)| v).collect();
            let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
            for (k, var) in tv.iter().enumerate() {
                let r = Tensor::from_vec(
                    noise(var.elem_count(), 100 + step + k as u64),
                    var.shape(),
                    &Device::Cpu,
                )
                .unwrap();
                loss = (loss + (var.as_tensor() * r).unwrap().sum_all().unwrap()).unwrap();
            }
            reference.backward_step(&loss).unwrap();
        }
        for ((_, a), (_, b)) in ours.iter().zip(&theirs) {
            let d = (a.as_tensor() - b.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-6, "max |ours - candle_nn| = {d}");
        }
    }

    #[test]
    fn host_and_device_paths_agree_and_1d_params_skip_decay() {
        // The f64 parameters take the tensor-op path; the f32 ones the in-place path.
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        };
        let f32s = vars(3);
        let f64s: Vec<(String, Var)> = f32s
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap(),
                )
            })
            .collect();
        let mut a = AdamW::new(f32s.clone(), cfg).unwrap();
        let mut b = AdamW::new(f64s.clone(), cfg).unwrap();
        for step in 0..3 {
            let g = grads_for(&a.vars(), 7 + step);
            a.step(&g, 1e-2, 0.5).unwrap();
            let g = grads_for(&b.vars(), 7 + step);
            b.step(&g, 1e-2, 0.5).unwrap();
        }
        for ((_, x), (_, y)) in f32s.iter().zip(&f64s) {
            let d = (x.as_tensor().to_dtype(DType::F64).unwrap() - y.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(d.to_scalar::<f64>().unwrap() < 1e-6);
        }
        // With a zero gradient, a decayed param shrinks by (1 - lr*wd) and a 1-D one stays.
        let w = Var::new(&[[2f32, 4.0]], &Device::Cpu).unwrap();
        let bias = Var::new(&[2f32, 4.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("bias".into(), bias.clone())],
            cfg,
        )
        .unwrap();
        // Multiply by zero tensors (candle prunes `x * 0.0` from the graph entirely).
        let zw = (w.as_tensor() * w.as_tensor().zeros_like().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let zb = (bias.as_tensor() * bias.as_tensor().zeros_like().unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let mut g = Grads::new(2);
        g.accumulate(&opt.vars(), &(zw + zb).unwrap().backward().unwrap())
            .unwrap();
        opt.step(&g, 0.1, 1.0).unwrap();
        assert_eq!(
            w.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![2.0 * 0.95, 4.0 * 0.95]
        );
        assert_eq!(bias.as_tensor().to_vec1::<f32>().unwrap(), vec![2.0, 4.0]);
    }

    /// Steps far below bf16's resolution at 1.0 (2^-8 relative) accumulate in the f32 master
    /// and reach the bf16 parameter; without a master each one would round away.
    fn bf16_params_accumulate_small_updates_in_an_f32_master(dev: &Device) {
        let cfg = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let w = Var::from_tensor(
            &Tensor::ones(64, DType::F32, dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
        for _ in 0..50 {
            let mut g = Grads::new(1);
            let loss = w
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap();
            g.accumulate(&opt.vars(), &loss.backward().unwrap())
                .unwrap();
            opt.step(&g, 1e-4, 1.0).unwrap();
        }
        let master = opt.state_tensors().unwrap()["master.w"]
            .to_vec1::<f32>()
            .unwrap();
        // Adam's first steps move by lr each (a constant gradient): 1 - 50 * 1e-4.
        assert!(
            master.iter().all(|&x| (x - 0.995).abs() < 1e-5),
            "{master:?}"
        );
        let got = w
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(got.iter().all(|&x| x == 0.99609375), "{got:?}");
        assert_eq!(w.dtype(), DType::BF16);
    }

    #[test]
    fn bf16_master_weights_cpu() {
        bf16_params_accumulate_small_updates_in_an_f32_master(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn bf16_master_weights_cuda() {
        bf16_params_accumulate_small_updates_in_an_f32_master(&Device::new_cuda(0).unwrap());
    }

    #[test]
    fn state_round_trips_and_continues_bit_identically() {
        let cfg = AdamWConfig::default();
        let (a, b) = (vars(5), vars(5));
        let mut oa = AdamW::new(a.clone(), cfg).unwrap();
        let mut ob = AdamW::new(b.clone(), cfg).unwrap();
        for step in 0..3 {
            oa.step(&grads_for(&oa.vars(), step), 1e-3, 1.0).unwrap();
            ob.step(&grads_for(&ob.vars(), step), 1e-3, 1.0).unwrap();
        }
        // Replace b's optimizer with a fresh one restored from saved state.
        let state = ob.state_tensors().unwrap();
        let mut restored = AdamW::new(b.clone(), cfg).unwrap();
        restored.load_state(ob.step_count(), &state).unwrap();
        for step in 3..6 {
            oa.step(&grads_for(&oa.vars(), step), 1e-3, 1.0).unwrap();
            restored
                .step(&grads_for(&restored.vars(), step), 1e-3, 1.0)
                .unwrap();
        }
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            let xs: Vec<u32> = x
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|f| f.to_bits())
                .collect();
            let ys: Vec<u32> = y
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|f| f.to_bits())
                .collect();
            assert_eq!(xs, ys);
        }
        // Missing or misshapen state names the parameter.
        let mut partial = state.clone();
        partial.remove("v.b");
        let e = AdamW::new(b.clone(), cfg)
            .unwrap()
            .load_state(1, &partial)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`b`") && e.contains("v.b"), "{e}");
    }

    #[test]
    fn duplicate_names_and_bad_hyperparameters_are_rejected() {
        let v = Var::new(&[1f32], &Device::Cpu).unwrap();
        let e = AdamW::new(
            vec![("x".into(), v.clone()), ("x".into(), v.clone())],
            AdamWConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
        let e = AdamW::new(
            vec![],
            AdamWConfig {
                beta2: 1.0,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("beta2"), "{e}");
    }
}
