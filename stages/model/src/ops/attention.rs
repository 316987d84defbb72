//! Causal grouped-query attention: `o = softmax(scale * q k^T + causal mask) v` per query head,
//! where query head `h` uses key/value head `h / (heads / kv_heads)` (transformers' `repeat_kv`
//! order), in memory linear in the sequence length.
//!
//! f32 on the CPU without a sliding window runs [`super::flash`] (flash-attention's tiles with an
//! online softmax, a fused kernel with an analytic backward); everything else (CUDA, bf16/f16,
//! sliding windows) runs [`super::blockwise`], the same recurrences composed from candle's
//! device-generic ops one query block at a time. [`composed`] is the materialised version
//! (`T x T` probabilities kept for autograd), the yardstick both are tested and benchmarked
//! against (benches/attention_memory.rs).
//!
//! Layouts: `q` `[b, heads, t, d]`, `k` `[b, kv_heads, t, d]` (RoPE output), `v`
//! `[b, t, kv_heads, d]` (the `v_proj` output reshaped), result `[b, t, heads, d]`.

use candle_core::{DType, Tensor};

use super::blockwise::{block_rows, blockwise_attention};
use super::flash::flash_attention;
use super::softmax::{causal_softmax, CausalMask};

/// Causal attention in linear memory; see the module docs for layouts and paths.
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
        return flash_attention(q, k, v, scale);
    }
    blockwise_attention(q, k, v, scale, window, block_rows(b, nh, t))
}

/// The materialised attention: batched matmuls and the causal softmax over all `T x T` scores
/// (any device, any dtype).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_grads, max_diff, rand_tensor};
    use candle_core::{Device, Var};

    type Attn<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

    /// `f` agrees with the materialised attention, forward and all three gradients.
    fn agrees_with_materialised(dev: &Device, dims: (usize, usize, usize, usize, usize), f: Attn) {
        let (b, nh, nkv, t, d) = dims;
        let q = Var::from_tensor(&rand_tensor(&[b, nh, t, d], 1, dev)).unwrap();
        let k = Var::from_tensor(&rand_tensor(&[b, nkv, t, d], 2, dev)).unwrap();
        let v = Var::from_tensor(&rand_tensor(&[b, t, nkv, d], 3, dev)).unwrap();
        let proj = rand_tensor(&[b, t, nh, d], 4, dev);
        let a = f(&q, &k, &v).unwrap();
        let c = composed(&q, &k, &v, 1.0 / (d as f32).sqrt(), None).unwrap();
        let fwd = max_diff(&a, &c);
        assert!(fwd < 1e-5, "forward differs by {fwd} at {dims:?}");
        let ga = (a * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (c * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let diff = max_diff(
                ga.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            assert!(diff < 1e-4, "d{name} differs by {diff} at {dims:?}");
        }
    }

    /// Shapes whose lengths fall on, just past and inside 64-row tiles, with and without GQA.
    const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
        (2, 6, 2, 150, 16),
        (1, 4, 4, 64, 8),
        (1, 4, 1, 65, 8),
        (2, 2, 1, 5, 4),
        (1, 2, 2, 129, 8),
    ];

    fn case(dev: &Device) {
        for dims in SHAPES {
            let sc = 1.0 / (dims.4 as f32).sqrt();
            // The path the device takes (the fused kernel on the CPU, blockwise on a GPU)...
            agrees_with_materialised(dev, dims, &|q, k, v| causal_attention(q, k, v, sc, None));
            // ...and the blockwise composition with query blocks that end mid-tile and on it.
            for rows in [16, 64] {
                agrees_with_materialised(dev, dims, &|q, k, v| {
                    blockwise_attention(q, k, v, sc, None, rows)
                });
            }
        }
        // Sliding windows go through the blockwise path.
        let (q, k, v) = (
            rand_tensor(&[1, 2, 40, 4], 1, dev),
            rand_tensor(&[1, 1, 40, 4], 2, dev),
            rand_tensor(&[1, 40, 1, 4], 3, dev),
        );
        let a = causal_attention(&q, &k, &v, 0.5, Some(7)).unwrap();
        let c = composed(&q, &k, &v, 0.5, Some(7)).unwrap();
        assert!(
            max_diff(&a, &c) < 1e-5,
            "window differs by {}",
            max_diff(&a, &c)
        );
        let full = causal_attention(&q, &k, &v, 0.5, None).unwrap();
        assert!(max_diff(&a, &full) > 1e-3);
        // bf16 inputs: computed in f32, rounded once at the end.
        let bf = |x: &Tensor| x.to_dtype(DType::BF16).unwrap();
        let a = causal_attention(&bf(&q), &bf(&k), &bf(&v), 0.5, None).unwrap();
        assert_eq!(a.dtype(), DType::BF16);
        let c = composed(&bf(&q), &bf(&k), &bf(&v), 0.5, None).unwrap();
        assert!(
            max_diff(&a, &c) < 2e-2,
            "bf16 differs by {}",
            max_diff(&a, &c)
        );
    }

    #[test]
    fn attention_cpu() {
        case(&Device::Cpu);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn attention_cuda() {
        case(&Device::new_cuda(0).unwrap());
    }

    #[test]
    fn flash_attention_gradient_matches_finite_differences() {
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
    fn blockwise_attention_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let q = rand_tensor(&[1, 4, 9, 4], 21, &dev);
        let k = rand_tensor(&[1, 2, 9, 4], 22, &dev);
        let v = rand_tensor(&[1, 9, 2, 4], 23, &dev);
        check_grads(
            &[q, k, v],
            |x| blockwise_attention(&x[0], &x[1], &x[2], 0.5, Some(5), 4),
            2e-3,
        );
    }
}
