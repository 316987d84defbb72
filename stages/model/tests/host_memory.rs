//! `host::configure` keeps freed tensor-sized buffers for reuse (its own process: the
//! allocator's counters would see other tests' allocations).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_buffer_stays_with_the_process_for_reuse() {
    let free_in_heap = || unsafe { libc::mallinfo2() }.fordblks;
    pollard_model::host::configure();
    let before = free_in_heap();
    let buf = std::hint::black_box(vec![1u8; 16 << 20]);
    drop(buf);
    // glibc's defaults would have mapped 16 MiB on its own and unmapped it on free. (Free bytes
    // the heap had before may have gone into the buffer, hence the margin.)
    let kept = free_in_heap().saturating_sub(before);
    assert!(
        kept >= 15 << 20,
        "only {kept} bytes of the 16 MiB buffer were kept"
    );
}
