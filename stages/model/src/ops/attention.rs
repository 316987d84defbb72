//! Fused causal grouped-query attention for the CPU, with an analytic backward.
//!
//! `o = softmax(scale * q k^T + causal mask) v`, per query head, where query head `h` uses
//! key/value head `h / (heads / kv_heads)` (transformers' `repeat_kv` order). Compared with
//! composing batched matmuls and a softmax, this skips the masked upper triangle (row blocks of
//! 64 queries only multiply against the keys they can see, halving the attention FLOPs), runs
//! one single-threaded gemm per head on a rayon task instead of many tiny multi-threaded ones,
//! reads `v` and writes `o` in the `[b, t, heads, d]` layout the projections use (no transposes),
//! and keeps the probabilities from the forward pass for the backward.
//!
//! Measured (release build, benches/model_speed.rs with POLLARD_BENCH_ATTN_AB=15, fused and
//! composed alternating so that the machine's load drifts affect both): at batch 8, seq 256,
//! 6 heads / 2 kv heads of 64, forward 11.8 vs 18.1 ms (1.53x), forward + backward 37.7 vs
//! 97.8 ms (2.59x) per layer. The model uses this kernel for f32 on the CPU.
//!
//! Layouts: `q` `[b, heads, t, d]`, `k` `[b, kv_heads, t, d]` (RoPE output), `v`
//! `[b, t, kv_heads, d]` (the `v_proj` output reshaped), result `[b, t, heads, d]`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::cpu::f32_slice;
use super::softmax::{causal_softmax, CausalMask};

const BLOCK: usize = 64;

/// Causal attention; see the module docs for layouts. Uses the fused kernel for f32 on the CPU
/// without a sliding window, else composes matmuls and [`causal_softmax`].
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
) -> candle_core::Result<Tensor> {
    let (b, nh, t, d) = q.dims4()?;
    let (bk, nkv, tk, dk) = k.dims4()?;
    if (bk, tk, dk) != (b, t, d) || v.dims() != [b, t, nkv, d] || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!(
            "causal_attention: q {:?}, k {:?}, v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q.device().is_cpu() && q.dtype() == DType::F32 && window.is_none() {
        let op = Attention {
            scale,
            probs: Mutex::new(None),
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    composed(q, k, v, scale, window)
}

/// The same attention from batched matmuls and the causal softmax (any device, any dtype).
pub fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
) -> candle_core::Result<Tensor> {
    let (b, nh, t, d) = q.dims4()?;
    let nkv = k.dim(1)?;
    let g = nh / nkv;
    let v = v.transpose(1, 2)?.contiguous()?; // [b, nkv, t, d]
    let q = q.reshape((b, nkv, g * t, d))?;
    let scores = q.matmul(&k.t()?)?;
    let p = causal_softmax(
        &scores,
        CausalMask {
            q_len: t,
            scale,
            window,
        },
    )?;
    p.matmul(&v)?
        .reshape((b, nh, t, d))?
        .transpose(1, 2)?
        .contiguous()
}

struct Attention {
    scale: f32,
    /// Softmax probabilities `[b, heads, t, t]` (zero above the diagonal), kept for backward.
    probs: Mutex<Option<Arc<Vec<f32>>>>,
}

/// A raw pointer that rayon tasks may share: every task writes a disjoint region.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// Through a method, closures capture the whole `Ptr` (Send + Sync), not its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst = (acc ? dst : 0) + alpha * lhs · rhs` with explicit row/column strides, single-threaded.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    alpha: f32,
) {
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        acc,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        Parallelism::None,
    )
}

fn dims4(l: &Layout) -> (usize, usize, usize, usize) {
    let d = l.dims();
    (d[0], d[1], d[2], d[3])
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "pollard-causal-attention"
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
        let (q, k, v) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (b, nh, t, d) = dims4(l1);
        let nkv = l2.dims()[1];
        let g = nh / nkv;
        let mut probs = vec![0f32; b * nh * t * t];
        let mut out = vec![0f32; b * t * nh * d];
        let op = Ptr(out.as_mut_ptr());
        let scale = self.scale;
        probs.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
            let (bi, hi) = (bh / nh, bh % nh);
            let kv = hi / g;
            let qh = &q[bh * t * d..][..t * d];
            let kh = &k[(bi * nkv + kv) * t * d..][..t * d];
            let vh = v[(bi * t * nkv + kv) * d..].as_ptr(); // row j at + j * nkv * d
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                // SAFETY: all offsets stay inside the slices (rows < t, keys < r1 <= t); each task
                // writes its own head's rows of `out` and its own `p`.
                unsafe {
                    mm(
                        r1 - r0,
                        r1,
                        d,
                        p[r0 * t..].as_mut_ptr(),
                        t,
                        false,
                        qh[r0 * d..].as_ptr(),
                        d,
                        1,
                        kh.as_ptr(),
                        1,
                        d,
                        scale,
                    );
                }
                for r in r0..r1 {
                    let row = &mut p[r * t..r * t + r1];
                    let (vis, hidden) = row.split_at_mut(r + 1);
                    let mx = vis.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                    let mut sum = 0f32;
                    for x in vis.iter_mut() {
                        *x = (*x - mx).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    vis.iter_mut().for_each(|x| *x *= inv);
                    hidden.iter_mut().for_each(|x| *x = 0.0);
                }
                unsafe {
                    let dst = op.get().add(((bi * t + r0) * nh + hi) * d);
                    mm(
                        r1 - r0,
                        d,
                        r1,
                        dst,
                        nh * d,
                        false,
                        p[r0 * t..].as_ptr(),
                        t,
                        1,
                        vh,
                        nkv * d,
                        1,
                        1.0,
                    );
                }
            }
        });
        *self
            .probs
            .lock()
            .expect("attention probs lock is never poisoned") = Some(Arc::new(probs));
        Ok((CpuStorage::F32(out), Shape::from((b, t, nh, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _o: &Tensor,
        go: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self
            .probs
            .lock()
            .expect("attention probs lock is never poisoned")
            .clone();
        let Some(probs) = probs else {
            candle_core::bail!("causal_attention: backward before forward")
        };
        let go = go.contiguous()?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let packed = q.apply_op3_no_bwd(
            k,
            &Tensor::cat(&[v.flatten_all()?, go.flatten_all()?], 0)?,
            &AttentionBwd {
                scale: self.scale,
                probs,
                v_dims: v.dims().to_vec(),
            },
        )?;
        let dq = packed.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = packed.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = packed
            .narrow(0, nq + nk, v.elem_count())?
            .reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

struct AttentionBwd {
    scale: f32,
    probs: Arc<Vec<f32>>,
    v_dims: Vec<usize>,
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "pollard-causal-attention-bwd"
    }

    /// Inputs: q, k, and `v ++ d_out` flattened. Output: `dq ++ dk ++ dv` flattened.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, vgo) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (_b, nh, t, d) = dims4(l1);
        let nkv = l2.dims()[1];
        let g = nh / nkv;
        let nv: usize = self.v_dims.iter().product();
        let (v, go) = vgo.split_at(nv);
        let p_all = &self.probs[..];
        let mut out = vec![0f32; q.len() + k.len() + nv];
        let (dq, rest) = out.split_at_mut(q.len());
        let (dk, dv) = rest.split_at_mut(k.len());
        let (pdq, pdv) = (Ptr(dq.as_mut_ptr()), Ptr(dv.as_mut_ptr()));
        let scale = self.scale;
        // One task per (batch, kv head): it owns dk/dv of that head and dq of its query heads.
        dk.par_chunks_mut(t * d).enumerate().for_each(|(bk, dkh)| {
            let (bi, kv) = (bk / nkv, bk % nkv);
            let kh = &k[bk * t * d..][..t * d];
            let vh = v[(bi * t * nkv + kv) * d..].as_ptr();
            let mut ds = vec![0f32; t * t];
            for hi in kv * g..(kv + 1) * g {
                let bh = bi * nh + hi;
                let p = &p_all[bh * t * t..][..t * t];
                let qh = &q[bh * t * d..][..t * d];
                let goh = go[(bi * t * nh + hi) * d..].as_ptr(); // row r at + r * nh * d
                                                                 // SAFETY: every pointer offset below stays within its buffer (rows and keys < t),
                                                                 // and this task is the only writer of dq rows of head hi and of dk/dv of head kv.
                unsafe {
                    let dvh = pdv.get().add((bi * t * nkv + kv) * d);
                    for j0 in (0..t).step_by(BLOCK) {
                        let j1 = (j0 + BLOCK).min(t);
                        // dV[j0..j1] += P[j0.., j0..j1]^T dO[j0..]   (P is zero above the diagonal)
                        mm(
                            j1 - j0,
                            d,
                            t - j0,
                            dvh.add(j0 * nkv * d),
                            nkv * d,
                            true,
                            p[j0 * t + j0..].as_ptr(),
                            1,
                            t,
                            goh.add(j0 * nh * d),
                            nh * d,
                            1,
                            1.0,
                        );
                    }
                    for r0 in (0..t).step_by(BLOCK) {
                        let r1 = (r0 + BLOCK).min(t);
                        // dP[r0..r1, ..r1] = dO[r0..r1] V[..r1]^T
                        mm(
                            r1 - r0,
                            r1,
                            d,
                            ds[r0 * t..].as_mut_ptr(),
                            t,
                            false,
                            goh.add(r0 * nh * d),
                            nh * d,
                            1,
                            vh,
                            1,
                            nkv * d,
                            1.0,
                        );
                    }
                }
                for r in 0..t {
                    let pr = &p[r * t..r * t + r + 1];
                    let dr = &mut ds[r * t..(r * t + t).min(r * t + (r / BLOCK + 1) * BLOCK)];
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    let (vis, hidden) = dr.split_at_mut(r + 1);
                    for (x, &pv) in vis.iter_mut().zip(pr) {
                        *x = scale * pv * (*x - dot);
                    }
                    hidden.iter_mut().for_each(|x| *x = 0.0);
                }
                unsafe {
                    let dqh = pdq.get().add(bh * t * d);
                    for r0 in (0..t).step_by(BLOCK) {
                        let r1 = (r0 + BLOCK).min(t);
                        // dQ[r0..r1] = dS[r0..r1, ..r1] K[..r1]
                        mm(
                            r1 - r0,
                            d,
                            r1,
                            dqh.add(r0 * d),
                            d,
                            false,
                            ds[r0 * t..].as_ptr(),
                            t,
                            1,
                            kh.as_ptr(),
                            d,
                            1,
                            1.0,
                        );
                    }
                    for j0 in (0..t).step_by(BLOCK) {
                        let j1 = (j0 + BLOCK).min(t);
                        // dK[j0..j1] += dS[j0.., j0..j1]^T Q[j0..]
                        mm(
                            j1 - j0,
                            d,
                            t - j0,
                            dkh[j0 * d..].as_mut_ptr(),
                            d,
                            true,
                            ds[j0 * t + j0..].as_ptr(),
                            1,
                            t,
                            qh[j0 * d..].as_ptr(),
                            d,
                            1,
                            1.0,
                        );
                    }
                }
            }
        });
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_grads, rand_tensor};
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_attention_matches_composed_forward_and_backward() {
        let dev = Device::Cpu;
        // t = 150 spans several 64-row blocks with a ragged last one; 6 heads over 2 kv heads.
        for (b, nh, nkv, t, d) in [(2, 6, 2, 150, 16), (1, 4, 4, 64, 8), (2, 2, 1, 5, 4)] {
            let q = Var::from_tensor(&rand_tensor(&[b, nh, t, d], 1, &dev)).unwrap();
            let k = Var::from_tensor(&rand_tensor(&[b, nkv, t, d], 2, &dev)).unwrap();
            let v = Var::from_tensor(&rand_tensor(&[b, t, nkv, d], 3, &dev)).unwrap();
            let proj = rand_tensor(&[b, t, nh, d], 4, &dev);
            let scale = 1.0 / (d as f32).sqrt();
            let a = causal_attention(&q, &k, &v, scale, None).unwrap();
            let c = composed(&q, &k, &v, scale, None).unwrap();
            assert!(
                max_diff(&a, &c) < 1e-5,
                "forward differs by {}",
                max_diff(&a, &c)
            );
            let ga = (a * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (c * &proj).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let d = max_diff(
                    ga.get(x.as_tensor()).unwrap(),
                    gc.get(x.as_tensor()).unwrap(),
                );
                assert!(
                    d < 1e-4,
                    "d{name} differs by {d} for {:?}",
                    (b, nh, nkv, t, d)
                );
            }
        }
    }

    #[test]
    fn fused_attention_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let q = rand_tensor(&[1, 4, 7, 4], 11, &dev);
        let k = rand_tensor(&[1, 2, 7, 4], 12, &dev);
        let v = rand_tensor(&[1, 7, 2, 4], 13, &dev);
        check_grads(
            &[q, k, v],
            |x| causal_attention(&x[0], &x[1], &x[2], 0.5, None),
            2e-3,
        );
    }

    #[test]
    fn sliding_window_uses_the_composed_path() {
        let dev = Device::Cpu;
        let q = rand_tensor(&[1, 2, 6, 4], 1, &dev);
        let k = rand_tensor(&[1, 1, 6, 4], 2, &dev);
        let v = rand_tensor(&[1, 6, 1, 4], 3, &dev);
        let a = causal_attention(&q, &k, &v, 0.5, Some(2)).unwrap();
        let c = composed(&q, &k, &v, 0.5, Some(2)).unwrap();
        assert_eq!(max_diff(&a, &c), 0.0);
        let full = causal_attention(&q, &k, &v, 0.5, None).unwrap();
        assert!(max_diff(&a, &full) > 1e-3);
    }
}
