//! `pollard params diff` and `pollard metrics diff` through the binary: the working lock file
//! against the one committed at `HEAD`, two lock files, and a name that is neither.

mod cli_support;
use cli_support::*;

const MANIFEST: &str = r#"pipeline: d
params: { word: alpha, n: 3 }
stages:
  a:
    kind: command
    cmd: 'echo "${params.word}" > $POLLARD_OUT/x; echo "{\"score\": ${params.n}, \"tasks\": {\"agree\": {\"acc\": 0.5}}}" > $POLLARD_OUT/metrics.json'
"#;

fn git(ws: &Ws, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .current_dir(ws.path())
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_and_params_diff_the_working_lock_against_head() {
    let ws = Ws::new(MANIFEST);
    assert_eq!(ws.run(&["run"]).code, 0);
    git(&ws, &["init", "-q"]);
    git(&ws, &["add", "pollard.yaml", "pollard.lock"]);
    git(&ws, &["commit", "-qm", "first"]);
    ws.write("pollard.yaml", &MANIFEST.replace("n: 3", "n: 4"));
    assert_eq!(ws.run(&["run"]).code, 0);

    let m = ws.run(&["metrics", "diff"]);
    assert_eq!(m.code, 0, "{}", m.all());
    insta::assert_snapshot!("metrics_diff_head", m.stdout);

    // Nested numeric fields of metrics.json are metrics too; unchanged ones show with --all.
    let all = ws.run(&["metrics", "diff", "--all", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&all.stdout).unwrap();
    let fields: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["score", "tasks.agree.acc"]);
    assert_eq!(v["rows"][0]["change"], 1.0);

    let p = ws.run(&["params", "diff", "HEAD", "pollard.lock", "--json"]);
    assert_eq!(p.code, 0, "{}", p.all());
    let v: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
    assert_eq!(v["rows"][0]["stage"], "a");
    assert_eq!(v["rows"][0]["field"], "cmd");

    // The same record on both sides: nothing changed.
    let same = ws.run(&["metrics", "diff", "pollard.lock", "pollard.lock"]);
    assert_eq!(
        same.stdout,
        "no metrics changed between pollard.lock and pollard.lock\n"
    );
}

#[test]
fn a_diff_side_that_is_neither_a_file_nor_a_revision_is_a_usage_error() {
    let ws = Ws::new(MANIFEST);
    git(&ws, &["init", "-q"]);
    let out = ws.run(&["metrics", "diff", "no-such-rev"]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains(
            "`no-such-rev` is neither a lock file, a run id (`pollard runs`) nor a git revision"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let ws = Ws::new(MANIFEST);
        let out = ws.run(&["completions", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.all());
        assert!(
            out.stdout.contains("pollard") && out.stdout.contains("metrics"),
            "{shell}"
        );
    }
}

#[test]
fn dash_n_is_a_dry_run() {
    let ws = Ws::new(MANIFEST);
    let out = ws.run(&["run", "-n"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.starts_with("dry run of "), "{}", out.stdout);
    assert!(!ws.file("pollard.lock").exists());
}

#[test]
fn overrides_run_the_manifest_with_other_values_and_keep_the_lock_as_written() {
    let ws = Ws::new(MANIFEST);
    assert_eq!(ws.run(&["run"]).code, 0);
    let written = ws.read("pollard.lock");

    let out = ws.run(&["run", "-S", "params.word=beta", "-S", "params.n=5"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stderr
            .contains("with params.word=beta params.n=5: recorded in"),
        "{}",
        out.stderr
    );
    assert_eq!(
        ws.read("pollard.lock"),
        written,
        "the manifest's own lock is untouched"
    );
    let records: Vec<_> = std::fs::read_dir(ws.file(".pollard/experiments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lock"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");

    // The experiment's record compares with the manifest's own.
    let rec = records[0].to_string_lossy().to_string();
    let diff = ws.run(&["metrics", "diff", "pollard.lock", &rec, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&diff.stdout).unwrap();
    assert_eq!(v["rows"][0]["old"], 3);
    assert_eq!(v["rows"][0]["new"], 5);

    // The same overrides again: everything is up to date in the experiment's record.
    let again = ws.run(&[
        "status",
        "-S",
        "params.n=5",
        "-S",
        "params.word=beta",
        "--json",
    ]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        !again.stdout.contains("\"up_to_date\": false"),
        "{}",
        again.stdout
    );
    // Without them the manifest as written is up to date too: nothing was overwritten.
    let plain = ws.run(&["status", "--json"]);
    assert!(
        !plain.stdout.contains("\"up_to_date\": false"),
        "{}",
        plain.stdout
    );
}

#[test]
fn an_override_of_a_path_that_does_not_exist_is_a_usage_error_with_did_you_mean() {
    let ws = Ws::new(MANIFEST);
    let out = ws.run(&["run", "-S", "params.wrod=beta"]);
    assert_eq!(out.code, 2, "{}", out.all());
    insta::assert_snapshot!("override_unknown_path", out.stderr);
    assert!(!ws.file("pollard.lock").exists(), "nothing ran");
}
