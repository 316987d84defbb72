//! The SwiGLU gate of the Llama MLP, `silu(gate) * up`, fused with an analytic backward.
//!
//! With `s = sigmoid(a)`: `d/da = g u s (1 + a (1 - s))`, `d/du = g a s`. One pass each way
//! instead of candle's four elementwise ops (each allocating and mostly single-threaded).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::f32_slice;
use super::exp::fast_exp;
use super::reference;

const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up`, both of the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        );
    }
    if !gate.device().is_cpu() || gate.dtype() != DType::F32 {
        return reference::swiglu(gate, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;
struct SwiGluBwd;

#[inline]
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-a))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "pollard-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, self.name())?;
        let u = f32_slice(s2, l2, self.name())?;
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(yc, (ac, uc))| {
                for ((y, &a), &u) in yc.iter_mut().zip(ac).zip(uc) {
                    *y = a * sigmoid(a) * u;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let packed = a.apply_op3_no_bwd(u, &g, &SwiGluBwd)?;
        let n = a.elem_count();
        let flat = packed.flatten_all()?;
        let da = flat.narrow(0, 0, n)?.reshape(a.shape())?;
        let du = flat.narrow(0, n, n)?.reshape(a.shape())?;
        Ok((Some(da), Some(du)))
    }
}

impl CustomOp3 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "pollard-swiglu-bwd"
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
        let a = f32_slice(s1, l1, self.name())?;
        let u = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let n = a.len();
        let mut out = vec![0f32; 2 * n];
        let (da, du) = out.split_at_mut(n);
        da.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(
                a.par_chunks(CHUNK)
                    .zip(u.par_chunks(CHUNK))
                    .zip(g.par_chunks(CHUNK)),
            )
            .for_each(|((dac, duc), ((ac, uc), gc))| {
                for i in 0..ac.len() {
                    let (a, u, g) = (ac[i], uc[i], gc[i]);
                    let s = sigmoid(a);
                    dac[i] = g * u * s * (1.0 + a * (1.0 - s));
                    duc[i] = g * a * s;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_grads, max_diff, rand_tensor};
    use candle_core::Device;

    fn case(dev: &Device) {
        let a = rand_tensor(&[3, 4, 10], 31, dev);
        let u = rand_tensor(&[3, 4, 10], 32, dev);
        let x = swiglu(&a, &u).unwrap();
        let y = reference::swiglu(&a, &u).unwrap();
        let diff = max_diff(&x, &y);
        assert!(diff < 1e-6, "forward differs by {diff}");
        check_grads(&[a, u], |v| swiglu(&v[0], &v[1]), 2e-3);
    }

    #[test]
    fn swiglu_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn swiglu_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }
}
