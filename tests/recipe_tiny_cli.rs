//! `pipelines/tiny.yaml` end to end through the `pollard` binary, shortened for CI (the same
//! stages and shapes, smaller budgets): it runs, the distilled model beats the from-scratch
//! baseline on validation loss, a second run reuses everything, the report has a row per
//! input, and changing one distillation parameter makes stale only what follows it.

use std::path::Path;
use std::process::Command;

fn pollard(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pollard"))
        .args(args)
        .current_dir(dir)
        .env_remove("POLLARD_GPUS")
        .env_remove("POLLARD_CACHE_DIR")
        .output()
        .expect("pollard runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// tiny.yaml with CI budgets; each replaced spelling must still be in the recipe.
fn shortened_tiny() -> String {
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.yaml"))
            .unwrap();
    for (from, to) in [
        ("words: 1M", "words: 200K"),
        ("teacher_tokens: 600K", "teacher_tokens: 300K"),
        ("distill_tokens: 250K", "distill_tokens: 100K"),
        ("baseline_tokens: 500K", "baseline_tokens: 200K"),
        ("eval_every: 200", "eval_every: 0"),
        ("eval_every: 100", "eval_every: 0"),
        ("samples: 64,", "samples: 16,"),
        ("eval: { samples: 128,", "eval: { samples: 32,"),
        (
            "tasks: [ { name: agreement }, { name: attributes }, { name: counting }, { name: recall } ]",
            "tasks: [ { name: agreement, limit: 40 }, { name: recall, limit: 40 } ]",
        ),
    ] {
        assert!(
            text.contains(from),
            "tiny.yaml no longer has `{from}`: update shortened_tiny()"
        );
        text = text.replace(from, to);
    }
    text
}

fn val_loss(dir: &Path, stage: &str) -> f64 {
    let (code, out, err) = pollard(dir, &["show", stage, "--path"]);
    assert_eq!(code, 0, "show {stage}: {err}");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(out.trim()).join("metrics.json")).unwrap(),
    )
    .unwrap();
    m["val_loss"]
        .as_f64()
        .unwrap_or_else(|| panic!("{stage}: no val_loss in {m}"))
}

#[test]
fn tiny_recipe_shortened_runs_and_the_distilled_model_beats_the_baseline() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path();
    std::fs::write(dir.join("pollard.yaml"), shortened_tiny()).unwrap();
    let start = std::time::Instant::now();
    let (code, out, err) = pollard(dir, &["run", "--plain"]);
    assert_eq!(code, 0, "run failed:\n{out}\n{err}");
    eprintln!(
        "shortened tiny recipe: {:.0}s",
        start.elapsed().as_secs_f64()
    );

    let distilled = val_loss(dir, "shrink.quarter.eval");
    let half = val_loss(dir, "shrink.half.eval");
    let baseline = val_loss(dir, "baseline_eval");
    let teacher = val_loss(dir, "teacher_eval");
    eprintln!("val loss: teacher {teacher:.4}, half {half:.4}, quarter {distilled:.4}, baseline {baseline:.4}");
    assert!(
        distilled < baseline,
        "distilled {distilled} should beat the from-scratch baseline {baseline}"
    );

    let (code, report, err) = pollard(dir, &["show", "report", "--path"]);
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(Path::new(report.trim()).join("report.md")).unwrap();
    for row in ["| teacher |", "| half |", "| quarter |", "| baseline |"] {
        assert!(md.contains(row), "report lacks {row}:\n{md}");
    }
    assert!(Path::new(report.trim()).join("loss_curves.png").is_file());
    // Every evaluation scored the synthetic tasks (shortened to 40 items each) and the report
    // has their columns and plot.
    assert!(md.contains("| agreement | recall |"), "{md}");
    assert!(Path::new(report.trim())
        .join("task_acc_vs_params.png")
        .is_file());
    let (_, eval_dir, _) = pollard(dir, &["show", "shrink.quarter.eval", "--path"]);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(eval_dir.trim()).join("metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["tasks"]["agreement"]["n"], 40, "{m}");
    let acc = m["tasks"]["agreement"]["acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{m}");

    // A second run is all cache hits.
    let (code, out, err) = pollard(dir, &["run", "--plain", "--json"]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let outcomes: Vec<&str> = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[1]["outcome"].as_str().unwrap())
        .collect();
    assert!(outcomes.iter().all(|o| *o == "reused"), "{outcomes:?}");

    // Changing a distillation parameter makes stale the distillations and what follows them only.
    let edited = std::fs::read_to_string(dir.join("pollard.yaml"))
        .unwrap()
        .replace("warmup: 20", "warmup: 10");
    std::fs::write(dir.join("pollard.yaml"), edited).unwrap();
    let (code, out, err) = pollard(dir, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut stale: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["up_to_date"] == false)
        .map(|r| r["stage"].as_str().unwrap())
        .collect();
    stale.sort_unstable();
    assert_eq!(
        stale,
        vec![
            "report",
            "shrink.half.distill",
            "shrink.half.eval",
            "shrink.quarter.distill",
            "shrink.quarter.eval",
            "shrink.quarter.prune",
            "shrink.quarter.score"
        ],
    );
}

#[test]
#[ignore = "the full tiny recipe takes minutes: cargo test --test recipe_tiny_cli -- --ignored --nocapture"]
fn tiny_recipe_full() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tiny.yaml");
    std::fs::copy(&recipe, dir.join("pollard.yaml")).unwrap();
    let start = std::time::Instant::now();
    let (code, out, err) = pollard(dir, &["run", "--plain"]);
    assert_eq!(code, 0, "run failed:\n{out}\n{err}");
    eprintln!("{err}");
    eprintln!("full tiny recipe: {:.0}s", start.elapsed().as_secs_f64());
    for s in [
        "teacher_eval",
        "shrink.half.eval",
        "shrink.quarter.eval",
        "baseline_eval",
    ] {
        eprintln!("{s}: val_loss {:.4}", val_loss(dir, s));
    }
    assert!(val_loss(dir, "shrink.quarter.eval") < val_loss(dir, "baseline_eval"));
}
