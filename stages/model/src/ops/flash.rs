//! Causal grouped-query attention for the CPU in linear memory: flash-attention's algorithm
//! (blockwise scores with an online softmax), forward and backward, as one `CustomOp3`.
//!
//! Forward, per (batch, query head) and block of `BLOCK` query rows: walk the key blocks the rows
//! can see, keep a running row maximum `m`, row sum `l` and unnormalised output, rescale them by
//! `exp(m_old - m_new)` when the maximum grows; finally `o = acc / l` and the row's log-sum-exp
//! `lse = m + ln l` is all that is kept for the backward (`[b, heads, t]`, not `[.., t, t]`).
//! Backward (flash-attention 2), per (batch, kv head): `D = rowsum(dO * O)`, then for each key
//! block and each query block at or after it, recompute `P = exp(scale q k^T - lse)`, and
//! `dV += P^T dO`, `dS = scale P (dO V^T - D)`, `dQ += dS K`, `dK += dS^T Q`.
//! Extra memory: two `BLOCK x BLOCK` tiles and a `BLOCK x d` accumulator per rayon task, plus
//! `lse`; blocks above the diagonal are never computed (half the FLOPs of a dense product).
//!
//! Layouts as in [`super::attention`]: `q` `[b, heads, t, d]`, `k` `[b, kv_heads, t, d]`, `v`
//! `[b, t, kv_heads, d]`, result `[b, t, heads, d]`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::cpu::f32_slice;
use super::exp::fast_exp;

/// Query rows and key columns per tile.
pub const BLOCK: usize = 64;

/// Applies the op to contiguous f32 CPU tensors (the caller checks shapes).
pub(crate) fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        Flash {
            scale,
            lse: Mutex::new(None),
        },
    )
}

struct Flash {
    scale: f32,
    /// Row log-sum-exp of the scaled scores `[b, heads, t]`, kept for the backward.
    lse: Mutex<Option<Arc<Vec<f32>>>>,
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

/// A strided matrix operand: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

fn mat(ptr: *const f32, rs: usize, cs: usize) -> Mat {
    Mat { ptr, rs, cs }
}

/// `dst[m x n] (row stride dst_rs) = (acc ? dst : 0) + alpha * lhs[m x k] . rhs[k x n]`,
/// single-threaded (the parallelism is over heads).
///
/// # Safety
/// Every addressed element of `dst`, `lhs` and `rhs` must be in bounds, and `dst` written by
/// nobody else meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn mm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: Mat,
    rhs: Mat,
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
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
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

impl CustomOp3 for Flash {
    fn name(&self) -> &'static str {
        "pollard-flash-attention"
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
        let scale = self.scale;
        let mut lse = vec![0f32; b * nh * t];
        let mut out = vec![0f32; b * t * nh * d];
        let po = Ptr(out.as_mut_ptr());
        lse.par_chunks_mut(t).enumerate().for_each(|(bh, lse_h)| {
            let (bi, hi) = (bh / nh, bh % nh);
            let kv = hi / g;
            let qh = &q[bh * t * d..][..t * d];
            let kh = &k[(bi * nkv + kv) * t * d..][..t * d];
            // Row j of this head's v at vh + j * nkv * d (the [b, t, kv_heads, d] layout).
            let vh = v[(bi * t * nkv + kv) * d..].as_ptr();
            let mut s = vec![0f32; BLOCK * BLOCK];
            let mut acc = vec![0f32; BLOCK * d];
            let (mut m, mut l) = ([0f32; BLOCK], [0f32; BLOCK]);
            for r0 in (0..t).step_by(BLOCK) {
                let nr = (r0 + BLOCK).min(t) - r0;
                m.fill(f32::NEG_INFINITY);
                l.fill(0.0);
                acc.fill(0.0);
                for j0 in (0..r0 + nr).step_by(BLOCK) {
                    let nc = (j0 + BLOCK).min(r0 + nr) - j0;
                    // SAFETY: rows r0..r0+nr and keys j0..j0+nc are < t; s holds BLOCK x BLOCK.
                    unsafe {
                        mm(
                            (nr, nc, d),
                            s.as_mut_ptr(),
                            BLOCK,
                            false,
                            mat(qh[r0 * d..].as_ptr(), d, 1),
                            mat(kh[j0 * d..].as_ptr(), 1, d),
                            scale,
                        );
                    }
                    for i in 0..nr {
                        let row = &mut s[i * BLOCK..i * BLOCK + nc];
                        // Keys j0..j0+vis are at or before query r0+i.
                        let vis = (r0 + i + 1).saturating_sub(j0).min(nc);
                        let (seen, masked) = row.split_at_mut(vis);
                        masked.fill(0.0);
                        if vis == 0 {
                            continue;
                        }
                        let mx = seen.iter().fold(m[i], |a, &x| a.max(x));
                        let corr = fast_exp(m[i] - mx);
                        let mut sum = 0f32;
                        for x in seen.iter_mut() {
                            *x = fast_exp(*x - mx);
                            sum += *x;
                        }
                        l[i] = l[i] * corr + sum;
                        m[i] = mx;
                        if corr != 1.0 {
                            acc[i * d..(i + 1) * d].iter_mut().for_each(|a| *a *= corr);
                        }
                    }
                    // SAFETY: v rows j0..j0+nc < t; acc holds nr x d.
                    unsafe {
                        mm(
                            (nr, d, nc),
                            acc.as_mut_ptr(),
                            d,
                            true,
                            mat(s.as_ptr(), BLOCK, 1),
                            mat(vh.add(j0 * nkv * d), nkv * d, 1),
                            1.0,
                        );
                    }
                }
                for i in 0..nr {
                    let inv = 1.0 / l[i];
                    lse_h[r0 + i] = m[i] + l[i].ln();
                    // SAFETY: row (bi, r0+i, hi) of out is written by this task only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            po.get().add(((bi * t + r0 + i) * nh + hi) * d),
                            d,
                        )
                    };
                    for (o, a) in dst.iter_mut().zip(&acc[i * d..(i + 1) * d]) {
                        *o = a * inv;
                    }
                }
            }
        });
        *self.lse.lock().expect("flash lse lock is never poisoned") = Some(Arc::new(lse));
        Ok((CpuStorage::F32(out), Shape::from((b, t, nh, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        go: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self
            .lse
            .lock()
            .expect("flash lse lock is never poisoned")
            .clone();
        let Some(lse) = lse else {
            candle_core::bail!("flash attention: backward before forward")
        };
        let (nq, nk, nv) = (q.elem_count(), k.elem_count(), v.elem_count());
        let packed = q.apply_op3_no_bwd(
            k,
            &Tensor::cat(
                &[
                    v.flatten_all()?,
                    go.contiguous()?.flatten_all()?,
                    o.contiguous()?.flatten_all()?,
                ],
                0,
            )?,
            &FlashBwd {
                scale: self.scale,
                lse,
                nv,
            },
        )?;
        let dq = packed.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = packed.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = packed.narrow(0, nq + nk, nv)?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

struct FlashBwd {
    scale: f32,
    lse: Arc<Vec<f32>>,
    nv: usize,
}

impl CustomOp3 for FlashBwd {
    fn name(&self) -> &'static str {
        "pollard-flash-attention-bwd"
    }

    /// Inputs: q, k, and `v ++ d_out ++ out` flattened. Output: `dq ++ dk ++ dv` flattened.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, rest) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let (_b, nh, t, d) = dims4(l1);
        let nkv = l2.dims()[1];
        let g = nh / nkv;
        let (v, rest) = rest.split_at(self.nv);
        let (go, o) = rest.split_at(q.len());
        let lse = &self.lse[..];
        let scale = self.scale;
        let mut out = vec![0f32; q.len() + k.len() + self.nv];
        let (dq, rest) = out.split_at_mut(q.len());
        let (dk, dv) = rest.split_at_mut(k.len());
        let (pdq, pdv) = (Ptr(dq.as_mut_ptr()), Ptr(dv.as_mut_ptr()));
        // One task per (batch, kv head): it owns dk/dv of that head and dq of its query heads.
        dk.par_chunks_mut(t * d).enumerate().for_each(|(bk, dkh)| {
            let (bi, kv) = (bk / nkv, bk % nkv);
            let kh = &k[bk * t * d..][..t * d];
            let vh = v[(bi * t * nkv + kv) * d..].as_ptr();
            let mut p = vec![0f32; BLOCK * BLOCK];
            let mut ds = vec![0f32; BLOCK * BLOCK];
            let mut delta = vec![0f32; t];
            for hi in kv * g..(kv + 1) * g {
                let bh = bi * nh + hi;
                let qh = &q[bh * t * d..][..t * d];
                let lse_h = &lse[bh * t..][..t];
                // Rows of d_out and out for this head: row r at + r * nh * d.
                let row0 = (bi * t * nh + hi) * d;
                for (r, dr) in delta.iter_mut().enumerate() {
                    let at = row0 + r * nh * d;
                    *dr = go[at..at + d]
                        .iter()
                        .zip(&o[at..at + d])
                        .map(|(a, b)| a * b)
                        .sum();
                }
                let goh = go[row0..].as_ptr();
                // SAFETY (all mm calls): every row index is < t and every tile < BLOCK x BLOCK;
                // this task is the only writer of dq rows of head hi and of dk/dv of head kv.
                let dqh = unsafe { pdq.get().add(bh * t * d) };
                let dvh = unsafe { pdv.get().add((bi * t * nkv + kv) * d) };
                for j0 in (0..t).step_by(BLOCK) {
                    let nc = (j0 + BLOCK).min(t) - j0;
                    for r0 in (j0..t).step_by(BLOCK) {
                        let nr = (r0 + BLOCK).min(t) - r0;
                        unsafe {
                            mm(
                                (nr, nc, d),
                                p.as_mut_ptr(),
                                BLOCK,
                                false,
                                mat(qh[r0 * d..].as_ptr(), d, 1),
                                mat(kh[j0 * d..].as_ptr(), 1, d),
                                scale,
                            );
                        }
                        for i in 0..nr {
                            let row = &mut p[i * BLOCK..i * BLOCK + nc];
                            let vis = (r0 + i + 1).saturating_sub(j0).min(nc);
                            let (seen, masked) = row.split_at_mut(vis);
                            let l = lse_h[r0 + i];
                            seen.iter_mut().for_each(|x| *x = fast_exp(*x - l));
                            masked.fill(0.0);
                        }
                        unsafe {
                            // dV[j] += P^T dO[r]
                            mm(
                                (nc, d, nr),
                                dvh.add(j0 * nkv * d),
                                nkv * d,
                                true,
                                mat(p.as_ptr(), 1, BLOCK),
                                mat(goh.add(r0 * nh * d), nh * d, 1),
                                1.0,
                            );
                            // dP = dO[r] V[j]^T
                            mm(
                                (nr, nc, d),
                                ds.as_mut_ptr(),
                                BLOCK,
                                false,
                                mat(goh.add(r0 * nh * d), nh * d, 1),
                                mat(vh.add(j0 * nkv * d), 1, nkv * d),
                                1.0,
                            );
                        }
                        for i in 0..nr {
                            let dr = delta[r0 + i];
                            let (pr, sr) = (
                                &p[i * BLOCK..i * BLOCK + nc],
                                &mut ds[i * BLOCK..i * BLOCK + nc],
                            );
                            for (s, &pv) in sr.iter_mut().zip(pr) {
                                *s = scale * pv * (*s - dr);
                            }
                        }
                        unsafe {
                            // dQ[r] += dS K[j]
                            mm(
                                (nr, d, nc),
                                dqh.add(r0 * d),
                                d,
                                true,
                                mat(ds.as_ptr(), BLOCK, 1),
                                mat(kh[j0 * d..].as_ptr(), d, 1),
                                1.0,
                            );
                            // dK[j] += dS^T Q[r]
                            mm(
                                (nc, d, nr),
                                dkh[j0 * d..].as_mut_ptr(),
                                d,
                                true,
                                mat(ds.as_ptr(), 1, BLOCK),
                                mat(qh[r0 * d..].as_ptr(), d, 1),
                                1.0,
                            );
                        }
                    }
                }
            }
        });
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}
