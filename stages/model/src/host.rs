//! Process settings for tensor work on the CPU, applied once when a program starts (pollard's
//! `main`, which every stage job runs through, and the benches), before any thread or tensor
//! exists.
//!
//! Freed memory is kept for reuse. A training step allocates and frees hundreds of
//! megabyte-sized buffers (activations, their gradients, candle's zero-filled accumulators).
//! glibc's defaults give most of them back to the kernel (a 128 KiB mmap threshold that rises
//! only after a free, and heap trimming above 128 KiB), so the next step faults every page in
//! again, the kernel zeroes it, and each `munmap` interrupts the other cores to flush their TLBs.
//! With these settings (set through glibc's `MALLOC_*_` variables for the measurement) a six-step
//! run of the speed bench, start-up included, spent 0.6-0.9 s in the kernel instead of 2.7 s, with
//! 149k minor faults instead of 690k, for a peak resident memory of 601-603 MB instead of
//! 583-590 MB (2-core AMD EPYC, `/usr/bin/time` around `benches/model_speed`).
//!
//! candle's elementwise worker threads spin shorter. After each op they spin
//! `CANDLE_BARRIER_POOL_SPIN_LIMIT` pauses (candle's default 25,000) before parking, on cores
//! where gemm's rayon threads are about to run the next matmul; in the bench's profile the
//! spinning was 6.7% of all samples. At [`SPIN_LIMIT`] the median training step of three
//! alternating runs each took 589 / 637 / 582 ms instead of 697 / 641 / 683 ms (same machine,
//! `POLLARD_BENCH_ONLY_STEPS=7`). A value the user set is kept.

/// Freed heap memory kept for reuse instead of being returned to the kernel.
pub const RETAINED_BYTES: usize = 1 << 30;

/// Pauses an idle candle worker spins before it parks (unless `CANDLE_BARRIER_POOL_SPIN_LIMIT`
/// is set).
pub const SPIN_LIMIT: u32 = 1000;

/// Applies the settings. Call it first in `main`, before other threads start (it may set an
/// environment variable). Where the C library has no such knobs (not glibc) its defaults stay.
pub fn configure() {
    const SPIN_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN_VAR).is_none() {
        // Read once, when candle first starts its worker pool; the callers run this before
        // any other thread exists, so no thread reads the environment meanwhile.
        std::env::set_var(SPIN_VAR, SPIN_LIMIT.to_string());
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called with glibc's documented
    // options and values in range (the mmap threshold's maximum is 32 MiB on 64-bit).
    unsafe {
        // Requests below 32 MiB always come from the heap...
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // ...and trimming keeps this much free memory at the top of it.
        libc::mallopt(libc::M_TOP_PAD, RETAINED_BYTES as libc::c_int);
    }
}
