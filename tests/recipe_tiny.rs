//! The recipes in pipelines/ through the engine with the built-in stage kinds: every recipe
//! parses and plans (the paper recipes with their real shapes, without weights), and the tiny
//! recipe runs end to end in a shortened variant (smaller budgets through its `params`), with
//! the distilled model beating the from-scratch baseline.
//!
//! `POLLARD_TINY_FULL=1 cargo test --test recipe_tiny -- --ignored --nocapture` runs the full
//! `tiny.yaml` and prints every stage's time and the report.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pollard_engine::exec::{plan_resources, Event, Reporter, RunOptions, Runner};
use pollard_engine::plan::Selection;
use pollard_engine::{Inventory, LockWriter, PipelineSpec, Progress, ProgressSink, Registry, Source};

fn registry() -> Registry {
    let mut reg = Registry::new();
    pollard_stages::register(&mut reg);
    reg
}

fn pipelines() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

fn load_text(name: &str, dir: &Path, text: String) -> PipelineSpec {
    let src = Source::new(name, dir.to_path_buf(), text);
    match pollard_engine::load(&src, &registry()) {
        Ok(s) => s,
        Err(d) => panic!("{name} does not validate:\n{d:?}"),
    }
}

fn load(name: &str) -> PipelineSpec {
    let path = pipelines().join(name);
    load_text(name, &pipelines(), std::fs::read_to_string(&path).unwrap())
}

/// Prints events and stage log lines (visible with --nocapture).
struct Print;

impl ProgressSink for Print {
    fn progress(&self, _stage: &str, _p: &Progress) {}
    fn log(&self, stage: &str, line: &str) {
        eprintln!("  [{stage}] {line}");
    }
}

impl Reporter for Print {
    fn event(&self, e: &Event) {
        match e {
            Event::Finished { stage, seconds, .. } => eprintln!("finished {stage} in {seconds:.1}s"),
            Event::Failed { stage, error } => eprintln!("FAILED {stage}: {error}"),
            other => eprintln!("{other:?}"),
        }
    }
}

fn run(spec: PipelineSpec, dir: &Path) -> pollard_engine::RunSummary {
    let cache = Arc::new(pollard_cache::Cache::open(&dir.join("cache")).unwrap());
    let known: Vec<String> = spec.ids().map(str::to_string).collect();
    let lock = LockWriter::new(dir.join("tiny.lock"), dir, &spec.name, known);
    let runner = Runner {
        spec: Arc::new(spec),
        cache,
        lock,
        inventory: Inventory::resolve(Some("none")).unwrap(),
        reporter: Arc::new(Print),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    runner.run(&RunOptions { targets: vec![], force: vec![], force_all: false, jobs: Some(1), keep_going: false }).unwrap()
}

fn metric(dir: &Path, summary: &pollard_engine::RunSummary, stage: &str, key: &str) -> f64 {
    let (_, outcome) = summary.stages.iter().find(|(s, _)| s == stage).unwrap_or_else(|| panic!("no stage {stage}"));
    let artifact = match outcome {
        pollard_engine::Outcome::Ran { artifact, .. } | pollard_engine::Outcome::Reused { artifact } => artifact.clone(),
        other => panic!("{stage}: {other:?}"),
    };
    let cache = pollard_cache::Cache::open(&dir.join("cache")).unwrap();
    let id: pollard_cache::ArtifactId = artifact.parse().unwrap();
    let folder = cache.artifact_dir(&id).unwrap();
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(folder.join("metrics.json")).unwrap()).unwrap();
    m[key].as_f64().unwrap_or_else(|| panic!("{stage}: no {key} in {m}"))
}

#[test]
fn every_recipe_validates_and_plans() {
    for name in ["tiny.yaml", "ablations.yaml", "nemotron-15b-8b-4b.yaml", "llama-3.1-8b-minitron-4b.yaml"] {
        let spec = load(name);
        let sel = Selection::new(&spec, &[], &[], false).unwrap();
        let res = plan_resources(&spec, &sel, &Inventory::resolve(Some("none")).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(res.len(), spec.stages.len());
    }
}

#[test]
fn paper_recipes_estimate_gpu_memory_for_the_real_shapes() {
    let spec = load("llama-3.1-8b-minitron-4b.yaml");
    let sel = Selection::new(&spec, &[], &[], false).unwrap();
    let res = plan_resources(&spec, &sel, &Inventory::resolve(Some("none")).unwrap()).unwrap();
    let by_id = |id: &str| res[spec.ids().position(|s| s == id).unwrap_or_else(|| panic!("no stage {id}"))];
    // Llama-3.1-8B in bf16: 16 GB of weights; teacher correction trains it (4 copies + activations).
    let correct = by_id("teacher_correction");
    assert!(correct.gpu_memory > 64_000_000_000, "{correct:?}");
    // Distilling the 4.5B width student adds the 8B teacher's forward to the student's training.
    let width = by_id("width_distill");
    assert!(width.gpu_memory > 4 * 2 * 4_500_000_000u64, "{width:?}");
    let spec = load("nemotron-15b-8b-4b.yaml");
    assert!(spec.ids().any(|s| s == "shrink.to_4b.distill"));
}

fn shortened_tiny() -> String {
    // Same stages and shapes, budgets cut so CI finishes in a few minutes on two cores.
    let mut text = std::fs::read_to_string(pipelines().join("tiny.yaml")).unwrap();
    for (from, to) in [
        ("words: 1M", "words: 200K"),
        ("teacher_tokens: 1M", "teacher_tokens: 300K"),
        ("distill_tokens: 400K", "distill_tokens: 100K"),
        ("baseline_tokens: 800K", "baseline_tokens: 200K"),
        ("eval_every: 200", "eval_every: 0"),
        ("eval_every: 100", "eval_every: 0"),
        ("samples: 64,", "samples: 16,"),
        ("eval: { samples: 128,", "eval: { samples: 32,"),
    ] {
        assert!(text.contains(from), "tiny.yaml no longer has `{from}`: update shortened_tiny()");
        text = text.replace(from, to);
    }
    text
}

#[test]
fn tiny_recipe_runs_end_to_end_shortened_and_distillation_beats_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let spec = load_text("tiny.yaml", dir.path(), shortened_tiny());
    let summary = run(spec, dir.path());
    assert!(!summary.failed(), "{summary:?}");
    let distilled = metric(dir.path(), &summary, "shrink.quarter.eval", "val_loss");
    let baseline = metric(dir.path(), &summary, "baseline_eval", "val_loss");
    eprintln!("distilled {distilled:.4} vs baseline {baseline:.4}");
    assert!(distilled < baseline, "distilled {distilled} should beat baseline {baseline}");
    // A second run reuses everything.
    let again = run(load_text("tiny.yaml", dir.path(), shortened_tiny()), dir.path());
    assert_eq!(again.count(|o| matches!(o, pollard_engine::Outcome::Reused { .. })), again.stages.len());
}

#[test]
#[ignore = "the full tiny recipe takes minutes; run with --ignored"]
fn tiny_recipe_full() {
    let dir = tempfile::tempdir().unwrap();
    let spec = load("tiny.yaml");
    let start = std::time::Instant::now();
    let summary = run(spec, dir.path());
    eprintln!("total {:.1}s", start.elapsed().as_secs_f64());
    assert!(!summary.failed(), "{summary:?}");
    for s in ["teacher_eval", "shrink.half.eval", "shrink.quarter.eval", "baseline_eval"] {
        eprintln!("{s}: val_loss {:.4}", metric(dir.path(), &summary, s, "val_loss"));
    }
}
