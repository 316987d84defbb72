//! Losses for the training loop's loss closure: cross-entropy for training from data, KL
//! divergences for distillation from a teacher's logits, cosine and mse for matching
//! intermediate states. All return a scalar mean with a backward for the first (student)
//! input; the second input (targets, teacher) never gets a gradient.
//!
//! On the CPU each is one fused custom op (forward and analytic backward, rows in parallel).
//! On other devices the same formulas are composed from candle primitives, which also serve as
//! the reference the fused ops are tested against. Inputs of any rank are flattened to
//! `[rows, last dim]`; bf16/f16 inputs are computed in f32.

mod kernels;
mod ops;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Result, TrainError};
use kernels::KlKind;
use ops::{LossKind, LossOp};

/// Mean cross-entropy in nats of `logits [.., v]` against `targets [..]` (integer token ids).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    const NAME: &str = "cross_entropy";
    let z = rows(logits, NAME, "logits")?;
    if targets.dtype().is_float() {
        return Err(input_err(
            NAME,
            format!(
                "targets must be integer token ids, got {:?}",
                targets.dtype()
            ),
        ));
    }
    let t = targets.flatten_all()?.contiguous()?;
    if t.elem_count() != z.dim(0)? {
        return Err(input_err(
            NAME,
            format!(
                "{} targets {:?} for {} rows of logits {:?}",
                t.elem_count(),
                targets.dims(),
                z.dim(0)?,
                logits.dims()
            ),
        ));
    }
    if z.device().is_cpu() {
        return Ok(z.apply_op2(&t, LossOp(LossKind::CrossEntropy))?);
    }
    reference::cross_entropy(&z, &t)
}

/// Forward KL, KL(teacher || student), of the softmaxes at `temperature`, mean over rows: the
/// distillation loss Minitron found best. Not multiplied by `temperature²`; scale the result
/// if you want the Hinton convention.
pub fn forward_kl(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    kl(
        KlKind::Forward,
        "forward_kl",
        student_logits,
        teacher_logits,
        temperature,
    )
}

/// Reverse KL, KL(student || teacher), of the softmaxes at `temperature`, mean over rows.
pub fn reverse_kl(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    kl(
        KlKind::Reverse,
        "reverse_kl",
        student_logits,
        teacher_logits,
        temperature,
    )
}

/// Mean over rows of `1 - cos(student_row, teacher_row)` along the last dimension (norms
/// floored at 1e-8, as PyTorch's `cosine_similarity`).
pub fn cosine(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let (a, b) = pair("cosine", student, teacher)?;
    if a.device().is_cpu() {
        return Ok(a.apply_op2(&b, LossOp(LossKind::Cosine))?);
    }
    reference::cosine(&a, &b)
}

/// Mean over all elements of `(student - teacher)²`.
pub fn mse(student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    let (a, b) = pair("mse", student, teacher)?;
    if a.device().is_cpu() {
        return Ok(a.apply_op2(&b, LossOp(LossKind::Mse))?);
    }
    reference::mse(&a, &b)
}

fn kl(
    kind: KlKind,
    name: &'static str,
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(input_err(
            name,
            format!("temperature must be a positive number, got {temperature}"),
        ));
    }
    let (s, t) = pair(name, student, teacher)?;
    if s.device().is_cpu() {
        return Ok(s.apply_op2(&t, LossOp(LossKind::Kl { kind, temperature }))?);
    }
    reference::kl(kind, &s, &t, temperature)
}

fn input_err(loss: &'static str, reason: String) -> TrainError {
    TrainError::LossInput { loss, reason }
}

/// `x` as a contiguous `[rows, last dim]` tensor in f32 or f64.
fn rows(x: &Tensor, loss: &'static str, what: &str) -> Result<Tensor> {
    let Some(&w) = x.dims().last() else {
        return Err(input_err(
            loss,
            format!("{what} must have at least one dimension, got a scalar"),
        ));
    };
    let x = match x.dtype() {
        DType::F32 | DType::F64 => x.clone(),
        d if d.is_float() => x.to_dtype(DType::F32)?,
        d => {
            return Err(input_err(
                loss,
                format!("{what} must be floating point, got {d:?}"),
            ))
        }
    };
    Ok(x.reshape(((), w))?.contiguous()?)
}

/// Student and (detached) teacher as same-shape, same-dtype `[rows, width]` tensors.
fn pair(loss: &'static str, student: &Tensor, teacher: &Tensor) -> Result<(Tensor, Tensor)> {
    if student.dims() != teacher.dims() {
        return Err(input_err(
            loss,
            format!(
                "student {:?} and teacher {:?} differ in shape",
                student.dims(),
                teacher.dims()
            ),
        ));
    }
    if !same_device(student.device(), teacher.device()) {
        return Err(input_err(
            loss,
            "student and teacher are on different devices".into(),
        ));
    }
    let s = rows(student, loss, "student")?;
    let t = rows(&teacher.detach(), loss, "teacher")?.to_dtype(s.dtype())?;
    Ok((s, t))
}

fn same_device(a: &Device, b: &Device) -> bool {
    a.same_device(b)
}

/// The losses composed from candle primitives (autograd through every op): the path for
/// non-CPU devices and the reference the fused ops are tested against.
pub(crate) mod reference {
    use super::*;

    fn log_softmax(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?;
        let shifted = x.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        Ok(shifted.broadcast_sub(&lse)?)
    }

    pub fn cross_entropy(z: &Tensor, t: &Tensor) -> Result<Tensor> {
        let lp = log_softmax(z)?;
        let picked = lp.gather(&t.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
        Ok(picked.neg()?.mean_all()?)
    }

    pub fn kl(kind: KlKind, s: &Tensor, t: &Tensor, temperature: f64) -> Result<Tensor> {
        let ls = log_softmax(&(s / temperature)?)?;
        let lt = log_softmax(&(t.detach() / temperature)?)?;
        let per = match kind {
            KlKind::Forward => (lt.exp()? * (&lt - &ls)?)?,
            KlKind::Reverse => (ls.exp()? * (&ls - &lt)?)?,
        };
        Ok(per.sum(D::Minus1)?.mean_all()?)
    }

    pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let b = b.detach();
        let dot = (a * &b)?.sum(D::Minus1)?;
        let na = a
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .clamp(kernels::COS_EPS, f64::INFINITY)?;
        let nb = b
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .clamp(kernels::COS_EPS, f64::INFINITY)?;
        let cos = (dot / (na * nb)?)?;
        Ok(cos.neg()?.affine(1.0, 1.0)?.mean_all()?)
    }

    pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok((a - b.detach())?.sqr()?.mean_all()?)
    }
}

#[cfg(test)]
mod tests;
