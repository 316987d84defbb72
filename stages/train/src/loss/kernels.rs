//! Row kernels behind the loss ops: numerically stable log-softmax statistics and the per-row
//! loss values and gradients, generic over f32 and f64 (f64 serves the finite-difference checks).
//! Rows run in parallel; per-row results are combined in row order, so results are
//! bit-deterministic for any thread count.

use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use candle_core::{CpuStorage, Layout};
use rayon::prelude::*;

use pollard_model::ops::fast_exp;

use crate::cpu::{self, CHUNK};

/// The float operations the kernels need, for f32 and f64.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    const ZERO: Self;
    const NEG_INF: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Option<&'a [Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn exp(self) -> Self {
        fast_exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Option<&'a [Self]> {
        cpu::f32_slice(s, l)
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Option<&'a [Self]> {
        let (start, end) = l.contiguous_offsets()?;
        match s {
            CpuStorage::F64(v) => v.get(start..end),
            _ => None,
        }
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// Independent accumulators per reduction: float adds do not reassociate, so a single
/// accumulator would keep the compiler from vectorising the exp and the sum. The lane order is
/// fixed, so results stay bit-deterministic.
const LANES: usize = 8;

/// Lane-wise reduction: `acc[k] = f(acc[k], a[i], b[i])` over `LANES`-wide chunks of `a` and
/// `b` (same length), then the tail; returns the lanes.
#[inline(always)]
fn lanes<T: Real>(a: &[T], b: &[T], init: T, f: impl Fn(T, T, T) -> T) -> [T; LANES] {
    let mut acc = [init; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] = f(acc[k], x[k], y[k]);
        }
    }
    for (k, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[k] = f(acc[k], x, y);
    }
    acc
}

#[inline(always)]
fn max_of<T: Real>(a: T, b: T) -> T {
    if b > a {
        b
    } else {
        a
    }
}

/// `log(sum(exp(x * scale)))` of one row, shifted by the row max so it cannot overflow.
#[inline]
pub(crate) fn logsumexp<T: Real>(row: &[T], scale: T) -> T {
    let m = lanes(row, row, T::NEG_INF, |m, x, _| max_of(m, x * scale))
        .into_iter()
        .fold(T::NEG_INF, max_of);
    if m.partial_cmp(&T::NEG_INF) != Some(std::cmp::Ordering::Greater) {
        // Empty row or all -inf (or NaN): nothing to shift by; let the sum say so.
        return m;
    }
    let s = lanes(row, row, T::ZERO, |acc, x, _| acc + (x * scale - m).exp())
        .into_iter()
        .fold(T::ZERO, |a, b| a + b);
    m + s.ln()
}

/// Rows per parallel task, so each task touches about [`CHUNK`] elements.
fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// Sum over rows of `f(row index)`, rows in parallel, combined in row order.
pub(crate) fn sum_rows(n: usize, width: usize, f: impl Fn(usize) -> f64 + Sync + Send) -> f64 {
    let per_row: Vec<f64> = (0..n)
        .into_par_iter()
        .with_min_len(rows_per_task(width))
        .map(f)
        .collect();
    per_row.iter().sum()
}

/// Fills an `[n, width]` output row by row in parallel with `f(row index, out row)`.
pub(crate) fn fill_rows<T: Real>(
    n: usize,
    width: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let mut out = vec![T::ZERO; n * width];
    if width > 0 {
        out.par_chunks_mut(width)
            .with_min_len(rows_per_task(width))
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    }
    out
}

/// Which KL divergence: `Forward` = KL(teacher || student), `Reverse` = KL(student || teacher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KlKind {
    Forward,
    Reverse,
}

/// KL of one row pair at inverse temperature `inv_t`.
#[inline]
pub(crate) fn kl_row<T: Real>(kind: KlKind, s: &[T], t: &[T], inv_t: T) -> f64 {
    let (lse_s, lse_t) = (logsumexp(s, inv_t), logsumexp(t, inv_t));
    let acc = lanes(s, t, T::ZERO, |acc, sj, tj| {
        let (ls, lt) = (sj * inv_t - lse_s, tj * inv_t - lse_t);
        acc + match kind {
            KlKind::Forward => lt.exp() * (lt - ls),
            KlKind::Reverse => ls.exp() * (ls - lt),
        }
    });
    acc.iter().map(|x| x.to_f64()).sum()
}

/// d KL / d student logits of one row, times `scale` (which carries `grad / (n * T)`).
#[inline]
pub(crate) fn kl_grad_row<T: Real>(
    kind: KlKind,
    s: &[T],
    t: &[T],
    inv_t: T,
    scale: T,
    out: &mut [T],
) {
    let (lse_s, lse_t) = (logsumexp(s, inv_t), logsumexp(t, inv_t));
    match kind {
        KlKind::Forward => {
            for ((o, &sj), &tj) in out.iter_mut().zip(s).zip(t) {
                *o = scale * ((sj * inv_t - lse_s).exp() - (tj * inv_t - lse_t).exp());
            }
        }
        KlKind::Reverse => {
            // d/du_j sum_i p_i (log p_i - log q_i) = p_j (log p_j - log q_j - KL).
            let kl = T::from_f64(kl_row(kind, s, t, inv_t));
            for ((o, &sj), &tj) in out.iter_mut().zip(s).zip(t) {
                let (ls, lt) = (sj * inv_t - lse_s, tj * inv_t - lse_t);
                *o = scale * ls.exp() * (ls - lt - kl);
            }
        }
    }
}

/// Dot product and squared norms of a row pair, accumulated in f64.
#[inline]
pub(crate) fn dot_norms<T: Real>(a: &[T], b: &[T]) -> (f64, f64, f64) {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x.to_f64(), y.to_f64());
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (ab, aa, bb)
}

/// The norm floor of the cosine loss (as `torch.nn.functional.cosine_similarity`).
pub(crate) const COS_EPS: f64 = 1e-8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logsumexp_is_stable_for_large_inputs() {
        let row = [1000f32, 1000.0];
        assert!((logsumexp(&row, 1.0) - (1000.0 + 2f32.ln())).abs() < 1e-3);
        let row = [0f64, 0.0, 0.0];
        assert!((logsumexp(&row, 1.0) - 3f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn kl_of_identical_rows_is_zero_and_positive_otherwise() {
        let a = [0.3f64, -1.0, 2.0];
        assert!(kl_row(KlKind::Forward, &a, &a, 1.0).abs() < 1e-15);
        let b = [1.0f64, 0.0, -2.0];
        assert!(kl_row(KlKind::Forward, &a, &b, 1.0) > 0.0);
        assert!(kl_row(KlKind::Reverse, &a, &b, 0.5) > 0.0);
    }
}
