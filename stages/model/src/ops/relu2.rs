//! Nemotron's squared-ReLU activation, `relu(x)^2`, with an analytic backward `dx = 2 relu(x) g`.
//!
//! On CPU f32 a fused kernel each way; elsewhere the composition `relu(x).sqr()` from candle
//! primitives (whose autograd is exact) is what runs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::f32_slice;
use super::reference;

const CHUNK: usize = 16 * 1024;

/// `relu(x)^2`, elementwise.
pub fn relu2(x: &Tensor) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return reference::relu2(x);
    }
    x.contiguous()?.apply_op1(Relu2)
}

struct Relu2;
struct Relu2Bwd;

impl CustomOp1 for Relu2 {
    fn name(&self) -> &'static str {
        "pollard-relu2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| {
                for (y, &x) in yc.iter_mut().zip(xc) {
                    let r = x.max(0.0);
                    *y = r * r;
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &Relu2Bwd)?))
    }
}

impl CustomOp2 for Relu2Bwd {
    fn name(&self) -> &'static str {
        "pollard-relu2-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(dc, (xc, gc))| {
                for ((d, &x), &g) in dc.iter_mut().zip(xc).zip(gc) {
                    *d = 2.0 * x.max(0.0) * g;
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{assert_same_as_composition, check_grads, rand_tensor};
    use candle_core::Device;

    fn case(dev: &Device) {
        let x = rand_tensor(&[3, 4, 10], 41, dev);
        check_grads(&[x], |v| relu2(&v[0]), 2e-3);
    }

    #[test]
    fn relu2_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn relu2_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }

    /// The composition that runs off-CPU computes what the CPU kernel computes, forward and
    /// backward, so the device path is exercised here even without a device.
    #[test]
    fn relu2_composition_equals_cpu_kernel() {
        let x = rand_tensor(&[5, 33], 42, &Device::Cpu);
        assert_same_as_composition(&[x], |v| relu2(&v[0]), |v| reference::relu2(&v[0]), 1e-6);
    }
}
