//! CPU fast paths shared by the optimizer, gradient handling and losses: borrowing a tensor's
//! contiguous f32 storage as a slice, in-place accumulation, and order-fixed parallel sums.
//!
//! Why order-fixed: rayon's `sum` combines partial results in a tree that depends on work
//! stealing, so its last bits can change run to run. Every reduction here sums fixed-size
//! chunks in parallel, collects the partials in order and adds them sequentially, which keeps
//! training bit-deterministic for any thread count.

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel work item; big enough to amortise rayon's scheduling.
pub(crate) const CHUNK: usize = 1 << 15;

/// True when the tensor lives on the CPU as contiguous f32, so the slice paths apply.
pub(crate) fn is_cpu_f32_contiguous(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.is_contiguous()
}

/// The f32 elements a contiguous layout covers, or `None` for another dtype or layout.
pub(crate) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Option<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets()?;
    match storage {
        CpuStorage::F32(v) => v.get(start..end),
        _ => None,
    }
}

/// Mutable twin of [`f32_slice`].
pub(crate) fn f32_slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> Option<&'a mut [f32]> {
    let (start, end) = layout.contiguous_offsets()?;
    match storage {
        CpuStorage::F32(v) => v.get_mut(start..end),
        _ => None,
    }
}

/// Runs `f` on the tensor's f32 elements when it is CPU-resident contiguous f32.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !is_cpu_f32_contiguous(t) {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f32_slice(cpu, layout).map(f),
        _ => None,
    }
}

/// Sum of `f(chunk)` over fixed chunks of `xs`, computed in parallel and combined in order.
pub(crate) fn ordered_par_sum(xs: &[f32], f: impl Fn(&[f32]) -> f64 + Sync + Send) -> f64 {
    if xs.len() <= CHUNK {
        return f(xs);
    }
    let partials: Vec<f64> = xs.par_chunks(CHUNK).map(f).collect();
    partials.iter().sum()
}

/// Sum of squares in f64 (for the global gradient norm).
pub(crate) fn sum_sq_f32(xs: &[f32]) -> f64 {
    ordered_par_sum(xs, |c| {
        // Eight independent f64 lanes (a fixed order) so the loop vectorises.
        let mut acc = [0f64; 8];
        let chunks = c.chunks_exact(8);
        let tail: f64 = chunks
            .remainder()
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum();
        for ch in chunks {
            for k in 0..8 {
                acc[k] += (ch[k] as f64) * (ch[k] as f64);
            }
        }
        acc.iter().sum::<f64>() + tail
    })
}

/// `dst += src` in place over contiguous CPU f32 tensors (gradient accumulation without a new
/// allocation per micro-batch).
pub(crate) struct AddAssign;

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "pollard-add-assign"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let src = f32_slice(s2, l2).ok_or_else(|| {
            candle_core::Error::Msg("add-assign: source is not contiguous f32".into())
        })?;
        let dst = f32_slice_mut(s1, l1).ok_or_else(|| {
            candle_core::Error::Msg("add-assign: destination is not contiguous f32".into())
        })?;
        if dst.len() != src.len() {
            return Err(candle_core::Error::Msg(format!(
                "add-assign: {} vs {} elements",
                dst.len(),
                src.len()
            )));
        }
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d += *s;
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_sum_is_exact_for_integers_and_repeatable() {
        let xs: Vec<f32> = (0..(3 * CHUNK + 17)).map(|i| (i % 7) as f32).collect();
        let expect: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert_eq!(sum_sq_f32(&xs), expect);
        assert_eq!(sum_sq_f32(&xs).to_bits(), sum_sq_f32(&xs).to_bits());
    }

    #[test]
    fn add_assign_adds_in_place_and_rejects_other_dtypes() {
        let a = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[10f32, 20., 30.], &Device::Cpu).unwrap();
        a.inplace_op2(&b, &AddAssign).unwrap();
        assert_eq!(a.to_vec1::<f32>().unwrap(), vec![11., 22., 33.]);
        let c = Tensor::new(&[1f64, 2., 3.], &Device::Cpu).unwrap();
        assert!(a.inplace_op2(&c, &AddAssign).is_err());
        assert_eq!(with_f32(&b, |s| s.to_vec()), Some(vec![10., 20., 30.]));
        assert_eq!(with_f32(&c, |s| s.len()), None, "f64 has no f32 slice");
    }
}
