//! Speed of pollard-train's step pieces against their baselines, measured in the same run and
//! printed as ratios (never asserted): AdamW (in-place over f32 slices vs candle-nn's AdamW
//! built from tensor ops) and the fused losses (custom op forward + backward vs the same
//! formula composed from candle primitives).
//!
//! Build with `cargo test -p pollard-train --bench train_ops --no-run` (dev profile, optimised)
//! and run the printed binary from target/debug/deps; or `cargo bench -p pollard-train`.
//! Knob: POLLARD_BENCH_REPS (timed repetitions, default 7).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::Optimizer;
use pollard_train::{cross_entropy, forward_kl, AdamW, AdamWConfig, Grads};

/// Median of `reps` timed runs after one warm-up, in seconds.
fn median<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    std::hint::black_box(f());
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).expect("times are finite"));
    ts[ts.len() / 2]
}

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Parameter shapes of the ~9.4M-parameter Llama of benches/model_speed.rs (5 layers, hidden
/// 384, MLP 1024, 2 kv heads of 64, vocab 4096, tied), so the numbers transfer.
fn llama_shapes() -> Vec<Vec<usize>> {
    let mut s = vec![vec![4096, 384], vec![384]];
    for _ in 0..5 {
        s.extend([
            vec![384, 384],
            vec![128, 384],
            vec![128, 384],
            vec![384, 384],
        ]);
        s.extend([vec![1024, 384], vec![1024, 384], vec![384, 1024]]);
        s.extend([vec![384], vec![384]]);
    }
    s
}

fn vars(shapes: &[Vec<usize>]) -> Vec<Var> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Var::from_vec(
                noise(s.iter().product(), i as u64 + 1),
                s.as_slice(),
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect()
}

fn main() {
    let reps: usize = std::env::var("POLLARD_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    println!(
        "pollard-train step pieces, CPU, {} rayon threads, median of {reps}",
        rayon::current_num_threads()
    );

    // --- AdamW ------------------------------------------------------------------------------
    let shapes = llama_shapes();
    let n_params: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let ours_vars = vars(&shapes);
    let theirs_vars = vars(&shapes);
    // A gradient per parameter: loss = sum(w * r) gives gradient r.
    let loss_of = |vs: &[Var]| -> Tensor {
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (i, v) in vs.iter().enumerate() {
            let r = Tensor::from_vec(
                noise(v.elem_count(), 100 + i as u64),
                v.shape(),
                &Device::Cpu,
            )
            .unwrap();
            loss = (loss + (v.as_tensor() * r).unwrap().sum_all().unwrap()).unwrap();
        }
        loss
    };
    let store = loss_of(&ours_vars).backward().unwrap();
    let refs: Vec<&Var> = ours_vars.iter().collect();
    let mut grads = Grads::new(refs.len());
    grads.accumulate(&refs, &store).unwrap();
    let named: Vec<(String, Var)> = ours_vars
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("p{i}"), v.clone()))
        .collect();
    let mut ours = AdamW::new(named, AdamWConfig::default()).unwrap();
    let t_ours = median(reps, || ours.step(&grads, 1e-3, 0.5).unwrap());

    let their_store = loss_of(&theirs_vars).backward().unwrap();
    let params = candle_nn::ParamsAdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut theirs = candle_nn::AdamW::new(theirs_vars.clone(), params).unwrap();
    let t_theirs = median(reps, || theirs.step(&their_store).unwrap());
    println!(
        "AdamW step, {n_params} params in {} tensors: pollard {:.2} ms, candle-nn {:.2} ms  -> pollard is {:.1}x faster",
        shapes.len(),
        t_ours * 1e3,
        t_theirs * 1e3,
        t_theirs / t_ours
    );
    let t_norm = median(reps, || grads.global_norm(1.0).unwrap());
    println!("global grad norm (same grads): {:.2} ms", t_norm * 1e3);

    // --- Losses -----------------------------------------------------------------------------
    // [batch 8 x seq 256, vocab 4096] logits, as in the model benchmark.
    let (n, v) = (8 * 256, 4096);
    let logits = Var::from_vec(
        noise(n * v, 7).iter().map(|x| x * 4.0).collect(),
        (n, v),
        &Device::Cpu,
    )
    .unwrap();
    let teacher = Tensor::from_vec(
        noise(n * v, 8).iter().map(|x| x * 4.0).collect(),
        (n, v),
        &Device::Cpu,
    )
    .unwrap();
    let ids: Vec<u32> = noise(n, 9)
        .iter()
        .map(|x| ((x.abs() * 1e6) as usize % v) as u32)
        .collect();
    let targets = Tensor::from_vec(ids, n, &Device::Cpu).unwrap();

    let fused_ce = median(reps, || {
        cross_entropy(logits.as_tensor(), &targets)
            .unwrap()
            .backward()
            .unwrap()
    });
    let fused_ce_fwd = median(reps, || {
        cross_entropy(logits.as_tensor(), &targets).unwrap()
    });
    println!("cross_entropy forward only: {:.1} ms", fused_ce_fwd * 1e3);
    let prim_ce = median(reps, || {
        let lp = candle_nn::ops::log_softmax(logits.as_tensor(), 1).unwrap();
        let picked = lp.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap();
        picked
            .neg()
            .unwrap()
            .mean_all()
            .unwrap()
            .backward()
            .unwrap()
    });
    println!(
        "cross_entropy fwd+bwd [{n}, {v}]: fused {:.1} ms, primitives {:.1} ms  -> fused is {:.1}x faster",
        fused_ce * 1e3,
        prim_ce * 1e3,
        prim_ce / fused_ce
    );

    let fused_kl = median(reps, || {
        forward_kl(logits.as_tensor(), &teacher, 2.0)
            .unwrap()
            .backward()
            .unwrap()
    });
    let prim_kl = median(reps, || {
        let ls = candle_nn::ops::log_softmax(&(logits.as_tensor() / 2.0).unwrap(), 1).unwrap();
        let lt = candle_nn::ops::log_softmax(&(&teacher / 2.0).unwrap(), 1).unwrap();
        let kl = (lt.exp().unwrap() * (&lt - &ls).unwrap())
            .unwrap()
            .sum(1)
            .unwrap()
            .mean_all()
            .unwrap();
        kl.backward().unwrap()
    });
    println!(
        "forward_kl fwd+bwd [{n}, {v}]: fused {:.1} ms, primitives {:.1} ms  -> fused is {:.1}x faster",
        fused_kl * 1e3,
        prim_kl * 1e3,
        prim_kl / fused_kl
    );
}
