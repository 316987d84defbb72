//! End-to-end tests of the training loop on a tiny model of our own (an embedding, a 1-D gain
//! and an output matrix: a bigram language model built from `Var`s), with a seeded synthetic
//! batch source whose position is the number of batches drawn.

use std::cell::Cell;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use pollard_train::{
    cross_entropy, BatchSource, BoxError, Budget, Hooks, LogOptions, LogRecord, StepLoss,
    TrainConfig, TrainError, Trainer,
};

const VOCAB: usize = 24;
const DIM: usize = 16;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(seed: u64, i: u64) -> f32 {
    (splitmix(seed ^ splitmix(i)) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

struct TinyLm {
    emb: Var,
    gain: Var,
    out: Var,
}

impl TinyLm {
    fn new(seed: u64) -> Self {
        let init = |n: usize, salt: u64, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|i| uniform(seed ^ salt, i as u64) * scale)
                .collect()
        };
        let dev = Device::Cpu;
        Self {
            emb: Var::from_vec(init(VOCAB * DIM, 1, 0.5), (VOCAB, DIM), &dev).unwrap(),
            gain: Var::from_vec(vec![1f32; DIM], DIM, &dev).unwrap(),
            out: Var::from_vec(init(DIM * VOCAB, 2, 0.5), (DIM, VOCAB), &dev).unwrap(),
        }
    }

    fn params(&self) -> Vec<(String, Var)> {
        vec![
            ("emb".into(), self.emb.clone()),
            ("gain".into(), self.gain.clone()),
            ("out".into(), self.out.clone()),
        ]
    }

    /// Mean next-token cross-entropy of a `[batch, seq]` window of ids.
    fn loss(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let inputs = ids.narrow(1, 0, t - 1)?.flatten_all()?;
        let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
        let h = self
            .emb
            .as_tensor()
            .index_select(&inputs, 0)?
            .broadcast_mul(self.gain.as_tensor())?;
        let logits = h.matmul(self.out.as_tensor())?;
        debug_assert_eq!(logits.dims(), &[b * (t - 1), VOCAB]);
        cross_entropy(&logits, &targets).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Number of weights whose bits differ from `other`'s (0 = bit-identical).
    fn bit_diffs(&self, other: &TinyLm) -> usize {
        self.bits()
            .iter()
            .zip(other.bits())
            .filter(|(a, b)| **a != *b)
            .count()
    }

    fn bits(&self) -> Vec<u32> {
        [&self.emb, &self.gain, &self.out]
            .iter()
            .flat_map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .map(f32::to_bits)
            .collect()
    }
}

/// Windows of a learnable sequence: mostly `next = (3 * cur + 1) % VOCAB`, sometimes random.
/// Window `k` depends only on (seed, k), so `seek` is exact.
struct Windows {
    seed: u64,
    batch: usize,
    seq: usize,
    drawn: u64,
}

impl BatchSource for Windows {
    type Batch = Tensor;
    fn next_batch(&mut self) -> Result<Tensor, BoxError> {
        let mut ids = Vec::with_capacity(self.batch * self.seq);
        for row in 0..self.batch {
            let key = splitmix(self.seed ^ splitmix(self.drawn * 1000 + row as u64));
            let mut cur = (key % VOCAB as u64) as u32;
            for j in 0..self.seq {
                ids.push(cur);
                let r = splitmix(key ^ j as u64);
                cur = if r.is_multiple_of(5) {
                    (r >> 8) as u32 % VOCAB as u32
                } else {
                    (3 * cur + 1) % VOCAB as u32
                };
            }
        }
        self.drawn += 1;
        Ok(Tensor::from_vec(ids, (self.batch, self.seq), &Device::Cpu)?)
    }
    fn position(&self) -> u64 {
        self.drawn
    }
    fn seek(&mut self, position: u64) -> Result<(), BoxError> {
        self.drawn = position;
        Ok(())
    }
}

fn config(steps: u64, accumulation: u32) -> TrainConfig {
    let mut c = TrainConfig::new(Budget::Steps(steps), 4, 17, 0.05);
    c.accumulation = accumulation;
    c.warmup = 3;
    c.min_lr = 0.005;
    c.weight_decay = 0.01;
    c.grad_clip = 0.5; // small enough that clipping is active in the first steps
    c.log_every = 1;
    c
}

fn source(batch: usize) -> Windows {
    Windows {
        seed: 42,
        batch,
        seq: 17,
        drawn: 0,
    }
}

/// Runs to the end of `cfg`'s budget and returns (model, summary, per-step losses).
fn train(
    cfg: TrainConfig,
    init_seed: u64,
    ckpt: Option<&Path>,
    log: Option<&Path>,
) -> (TinyLm, Vec<f64>) {
    let model = TinyLm::new(init_seed);
    let mut trainer = Trainer::new(cfg.clone(), model.params()).unwrap();
    if let Some(d) = ckpt {
        trainer = trainer.with_checkpoints(d);
    }
    if let Some(l) = log {
        trainer = trainer.with_log(l);
    }
    let mut losses = Vec::new();
    let hooks = Hooks {
        progress: Some(Box::new(|p| losses.push(p.loss))),
        ..Default::default()
    };
    trainer
        .run(&mut source(cfg.batch), |ids| Ok(model.loss(ids)?), hooks)
        .unwrap();
    (model, losses)
}

fn read_log(path: &Path) -> Vec<LogRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn training_lowers_the_loss_and_writes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let (_, losses) = train(config(60, 1), 7, None, Some(&log));
    assert_eq!(losses.len(), 60);
    let (first, last) = (losses[0], losses[59]);
    assert!(first > 2.5, "starts near ln(24) = 3.18: {first}");
    assert!(last < 0.6 * first, "loss fell from {first} to {last}");
    let recs = read_log(&log);
    assert_eq!(recs.len(), 60);
    assert_eq!(recs[59].step, 60);
    assert_eq!(recs[59].tokens, 60 * 4 * 17);
    assert!((recs[59].lr - 0.005).abs() < 1e-12, "last step at min_lr");
    assert!(recs
        .iter()
        .all(|r| r.grad_norm.is_finite() && r.grad_norm > 0.0));
}

#[test]
fn two_runs_with_the_same_seed_give_the_same_loss_bits() {
    let (a, la) = train(config(15, 2), 3, None, None);
    let (b, lb) = train(config(15, 2), 3, None, None);
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&la), bits(&lb));
    assert_eq!(a.bit_diffs(&b), 0);
}

#[test]
fn loss_bits_do_not_depend_on_the_thread_count() {
    // Every reduction in pollard-train sums in a fixed order, so a one-thread pool and the
    // default pool agree bit for bit.
    let (a, la) = train(config(10, 2), 8, None, None);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (b, lb) = pool.install(|| train(config(10, 2), 8, None, None));
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&la), bits(&lb));
    assert_eq!(a.bit_diffs(&b), 0);
}

#[test]
fn killed_run_resumes_and_ends_bit_identical_to_an_uninterrupted_one() {
    let (n, k) = (12u64, 7u64);
    let mut cfg = config(n, 2);
    cfg.checkpoint_every = 3;
    let straight_dir = tempfile::tempdir().unwrap();
    let straight_log = straight_dir.path().join("log.jsonl");
    let (straight, _) = train(
        cfg.clone(),
        5,
        Some(&straight_dir.path().join("ckpt")),
        Some(&straight_log),
    );

    // First attempt: cancelled before step k+1 (the last cadence checkpoint is at step 6; the
    // cancellation itself writes one at step 7).
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, log) = (dir.path().join("ckpt"), dir.path().join("log.jsonl"));
    {
        let model = TinyLm::new(5);
        let mut trainer = Trainer::new(cfg.clone(), model.params())
            .unwrap()
            .with_checkpoints(&ckpt)
            .with_log(&log);
        let done = Cell::new(0u64);
        let hooks = Hooks {
            progress: Some(Box::new(|p| done.set(p.step))),
            cancel: Some(Box::new(|| done.get() >= k)),
            ..Default::default()
        };
        let err = trainer
            .run(&mut source(cfg.batch), |ids| Ok(model.loss(ids)?), hooks)
            .unwrap_err();
        assert!(
            matches!(err, TrainError::Cancelled { step } if step == k),
            "{err}"
        );
    }
    // Everything is dropped. A fresh process would build the model from a different init:
    // resume must overwrite it completely.
    let model = TinyLm::new(999);
    let mut trainer = Trainer::new(cfg.clone(), model.params())
        .unwrap()
        .with_checkpoints(&ckpt)
        .with_log(&log);
    let summary = trainer
        .run(
            &mut source(cfg.batch),
            |ids| Ok(model.loss(ids)?),
            Hooks::default(),
        )
        .unwrap();
    assert_eq!(summary.resumed_from, Some(k));
    assert_eq!(summary.steps, n);
    assert_eq!(
        model.bit_diffs(&straight),
        0,
        "final weights differ from the uninterrupted run"
    );

    // The log has every step once, with the same losses as the uninterrupted run.
    let (a, b) = (read_log(&straight_log), read_log(&log));
    assert_eq!(
        b.iter().map(|r| r.step).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let loss_bits = |v: &[LogRecord]| v.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(loss_bits(&a), loss_bits(&b));

    // Running again resumes at the end and does nothing.
    let again = trainer
        .run(
            &mut source(cfg.batch),
            |ids| Ok(model.loss(ids)?),
            Hooks::default(),
        )
        .unwrap();
    assert_eq!((again.resumed_from, again.final_loss), (Some(n), None));
}

#[test]
fn resume_skips_a_corrupt_newest_checkpoint() {
    let mut cfg = config(6, 1);
    cfg.checkpoint_every = 2;
    cfg.keep_checkpoints = 3;
    let straight = train(cfg.clone(), 1, None, None).0;
    let dir = tempfile::tempdir().unwrap();
    train(cfg.clone(), 1, Some(dir.path()), None);
    // Corrupt the final checkpoint (step 6) so resume must start from step 4.
    let w = dir.path().join("step-0000000006/weights.safetensors");
    std::fs::write(&w, b"garbage").unwrap();
    let model = TinyLm::new(2);
    let mut trainer = Trainer::new(cfg.clone(), model.params())
        .unwrap()
        .with_checkpoints(dir.path());
    let s = trainer
        .run(
            &mut source(cfg.batch),
            |ids| Ok(model.loss(ids)?),
            Hooks::default(),
        )
        .unwrap();
    assert_eq!(s.resumed_from, Some(4));
    assert!(
        trainer
            .skipped_checkpoints()
            .iter()
            .any(|r| r.contains("step-0000000006")),
        "{:?}",
        trainer.skipped_checkpoints()
    );
    assert_eq!(model.bit_diffs(&straight), 0);
}

#[test]
fn resume_refuses_a_checkpoint_of_another_config() {
    let dir = tempfile::tempdir().unwrap();
    train(config(4, 1), 1, Some(dir.path()), None);
    let mut other = config(4, 1);
    other.lr = 0.01;
    let model = TinyLm::new(1);
    let mut trainer = Trainer::new(other.clone(), model.params())
        .unwrap()
        .with_checkpoints(dir.path());
    let e = trainer
        .run(&mut source(4), |ids| Ok(model.loss(ids)?), Hooks::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("different training config") && e.contains("step-0000000004"),
        "{e}"
    );
}

#[test]
fn accumulating_two_micro_batches_equals_one_double_batch() {
    // Same data: 2 micro-batches of 4 windows vs 1 batch of 8. Without clipping, the mean of the
    // two micro-batch means is the mean over all 8, so the weights agree to rounding.
    let mut a = config(5, 2);
    a.grad_clip = 0.0;
    let mut b = a.clone();
    b.accumulation = 1;
    b.batch = 8;
    // The source draws rows by (batch index, row); make the double batch draw the same rows.
    struct Pairs(Windows);
    impl BatchSource for Pairs {
        type Batch = Tensor;
        fn next_batch(&mut self) -> Result<Tensor, BoxError> {
            let x = self.0.next_batch()?;
            let y = self.0.next_batch()?;
            Ok(Tensor::cat(&[&x, &y], 0)?)
        }
        fn position(&self) -> u64 {
            self.0.position()
        }
        fn seek(&mut self, p: u64) -> Result<(), BoxError> {
            self.0.seek(p)
        }
    }
    let (ma, _) = train(a, 4, None, None);
    let mb = TinyLm::new(4);
    Trainer::new(b, mb.params())
        .unwrap()
        .run(
            &mut Pairs(source(4)),
            |ids| Ok(mb.loss(ids)?),
            Hooks::default(),
        )
        .unwrap();
    for (x, y) in ma.bits().iter().zip(mb.bits()) {
        let (x, y) = (f32::from_bits(*x), f32::from_bits(y));
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn nan_loss_stops_training_naming_the_step() {
    let model = TinyLm::new(1);
    let mut trainer = Trainer::new(config(10, 1), model.params()).unwrap();
    let calls = Cell::new(0);
    let err = trainer
        .run(
            &mut source(4),
            |ids| {
                calls.set(calls.get() + 1);
                let l = model.loss(ids)?;
                Ok(if calls.get() == 3 { (l * f64::NAN)? } else { l })
            },
            Hooks::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                step: 3,
                what: "loss",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("step 3"), "{err}");
}

#[test]
fn infinite_gradient_stops_training_naming_the_step() {
    let model = TinyLm::new(1);
    let mut trainer = Trainer::new(config(10, 1), model.params()).unwrap();
    let calls = Cell::new(0);
    let err = trainer
        .run(
            &mut source(4),
            |ids| {
                calls.set(calls.get() + 1);
                let l = model.loss(ids)?;
                // A finite loss (the extra terms are 0) whose gradient overflows f32: two
                // paths each contribute 3e38 to d/d gain, and their sum is infinite.
                if calls.get() == 2 {
                    let gain = model.gain.as_tensor();
                    let diff = (gain - gain.detach())?;
                    let big = Tensor::full(3e38f32, DIM, &Device::Cpu)?;
                    let term = (&diff * &big)?.sum_all()?;
                    return Ok(((l + &term)? + &term)?);
                }
                Ok(l)
            },
            Hooks::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                step: 2,
                what: "gradient norm",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn eval_runs_on_its_cadence_and_at_the_end_and_errors_are_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let mut cfg = config(7, 1);
    cfg.log_every = 100;
    cfg.eval_every = 3;
    let model = TinyLm::new(1);
    let val = source(4).next_batch().unwrap();
    let evals = Cell::new(Vec::<u64>::new());
    let eval = |step: u64| -> Result<f64, BoxError> {
        let mut v = evals.take();
        v.push(step);
        evals.set(v);
        Ok(model.loss(&val)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    };
    let mut trainer = Trainer::new(cfg, model.params()).unwrap().with_log(&log);
    let s = trainer
        .run(
            &mut source(4),
            |ids| Ok(model.loss(ids)?),
            Hooks {
                eval: Some(Box::new(eval)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(evals.take(), vec![3, 6, 7]);
    assert!(s.final_eval_loss.is_some());
    // Eval steps are logged even off the log cadence.
    let steps: Vec<(u64, bool)> = read_log(&log)
        .iter()
        .map(|r| (r.step, r.eval_loss.is_some()))
        .collect();
    assert_eq!(steps, vec![(3, true), (6, true), (7, true)]);

    // Failures in caller code keep their step and cause.
    let model = TinyLm::new(1);
    let mut trainer = Trainer::new(config(3, 1), model.params()).unwrap();
    let e = trainer
        .run(
            &mut source(4),
            |_| Err("no such shard".into()),
            Hooks::default(),
        )
        .unwrap_err();
    assert!(
        matches!(e, TrainError::Loss { step: 1, .. }) && e.to_string().contains("no such shard"),
        "{e}"
    );
}

#[test]
fn loss_parts_and_log_options_shape_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let mut cfg = config(5, 2);
    cfg.log_every = 4;
    let model = TinyLm::new(1);
    let val = source(4).next_batch().unwrap();
    let options = LogOptions {
        wall_clock: false,
        eval_key: "val_loss".into(),
        first_step: true,
    };
    let mut trainer = Trainer::new(cfg, model.params())
        .unwrap()
        .with_log(&log)
        .with_log_options(options);
    let calls = Cell::new(0u32);
    trainer
        .run_with_parts(
            &mut source(4),
            |ids| {
                // Parts alternate 1 and 3 over the two micro-batches: the log has their mean.
                calls.set(calls.get() + 1);
                let part = if calls.get() % 2 == 1 { 1.0 } else { 3.0 };
                Ok(StepLoss {
                    loss: model.loss(ids)?,
                    parts: vec![("aux".into(), part)],
                })
            },
            Hooks {
                eval: Some(Box::new(|_| {
                    Ok(model.loss(&val)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
                })),
                ..Default::default()
            },
        )
        .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 4, 5], "step 1 logged with first_step");
    for v in &lines {
        assert_eq!(v["aux"].as_f64(), Some(2.0), "{v}");
        assert!(
            v.get("elapsed").is_none() && v.get("tokens_per_s").is_none(),
            "{v}"
        );
        assert!(v.get("eval_loss").is_none(), "{v}");
    }
    assert!(lines[2]["val_loss"].as_f64().is_some_and(f64::is_finite));
}

#[test]
fn resume_then_run_continues_without_loading_twice() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let (straight, _) = train(config(6, 1), 5, None, None);
    let mut cfg = config(6, 1);
    cfg.checkpoint_every = 3;
    // A first run cancelled after step 4 leaves the checkpoint of step 3 and, written by the
    // cancellation, that of step 4.
    let model = TinyLm::new(5);
    let mut t = Trainer::new(cfg.clone(), model.params())
        .unwrap()
        .with_checkpoints(&ckpt);
    let seen = Cell::new(0u64);
    let e = t
        .run(
            &mut source(4),
            |ids| {
                seen.set(seen.get() + 1);
                Ok(model.loss(ids)?)
            },
            Hooks {
                cancel: Some(Box::new(|| seen.get() >= 4)),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, TrainError::Cancelled { step: 4 }), "{e}");
    let model = TinyLm::new(99);
    let mut t = Trainer::new(cfg, model.params())
        .unwrap()
        .with_checkpoints(&ckpt);
    let mut src = source(4);
    assert_eq!(t.resume(&mut src).unwrap(), Some(4));
    // With the checkpoints gone, a second load would find none and report no resume.
    std::fs::remove_dir_all(&ckpt).unwrap();
    let s = t
        .run(&mut src, |ids| Ok(model.loss(ids)?), Hooks::default())
        .unwrap();
    assert_eq!(s.resumed_from, Some(4));
    assert_eq!(model.bit_diffs(&straight), 0);
}

#[test]
fn an_interrupt_without_a_checkpoint_cadence_keeps_its_progress() {
    // No `checkpoint_every` (the tiny recipe's case): Ctrl-C used to lose every step.
    let n = 10u64;
    let cfg = config(n, 1);
    assert_eq!(cfg.checkpoint_every, 0);
    let (straight, _) = train(cfg.clone(), 5, None, None);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let model = TinyLm::new(5);
    let mut t = Trainer::new(cfg.clone(), model.params())
        .unwrap()
        .with_checkpoints(&ckpt);
    let done = Cell::new(0u64);
    let e = t
        .run(
            &mut source(cfg.batch),
            |ids| Ok(model.loss(ids)?),
            Hooks {
                progress: Some(Box::new(|p| done.set(p.step))),
                cancel: Some(Box::new(|| done.get() >= 6)),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, TrainError::Cancelled { step: 6 }), "{e}");
    let model = TinyLm::new(99);
    let mut t = Trainer::new(cfg.clone(), model.params())
        .unwrap()
        .with_checkpoints(&ckpt);
    let s = t
        .run(
            &mut source(cfg.batch),
            |ids| Ok(model.loss(ids)?),
            Hooks::default(),
        )
        .unwrap();
    assert_eq!(
        s.resumed_from,
        Some(6),
        "the rerun starts where the interrupt stopped"
    );
    assert_eq!(model.bit_diffs(&straight), 0);
}

#[test]
fn a_time_cadence_writes_checkpoints_without_a_step_cadence() {
    let mut cfg = config(5, 1);
    cfg.checkpoint_secs = 1e-9; // due after every step
    cfg.keep_checkpoints = 10;
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    train(cfg, 5, Some(&ckpt), None);
    let (found, bad) = pollard_train::checkpoint::list(&ckpt).unwrap();
    assert!(bad.is_empty());
    assert_eq!(found.len(), 5, "one checkpoint per step");
}
