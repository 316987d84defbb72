//! The fused CPU loss ops: candle `CustomOp2`s whose forward is one parallel pass over the rows
//! and whose backward is another fused op (the analytic gradient), instead of the dozen
//! primitive ops (each a full pass and an allocation) that composing them would take.
//!
//! Every op takes a `[n, w]` first input (logits or hidden states, the side that gets a gradient)
//! and a second input that gets none: the targets `[n]` (cross-entropy) or the teacher `[n, w]`.
//! The forward returns a scalar (the mean over rows; over elements for mse).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::kernels::{
    dot_norms, fill_rows, kl_grad_row, kl_row, logsumexp, sum_rows, KlKind, Real, COS_EPS,
};

/// Which loss a [`LossOp`] computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LossKind {
    CrossEntropy,
    Kl { kind: KlKind, temperature: f64 },
    Cosine,
    Mse,
}

impl LossKind {
    fn name(&self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "pollard-cross-entropy",
            LossKind::Kl {
                kind: KlKind::Forward,
                ..
            } => "pollard-forward-kl",
            LossKind::Kl {
                kind: KlKind::Reverse,
                ..
            } => "pollard-reverse-kl",
            LossKind::Cosine => "pollard-cosine",
            LossKind::Mse => "pollard-mse",
        }
    }
}

/// Forward op (has a backward).
pub(crate) struct LossOp(pub LossKind);

/// Backward op: the gradient w.r.t. the first input, times `scale` (the incoming gradient).
struct LossGrad {
    kind: LossKind,
    scale: f64,
}

fn err(op: &str, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {msg}"))
}

/// `(n, w)` of a rank-2 layout.
fn rows(layout: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    match layout.dims() {
        [n, w] => Ok((*n, *w)),
        d => Err(err(
            op,
            format!("expected a [rows, width] input, got {d:?}"),
        )),
    }
}

/// The targets as row indices, each checked against the vocabulary size.
fn targets(
    s: &CpuStorage,
    l: &Layout,
    n: usize,
    vocab: usize,
    op: &str,
) -> candle_core::Result<Vec<usize>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| err(op, "targets must be contiguous"))?;
    let raw: Vec<i64> = match s {
        CpuStorage::U32(v) => v
            .get(start..end)
            .map(|v| v.iter().map(|&x| x as i64).collect()),
        CpuStorage::I64(v) => v.get(start..end).map(<[i64]>::to_vec),
        CpuStorage::U8(v) => v
            .get(start..end)
            .map(|v| v.iter().map(|&x| x as i64).collect()),
        _ => return Err(err(op, "targets must be u8, u32 or i64 token ids")),
    }
    .ok_or_else(|| err(op, "targets out of their storage"))?;
    if raw.len() != n {
        return Err(err(
            op,
            format!("{} targets for {n} rows of logits", raw.len()),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, &t)| {
            usize::try_from(t)
                .ok()
                .filter(|&t| t < vocab)
                .ok_or_else(|| {
                    err(
                        op,
                        format!("target {t} at row {i} is outside the vocabulary of {vocab}"),
                    )
                })
        })
        .collect()
}

/// Forward value (mean loss) on typed slices.
fn forward<T: Real>(
    kind: LossKind,
    a: &[T],
    b: Option<&[T]>,
    tg: &[usize],
    n: usize,
    w: usize,
) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let row = |i: usize| &a[i * w..(i + 1) * w];
    let other = |i: usize| b.map(|b| &b[i * w..(i + 1) * w]).unwrap_or(&[]);
    match kind {
        LossKind::CrossEntropy => {
            sum_rows(n, w, |i| {
                (logsumexp(row(i), T::from_f64(1.0)) - row(i)[tg[i]]).to_f64()
            }) / n as f64
        }
        LossKind::Kl { kind, temperature } => {
            let inv_t = T::from_f64(1.0 / temperature);
            sum_rows(n, w, |i| kl_row(kind, row(i), other(i), inv_t)) / n as f64
        }
        LossKind::Cosine => {
            sum_rows(n, w, |i| {
                let (ab, aa, bb) = dot_norms(row(i), other(i));
                1.0 - ab / (aa.sqrt().max(COS_EPS) * bb.sqrt().max(COS_EPS))
            }) / n as f64
        }
        LossKind::Mse => {
            sum_rows(n, w, |i| {
                row(i)
                    .iter()
                    .zip(other(i))
                    .map(|(&x, &y)| (x - y).to_f64())
                    .map(|d| d * d)
                    .sum::<f64>()
            }) / (n * w).max(1) as f64
        }
    }
}

/// Gradient w.r.t. the first input on typed slices.
fn backward<T: Real>(
    kind: LossKind,
    scale: f64,
    a: &[T],
    b: Option<&[T]>,
    tg: &[usize],
    n: usize,
    w: usize,
) -> Vec<T> {
    let row = |i: usize| &a[i * w..(i + 1) * w];
    let other = |i: usize| b.map(|b| &b[i * w..(i + 1) * w]).unwrap_or(&[]);
    let per_row = scale / n.max(1) as f64;
    match kind {
        LossKind::CrossEntropy => fill_rows(n, w, |i, out| {
            let z = row(i);
            let lse = logsumexp(z, T::from_f64(1.0));
            let s = T::from_f64(per_row);
            for (o, &zj) in out.iter_mut().zip(z) {
                *o = s * (zj - lse).exp();
            }
            out[tg[i]] = out[tg[i]] - s;
        }),
        LossKind::Kl { kind, temperature } => fill_rows(n, w, |i, out| {
            let inv_t = T::from_f64(1.0 / temperature);
            kl_grad_row(
                kind,
                row(i),
                other(i),
                inv_t,
                T::from_f64(per_row / temperature),
                out,
            )
        }),
        LossKind::Cosine => fill_rows(n, w, |i, out| {
            // loss_i = 1 - a·b / (|a| |b|): d/da = -(b / (|a||b|) - cos · a / |a|²).
            let (x, y) = (row(i), other(i));
            let (ab, aa, bb) = dot_norms(x, y);
            let (na, nb) = (aa.sqrt().max(COS_EPS), bb.sqrt().max(COS_EPS));
            let cos = ab / (na * nb);
            // Below the norm floor the denominator is a constant, so only the first term remains.
            let self_term = if aa.sqrt() > COS_EPS {
                cos / (na * na)
            } else {
                0.0
            };
            let (cb, ca) = (
                T::from_f64(-per_row / (na * nb)),
                T::from_f64(per_row * self_term),
            );
            for ((o, &xj), &yj) in out.iter_mut().zip(x).zip(y) {
                *o = cb * yj + ca * xj;
            }
        }),
        LossKind::Mse => {
            let c = T::from_f64(2.0 * scale / (n * w).max(1) as f64);
            fill_rows(n, w, |i, out| {
                for ((o, &xj), &yj) in out.iter_mut().zip(row(i)).zip(other(i)) {
                    *o = c * (xj - yj);
                }
            })
        }
    }
}

/// Typed views of both inputs, then `f` on them; f32 and f64 only.
fn dispatch(
    kind: LossKind,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    op: &str,
    f32_fn: impl FnOnce(&[f32], Option<&[f32]>, &[usize], usize, usize) -> CpuStorage,
    f64_fn: impl FnOnce(&[f64], Option<&[f64]>, &[usize], usize, usize) -> CpuStorage,
) -> candle_core::Result<CpuStorage> {
    let (n, w) = rows(l1, op)?;
    let tg = if kind == LossKind::CrossEntropy {
        targets(s2, l2, n, w, op)?
    } else {
        if l2.dims() != l1.dims() {
            return Err(err(
                op,
                format!("inputs differ in shape: {:?} vs {:?}", l1.dims(), l2.dims()),
            ));
        }
        Vec::new()
    };
    let second = kind != LossKind::CrossEntropy;
    let missing = || err(op, "inputs must be contiguous and both f32 or both f64");
    match s1 {
        CpuStorage::F32(_) => {
            let a = f32::slice(s1, l1).ok_or_else(missing)?;
            let b = if second {
                Some(f32::slice(s2, l2).ok_or_else(missing)?)
            } else {
                None
            };
            Ok(f32_fn(a, b, &tg, n, w))
        }
        CpuStorage::F64(_) => {
            let a = f64::slice(s1, l1).ok_or_else(missing)?;
            let b = if second {
                Some(f64::slice(s2, l2).ok_or_else(missing)?)
            } else {
                None
            };
            Ok(f64_fn(a, b, &tg, n, w))
        }
        _ => Err(missing()),
    }
}

impl CustomOp2 for LossOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = self.0;
        let out = dispatch(
            k,
            (s1, l1),
            (s2, l2),
            self.name(),
            |a, b, tg, n, w| CpuStorage::F32(vec![forward(k, a, b, tg, n, w) as f32]),
            |a, b, tg, n, w| CpuStorage::F64(vec![forward(k, a, b, tg, n, w)]),
        )?;
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let ga = a.apply_op2_no_bwd(
            b,
            &LossGrad {
                kind: self.0,
                scale,
            },
        )?;
        // The second input (targets or teacher) never receives a gradient.
        Ok((Some(ga), None))
    }
}

impl CustomOp2 for LossGrad {
    fn name(&self) -> &'static str {
        "pollard-loss-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (k, scale) = (self.kind, self.scale);
        let out = dispatch(
            k,
            (s1, l1),
            (s2, l2),
            self.name(),
            |a, b, tg, n, w| f32::storage(backward(k, scale, a, b, tg, n, w)),
            |a, b, tg, n, w| f64::storage(backward(k, scale, a, b, tg, n, w)),
        )?;
        Ok((out, l1.shape().clone()))
    }
}
