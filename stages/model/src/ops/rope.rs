//! Rotary position embedding in Hugging Face's `rotate_half` layout, fused with the
//! `[b, t, heads, d] -> [b, heads, t, d]` transpose that attention needs anyway.
//!
//! Dimension `i < d/2` is paired with `i + d/2`: `y1 = x1 cos - x2 sin`, `y2 = x2 cos + x1 sin`.
//! The backward is the inverse rotation (`sin -> -sin`) fused with the transpose back.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::f32_slice;
use super::reference;
use crate::config::LlamaConfig;

/// cos/sin of `position * inv_freq` for positions `0..t`, each `[t, head_dim/2]` f32.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// Tables for positions `0..t` as transformers computes them: `freqs = inv_freq * pos` in f32,
    /// then `cos`/`sin` in f32.
    pub fn new(cfg: &LlamaConfig, t: usize, dev: &Device) -> candle_core::Result<Self> {
        let inv = cfg.rope_inv_freq();
        let scale = cfg.rope_position_scale();
        let half = inv.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            let pos = p as f32 * scale;
            for f in &inv {
                let a = f * pos;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (t, half), dev)?,
            sin: Tensor::from_vec(sin, (t, half), dev)?,
        })
    }
}

/// Applies RoPE to `x` of shape `[b, t, heads, head_dim]` and returns `[b, heads, t, head_dim]`
/// (contiguous) in `x`'s dtype.
pub fn rope(x: &Tensor, tables: &RopeTables) -> candle_core::Result<Tensor> {
    let (_b, t, _h, d) = x.dims4()?;
    if tables.cos.dims() != [t, d / 2] || tables.sin.dims() != [t, d / 2] {
        candle_core::bail!(
            "rope: tables {:?} do not match seq {t} and head_dim {d}",
            tables.cos.dims()
        );
    }
    if !x.device().is_cpu() {
        return reference::rope(x, tables);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    x32.apply_op3(&tables.cos, &tables.sin, Rope)?
        .to_dtype(dtype)
}

struct Rope;
struct RopeBwd;

fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [a, b, c, d] => Ok((a, b, c, d)),
        ref other => candle_core::bail!("rope: expected a 4-d tensor, got {other:?}"),
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "pollard-rope"
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
        let cos = f32_slice(s2, l2, self.name())?;
        let sin = f32_slice(s3, l3, self.name())?;
        let (b, t, h, d) = dims(l1)?;
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        // One task per (batch, head) output block of [t, d].
        y.par_chunks_mut(t * d).enumerate().for_each(|(bh, yb)| {
            let (bi, hi) = (bh / h, bh % h);
            for ti in 0..t {
                let src = &x[((bi * t + ti) * h + hi) * d..][..d];
                let dst = &mut yb[ti * d..][..d];
                let (c, s) = (&cos[ti * half..][..half], &sin[ti * half..][..half]);
                for i in 0..half {
                    let (x1, x2) = (src[i], src[i + half]);
                    dst[i] = x1 * c[i] + (-x2) * s[i];
                    dst[i + half] = x2 * c[i] + x1 * s[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, h, t, d))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = g.apply_op3_no_bwd(cos, sin, &RopeBwd)?;
        Ok((Some(dx), None, None))
    }
}

impl CustomOp3 for RopeBwd {
    fn name(&self) -> &'static str {
        "pollard-rope-bwd"
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
        let g = f32_slice(s1, l1, self.name())?;
        let cos = f32_slice(s2, l2, self.name())?;
        let sin = f32_slice(s3, l3, self.name())?;
        let (b, h, t, d) = dims(l1)?;
        let half = d / 2;
        let mut dx = vec![0f32; g.len()];
        // One task per (batch, position) row of [h, d] in the [b, t, h, d] output.
        dx.par_chunks_mut(h * d).enumerate().for_each(|(bt, row)| {
            let (bi, ti) = (bt / t, bt % t);
            let (c, s) = (&cos[ti * half..][..half], &sin[ti * half..][..half]);
            for hi in 0..h {
                let src = &g[((bi * h + hi) * t + ti) * d..][..d];
                let dst = &mut row[hi * d..][..d];
                for i in 0..half {
                    let (g1, g2) = (src[i], src[i + half]);
                    dst[i] = g1 * c[i] + g2 * s[i];
                    dst[i + half] = g2 * c[i] - g1 * s[i];
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((b, t, h, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_grads, max_diff, rand_tensor};

    fn case(dev: &Device) {
        let mut cfg = LlamaConfig::new(16, 32, 64, 1, 4, 2, 8);
        cfg.rope_theta = 500.0;
        let tables = RopeTables::new(&cfg, 5, dev).unwrap();
        let x = rand_tensor(&[2, 5, 3, 8], 11, dev);
        let a = rope(&x, &tables).unwrap();
        let b = reference::rope(&x, &tables).unwrap();
        assert_eq!(a.dims(), &[2, 3, 5, 8]);
        let diff = max_diff(&a, &b);
        assert!(diff < 1e-6, "forward differs by {diff}");
        check_grads(&[x], |v| rope(&v[0], &tables), 2e-3);
    }

    #[test]
    fn rope_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn rope_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let cfg = LlamaConfig::new(16, 32, 64, 1, 4, 2, 8);
        let tables = RopeTables::new(&cfg, 4, &Device::Cpu).unwrap();
        let x = rand_tensor(&[1, 4, 1, 8], 3, &Device::Cpu);
        let y = rope(&x, &tables).unwrap();
        let x0 = x.squeeze(2).unwrap().squeeze(0).unwrap();
        let y0 = y.squeeze(1).unwrap().squeeze(0).unwrap();
        assert_eq!(max_diff(&x0.get(0).unwrap(), &y0.get(0).unwrap()), 0.0);
        let nx = x0.sqr().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        let ny = y0.sqr().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in nx.iter().zip(&ny) {
            assert!((a - b).abs() < 1e-4 * a.max(1.0), "{a} vs {b}");
        }
    }
}
