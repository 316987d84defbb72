//! The projection `x @ w^T` of every Linear layer (HF layout: `w` `[out, in]`), one graph node
//! with a backward written in the layout the weight is stored in.
//!
//! Composed from candle primitives, a projection of `[..., in]` is four nodes: reshape to rows,
//! transpose the weight, matmul, reshape back; candle's backward then allocates, zero-fills and
//! adds a gradient buffer for each node, and the transposed weight's gradient is added back
//! through a strided (non-contiguous) copy. As one `CustomOp2` on CPU f32 the forward is one gemm
//! call and the backward two (`dx = g w`, `dw = g^T x`, both written contiguous), so only the
//! two gradients candle must accumulate remain; outputs are not zero-filled before gemm writes
//! them. Other devices and dtypes compose the same product from candle's ops. What this bought
//! in the training step is measured by benches/model_speed.rs (stages/model/README.md, "Speed").

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};

use super::cpu::f32_slice;

/// `x @ w^T` for `x` `[..., in]` and `w` `[out, in]`; the result is `[..., out]`.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (out, inner) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&inner) {
        candle_core::bail!("linear: input {dims:?} does not end in the weight's {inner} inputs");
    }
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("x has at least one dim") = out;
    linear_as(x, w, shape)
}

/// `x @ w^T` with `x`'s trailing dims read as the weight's `in` inputs and the product laid out
/// as `shape`: `linear_as(&x, &wq, (b, t, heads, head_dim))` projects `[b, t, H]` straight into
/// heads, and `linear_as(&heads, &wo, (b, t, H))` reads `[b, t, heads, head_dim]` as rows of
/// `heads * head_dim`, with no reshape nodes (each would cost a zero-filled gradient buffer and
/// an add in the backward). Both sides must split into the same rows at a dim boundary.
pub fn linear_as(x: &Tensor, w: &Tensor, shape: impl Into<Shape>) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let (out, inner) = w.dims2()?;
    let rows = x.elem_count() / inner.max(1);
    if !splits_into_rows(x.dims(), rows, inner) || !splits_into_rows(shape.dims(), rows, out) {
        candle_core::bail!(
            "linear: input {:?} and output {:?} are not the same rows of {inner} inputs and {out} outputs",
            x.dims(),
            shape.dims()
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op2(&w.contiguous()?, Linear { shape });
    }
    composed_as(x, w, shape)
}

/// Whether `dims` is `rows` rows of `width` elements, split at a dim boundary.
fn splits_into_rows(dims: &[usize], rows: usize, width: usize) -> bool {
    let mut prefix = 1;
    let boundary = rows == 1
        || dims.iter().any(|&d| {
            prefix *= d;
            prefix == rows
        });
    boundary && dims.iter().product::<usize>() == rows * width
}

/// [`linear`] from candle primitives (non-CPU devices, other dtypes, and the tests).
pub fn composed(x: &Tensor, w: &Tensor, out: usize) -> candle_core::Result<Tensor> {
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("x has at least one dim") = out;
    composed_as(x, w, shape.into())
}

fn composed_as(x: &Tensor, w: &Tensor, shape: Shape) -> candle_core::Result<Tensor> {
    let inner = w.dim(1)?;
    let rows = x.elem_count() / inner.max(1);
    x.reshape((rows, inner))?.matmul(&w.t()?)?.reshape(shape)
}

/// The op, remembering the product's shape.
struct Linear {
    shape: Shape,
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "pollard-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let (out, inner) = l2.shape().dims2()?;
        let rows = x.len() / inner.max(1);
        // y[rows x out] = x[rows x inner] . w^T, where w^T(k, j) = w[j * inner + k].
        let mut y = Vec::new();
        append_product(&mut y, (rows, out, inner), (x, inner, 1), (w, 1, inner));
        Ok((CpuStorage::F32(y), self.shape.clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let packed = x.apply_op3_no_bwd(w, &g, &LinearBwd)?;
        let nx = x.elem_count();
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dw = packed.narrow(0, nx, w.elem_count())?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `dx = g w` and `dw = g^T x` in one buffer (dx first), from `x`, `w`, `g`.
struct LinearBwd;

impl CustomOp3 for LinearBwd {
    fn name(&self) -> &'static str {
        "pollard-linear-bwd"
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
        let w = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let (out, inner) = l2.shape().dims2()?;
        let rows = x.len() / inner.max(1);
        let mut both = Vec::with_capacity(x.len() + w.len());
        // dx[rows x inner] = g[rows x out] . w[out x inner]
        append_product(&mut both, (rows, inner, out), (g, out, 1), (w, inner, 1));
        // dw[out x inner] = g^T[out x rows] . x[rows x inner], where g^T(o, r) = g[r * out + o]
        append_product(&mut both, (out, inner, rows), (g, 1, out), (x, inner, 1));
        Ok((CpuStorage::F32(both), Shape::from(x.len() + w.len())))
    }
}

/// Appends `lhs [m x k] . rhs [k x n]`, row-major `[m x n]`, to `dst`; each operand is a slice
/// with its row and column strides. The new elements are not zero-filled first (that would be a
/// single-threaded memset of every output; the forward's alone are 175 MB per step of the speed
/// bench): told not to read the destination, gemm stores `beta * lhs . rhs` into each of them
/// and never loads one (its microkernels' `alpha_status == 0` path).
fn append_product(
    dst: &mut Vec<f32>,
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
) {
    let len = dst.len();
    if m * n == 0 || k == 0 {
        // Nothing to multiply: an empty sum is zero (and gemm would write nothing).
        dst.resize(len + m * n, 0.0);
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, k, lhs_rs, lhs_cs) < lhs.len() && last(k, n, rhs_rs, rhs_cs) < rhs.len(),
        "linear: operand strides address elements outside the operands"
    );
    dst.reserve_exact(m * n);
    // SAFETY: every element gemm reads lies inside `lhs` / `rhs` (asserted above); it writes
    // exactly the m*n elements after `len`, which `reserve_exact` made room for, and reads none
    // of them (read_dst = false), so after it returns they are all initialised.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(len),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
        dst.set_len(len + m * n);
    }
}

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_grads, max_diff, rand_tensor};
    use candle_core::{Device, Var};

    fn case(dev: &Device) {
        let x = rand_tensor(&[3, 5, 12], 41, dev);
        let w = rand_tensor(&[7, 12], 42, dev);
        let y = linear(&x, &w).unwrap();
        assert_eq!(y.dims(), &[3, 5, 7]);
        let d = max_diff(&y, &composed(&x, &w, 7).unwrap());
        assert!(d < 1e-5, "forward differs from the composed product by {d}");
        check_grads(&[x, w], |v| linear(&v[0], &v[1]), 2e-3);
    }

    #[test]
    fn linear_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn linear_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }

    /// The fused op's gradients equal the composed product's (what runs on other devices), at a
    /// shape large enough for gemm to split the work over threads, for a weight used twice (as a
    /// tied embedding is) and an input used twice.
    #[test]
    fn linear_gradients_equal_the_composed_products() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&rand_tensor(&[4, 33, 96], 43, &dev)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[130, 96], 44, &dev)).unwrap();
        let p = rand_tensor(&[4, 33, 130], 45, &dev);
        let loss = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
            let y = f(x.as_tensor(), w.as_tensor());
            let twice = (&y + f(x.as_tensor(), w.as_tensor()).sqr().unwrap()).unwrap();
            (twice * &p).unwrap().sum_all().unwrap()
        };
        let fused = loss(&|x, w| linear(x, w).unwrap()).backward().unwrap();
        let plain = loss(&|x, w| composed(x, w, 130).unwrap())
            .backward()
            .unwrap();
        for (name, v) in [("x", &x), ("w", &w)] {
            let (a, b) = (
                fused.get(v.as_tensor()).unwrap(),
                plain.get(v.as_tensor()).unwrap(),
            );
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_diff(a, b);
            assert!(d <= 1e-5 * scale, "d{name} differs by {d} (scale {scale})");
        }
    }

    /// Projecting into heads and out of them equals the reshaped product, gradients included.
    #[test]
    fn linear_as_equals_the_reshaped_product() {
        let dev = Device::Cpu;
        let x = rand_tensor(&[2, 5, 12], 46, &dev);
        let wq = rand_tensor(&[8, 12], 47, &dev);
        let wo = rand_tensor(&[12, 8], 48, &dev);
        let f = |v: &[Tensor]| {
            let heads = linear_as(&v[0], &v[1], (2, 5, 4, 2))?;
            linear_as(&heads, &v[2], (2, 5, 12))
        };
        let plain = composed(&composed(&x, &wq, 8).unwrap(), &wo, 12).unwrap();
        let y = f(&[x.clone(), wq.clone(), wo.clone()]).unwrap();
        assert_eq!(y.dims(), &[2, 5, 12]);
        let d = max_diff(&y, &plain);
        assert!(d < 1e-5, "differs from the reshaped product by {d}");
        check_grads(&[x, wq, wo], f, 2e-3);
    }

    #[test]
    fn an_empty_batch_projects_to_an_empty_batch() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((0, 5, 4), DType::F32, &dev).unwrap();
        let y = linear(&x, &rand_tensor(&[3, 4], 5, &dev)).unwrap();
        assert_eq!(y.dims(), &[0, 5, 3]);
    }

    #[test]
    fn linear_refuses_a_mismatched_input() {
        let dev = Device::Cpu;
        let e = linear(
            &rand_tensor(&[2, 5], 1, &dev),
            &rand_tensor(&[3, 4], 2, &dev),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not end in the weight's 4 inputs"), "{e}");
        // [2, 6, 4] holds 12 rows of 4 inputs only across dims 0 and 1 read as 2 x 6 = 12:
        // an output that would need rows to split inside a dim is refused.
        let x = rand_tensor(&[2, 6, 4], 3, &dev);
        let w = rand_tensor(&[3, 4], 4, &dev);
        assert!(linear_as(&x, &w, (4, 9)).is_err());
        let e = linear_as(&x, &w, (12, 4)).unwrap_err().to_string();
        assert!(
            e.contains("not the same rows of 4 inputs and 3 outputs"),
            "{e}"
        );
        assert_eq!(linear_as(&x, &w, (12, 3)).unwrap().dims(), &[12, 3]);
    }
}
