//! Time and peak memory of causal attention, forward + backward, at T = 512 ... 8192: the
//! linear-memory paths (the CPU flash kernel and the blockwise composition the GPU runs) against
//! the materialised version (`T x T` probabilities kept for autograd), in the same run.
//!
//! Peak memory is what the heap holds above its level before the call, counted by a global
//! allocator that tracks live bytes (so it is exact and independent of the allocator's caching).
//! Run `cargo bench --bench attention_memory`; knobs POLLARD_BENCH_REPS (default 3),
//! POLLARD_BENCH_MAX_T (default 8192), POLLARD_BENCH_SKIP_MATERIALISED_ABOVE (default 8192: the
//! materialised version needs ~5 GB at T = 8192 with these shapes). Shapes: batch 1, 4 query heads
//! over 2 kv heads of 32 (hidden 128). Prints numbers and ratios, never asserts a time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use pollard_model::ops::attention::composed;
use pollard_model::ops::blockwise::{block_rows, blockwise_attention};
use pollard_model::ops::causal_attention;
use pollard_model::SeededRng;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

type Attn<'a> = dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor + 'a;

/// Median seconds and peak extra bytes of forward + backward.
fn measure(reps: usize, q: &Var, k: &Var, v: &Var, f: &Attn<'_>) -> (f64, usize) {
    let mut times = Vec::new();
    let mut peak = 0;
    for _ in 0..reps {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = Instant::now();
        let o = f(q, k, v);
        let grads = o.sum_all().unwrap().backward().unwrap();
        std::hint::black_box(grads.get(q.as_tensor()).unwrap());
        drop(grads);
        drop(o);
        times.push(t.elapsed().as_secs_f64());
        peak = peak.max(PEAK.load(Ordering::Relaxed) - base);
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (times[times.len() / 2], peak)
}

fn mib(b: usize) -> String {
    format!("{:9.1} MiB", b as f64 / (1 << 20) as f64)
}

fn main() {
    let reps = env_usize("POLLARD_BENCH_REPS", 3);
    let max_t = env_usize("POLLARD_BENCH_MAX_T", 8192);
    let skip_above = env_usize("POLLARD_BENCH_SKIP_MATERIALISED_ABOVE", 8192);
    let (b, nh, nkv, d) = (1, 4, 2, 32);
    let dev = Device::Cpu;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into());
    println!(
        "causal attention fwd+bwd, batch {b}, {nh} heads / {nkv} kv heads x {d}, f32, CPU ({threads} threads), median of {reps}; memory = peak heap above the inputs"
    );
    println!(
        "{:>5} | {:>12} {:>13} | {:>12} {:>13} | {:>12} {:>13} | {:>9} {:>9} | {:>9} {:>9}",
        "T",
        "flash time",
        "flash mem",
        "block time",
        "block mem",
        "mater. time",
        "mater. mem",
        "mem m/f",
        "time m/f",
        "mem m/b",
        "time m/b"
    );
    let mut t = 512;
    while t <= max_t {
        let rnd = |shape: &[usize], seed| {
            let n: usize = shape.iter().product();
            Var::from_tensor(
                &Tensor::from_vec(SeededRng::new(seed).normal_vec(n, 0.0, 1.0), shape, &dev)
                    .unwrap(),
            )
            .unwrap()
        };
        let (q, k, v) = (
            rnd(&[b, nh, t, d], 1),
            rnd(&[b, nkv, t, d], 2),
            rnd(&[b, t, nkv, d], 3),
        );
        let sc = 1.0 / (d as f32).sqrt();
        let rows = block_rows(b, nh, t);
        let flash = measure(reps, &q, &k, &v, &|q, k, v| {
            causal_attention(q, k, v, sc, None).unwrap()
        });
        let block = measure(reps, &q, &k, &v, &|q, k, v| {
            blockwise_attention(q, k, v, sc, None, rows).unwrap()
        });
        if t <= skip_above {
            let mat = measure(reps, &q, &k, &v, &|q, k, v| {
                composed(q, k, v, sc, None).unwrap()
            });
            println!(
                "{t:>5} | {:>9.1} ms {} | {:>9.1} ms {} | {:>9.1} ms {} | {:>8.1}x {:>8.2}x | {:>8.1}x {:>8.2}x",
                flash.0 * 1e3,
                mib(flash.1),
                block.0 * 1e3,
                mib(block.1),
                mat.0 * 1e3,
                mib(mat.1),
                mat.1 as f64 / flash.1 as f64,
                mat.0 / flash.0,
                mat.1 as f64 / block.1 as f64,
                mat.0 / block.0,
            );
        } else {
            println!(
                "{t:>5} | {:>9.1} ms {} | {:>9.1} ms {} | (materialised skipped)",
                flash.0 * 1e3,
                mib(flash.1),
                block.0 * 1e3,
                mib(block.1)
            );
        }
        t *= 2;
    }
    println!("m/f, m/b: materialised over flash / over blockwise (memory: x less; time: >1 means faster than materialised)");
}
