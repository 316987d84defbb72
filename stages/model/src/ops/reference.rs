//! The ops composed from candle primitives (exact autograd, any device). Used off-CPU and as the
//! yardstick the fused CPU kernels are tested against.

use candle_core::{DType, Tensor, D};

use super::rope::RopeTables;
use super::softmax::CausalMask;

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let n = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    n.broadcast_mul(&w.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

pub fn rope(x: &Tensor, tables: &RopeTables) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?;
    let half = x.dim(D::Minus1)? / 2;
    let (x1, x2) = (
        x.narrow(D::Minus1, 0, half)?,
        x.narrow(D::Minus1, half, half)?,
    );
    let (c, s) = (&tables.cos, &tables.sin);
    let y1 = (x1.broadcast_mul(c)? - x2.broadcast_mul(s)?)?;
    let y2 = (x2.broadcast_mul(c)? + x1.broadcast_mul(s)?)?;
    Tensor::cat(&[y1, y2], D::Minus1)?.to_dtype(dtype)
}

pub fn causal_softmax(x: &Tensor, mask: CausalMask) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let (r, s) = (x.dim(D::Minus2)?, x.dim(D::Minus1)?);
    let mut m = vec![f32::NEG_INFINITY; r * s];
    for row in 0..r {
        let (lo, hi) = mask.range(row, s);
        m[row * s + lo..row * s + hi]
            .iter_mut()
            .for_each(|v| *v = 0.0);
    }
    let m = Tensor::from_vec(m, (r, s), x.device())?;
    let z = (x.to_dtype(DType::F32)? * mask.scale as f64)?.broadcast_add(&m)?;
    let z = z.broadcast_sub(&z.max_keepdim(D::Minus1)?)?;
    let e = z.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)
}

pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    gate.silu()? * up
}

pub fn relu2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()?.sqr()
}

pub fn layer_norm1p(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let c = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    let n = c.broadcast_div(&(var + eps)?.sqrt()?)?;
    n.broadcast_mul(&(w.to_dtype(DType::F32)? + 1.0)?)?
        .broadcast_add(&b.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}
