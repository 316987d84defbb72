//! The no-op memo through the binary: a run of an unchanged pipeline answers from
//! `.pollard/<lock>.noop` with the same output and run record as a full plan, and every change
//! a full plan would see (a dep, the manifest, a cached object, a flag) plans in full instead.

mod cli_support;
use cli_support::*;

use std::time::Duration;

const MANIFEST: &str = r#"pipeline: t
stages:
  a:
    kind: command
    deps: [input.txt, data]
    cmd: echo a >> log.txt; cat input.txt data/*.txt > $POLLARD_OUT/a.txt
  b:
    kind: command
    inputs: { a: a }
    cmd: echo b >> log.txt; wc -l < $POLLARD_IN_A/a.txt > $POLLARD_OUT/b.txt
"#;

const MEMO: &str = ".pollard/pollard.lock.noop";
const VOUCHED: &str = "up to date by the no-op memo";

/// Files are vouched for by their stat only once they are older than the racy window.
fn settle() {
    std::thread::sleep(Duration::from_millis(2_200));
}

fn ws() -> Ws {
    let ws = Ws::new(MANIFEST);
    ws.write("input.txt", "hello\n");
    ws.write("data/one.txt", "one\n");
    ws
}

fn no_op(ws: &Ws) -> Run {
    let r = ws.run(&["run", "--plain", "--verbose"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .ends_with("t: 0 ran, 2 up to date, 0 failed, 0 not run\n"),
        "{}",
        r.stdout
    );
    r
}

fn run_json(ws: &Ws, dir: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(ws.file(&format!(".pollard/runs/{dir}/run.json"))).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for k in ["id", "started", "seconds"] {
        v.as_object_mut().unwrap().remove(k);
    }
    for s in v["stages"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("start");
    }
    v
}

fn runs(ws: &Ws) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(ws.file(".pollard/runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn an_unchanged_pipeline_answers_from_the_memo_with_the_same_output_and_record() {
    let ws = ws();
    assert_eq!(ws.run(&["run", "--plain"]).code, 0);
    settle();
    // Planned in full: everything reused, so the memo is recorded.
    let full = no_op(&ws);
    assert!(!full.stderr.contains(VOUCHED), "{}", full.stderr);
    assert!(ws.file(MEMO).exists());
    let lock = ws.read("pollard.lock");
    let memo = no_op(&ws);
    assert!(memo.stderr.contains(VOUCHED), "{}", memo.stderr);
    assert_eq!(memo.stdout, full.stdout);
    assert_eq!(ws.read("pollard.lock"), lock);
    let ids = runs(&ws);
    let (a, b) = (&ids[ids.len() - 2], &ids[ids.len() - 1]);
    assert_eq!(run_json(&ws, a), run_json(&ws, b));
    assert_eq!(
        ws.read(&format!(".pollard/runs/{a}/trace.tsv")),
        ws.read(&format!(".pollard/runs/{b}/trace.tsv"))
    );
    assert_eq!(ws.executions(), ["a", "b"]);
}

#[test]
fn an_edited_dep_a_new_file_in_a_dep_folder_and_an_edited_manifest_each_plan_in_full() {
    let ws = ws();
    assert_eq!(ws.run(&["run", "--plain"]).code, 0);
    settle();
    no_op(&ws);
    assert!(ws.file(MEMO).exists());
    // Same size, content changed and the mtime put back: the ctime still moves, `a` reruns.
    let mtime = std::fs::metadata(ws.file("input.txt"))
        .unwrap()
        .modified()
        .unwrap();
    ws.write("input.txt", "HELLO\n");
    let f = std::fs::File::options()
        .write(true)
        .open(ws.file("input.txt"))
        .unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let r = ws.run(&["run", "--plain", "--verbose"]);
    assert!(!r.stderr.contains(VOUCHED), "{}", r.stderr);
    // `b` reruns too: its input is a new artifact (its own output is the same).
    assert_eq!(ws.executions(), ["a", "b", "a", "b"]);
    settle();
    no_op(&ws);
    assert!(no_op(&ws).stderr.contains(VOUCHED));
    ws.write("data/two.txt", "two\n");
    let r = ws.run(&["run", "--plain", "--verbose"]);
    assert!(!r.stderr.contains(VOUCHED), "{}", r.stderr);
    assert_eq!(ws.executions(), ["a", "b", "a", "b", "a", "b"]);
    settle();
    no_op(&ws);
    assert!(no_op(&ws).stderr.contains(VOUCHED));
    ws.write("pollard.yaml", &MANIFEST.replace("echo b >>", "echo b  >>"));
    let r = ws.run(&["run", "--plain", "--verbose"]);
    assert!(!r.stderr.contains(VOUCHED), "{}", r.stderr);
    assert_eq!(ws.executions(), ["a", "b", "a", "b", "a", "b", "b"]);
}

#[test]
fn a_removed_cache_object_or_a_flag_that_changes_the_plan_plans_in_full() {
    let ws = ws();
    assert_eq!(ws.run(&["run", "--plain"]).code, 0);
    settle();
    no_op(&ws);
    assert!(no_op(&ws).stderr.contains(VOUCHED));
    // Flags that change what is planned never take the memo.
    let r = ws.run(&["run", "--plain", "--verbose", "--force", "b"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains(VOUCHED), "{}", r.stderr);
    assert_eq!(ws.executions(), ["a", "b", "b"]);
    settle();
    no_op(&ws);
    assert!(no_op(&ws).stderr.contains(VOUCHED));
    // Every object of the cache removed: the memo's stat of them fails, the plan recomputes.
    let objects = ws.file(".pollard/cache/v1/objects");
    std::fs::remove_dir_all(&objects).unwrap();
    let r = ws.run(&["run", "--plain", "--verbose"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains(VOUCHED), "{}", r.stderr);
    assert_eq!(ws.executions(), ["a", "b", "b", "a", "b"]);
}
