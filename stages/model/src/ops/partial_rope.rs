//! RoPE over the leading `rotary_dim` dims of each head only (Nemotron's `partial_rotary_factor`);
//! the remaining dims pass through. Built around the [`rope`] op (whose backward is analytic):
//! split, rotate, transpose the pass-through part the same way, concatenate. With a full
//! rotary dim it is exactly [`rope`].

use candle_core::{Tensor, D};

use super::rope::{rope, RopeTables};

/// `x` `[b, t, heads, head_dim]` -> `[b, heads, t, head_dim]` with the first `2 * tables' width`
/// dims rotated.
pub fn partial_rope(x: &Tensor, tables: &RopeTables) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let rot = 2 * tables.cos.dim(D::Minus1)?;
    if rot == d {
        return rope(x, tables);
    }
    if rot > d {
        candle_core::bail!("partial_rope: rotary dim {rot} exceeds head_dim {d}");
    }
    let rotated = rope(&x.narrow(D::Minus1, 0, rot)?, tables)?;
    let pass = x.narrow(D::Minus1, rot, d - rot)?.transpose(1, 2)?;
    Tensor::cat(&[rotated, pass], D::Minus1)?.contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;
    use crate::ops::gradcheck::{check_grads, max_diff, rand_tensor};
    use candle_core::Device;

    fn tables(partial: f64, t: usize) -> RopeTables {
        let mut cfg = LlamaConfig::new(16, 32, 64, 1, 4, 2, 8);
        cfg.partial_rotary_factor = partial;
        cfg.rope_theta = 500.0;
        RopeTables::new(&cfg, t, &Device::Cpu).unwrap()
    }

    #[test]
    fn partial_rope_gradient_matches_finite_differences() {
        let x = rand_tensor(&[2, 5, 3, 8], 61, &Device::Cpu);
        let tb = tables(0.5, 5);
        check_grads(&[x], |v| partial_rope(&v[0], &tb), 2e-3);
    }

    #[test]
    fn pass_through_dims_are_untouched_and_full_factor_is_rope() {
        let x = rand_tensor(&[1, 4, 2, 8], 62, &Device::Cpu);
        let y = partial_rope(&x, &tables(0.5, 4)).unwrap();
        let want = x.narrow(3, 4, 4).unwrap().transpose(1, 2).unwrap();
        assert_eq!(max_diff(&y.narrow(3, 4, 4).unwrap(), &want), 0.0);
        let full = tables(1.0, 4);
        let d = max_diff(&partial_rope(&x, &full).unwrap(), &rope(&x, &full).unwrap());
        assert_eq!(d, 0.0);
    }
}
