//! Small helpers shared by the CPU kernels of the custom ops (storage access, parallel chunking).

use candle_core::{CpuStorage, Layout, Result};

/// The f32 slice a contiguous layout covers. The op wrappers make inputs contiguous f32 before
/// applying a custom op, so the error branches only guard against misuse from inside the crate.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Rows per rayon task so that each task has at least ~16k elements of work.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}
