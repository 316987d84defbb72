//! Manifest handling through the binary: every error at once with file:line:col (exit 2),
//! `dag` / `dag --dot` of expanded groups, `run --dry-run`, `init` and the embedded recipe.

mod cli_support;
use cli_support::*;

const BAD: &str = r#"pipeline: bad
params:
  seed: 3
stages:
  a:
    kind: command
    cmd: echo ${params.sed} > $POLLARD_OUT/x
    dep: [x]
  b:
    kind: comand
    inputs: { x: a }
  c:
    kind: command
    inputs: { up: nope }
    cmd: "true"
    cache: maybe
    resources: { gpus: two }
  grp:
    matrix: { m: [x, y] }
    stages:
      s: { kind: command, cmd: "echo ${matrix.m} ${round.name}" }
"#;

#[test]
fn every_manifest_error_at_once_with_positions() {
    let ws = Ws::new(BAD);
    for args in [&["dag"][..], &["status"], &["run"], &["run", "--dry-run"]] {
        let r = ws.run(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(r.stdout.is_empty() || args[0] == "run", "{}", r.stdout);
    }
    let r = ws.run(&["dag"]);
    let mut settings = filters(&ws);
    // The kind list grows with the stage kinds the binary links; the message shape is what matters.
    settings.add_filter(r"known kinds: [a-z_, ]+\)", "known kinds: [KINDS])");
    settings.bind(|| insta::assert_snapshot!("manifest_errors", r.stderr));
}

#[test]
fn a_cycle_prints_its_path() {
    let ws = Ws::new("pipeline: c\nstages:\n  x: { kind: command, cmd: a, inputs: { i: z } }\n  y: { kind: command, cmd: a, inputs: { i: x } }\n  z: { kind: command, cmd: a, inputs: { i: y } }\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr, "error: pollard.yaml:3:3: stage `x`: the inputs form a cycle: x -> y -> z -> x\n1 error in the manifest\n");
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let ws = Ws::new("pipeline: s\nstages:\n  a: [\n");
    let r = ws.run(&["status"]);
    assert_eq!(r.code, 2);
    // The position is the bracket left open, not the end of the file where it was noticed.
    assert_eq!(
        r.stderr,
        "error: pollard.yaml:3:6: YAML syntax error: unclosed bracket '['\n1 error in the manifest\n"
    );
    let r = ws.run(&["status", "-f", "missing.yaml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("cannot read manifest missing.yaml"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_key_written_twice_is_refused_where_it_is_written_again() {
    let ws = Ws::new("pipeline: s\nstages:\n  a: { kind: command, cmd: \"true\" }\n  a: { kind: command, cmd: \"false\" }\n");
    let r = ws.run(&["status"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .starts_with("error: pollard.yaml:4:3: YAML syntax error: duplicate mapping key `a` is not allowed here\n"),
        "{}",
        r.stderr
    );
}

const GROUPS: &str = r#"pipeline: groups
params:
  target: { hidden: 192 }
stages:
  teacher: { kind: command, cmd: "echo t > $POLLARD_OUT/m" }
  shrink:
    repeat:
      from: teacher
      rounds:
        - { name: half, target: "${params.target}" }
        - { name: quarter, target: { hidden: 128 } }
      result: distill
    stages:
      prune: { kind: command, inputs: { model: "${prev}" }, cmd: "echo ${round.target.hidden} > $POLLARD_OUT/m" }
      distill: { kind: command, inputs: { student: prune, teacher: "${prev}" }, cmd: "cat $POLLARD_IN_STUDENT/m > $POLLARD_OUT/m" }
  arms:
    matrix: { method: [activation, magnitude] }
    name: "${matrix.method}"
    stages:
      prune: { kind: command, inputs: { model: teacher }, cmd: "echo ${matrix.method} > $POLLARD_OUT/m" }
"#;

#[test]
fn dag_shows_expanded_groups() {
    let ws = Ws::new(GROUPS);
    let r = ws.run(&["dag"]);
    assert_eq!(r.code, 0, "{}", r.all());
    insta::assert_snapshot!("dag_groups", r.stdout);
    let dot = ws.run(&["dag", "--dot"]);
    insta::assert_snapshot!("dag_groups_dot", dot.stdout);
    let json = ws.run(&["dag", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["stages"][3]["id"], "shrink.quarter.prune");
    assert_eq!(v["stages"][3]["inputs"]["model"], "shrink.half.distill");
}

#[test]
fn dry_run_says_what_would_run_and_runs_nothing() {
    let ws = Ws::new(GROUPS);
    let r = ws.run(&["run", "--dry-run", "--gpus", "none"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let settings = filters(&ws);
    settings.bind(|| insta::assert_snapshot!("dry_run_fresh", r.stdout));
    assert!(!ws.file("pollard.lock").exists());
    ws.ran(&["shrink.half.distill"]);
    let r = ws.run(&["run", "--dry-run", "--gpus", "80GiB"]);
    settings.bind(|| insta::assert_snapshot!("dry_run_partial", r.stdout));
}

#[test]
fn the_embedded_recipe_is_used_without_a_manifest_and_init_writes_recipes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| -> Run {
        std::process::Command::new(bin())
            .args(args)
            .current_dir(dir.path())
            .env_remove("POLLARD_CACHE_DIR")
            .output()
            .unwrap()
            .into()
    };
    // The default (tiny) recipe trains models; planning it shows it is the one picked.
    let r = run(&["run", "--dry-run", "--gpus", "none"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains("no pollard.yaml here: running the built-in `tiny` recipe as ./tiny.yaml"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.starts_with("dry run of tiny-minitron (tiny.yaml)"),
        "{}",
        r.stdout
    );
    // The command-only demo runs for real once written out.
    let r = run(&["init", "--recipe", "demo"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let r = run(&["run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("demo: 3 ran, 0 up to date"),
        "{}",
        r.stdout
    );
    assert!(dir.path().join("pollard.lock").exists());
    assert!(dir.path().join(".pollard/cache").is_dir());
    let r = run(&["show", "report"]);
    assert!(
        r.stdout.contains("The corpus has 1200 words."),
        "{}",
        r.stdout
    );
    let r = run(&["init"]);
    assert_eq!(r.code, 2, "refuses to overwrite");
    let r = run(&["init", "--recipe", "nope"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no embedded recipe `nope`"),
        "{}",
        r.stderr
    );
}

#[test]
fn gc_keeps_what_the_lock_references_and_verify_finds_corruption() {
    let ws = Ws::new("pipeline: g\nparams: { v: 1 }\nstages:\n  a: { kind: command, cmd: \"echo ${params.v} > $POLLARD_OUT/x\" }\n");
    ws.ran(&[]);
    ws.write("pollard.yaml", "pipeline: g\nparams: { v: 2 }\nstages:\n  a: { kind: command, cmd: \"echo ${params.v} > $POLLARD_OUT/x\" }\n");
    ws.ran(&[]);
    let r = ws.run(&["gc", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["records_removed"], 1, "{v}");
    assert_eq!(
        ws.ran(&[]),
        Vec::<String>::new(),
        "what the lock pins survives gc"
    );
    let r = ws.run(&["verify"]);
    assert_eq!(r.code, 0, "{}", r.all());
    // Corrupt the stored object behind the artifact.
    let objects = ws.file(".pollard/cache/v1/objects");
    let mut files = Vec::new();
    let mut stack = vec![objects];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path())
            } else {
                files.push(e.path())
            }
        }
    }
    assert!(!files.is_empty());
    for f in &files {
        let mut perm = std::fs::metadata(f).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(f, perm).unwrap();
        std::fs::write(f, "garbage\n").unwrap();
    }
    let r = ws.run(&["verify"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("corrupt"), "{}", r.stdout);
}

#[test]
fn a_built_in_stage_asking_for_two_gpus_is_refused_and_a_command_keeps_them() {
    let ws = Ws::new(
        "pipeline: g\nstages:\n  data:\n    kind: dataset\n    with: { text: { synthetic: { words: 1K, seed: 1 } }, tokenizer: { bpe: 300 } }\n    resources: { gpus: 2 }\n  cmd:\n    kind: command\n    cmd: \"true\"\n    resources: { gpus: 2 }\n",
    );
    let r = ws.run(&["dag"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(
        r.stderr,
        "error: pollard.yaml:6:24: stage `data`: resources.gpus: 2 asked, but a `dataset` stage uses at most 1: built-in kinds run on one device (multi-GPU training does not exist yet); use gpus: 1\n1 error in the manifest\n"
    );
}
