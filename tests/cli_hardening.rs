//! Bad manifests a careless user or a hostile file would write: each is refused before
//! anything runs, with exit 2, `file:line:col`, the stage and the value, and never a panic,
//! a hang or an unbounded allocation. Each test is named after what used to go wrong.

mod cli_support;
use cli_support::*;

/// Runs `dag`, `status` and `run` on the manifest; each must exit 2 with the same errors on
/// stderr and nothing run. Returns that stderr.
fn refused(manifest: &str) -> String {
    let ws = Ws::new(manifest);
    let mut first: Option<String> = None;
    for args in [&["dag"][..], &["status"], &["run"]] {
        let r = ws.run(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        match &first {
            None => first = Some(r.stderr),
            Some(f) => assert_eq!(f, &r.stderr, "{args:?}"),
        }
    }
    assert!(!ws.file("pollard.lock").exists(), "nothing ran");
    first.unwrap()
}

#[test]
fn empty_kind_is_refused_not_a_panic() {
    let err = refused("pipeline: p\nstages:\n  a:\n    kind: \"\"\n  b: { kind: command, cmd: \"true\", inputs: { x: a } }\n");
    insta::assert_snapshot!("empty_kind", err);
}

#[test]
fn huge_matrix_is_refused_before_it_is_expanded() {
    // 5 axes x 20 values: 3.2 million copies, which used to exhaust memory.
    let values: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let axis = format!("[{}]", values.join(", "));
    let manifest = format!(
        "pipeline: p\nstages:\n  sweep:\n    matrix: {{ a: {axis}, b: {axis}, c: {axis}, d: {axis}, e: {axis} }}\n    stages:\n      s: {{ kind: command, cmd: \"echo ${{matrix.a}}\" }}\n"
    );
    insta::assert_snapshot!("huge_matrix", refused(&manifest));
}

#[test]
fn deep_nesting_is_refused_at_once() {
    // 100,000 levels used to take over a minute (quadratic) and ignore SIGTERM.
    let d = 100_000;
    let manifest = format!(
        "pipeline: p\nstages:\n  a:\n    kind: command\n    cmd: \"true\"\n    env: {}{}\n",
        "[".repeat(d),
        "]".repeat(d)
    );
    insta::assert_snapshot!("deep_nesting", refused(&manifest));
}

#[test]
fn pollard_variables_in_env_are_refused() {
    let err = refused("pipeline: p\nstages:\n  a:\n    kind: command\n    cmd: \"echo x > $POLLARD_OUT/x\"\n    env: { POLLARD_OUT: /tmp/elsewhere, POLLARD_IN_X: /etc, OK: 1 }\n");
    insta::assert_snapshot!("pollard_env", err);
}

#[test]
fn overflowing_arch_sizes_are_refused_at_validation() {
    let err = refused("pipeline: p\nstages:\n  data: { kind: dataset, with: { text: { synthetic: { words: 1K } }, tokenizer: { byte: true } } }\n  t:\n    kind: train\n    inputs: { data: data }\n    with:\n      arch: { hidden: 9223372036854775807, ffn: 18446744073709551615, heads: 4, layers: 2 }\n      tokens: 1M\n");
    insta::assert_snapshot!("overflowing_arch", err);
}

/// A teacher, then two prunes: one wider than the teacher, one dropping a layer it lacks.
const PRUNE_PAST_THE_MODEL: &str = r#"pipeline: p
stages:
  data: { kind: dataset, with: { text: { synthetic: { words: 1K } }, tokenizer: { byte: true } } }
  teacher:
    kind: train
    inputs: { data: data }
    with: { arch: { hidden: 16, ffn: 32, heads: 2, layers: 2 }, tokens: 1K, batch: 2, seq_len: 16 }
  wide:
    kind: prune
    inputs: { model: teacher }
    with:
      method: magnitude
      target: { hidden: 32, ffn: 16 }
  shallow:
    kind: prune
    inputs: { model: teacher }
    with: { method: magnitude, target: { layers: 1 }, depth: { drop: [5] } }
"#;

#[test]
fn a_prune_target_larger_than_its_input_model_is_refused_while_planning() {
    // It used to be caught only when the prune ran, after the teacher had trained, without a
    // position. The upstream shape is known while planning: both mistakes are refused there,
    // at the offending values, before the dataset or the teacher run.
    let ws = Ws::new(PRUNE_PAST_THE_MODEL);
    let dry = ws.run(&["run", "--dry-run"]);
    assert_eq!(dry.code, 2, "{}", dry.all());
    let run = ws.run(&["run"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_eq!(dry.stderr, run.stderr);
    assert!(!ws.file("pollard.lock").exists(), "nothing ran");
    insta::assert_snapshot!("prune_past_the_model", run.stderr);
}

#[test]
fn a_dataset_with_more_tokens_than_the_model_embeds_is_refused_while_planning() {
    // A model trained on bytes (256 ids) evaluated and scored on a 512-token BPE dataset:
    // ids past 255 have no embedding row. Both vocabularies are known while planning.
    let ws = Ws::new("pipeline: p\nstages:\n  bytes: { kind: dataset, with: { text: { synthetic: { words: 1K } }, tokenizer: { byte: true } } }\n  bpe: { kind: dataset, with: { text: { synthetic: { words: 1K } }, tokenizer: { bpe: 512 } } }\n  m:\n    kind: train\n    inputs: { data: bytes }\n    with: { arch: { hidden: 16, ffn: 32, heads: 2, layers: 2 }, tokens: 1K, batch: 2, seq_len: 16 }\n  eval: { kind: evaluate, inputs: { model: m, data: bpe } }\n  scores: { kind: score, inputs: { model: m, data: bpe } }\n");
    let run = ws.run(&["run"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(!ws.file("pollard.lock").exists(), "nothing ran");
    insta::assert_snapshot!("vocab_past_the_model", run.stderr);
}

const TEMPLATE_TYPO: &str = r#"pipeline: p
params: { distill_tokens: 1K }
stages:
  data: { kind: dataset, with: { text: { synthetic: { words: 1K } }, tokenizer: { byte: true } } }
  shrink:
    repeat:
      from: data
      rounds: [{ name: half }, { name: quarter }, { name: eighth }]
      result: t
    stages:
      t:
        kind: train
        inputs: { data: data }
        with: { arch: { hidden: 8, ffn: 8, heads: 2, layers: 1 }, tokens: "${params.distiltokens}" }
      c: { kind: command, inputs: { m: t }, cmd: "echo ${params.distiltokens} > $POLLARD_OUT/m" }
"#;

#[test]
fn a_template_error_is_reported_once_not_once_per_round() {
    let err = refused(TEMPLATE_TYPO);
    insta::assert_snapshot!("template_error_once", err);
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn kill_9_of_pollard_ends_the_background_grandchildren_of_a_command() {
    use std::time::{Duration, Instant};
    let ws = Ws::new("pipeline: k\nstages:\n  a:\n    kind: command\n    cmd: (while true; do echo x >> ticks; sleep 0.05; done) & echo $! > loop.pid; sleep 60\n");
    let mut child = ws
        .cmd(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let pid: i32 = loop {
        if let Ok(p) = ws.read("loop.pid").trim().parse() {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the command never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(alive(pid));
    child.kill().unwrap(); // SIGKILL: no handler of pollard's runs
    child.wait().unwrap();
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the background loop of a command outlived pollard"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ticks = ws.read("ticks").len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ws.read("ticks").len(),
        ticks,
        "nothing writes after pollard died"
    );
}

/// Runs pollard in `ws` with the cache at `cache`.
fn run_shared(ws: &Ws, cache: &std::path::Path, args: &[&str]) -> Run {
    ws.cmd(args)
        .env("POLLARD_CACHE_DIR", cache)
        .output()
        .unwrap()
        .into()
}

#[test]
fn gc_in_a_shared_cache_keeps_other_projects_work() {
    let cache = tempfile::tempdir().unwrap();
    let one = Ws::new("pipeline: one\nparams: { v: 1 }\nstages:\n  a: { kind: command, cmd: \"echo one ${params.v} > $POLLARD_OUT/x\" }\n");
    let two = Ws::new(
        "pipeline: two\nstages:\n  b: { kind: command, cmd: \"echo two > $POLLARD_OUT/x\" }\n",
    );
    for ws in [&one, &two] {
        let r = run_shared(ws, cache.path(), &["run"]);
        assert_eq!(r.code, 0, "{}", r.all());
    }
    // `one` moves on: its old result is garbage, `two`'s is not.
    one.write("pollard.yaml", "pipeline: one\nparams: { v: 2 }\nstages:\n  a: { kind: command, cmd: \"echo one ${params.v} > $POLLARD_OUT/x\" }\n");
    let r = run_shared(&one, cache.path(), &["run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let dry = run_shared(&one, cache.path(), &["gc", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    let mut settings = filters(&one);
    settings.add_filter(
        &regex_escape(&two.path().canonicalize().unwrap().display().to_string()),
        "[A WORKSPACE]",
    );
    settings.add_filter(
        &regex_escape(&two.path().display().to_string()),
        "[A WORKSPACE]",
    );
    settings.add_filter(r"\[WS\]", "[A WORKSPACE]");
    settings.add_filter(r"freed? [0-9.]+ [KMG]?i?B", "free [SIZE]");
    settings.add_filter(r"\d+ temporary files", "[N] temporary files");
    settings.bind(|| insta::assert_snapshot!("gc_dry_run_shared", dry.stdout));
    let r = run_shared(&one, cache.path(), &["gc", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["records_removed"], 1, "{v}");
    assert_eq!(v["stages_removed"], serde_json::json!(["a"]), "{v}");
    // The other project is still up to date, and the cache verifies clean.
    let st = run_shared(&two, cache.path(), &["status"]);
    assert!(st.stdout.contains("1 up to date"), "{}", st.all());
    let st = run_shared(&one, cache.path(), &["status"]);
    assert!(st.stdout.contains("1 up to date"), "{}", st.all());
    assert_eq!(run_shared(&one, cache.path(), &["verify"]).code, 0);
}

#[test]
fn an_input_rewritten_in_place_is_refused_and_recomputed() {
    // `b` rewrites its input's bytes in place, same size, mtime set back: the next stage used
    // to receive the changed bytes and its result was cached.
    let evil = r#"pipeline: h
stages:
  a: { kind: command, cmd: "echo hello > $POLLARD_OUT/x" }
  b:
    kind: command
    inputs: { a: a }
    cmd: chmod u+w $POLLARD_IN_A/x; echo HELLO > $POLLARD_IN_A/x; touch -d @1 $POLLARD_IN_A/x; echo b > $POLLARD_OUT/b
  c:
    kind: command
    inputs: { a: a, b: b }
    cmd: cat $POLLARD_IN_A/x > $POLLARD_OUT/c
"#;
    let ws = Ws::new(evil);
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains("[b] FAILED: stage `b` changed its inputs in place"),
        "{}",
        r.stdout
    );
    assert!(
        !ws.read("pollard.lock").contains("  b:"),
        "b is not committed"
    );
    // Fixed, the rerun recomputes `a` (its damaged object was set aside) and `c` reads the
    // original bytes; the cache verifies clean.
    ws.write("pollard.yaml", &evil.replace("chmod u+w $POLLARD_IN_A/x; echo HELLO > $POLLARD_IN_A/x; touch -d @1 $POLLARD_IN_A/x; ", ""));
    assert_eq!(ws.ran(&[]), vec!["a", "b", "c"]);
    let r = ws.run(&["show", "c", "--path"]);
    let c = std::fs::read_to_string(std::path::Path::new(r.stdout.trim()).join("c")).unwrap();
    assert_eq!(c, "hello\n");
    let v = ws.run(&["verify"]);
    assert_eq!(v.code, 0, "{}", v.all());
}

#[test]
fn sigterm_is_reported_as_interrupted_not_failed() {
    use std::time::{Duration, Instant};
    let ws = Ws::new("pipeline: i\nstages:\n  a:\n    kind: command\n    cmd: touch started; sleep 30; echo a > $POLLARD_OUT/a\n");
    let child = ws
        .cmd(&["run", "--plain"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !ws.file("started").exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("[a] interrupted"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(
        stdout.contains("i: 0 ran, 0 up to date, 0 failed, 1 interrupted"),
        "{stdout}"
    );
}

/// A copy of the tiny Llama fixture in the workspace's `ckpt/`.
fn copy_fixture(ws: &Ws) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    std::fs::create_dir_all(ws.file("ckpt")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), ws.file(&format!("ckpt/{f}"))).unwrap();
    }
}

const LOAD: &str = "pipeline: l\nstages:\n  m: { kind: load, with: { path: ckpt } }\n";

#[test]
fn nan_weights_are_refused_at_load_naming_the_tensor() {
    let ws = Ws::new(LOAD);
    copy_fixture(&ws);
    let path = ws.file("ckpt/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let name = "model.norm.weight".to_string();
    let t = &tensors[&name];
    let mut v = t
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    v[1] = f32::NAN;
    let bad = candle_core::Tensor::from_vec(v, t.shape(), &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap();
    tensors.insert(name, bad);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout.contains("tensor `model.norm.weight`: 1 of its")
            && r.stdout.contains("not finite"),
        "{}",
        r.stdout
    );
    assert!(
        !ws.read("pollard.lock").contains("  m:"),
        "nothing committed"
    );
}

#[test]
fn a_garbage_tokenizer_is_refused_at_load() {
    let ws = Ws::new(LOAD);
    copy_fixture(&ws);
    ws.write("ckpt/tokenizer.json", "{\"model\": \"not a tokenizer\"}");
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("tokenizer.json"), "{}", r.stdout);
}
