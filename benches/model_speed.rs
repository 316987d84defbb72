//! Speed of the Llama forward pass and training step on the CPU (or GPU 0 of a CUDA build).
//!
//! Prints, for a ~10M-parameter model at sequence length 256: forward tokens/s, training-step
//! tokens/s (forward + cross-entropy + backward + AdamW step), the achieved GFLOP/s, the same
//! machine's f32 matmul peak measured in this run (at the start, and again just before each timed
//! step, against which each step's share is also printed), a per-op profile of one step, and,
//! when a Python with PyTorch is available (`POLLARD_TORCH_PYTHON`, else
//! `/tmp/torchenv/bin/python`), the same model and step in PyTorch (benches/model_speed_torch.py,
//! run with the same number of threads as pollard: RAYON_NUM_THREADS or all cores) and
//! pollard/PyTorch ratios.
//! Never a timed assertion: everything is a measurement printed as numbers and ratios.
//!
//! Run `cargo bench --bench model_speed`, or build it with `cargo build --release --bench
//! model_speed` and run the binary from target/release/deps. Use a release build: the dev
//! profile leaves debug assertions and overflow checks on in gemm and measured 2-3.5x slower.
//! Knobs: POLLARD_BENCH_REPS (timed repetitions, default 5), POLLARD_BENCH_BATCH (default 8),
//! POLLARD_BENCH_ONLY_STEPS (only run that many training steps, for profiling),
//! POLLARD_BENCH_DEVICE (`cpu`, default, or `cuda` in a `--features cuda` build: the same model
//! and step on GPU 0, and PyTorch on CUDA; every timed region ends with a device synchronise).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use pollard_model::ops::softmax::CausalMask;
use pollard_model::ops::{
    attention, causal_attention, causal_softmax, linear, primitive, rms_norm, rope, swiglu,
    RopeTables,
};
use pollard_model::{Llama, LlamaConfig, SeededRng};
use pollard_train::{cross_entropy, AdamW, AdamWConfig, Grads};

const SEQ: usize = 256;

fn bench_config() -> LlamaConfig {
    // 5 layers, hidden 384, 6 heads of 64 (2 kv heads), MLP 1024, vocab 4096, tied: 9.4M params.
    let mut c = LlamaConfig::new(4096, 384, 1024, 5, 6, 2, 64);
    c.tie_word_embeddings = true;
    c
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The device the bench runs on (POLLARD_BENCH_DEVICE).
static DEVICE: OnceLock<Device> = OnceLock::new();

fn bench_device() -> Device {
    DEVICE
        .get_or_init(|| match std::env::var("POLLARD_BENCH_DEVICE").as_deref() {
            Ok("cpu") | Err(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Ok("cuda") => Device::new_cuda(0).expect("POLLARD_BENCH_DEVICE=cuda: no CUDA GPU 0"),
            Ok(other) => panic!(
                "POLLARD_BENCH_DEVICE={other}: expected cpu{}",
                if cfg!(feature = "cuda") {
                    " or cuda"
                } else {
                    " (cuda needs --features cuda)"
                }
            ),
        })
        .clone()
}

/// Waits for queued GPU work, so that a timer stopped after it measures the work.
fn sync() {
    bench_device().synchronize().expect("device synchronise");
}

/// Median and best of `reps` timed runs (after one warm-up), in seconds.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    std::hint::black_box(f());
    sync();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            sync();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).expect("times are finite"));
    (ts[ts.len() / 2], ts[0])
}

/// FLOPs of one forward pass over `tokens` tokens: 2 per matmul weight per token (lm_head
/// included, the embedding lookup not) plus q.k and p.v over the full T x T score matrix.
fn forward_flops(c: &LlamaConfig, batch: usize) -> f64 {
    let p = c.param_count();
    let matmul = (p.attention + p.mlp + c.vocab_size as u64 * c.hidden_size as u64) as f64;
    let tokens = (batch * SEQ) as f64;
    let attn = 4.0
        * batch as f64
        * (SEQ * SEQ) as f64
        * (c.num_attention_heads * c.head_dim) as f64
        * c.num_hidden_layers as f64;
    2.0 * matmul * tokens + attn
}

/// The f32 matmul peak: GFLOP/s of a 2048^3 product through candle (gemm), best of `reps`.
struct MatmulPeak {
    a: Tensor,
    b: Tensor,
}

impl MatmulPeak {
    const N: usize = 2048;

    fn new(dev: &Device) -> Self {
        let n = Self::N;
        let m = |seed| {
            Tensor::from_vec(
                SeededRng::new(seed).normal_vec(n * n, 0.0, 1.0),
                (n, n),
                dev,
            )
            .unwrap()
        };
        MatmulPeak { a: m(1), b: m(2) }
    }

    fn gflops(&self, reps: usize) -> f64 {
        let (_, best) = time(reps, || self.a.matmul(&self.b).unwrap());
        2.0 * (Self::N as f64).powi(3) / best / 1e9
    }
}

fn train_step(
    model: &Llama,
    opt: &mut AdamW,
    vars: &[&Var],
    inp: &Tensor,
    tgt: &Tensor,
) -> (f64, f64, f64) {
    let t0 = Instant::now();
    let logits = model.forward(inp).unwrap();
    let loss = cross_entropy(&logits, tgt).unwrap();
    sync();
    let t1 = Instant::now();
    let store = loss.backward().unwrap();
    sync();
    let t2 = Instant::now();
    let mut g = Grads::new(vars.len());
    g.accumulate(vars, &store).unwrap();
    opt.step(&g, 1e-3, 1.0).unwrap();
    sync();
    let t3 = Instant::now();
    (
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
    )
}

fn ms(s: f64) -> String {
    format!("{:8.2} ms", s * 1e3)
}

/// Forward and backward time of one op at the bench's shapes, per call.
fn op_profile(c: &LlamaConfig, batch: usize, dev: &Device, reps: usize) {
    let (h, nh, nkv, d) = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    );
    let rnd = |shape: &[usize], seed| {
        let n: usize = shape.iter().product();
        Var::from_tensor(
            &Tensor::from_vec(SeededRng::new(seed).normal_vec(n, 0.0, 1.0), shape, dev).unwrap(),
        )
        .unwrap()
    };
    let fwd_bwd = |name: &str, per_step: usize, f: &dyn Fn() -> Tensor| {
        let (fwd, _) = time(reps, f);
        let (both, _) = time(reps, || f().sum_all().unwrap().backward().unwrap());
        let bwd = (both - fwd).max(0.0);
        println!(
            "  {name:<34} fwd {}  bwd {}  x{per_step} per step = {}",
            ms(fwd),
            ms(bwd),
            ms((fwd + bwd) * per_step as f64)
        );
    };
    let x = rnd(&[batch, SEQ, h], 1);
    let w = rnd(&[h], 2);
    let l = c.num_hidden_layers;
    fwd_bwd("rms_norm (custom op)", 2 * l + 1, &|| {
        rms_norm(&x, &w, 1e-5).unwrap()
    });
    fwd_bwd("rms_norm (candle primitives)", 2 * l + 1, &|| {
        primitive::rms_norm(&x, &w, 1e-5).unwrap()
    });
    let tables = RopeTables::new(c, SEQ, dev).unwrap();
    let q = rnd(&[batch, SEQ, nh, d], 3);
    fwd_bwd("rope q (custom op)", l, &|| rope(&q, &tables).unwrap());
    fwd_bwd("rope q (candle primitives)", l, &|| {
        primitive::rope(&q, &tables).unwrap()
    });
    let g = nh / nkv;
    let s = rnd(&[batch, nkv, g * SEQ, SEQ], 4);
    let mask = CausalMask {
        q_len: SEQ,
        scale: 0.125,
        window: None,
    };
    fwd_bwd("causal softmax (custom op)", l, &|| {
        causal_softmax(&s, mask).unwrap()
    });
    fwd_bwd("causal softmax (candle primitives)", l, &|| {
        primitive::causal_softmax(&s, mask).unwrap()
    });
    let a = rnd(&[batch, SEQ, c.intermediate_size], 5);
    let u = rnd(&[batch, SEQ, c.intermediate_size], 6);
    fwd_bwd("swiglu (custom op)", l, &|| swiglu(&a, &u).unwrap());
    fwd_bwd("swiglu (candle primitives)", l, &|| {
        primitive::swiglu(&a, &u).unwrap()
    });
    let qq = rnd(&[batch, nkv, g * SEQ, d], 7);
    let kk = rnd(&[batch, nkv, SEQ, d], 8);
    fwd_bwd("q.k^T batched matmul", l, &|| {
        qq.matmul(&kk.t().unwrap()).unwrap()
    });
    let p = rnd(&[batch, nkv, g * SEQ, SEQ], 9);
    let vv = rnd(&[batch, nkv, SEQ, d], 10);
    fwd_bwd("p.v batched matmul", l, &|| p.matmul(&vv).unwrap());
    let qa = rnd(&[batch, nh, SEQ, d], 14);
    let ka = rnd(&[batch, nkv, SEQ, d], 15);
    let va = rnd(&[batch, SEQ, nkv, d], 16);
    let sc = 1.0 / (d as f32).sqrt();
    fwd_bwd("attention (fused custom op)", l, &|| {
        causal_attention(&qa, &ka, &va, sc, None).unwrap()
    });
    fwd_bwd("attention (matmul+softmax op+matmul)", l, &|| {
        attention::composed(&qa, &ka, &va, sc, None).unwrap()
    });
    let xw = rnd(&[batch, SEQ, h], 11);
    let (mlp, vocab) = (c.intermediate_size, c.vocab_size);
    let wg = rnd(&[mlp, h], 12);
    fwd_bwd("linear gate/up (custom op)", 2 * l, &|| {
        linear(&xw, &wg).unwrap()
    });
    fwd_bwd("linear gate/up (candle primitives)", 2 * l, &|| {
        primitive::linear(&xw, &wg, mlp).unwrap()
    });
    let wv = rnd(&[vocab, h], 13);
    fwd_bwd("lm_head (custom op)", 1, &|| linear(&xw, &wv).unwrap());
    fwd_bwd("lm_head (candle primitives)", 1, &|| {
        primitive::linear(&xw, &wv, vocab).unwrap()
    });
}

fn attention_ab(c: &LlamaConfig, batch: usize, dev: &Device, n: usize) {
    let (nh, nkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let rnd = |shape: &[usize], seed| {
        let len: usize = shape.iter().product();
        Var::from_tensor(
            &Tensor::from_vec(SeededRng::new(seed).normal_vec(len, 0.0, 1.0), shape, dev).unwrap(),
        )
        .unwrap()
    };
    let (q, k, v) = (
        rnd(&[batch, nh, SEQ, d], 1),
        rnd(&[batch, nkv, SEQ, d], 2),
        rnd(&[batch, SEQ, nkv, d], 3),
    );
    let sc = 1.0 / (d as f32).sqrt();
    let run = |fused: bool, backward: bool| {
        let t = Instant::now();
        let o = if fused {
            causal_attention(&q, &k, &v, sc, None)
        } else {
            attention::composed(&q, &k, &v, sc, None)
        };
        let o = o.unwrap();
        if backward {
            std::hint::black_box(o.sum_all().unwrap().backward().unwrap());
        }
        std::hint::black_box(o);
        sync();
        t.elapsed().as_secs_f64()
    };
    for backward in [false, true] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..n {
            a.push(run(true, backward));
            b.push(run(false, backward));
        }
        a.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
        b.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
        println!(
            "attention {}, {n} alternating runs: fused median {} (best {}), composed median {} (best {}), composed/fused {:.2}x",
            if backward { "fwd+bwd" } else { "fwd" },
            ms(a[n / 2]),
            ms(a[0]),
            ms(b[n / 2]),
            ms(b[0]),
            b[n / 2] / a[n / 2]
        );
    }
}

struct Torch {
    fwd_s: f64,
    step_s: f64,
    matmul_gflops: f64,
}

fn torch_python() -> Option<String> {
    if let Ok(p) = std::env::var("POLLARD_TORCH_PYTHON") {
        return Some(p);
    }
    let p = "/tmp/torchenv/bin/python";
    Path::new(p).exists().then(|| p.to_owned())
}

fn run_torch(c: &LlamaConfig, batch: usize, reps: usize) -> Option<Torch> {
    let py = torch_python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/model_speed_torch.py");
    let out = Command::new(&py)
        .arg(&script)
        .args([
            "--vocab",
            &c.vocab_size.to_string(),
            "--hidden",
            &c.hidden_size.to_string(),
        ])
        .args([
            "--intermediate",
            &c.intermediate_size.to_string(),
            "--layers",
            &c.num_hidden_layers.to_string(),
        ])
        .args([
            "--heads",
            &c.num_attention_heads.to_string(),
            "--kv-heads",
            &c.num_key_value_heads.to_string(),
        ])
        .args([
            "--head-dim",
            &c.head_dim.to_string(),
            "--batch",
            &batch.to_string(),
            "--seq",
            &SEQ.to_string(),
        ])
        .args([
            "--reps",
            &reps.to_string(),
            "--threads",
            &threads().to_string(),
            "--tied",
            "--device",
            if bench_device().is_cpu() {
                "cpu"
            } else {
                "cuda"
            },
        ])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!(
                "PyTorch run failed ({py}): {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return None;
        }
        Err(e) => {
            println!("cannot run {py}: {e}");
            return None;
        }
    };
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    println!(
        "PyTorch {} ({} threads): {}",
        v["torch"].as_str()?,
        v["threads"],
        line
    );
    Some(Torch {
        fwd_s: v["forward_s"].as_f64()?,
        step_s: v["step_s"].as_f64()?,
        matmul_gflops: v["matmul_gflops"].as_f64()?,
    })
}

fn threads() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    env_usize("RAYON_NUM_THREADS", cores)
}

fn main() {
    // The settings pollard's own `main` applies (freed memory kept for reuse).
    pollard_model::host::configure();
    let dev = bench_device();
    let reps = env_usize("POLLARD_BENCH_REPS", 5);
    let batch = env_usize("POLLARD_BENCH_BATCH", 8);
    let cfg = bench_config();
    let p = cfg.param_count();
    let tokens = (batch * SEQ) as f64;
    let flops = forward_flops(&cfg, batch);
    println!(
        "model: {} layers, hidden {}, heads {}/{} x {}, mlp {}, vocab {}, tied; {} params; batch {batch} x seq {SEQ} = {} tokens; threads {}",
        cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
        cfg.intermediate_size, cfg.vocab_size, p.total(), tokens, threads()
    );
    println!("FLOPs: forward {:.2} GFLOP, train step {:.2} GFLOP (3x forward; attention counted over the full T x T)", flops / 1e9, 3.0 * flops / 1e9);

    let matmul = MatmulPeak::new(&dev);
    let peak = matmul.gflops(5);
    println!("matmul peak (candle/gemm f32 2048^3, best of 5): {peak:.1} GFLOP/s");

    let model = Llama::init(&cfg, 0, &dev).unwrap();
    let mut rng = SeededRng::new(7);
    let ids: Vec<u32> = (0..batch * (SEQ + 1))
        .map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, SEQ + 1), &dev).unwrap();
    let inp = ids.narrow(1, 0, SEQ).unwrap().contiguous().unwrap();
    let tgt = ids.narrow(1, 1, SEQ).unwrap().contiguous().unwrap();

    // POLLARD_BENCH_ATTN_AB=N: alternate fused and composed attention (forward + backward) N
    // times at the bench shapes and print both medians (an A/B robust to slow drifts in load).
    if let Some(n) = std::env::var("POLLARD_BENCH_ATTN_AB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        attention_ab(&cfg, batch, &dev, n);
        return;
    }
    // POLLARD_BENCH_ONLY_STEPS=N: run N training steps and nothing else (for `perf record`).
    if let Some(n) = std::env::var("POLLARD_BENCH_ONLY_STEPS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let named = model.vars();
        let vars: Vec<&Var> = named.iter().map(|(_, v)| v).collect();
        let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
        for _ in 0..n {
            let (f, b, o) = train_step(&model, &mut opt, &vars, &inp, &tgt);
            println!(
                "step: forward+loss {} backward {} grads+AdamW {}",
                ms(f),
                ms(b),
                ms(o)
            );
        }
        return;
    }
    let frozen = Llama::new(
        cfg.clone(),
        model.weights().unwrap(),
        pollard_model::Mode::Frozen,
    )
    .unwrap();
    let (fwd, fwd_best) = time(reps, || frozen.forward(&inp).unwrap());
    println!(
        "forward (frozen):  median {}  best {}  {:8.0} tok/s  {:6.1} GFLOP/s  {:4.1}% of matmul peak",
        ms(fwd), ms(fwd_best), tokens / fwd, flops / fwd / 1e9, 100.0 * flops / fwd / 1e9 / peak
    );

    let named = model.vars();
    let vars: Vec<&Var> = named.iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(named.clone(), AdamWConfig::default()).unwrap();
    train_step(&model, &mut opt, &vars, &inp, &tgt);
    // Each step is timed right after the matmul peak (best of 2), so that a machine whose speed
    // drifts during the run (a shared VM) is compared with itself at that moment.
    let mut parts: Vec<(f64, f64, f64, f64)> = (0..reps)
        .map(|_| {
            let p = matmul.gflops(2);
            let (f, b, o) = train_step(&model, &mut opt, &vars, &inp, &tgt);
            (f, b, o, p)
        })
        .collect();
    let mut beside: Vec<f64> = parts
        .iter()
        .map(|&(f, b, o, p)| 100.0 * 3.0 * flops / (f + b + o) / 1e9 / p)
        .collect();
    beside.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    parts.sort_by(|a, b| {
        (a.0 + a.1 + a.2)
            .partial_cmp(&(b.0 + b.1 + b.2))
            .expect("finite")
    });
    let (f, b, o, _) = parts[parts.len() / 2];
    let step = f + b + o;
    println!(
        "train step:        median {}  (forward+loss {}, backward {}, grads+AdamW {})  {:8.0} tok/s  {:6.1} GFLOP/s  {:4.1}% of matmul peak",
        ms(step), ms(f), ms(b), ms(o), tokens / step, 3.0 * flops / step / 1e9, 100.0 * 3.0 * flops / step / 1e9 / peak
    );
    println!(
        "train step against the matmul peak timed just before it: median {:.1}% (from {:.1}% to {:.1}% over {reps} steps)",
        beside[beside.len() / 2],
        beside[0],
        beside[beside.len() - 1]
    );

    println!("per-op profile at these shapes (median of {reps}; bwd = fwd+bwd - fwd):");
    op_profile(&cfg, batch, &dev, reps);

    match run_torch(&cfg, batch, reps) {
        Some(t) => {
            println!(
                "PyTorch: forward {} ({:.0} tok/s, {:.1} GFLOP/s), train step {} ({:.0} tok/s, {:.1} GFLOP/s), its matmul peak {:.1} GFLOP/s",
                ms(t.fwd_s), tokens / t.fwd_s, flops / t.fwd_s / 1e9, ms(t.step_s), tokens / t.step_s, 3.0 * flops / t.step_s / 1e9, t.matmul_gflops
            );
            println!(
                "pollard/PyTorch throughput ratio: forward {:.2}x, train step {:.2}x (>1 means pollard is faster)",
                t.fwd_s / fwd, t.step_s / step
            );
        }
        None => println!(
            "PyTorch: not available (set POLLARD_TORCH_PYTHON to a python with torch to compare)"
        ),
    }
}
