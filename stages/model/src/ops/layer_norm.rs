//! Nemotron's LayerNorm1p over the last dimension, `y = (x - mean) / sqrt(var + eps) * (1 + w) + b`
//! (the stored weight is gamma - 1), with an analytic backward.
//!
//! With `r = 1/sqrt(var + eps)`, `n = (x - mean) r` and `u = g (1 + w)`:
//! `dx = r (u - mean(u) - n mean(u n))`, `dw = sum over rows of g n`, `db = sum over rows of g`.
//! On CPU a fused kernel each way; elsewhere the primitive composition in `reference` runs.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{f32_slice, rows_per_task};
use super::reference;

/// LayerNorm1p of `x` (`[..., d]`) with weight `w` and bias `b` (both `[d]`).
pub fn layer_norm1p(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] || b.dims() != [d] {
        candle_core::bail!(
            "layer_norm1p: weight {:?} / bias {:?} do not match last dim {d}",
            w.dims(),
            b.dims()
        );
    }
    if !x.device().is_cpu() {
        return reference::layer_norm1p(x, w, b, eps);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let w32 = w.to_dtype(DType::F32)?.contiguous()?;
    let b32 = b.to_dtype(DType::F32)?.contiguous()?;
    x32.apply_op3(&w32, &b32, LayerNorm1p { eps: eps as f32 })?
        .to_dtype(dtype)
}

struct LayerNorm1p {
    eps: f32,
}

/// (mean, 1/sqrt(var + eps)) of a row, population variance as torch's layer_norm.
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm1p {
    fn name(&self) -> &'static str {
        "pollard-layer-norm1p"
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
        let b = f32_slice(s3, l3, self.name())?;
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        let per = rows_per_task(d) * d;
        y.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let (mean, r) = stats(xr, self.eps);
                    for i in 0..d {
                        yr[i] = (xr[i] - mean) * r * (1.0 + w[i]) + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let d = w.dim(0)?;
        let rows = x.elem_count() / d;
        // One fused pass: dx in rows 0..rows, then dw and db as two extra rows.
        let packed = x.apply_op3_no_bwd(w, &g, &LayerNorm1pBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = packed.narrow(0, rows, 1)?.reshape(d)?;
        let db = packed.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct LayerNorm1pBwd {
    eps: f32,
}

impl CustomOp3 for LayerNorm1pBwd {
    fn name(&self) -> &'static str {
        "pollard-layer-norm1p-bwd"
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
        let mut out = vec![0f32; x.len() + 2 * d];
        let (dx, tail) = out.split_at_mut(x.len());
        let per = rows_per_task(d) * d;
        let zero = || vec![0f32; 2 * d];
        let sums = dx
            .par_chunks_mut(per)
            .zip(x.par_chunks(per).zip(g.par_chunks(per)))
            .map(|(dxc, (xc, gc))| {
                let mut acc = zero();
                for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    let (mean, r) = stats(xr, self.eps);
                    let (mut mu, mut mun) = (0f32, 0f32);
                    for i in 0..d {
                        let n = (xr[i] - mean) * r;
                        let u = gr[i] * (1.0 + w[i]);
                        mu += u;
                        mun += u * n;
                        acc[i] += gr[i] * n;
                        acc[d + i] += gr[i];
                    }
                    let (mu, mun) = (mu / d as f32, mun / d as f32);
                    for i in 0..d {
                        let n = (xr[i] - mean) * r;
                        dxr[i] = r * (gr[i] * (1.0 + w[i]) - mu - n * mun);
                    }
                }
                acc
            })
            .reduce(zero, |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            });
        tail.copy_from_slice(&sums);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_same_as_composition, check_grads, rand_tensor};
    use candle_core::Device;

    fn inputs(dev: &Device) -> Vec<Tensor> {
        vec![
            (rand_tensor(&[3, 5, 16], 51, dev) + 0.3).unwrap(),
            (rand_tensor(&[16], 52, dev) * 0.1).unwrap(),
            (rand_tensor(&[16], 53, dev) * 0.05).unwrap(),
        ]
    }

    fn case(dev: &Device) {
        check_grads(
            &inputs(dev),
            |v| layer_norm1p(&v[0], &v[1], &v[2], 1e-5),
            2e-3,
        );
    }

    #[test]
    fn layer_norm1p_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn layer_norm1p_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }

    /// The composition that runs off-CPU computes what the CPU kernel computes, forward and
    /// backward (all three inputs).
    #[test]
    fn layer_norm1p_composition_equals_cpu_kernel() {
        assert_same_as_composition(
            &inputs(&Device::Cpu),
            |v| layer_norm1p(&v[0], &v[1], &v[2], 1e-5),
            |v| reference::layer_norm1p(&v[0], &v[1], &v[2], 1e-5),
            1e-5,
        );
    }

    /// transformers' weight convention: a zero stored weight and bias give a plain standardisation.
    #[test]
    fn zero_weight_is_standardisation() {
        let dev = Device::Cpu;
        let x = rand_tensor(&[4, 32], 54, &dev);
        let z = Tensor::zeros(32, DType::F32, &dev).unwrap();
        let y = layer_norm1p(&x, &z, &z, 0.0).unwrap();
        let m = y.mean(1).unwrap().abs().unwrap().max_all().unwrap();
        let v = y.sqr().unwrap().mean(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(m.to_scalar::<f32>().unwrap() < 1e-5);
        assert!(v.iter().all(|v| (v - 1.0).abs() < 1e-4), "{v:?}");
    }
}
