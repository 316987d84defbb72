//! Benchmark of the cache's hashing: a 2 GiB file hashed cold (page cache dropped
//! for that file) and warm, by the cache (`Cache::hash_file`: chunked reads + blake3's rayon
//! tree mode), by single-threaded blake3 and by md5 (the digest DVC uses), all in this run;
//! printed as GB/s and as ratios. Then the stat-memo re-check of 10,000 small files: time per
//! file, against re-hashing them.
//!
//! Run: `cargo bench --bench cache_hash --no-run`, then the printed binary. Environment:
//! `POLLARD_BENCH_DIR` (default /tmp) holds the big file, removed at the end;
//! `POLLARD_BENCH_BYTES` changes its size (default 2 GiB); `POLLARD_BENCH_REPS` warm repeats.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pollard_cache::{Cache, Digest};

const GIB: u64 = 1 << 30;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pseudo-random bytes (xorshift), so no filesystem or hash shortcut applies.
fn write_big_file(path: &Path, size: u64) {
    let mut f = File::create(path).expect("create the benchmark file");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 64 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("write the benchmark file");
        left -= n as u64;
    }
    // Clean pages are what POSIX_FADV_DONTNEED can drop.
    f.sync_all().expect("sync the benchmark file");
}

/// Drops the file's pages from the page cache (works without root, for clean pages).
fn make_cold(path: &Path) {
    let f = File::open(path).expect("open for fadvise");
    // SAFETY: a valid open descriptor; fadvise only changes caching.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed");
}

fn read_loop(path: &Path, mut eat: impl FnMut(&[u8])) {
    let mut f = File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        eat(&buf[..n]);
    }
}

struct Method {
    name: &'static str,
    run: Box<dyn Fn(&Path) -> String>,
}

fn methods(scratch: PathBuf) -> Vec<Method> {
    vec![
        Method {
            name: "pollard cache (hash_file)",
            run: Box::new(move |p| {
                // A fresh cache each time, so the stat memo cannot answer.
                let root = scratch.join(format!("cache-{}", std::process::id()));
                let _ = fs::remove_dir_all(&root);
                let cache = Cache::open(&root).expect("open cache");
                let d = cache.hash_file(p).expect("hash");
                drop(cache);
                let _ = fs::remove_dir_all(&root);
                d.to_string()
            }),
        },
        Method {
            name: "blake3, 1 thread",
            run: Box::new(|p| {
                let mut h = blake3::Hasher::new();
                read_loop(p, |b| {
                    h.update(b);
                });
                Digest::from_bytes(*h.finalize().as_bytes()).to_string()
            }),
        },
        Method {
            name: "blake3 mmap+rayon (ref.)",
            run: Box::new(|p| {
                let mut h = blake3::Hasher::new();
                h.update_mmap_rayon(p).expect("mmap hash");
                Digest::from_bytes(*h.finalize().as_bytes()).to_string()
            }),
        },
        Method {
            name: "md5 (DVC's digest)",
            run: Box::new(|p| {
                let mut c = md5::Context::new();
                read_loop(p, |b| c.consume(b));
                format!("md5:{:x}", c.compute())
            }),
        },
    ]
}

/// CPU seconds (user + system, all threads) this process has used: on a shared machine the
/// wall clock depends on what else runs, CPU time much less.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn gbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let dir = PathBuf::from(std::env::var("POLLARD_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()));
    let size = env_u64("POLLARD_BENCH_BYTES", 2 * GIB);
    let reps = env_u64("POLLARD_BENCH_REPS", 3).max(1);
    let work = dir.join(format!("pollard-cache-bench-{}", std::process::id()));
    fs::create_dir_all(&work).expect("create the bench folder");
    let big = work.join("big.bin");

    println!(
        "cache_hash: {:.2} GiB file in {}, {} cores",
        size as f64 / GIB as f64,
        work.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let t = Instant::now();
    write_big_file(&big, size);
    println!(
        "wrote the file in {:.1} s; load average {}\n",
        t.elapsed().as_secs_f64(),
        load_average()
    );

    let methods = methods(work.clone());
    let mut rows = Vec::new();
    let mut blake3_digest = None;
    for m in &methods {
        make_cold(&big);
        let t = Instant::now();
        let digest = (m.run)(&big);
        let cold = t.elapsed();
        let mut warm = Duration::MAX;
        let mut cpu = f64::MAX;
        for _ in 0..reps {
            let c = cpu_seconds();
            let t = Instant::now();
            let again = (m.run)(&big);
            warm = warm.min(t.elapsed());
            cpu = cpu.min(cpu_seconds() - c);
            assert_eq!(again, digest, "{} is not deterministic", m.name);
        }
        if digest.starts_with("blake3:") {
            // Every blake3 variant must agree: the cache's digest is plain blake3.
            assert_eq!(
                blake3_digest.get_or_insert_with(|| digest.clone()),
                &digest,
                "{} disagrees",
                m.name
            );
        }
        println!(
            "{:<28} cold {:>6.2} GB/s   warm {:>6.2} GB/s (best of {reps})   {:>5.2} GB per CPU-second",
            m.name,
            gbps(size, cold),
            gbps(size, warm),
            size as f64 / cpu / 1e9
        );
        rows.push((m.name, cold, warm));
    }
    let (_, cache_cold, cache_warm) = rows[0];
    println!();
    for (name, cold, warm) in &rows[1..] {
        println!(
            "cache vs {:<26} cold x{:>5.2}   warm x{:>5.2}",
            name,
            cold.as_secs_f64() / cache_cold.as_secs_f64(),
            warm.as_secs_f64() / cache_warm.as_secs_f64()
        );
    }
    fs::remove_file(&big).expect("remove the big file");
    println!("load average after: {}", load_average());

    // Stat memo: 10,000 small files, backdated so their memo entries are trusted.
    let n = env_u64("POLLARD_BENCH_FILES", 10_000) as usize;
    let small = work.join("small");
    fs::create_dir_all(&small).expect("mkdir");
    let old = SystemTime::now() - Duration::from_secs(3600);
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| {
            let p = small.join(format!("f{i:05}.txt"));
            let mut f = File::create(&p).expect("create");
            f.write_all(format!("file {i}\n").repeat(64).as_bytes())
                .expect("write");
            f.set_modified(old).expect("backdate");
            p
        })
        .collect();
    let root = work.join("memo-cache");
    let first = {
        let cache = Cache::open(&root).expect("open cache");
        let t = Instant::now();
        for p in &paths {
            cache.hash_file(p).expect("hash");
        }
        let took = t.elapsed();
        let t = Instant::now();
        cache.flush().expect("flush the memo");
        println!(
            "\nstat memo, {n} files of {} bytes:",
            fs::metadata(&paths[0]).map(|m| m.len()).unwrap_or(0)
        );
        println!(
            "  first pass (read + hash each)   {:>8.2} us/file",
            took.as_secs_f64() * 1e6 / n as f64
        );
        println!(
            "  memo flush                      {:>8.2} ms total",
            t.elapsed().as_secs_f64() * 1e3
        );
        took
    };
    let t = Instant::now();
    let cache = Cache::open(&root).expect("reopen cache");
    assert_eq!(cache.memo_len(), n, "the memo did not persist");
    let load = t.elapsed();
    let mut recheck = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        for p in &paths {
            cache.hash_file(p).expect("re-check");
        }
        recheck = recheck.min(t.elapsed());
    }
    println!(
        "  open + load memo                {:>8.2} ms total",
        load.as_secs_f64() * 1e3
    );
    println!(
        "  re-check (stat, memo hit)       {:>8.2} us/file (best of {reps}); x{:.1} faster than the first pass",
        recheck.as_secs_f64() * 1e6 / n as f64,
        first.as_secs_f64() / recheck.as_secs_f64()
    );
    drop(cache);
    fs::remove_dir_all(&work).expect("remove the bench folder");
}
