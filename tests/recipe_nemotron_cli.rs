//! The Nemotron recipes end to end through the `pollard` binary: `pipelines/tiny-nemotron.yaml`
//! shortened for CI (its distilled students beat a from-scratch model of the final shape at
//! equal tokens), and `pipelines/nemotron-15b-8b-4b.yaml` itself run on a tiny Nemotron
//! checkpoint (tests/fixtures/tiny-nemotron, made by transformers) with tiny budgets. Both
//! derive their manifest from the recipe file by replacing spellings that must still be there.

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

/// `pipelines/{name}` with each `(from, to)` replaced; every `from` must be in the recipe.
fn derived(name: &str, edits: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(name);
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "{name} no longer has `{from}`: update this test"
        );
        text = text.replace(from, to);
    }
    text
}

fn stage_dir(dir: &Path, stage: &str) -> std::path::PathBuf {
    let (code, out, err) = pollard(dir, &["show", stage, "--path"]);
    assert_eq!(code, 0, "show {stage}: {err}");
    out.trim().into()
}

fn val_loss(dir: &Path, stage: &str) -> f64 {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stage_dir(dir, stage).join("metrics.json")).unwrap(),
    )
    .unwrap();
    m["val_loss"]
        .as_f64()
        .unwrap_or_else(|| panic!("{stage}: no val_loss in {m}"))
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn tiny_nemotron_shortened_runs_and_the_students_beat_the_baseline() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path();
    let text = derived(
        "tiny-nemotron.yaml",
        &[
            ("words: 1M", "words: 200K"),
            ("teacher_tokens: 600K", "teacher_tokens: 300K"),
            ("distill_tokens: 250K", "distill_tokens: 100K"),
            ("baseline_tokens: 500K", "baseline_tokens: 200K"),
            ("eval_every: 200", "eval_every: 0"),
            ("eval_every: 100", "eval_every: 0"),
            ("samples: 64,", "samples: 16,"),
            ("eval: { samples: 128,", "eval: { samples: 32,"),
        ],
    );
    std::fs::write(dir.join("pollard.yaml"), text).unwrap();
    let (code, out, err) = pollard(dir, &["run", "--plain"]);
    assert_eq!(code, 0, "run failed:\n{out}\n{err}");
    let losses: Vec<(&str, f64)> = [
        "teacher_eval",
        "shrink.r1.eval",
        "shrink.r2.eval",
        "baseline_eval",
    ]
    .into_iter()
    .map(|s| (s, val_loss(dir, s)))
    .collect();
    eprintln!("tiny-nemotron (shortened) val loss: {losses:?}");
    let baseline = losses[3].1;
    for (s, l) in &losses[1..3] {
        assert!(
            *l < baseline,
            "{s} {l} should beat the from-scratch baseline {baseline}"
        );
    }
    // Every model stays a Nemotron checkpoint; round two halved the heads within the groups.
    let r2 = config(&stage_dir(dir, "shrink.r2.distill"));
    assert_eq!(
        r2["architectures"],
        serde_json::json!(["NemotronForCausalLM"])
    );
    assert_eq!(
        (
            r2["hidden_size"].as_u64(),
            r2["num_attention_heads"].as_u64(),
            r2["num_key_value_heads"].as_u64()
        ),
        (Some(64), Some(4), Some(2))
    );
}

#[test]
fn nemotron_15b_recipe_runs_on_a_tiny_nemotron_checkpoint() {
    let ws = tempfile::tempdir().unwrap();
    let dir = ws.path();
    // The checkpoint as users have it: transformers' folder plus a tokenizer (bytes: vocab 256).
    let base = dir.join("tiny-nemotron");
    std::fs::create_dir_all(&base).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-nemotron");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), base.join(f)).unwrap();
    }
    pollard_data::Tokenizer::byte()
        .save(&base.join("tokenizer.json"))
        .unwrap();
    std::fs::write(
        base.join("generation_config.json"),
        "{\"bos_token_id\": 2}\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    for i in 0..4 {
        std::fs::write(
            dir.join(format!("corpus/part{i}.txt")),
            pollard_data::synthetic::generate(20_000, i),
        )
        .unwrap();
    }
    let text = derived(
        "nemotron-15b-8b-4b.yaml",
        &[
            ("base: checkpoints/Nemotron-4-15B", "base: tiny-nemotron"),
            (
                "expect: { family: nemotron, hidden: 6144, ffn: 24576, heads: 48, kv_heads: 8, layers: 32, vocab: 256000, head_dim: 128, tied: false }",
                "expect: { family: nemotron, hidden: 64, ffn: 192, heads: 8, kv_heads: 2, layers: 4, vocab: 256, head_dim: 8, tied: false }",
            ),
            (
                "target: { hidden: 4096, ffn: 16384 }",
                "target: { hidden: 48, ffn: 128 }",
            ),
            (
                "target: { hidden: 3072, ffn: 9216, heads: 24, kv_heads: 8 }",
                "target: { hidden: 32, ffn: 96, heads: 4, kv_heads: 2 }",
            ),
            (
                "distill: { tokens: 94B, batch: 1152, micro_batch: 1, seq_len: 4096, lr: 2e-4, min_lr: 4.5e-7, warmup: 40 }",
                "distill: { tokens: 4K, batch: 4, micro_batch: 2, seq_len: 32, lr: 1e-3, min_lr: 1e-4, warmup: 1 }",
            ),
            ("samples: 1024, seq_len: 2048", "samples: 8, seq_len: 32"),
            ("val_fraction: 0.001", "val_fraction: 0.1"),
            // CPU: f32 instead of the recipe's bf16 (same stages, faster on CPU).
            ("dtype: bf16", "dtype: f32"),
        ],
    );
    std::fs::write(dir.join("pollard.yaml"), text).unwrap();
    let (code, out, err) = pollard(dir, &["run", "--plain"]);
    assert_eq!(code, 0, "run failed:\n{out}\n{err}");
    for stage in ["shrink.to_8b.eval", "shrink.to_4b.eval"] {
        let l = val_loss(dir, stage);
        assert!(l.is_finite(), "{stage}: {l}");
    }
    let s4 = stage_dir(dir, "shrink.to_4b.distill");
    let c = config(&s4);
    assert_eq!(
        c["architectures"],
        serde_json::json!(["NemotronForCausalLM"])
    );
    assert_eq!(
        (
            c["hidden_size"].as_u64(),
            c["intermediate_size"].as_u64(),
            c["num_attention_heads"].as_u64()
        ),
        (Some(32), Some(96), Some(4))
    );
    // The checkpoint's companions travel through load, prune and distill.
    for f in ["tokenizer.json", "generation_config.json"] {
        assert!(s4.join(f).is_file(), "{f} did not reach the 4B student");
    }
}
