//! Scaled, causally masked softmax over attention scores, with an analytic backward.
//!
//! Input `[..., R, S]`: `R` rows are queries (a multiple of `q_len`: several query heads that share
//! a key/value head are stacked, so row `r` is query position `r % q_len`), `S` columns are keys,
//! and query `p` (counted from the end: `p + S - q_len`) sees keys `lo..=p` where `lo` is 0 or,
//! with a sliding window `w`, `p + 1 - w`. Masked entries are exactly 0 and never exponentiated,
//! which halves the work of a full causal mask. Backward: `dx = scale * y * (g - sum(g y))`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{f32_slice, rows_per_task};
use super::exp::fast_exp;
use super::reference;

/// Masking and scaling parameters of [`causal_softmax`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CausalMask {
    /// Query positions per block of rows.
    pub q_len: usize,
    /// Multiplies the scores before the softmax (1/sqrt(head_dim) in attention).
    pub scale: f32,
    /// Sliding-window length (Mistral), `None` for full causal attention.
    pub window: Option<usize>,
}

impl CausalMask {
    /// Visible key range `[lo, hi)` of row `r` with `s` keys.
    #[inline]
    pub(crate) fn range(&self, r: usize, s: usize) -> (usize, usize) {
        let p = r % self.q_len + (s - self.q_len);
        let lo = match self.window {
            Some(w) => (p + 1).saturating_sub(w),
            None => 0,
        };
        (lo, p + 1)
    }
}

/// `softmax(scale * x)` over the last dim with the causal (and optional sliding-window) mask.
pub fn causal_softmax(x: &Tensor, mask: CausalMask) -> candle_core::Result<Tensor> {
    let s = x.dim(D::Minus1)?;
    let r = x.dim(D::Minus2)?;
    if mask.q_len == 0 || r % mask.q_len != 0 || s < mask.q_len || mask.window == Some(0) {
        candle_core::bail!(
            "causal_softmax: {r} rows x {s} keys do not fit q_len {} / window {:?}",
            mask.q_len,
            mask.window
        );
    }
    if !x.device().is_cpu() {
        return reference::causal_softmax(x, mask);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    x32.apply_op1(CausalSoftmax(mask))?.to_dtype(dtype)
}

struct CausalSoftmax(CausalMask);
struct CausalSoftmaxBwd(CausalMask);

fn last2(l: &Layout) -> (usize, usize) {
    let d = l.dims();
    (d[d.len() - 2], d[d.len() - 1])
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "pollard-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (rows, keys) = last2(l);
        let m = self.0;
        let mut y = vec![0f32; x.len()];
        let per = rows_per_task(keys) * keys;
        y.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .enumerate()
            .for_each(|(ci, (yc, xc))| {
                let first_row = ci * (per / keys);
                for (k, (yr, xr)) in yc.chunks_mut(keys).zip(xc.chunks(keys)).enumerate() {
                    let (lo, hi) = m.range((first_row + k) % rows, keys);
                    let (xs, ys) = (&xr[lo..hi], &mut yr[lo..hi]);
                    let mx = xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) * m.scale;
                    let mut sum = 0f32;
                    for (yv, xv) in ys.iter_mut().zip(xs) {
                        let e = fast_exp(xv * m.scale - mx);
                        *yv = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    ys.iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(y.apply_op2_no_bwd(&g, &CausalSoftmaxBwd(self.0))?))
    }
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "pollard-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let (rows, keys) = last2(l1);
        let m = self.0;
        let mut dx = vec![0f32; y.len()];
        let per = rows_per_task(keys) * keys;
        dx.par_chunks_mut(per)
            .zip(y.par_chunks(per).zip(g.par_chunks(per)))
            .enumerate()
            .for_each(|(ci, (dc, (yc, gc)))| {
                let first_row = ci * (per / keys);
                for (k, ((dr, yr), gr)) in dc
                    .chunks_mut(keys)
                    .zip(yc.chunks(keys))
                    .zip(gc.chunks(keys))
                    .enumerate()
                {
                    let (lo, hi) = m.range((first_row + k) % rows, keys);
                    let dot: f32 = yr[lo..hi].iter().zip(&gr[lo..hi]).map(|(a, b)| a * b).sum();
                    for j in lo..hi {
                        dr[j] = m.scale * yr[j] * (gr[j] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_grads, max_diff, rand_tensor};
    use candle_core::Device;

    fn case(dev: &Device) {
        for (window, s) in [(None, 6), (Some(3), 6), (None, 9)] {
            // 2 stacked query heads of 6 positions each; s = 9 means 3 cached keys before them.
            let mask = CausalMask {
                q_len: 6,
                scale: 0.7,
                window,
            };
            let x = rand_tensor(&[2, 3, 12, s], 21, dev);
            let a = causal_softmax(&x, mask).unwrap();
            let b = reference::causal_softmax(&x, mask).unwrap();
            let diff = max_diff(&a, &b);
            assert!(
                diff < 1e-6,
                "forward differs by {diff} (window {window:?}, s {s})"
            );
            let sums = a
                .sum(D::Minus1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(sums.iter().all(|v| (v - 1.0).abs() < 1e-5));
            check_grads(&[x], |v| causal_softmax(&v[0], mask), 2e-3);
        }
    }

    #[test]
    fn causal_softmax_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn causal_softmax_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }

    #[test]
    fn masked_entries_are_exactly_zero() {
        let mask = CausalMask {
            q_len: 4,
            scale: 1.0,
            window: None,
        };
        let x = rand_tensor(&[1, 4, 4], 5, &Device::Cpu);
        let y = causal_softmax(&x, mask)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, row) in y.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                if j > i {
                    assert_eq!(*v, 0.0);
                } else {
                    assert!(*v > 0.0);
                }
            }
        }
    }
}
