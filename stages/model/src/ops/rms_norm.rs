//! RMSNorm over the last dimension, `y = x / sqrt(mean(x^2) + eps) * w`, with an analytic backward.
//!
//! Forward order of operations follows transformers (`(x * rsqrt(var + eps)) * w`, in f32).
//! Backward, with `r = 1/sqrt(mean(x^2)+eps)` and `n = x r`:
//! `dx = r (g w - n mean(g w n))`, `dw = sum over rows of g n`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{f32_slice, rows_per_task};
use super::reference;

/// RMSNorm of `x` (any shape `[..., d]`) with weight `w` (`[d]`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() {
        return reference::rms_norm(x, w, eps);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let w32 = w.to_dtype(DType::F32)?.contiguous()?;
    let d = x32.dim(D::Minus1)?;
    if w32.dims() != [d] {
        candle_core::bail!(
            "rms_norm: weight shape {:?} does not match last dim {d}",
            w32.dims()
        );
    }
    x32.apply_op2(&w32, RmsNorm { eps: eps as f32 })?
        .to_dtype(dtype)
}

struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss = sum_of_products(row, row);
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// `sum(a[i] * b[i])` in 16 independent partial sums: one running sum is a chain of dependent
/// adds that cannot vectorise (the forward went from 0.76 to 0.34 ms at 1 thread at the speed
/// bench's shapes, `benches/model_speed.rs`).
fn sum_of_products(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "pollard-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        let per = rows_per_task(d) * d;
        y.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let r = inv_rms(xr, self.eps);
                    for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                        *yv = (xv * r) * wv;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let d = w.dim(0)?;
        let rows = x.elem_count() / d;
        // One fused pass gives dx (rows 0..rows) and dw (the extra last row).
        let packed = x.apply_op3_no_bwd(w, &g, &RmsNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw)))
    }
}

struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "pollard-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let d = w.len();
        let rows = x.len() / d;
        let mut out = vec![0f32; x.len() + d];
        let (dx, dw_out) = out.split_at_mut(x.len());
        let per = rows_per_task(d) * d;
        let dw = dx
            .par_chunks_mut(per)
            .zip(x.par_chunks(per).zip(g.par_chunks(per)))
            .map(|(dxc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                let mut gw = vec![0f32; d];
                for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let r = inv_rms(xr, self.eps);
                    // mean(g w n) with n = x r, as r * sum((g w) x) / d
                    for i in 0..d {
                        dw[i] += gr[i] * (xr[i] * r);
                    }
                    gw.iter_mut()
                        .zip(gr.iter().zip(w))
                        .for_each(|(o, (g, w))| *o = g * w);
                    let m = r * sum_of_products(&gw, xr) / d as f32;
                    for i in 0..d {
                        dxr[i] = r * (gw[i] - xr[i] * r * m);
                    }
                }
                dw
            })
            .reduce(
                || vec![0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        dw_out.copy_from_slice(&dw);
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_grads, max_diff, rand_tensor};
    use candle_core::{Device, Var};

    fn case(dev: &Device) {
        let x = rand_tensor(&[3, 5, 16], 1, dev);
        let w = (rand_tensor(&[16], 2, dev) + 1.0).unwrap();
        // Forward agrees with the primitive composition.
        let a = rms_norm(&x, &w, 1e-5).unwrap();
        let b = reference::rms_norm(&x, &w, 1e-5).unwrap();
        let diff = max_diff(&a, &b);
        assert!(diff < 1e-5, "forward differs by {diff}");
        // Gradients agree with finite differences for both inputs.
        check_grads(&[x, w], |v| rms_norm(&v[0], &v[1], 1e-5), 2e-3);
    }

    #[test]
    fn rms_norm_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn rms_norm_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }

    #[test]
    fn rms_norm_backward_matches_autograd_of_primitives() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&rand_tensor(&[4, 7, 32], 3, &dev)).unwrap();
        let w = Var::from_tensor(&(rand_tensor(&[32], 4, &dev) + 1.0).unwrap()).unwrap();
        let proj = rand_tensor(&[4, 7, 32], 5, &dev);
        let g1 = (rms_norm(&x, &w, 1e-6).unwrap() * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (reference::rms_norm(&x, &w, 1e-6).unwrap() * &proj)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [x.as_tensor(), w.as_tensor()] {
            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-4);
        }
    }
}
