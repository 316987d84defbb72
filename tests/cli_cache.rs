//! Cache behaviour through the binary: hits and misses, params changes, deps touch vs edit,
//! early cutoff, --force, `cache: false`, status reasons, and the lock file.

mod cli_support;
use cli_support::*;

const MANIFEST: &str = r#"pipeline: t
params:
  n: 3
  m: x
stages:
  a:
    kind: command
    deps: [input.txt]
    cmd: echo a >> log.txt; cat input.txt > $POLLARD_OUT/a.txt; echo ${params.n} >> $POLLARD_OUT/a.txt
  b:
    kind: command
    inputs: { a: a }
    cmd: echo b >> log.txt; wc -l < $POLLARD_IN_A/a.txt > $POLLARD_OUT/b.txt
  c:
    kind: command
    inputs: { b: b }
    cmd: echo c >> log.txt; cat $POLLARD_IN_B/b.txt > $POLLARD_OUT/c.txt; echo ${params.m} >> $POLLARD_OUT/c.txt
  side:
    kind: command
    cmd: echo side >> log.txt; echo side > $POLLARD_OUT/s.txt
"#;

fn ws() -> Ws {
    let ws = Ws::new(MANIFEST);
    ws.write("input.txt", "hello\n");
    ws
}

#[test]
fn first_run_runs_everything_and_a_second_run_nothing() {
    let ws = ws();
    assert_eq!(ws.ran(&[]), vec!["a", "b", "c", "side"]);
    assert_eq!(ws.ran(&[]), Vec::<String>::new());
    let mut ex = ws.executions();
    ex.sort();
    assert_eq!(ex, vec!["a", "b", "c", "side"], "each stage executed once");
    let r = ws.run(&["status"]);
    assert!(
        r.stdout.contains("4 stages, 4 up to date, 0 stale"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_params_change_reruns_that_stage_and_what_follows_with_early_cutoff() {
    let ws = ws();
    ws.ran(&[]);
    ws.write("pollard.yaml", &MANIFEST.replace("n: 3", "n: 4"));
    let st = ws.run(&["status"]);
    assert!(st.stdout.contains("param `cmd` changed"), "{}", st.stdout);
    assert!(
        st.stdout
            .contains("input `a` will be rebuilt (stage `a` is stale)"),
        "{}",
        st.stdout
    );
    // a's output changes; b reruns but writes the same line count, so c is not rerun.
    assert_eq!(ws.ran(&[]), vec!["a", "b"]);
    ws.write(
        "pollard.yaml",
        &MANIFEST.replace("n: 3", "n: 4").replace("m: x", "m: y"),
    );
    assert_eq!(ws.ran(&[]), vec!["c"]);
}

#[test]
fn touching_a_deps_file_reruns_nothing_but_editing_it_does() {
    let ws = ws();
    ws.ran(&[]);
    let t = std::process::Command::new("touch")
        .args(["-d", "2001-01-01", "input.txt"])
        .current_dir(ws.path())
        .status()
        .unwrap();
    assert!(t.success());
    assert_eq!(ws.ran(&[]), Vec::<String>::new());
    ws.write("input.txt", "changed\n");
    let st = ws.run(&["status"]);
    assert!(
        st.stdout.contains("deps file `input.txt` changed"),
        "{}",
        st.stdout
    );
    assert_eq!(ws.ran(&[]), vec!["a", "b"]);
}

#[test]
fn force_reruns_a_stage_and_identical_output_stops_there() {
    let ws = ws();
    ws.ran(&[]);
    assert_eq!(ws.ran(&["--force", "a"]), vec!["a"]);
    assert_eq!(ws.ran(&["--force-all"]), vec!["a", "b", "c", "side"]);
    assert_eq!(ws.executions().len(), 9);
}

#[test]
fn targets_limit_the_run_to_what_they_need() {
    let ws = ws();
    assert_eq!(ws.ran(&["b"]), vec!["a", "b"]);
    assert_eq!(ws.ran(&[]), vec!["c", "side"]);
    let r = ws.run(&["run", "nope"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no stage `nope`"), "{}", r.stderr);
}

#[test]
fn cache_false_always_reruns() {
    let ws = Ws::new("pipeline: u\nstages:\n  clock:\n    kind: command\n    cache: false\n    cmd: echo tick >> log.txt; echo same > $POLLARD_OUT/x\n  after:\n    kind: command\n    inputs: { c: clock }\n    cmd: echo after >> log.txt; cp $POLLARD_IN_C/x $POLLARD_OUT/y\n");
    assert_eq!(ws.ran(&[]), vec!["clock", "after"]);
    let st = ws.run(&["status"]);
    assert!(st.stdout.contains("`cache: false`"), "{}", st.stdout);
    assert_eq!(ws.ran(&[]), vec!["clock"]);
}

#[test]
fn status_on_a_fresh_clone_says_the_lock_pins_outputs() {
    let ws = ws();
    ws.ran(&[]);
    let clone = Ws::new(MANIFEST);
    clone.write("input.txt", "hello\n");
    std::fs::copy(ws.file("pollard.lock"), clone.file("pollard.lock")).unwrap();
    let st = clone.run(&["status"]);
    assert_eq!(st.code, 0);
    let settings = filters(&clone);
    settings.bind(|| insta::assert_snapshot!("status_fresh_clone", st.stdout));
    // Running reproduces exactly the pinned outputs.
    let before = ws.read("pollard.lock");
    clone.ran(&[]);
    assert_eq!(clone.read("pollard.lock"), before);
}

#[test]
fn the_lock_file_keeps_what_finished_before_a_failure() {
    let ws = Ws::new("pipeline: f\nstages:\n  ok:\n    kind: command\n    cmd: echo fine > $POLLARD_OUT/x\n  bad:\n    kind: command\n    inputs: { ok: ok }\n    cmd: echo about to fail; exit 7\n");
    let r = ws.run(&["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("[bad] about to fail"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("[bad] FAILED: command exited with status 7 (output in "),
        "{}",
        r.stdout
    );
    assert_eq!(
        ws.read(".pollard/logs/bad.log"),
        "about to fail\n",
        "a failed stage's output is kept"
    );
    let lock = ws.read("pollard.lock");
    assert!(lock.contains("  ok:\n"), "{lock}");
    assert!(!lock.contains("  bad:\n"), "{lock}");
}

#[test]
fn status_reasons_name_the_edited_value_inputs_and_files() {
    let ws = ws();
    ws.ran(&[]);
    ws.write("pollard.yaml", &MANIFEST.replace("m: x", "m: z"));
    ws.write("input.txt", "edited\n");
    let st = ws.run(&["status"]);
    let settings = filters(&ws);
    settings.bind(|| insta::assert_snapshot!("status_reasons", st.stdout));
    let json = ws.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["stage"], "a");
    assert_eq!(v[0]["reasons"][0]["reason"], "dep");
    assert_eq!(v[3]["up_to_date"], true);
    // The edited manifest value comes first, in the user's words, then the expanded field.
    let c = &v[2]["reasons"];
    assert_eq!(c[1]["reason"], "value", "{c}");
    assert_eq!(c[1]["name"], "params.m");
    assert_eq!(c[1]["old"], "x");
    assert_eq!(c[1]["new"], "z");
    assert_eq!(c[1]["used_in"], serde_json::json!(["cmd"]));
    assert_eq!(c[2]["reason"], "param", "{c}");
}

#[test]
fn show_prints_the_artifact() {
    let ws = Ws::new("pipeline: s\nstages:\n  r:\n    kind: command\n    cmd: |\n      echo '{\"loss\": 1.5}' > $POLLARD_OUT/metrics.json; echo '# Title' > $POLLARD_OUT/report.md\n");
    ws.ran(&[]);
    let r = ws.run(&["show", "r"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let settings = filters(&ws);
    settings.bind(|| insta::assert_snapshot!("show", r.stdout));
    let p = ws.run(&["show", "r", "--path"]);
    let dir = std::path::PathBuf::from(p.stdout.trim());
    assert_eq!(
        std::fs::read_to_string(dir.join("report.md")).unwrap(),
        "# Title\n"
    );
    assert!(
        ws.read("pollard.lock").contains("loss: 1.5"),
        "headline metrics go to the lock"
    );
}
