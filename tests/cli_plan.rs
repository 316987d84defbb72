//! The plan as one value: `status`, `run --dry-run` (text and JSON) and `run` agree on what is
//! reused, what runs and what is blocked; plan-time refusals (host memory), paths resolved
//! against the manifest's folder, the lock journal of an interrupted run, non-reproducible
//! stages, and exit codes.

mod cli_support;
use cli_support::*;

const CHAIN: &str = "pipeline: p
stages:
  a:
    kind: command
    cmd: echo a > $POLLARD_OUT/x
  b:
    kind: command
    inputs: { up: a }
    cmd: cat $POLLARD_IN_UP/x > $POLLARD_OUT/x; echo b >> $POLLARD_OUT/x
  c:
    kind: command
    inputs: { up: b }
    cmd: cat $POLLARD_IN_UP/x > $POLLARD_OUT/x; echo ${params.n} >> $POLLARD_OUT/x
  d:
    kind: command
    cmd: echo d > $POLLARD_OUT/x
params:
  n: 1
";

/// The tiny Llama fixture's config and weights, copied to `dir` in the workspace.
fn copy_checkpoint(ws: &Ws, dir: &str) {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    std::fs::create_dir_all(ws.file(dir)).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), ws.file(&format!("{dir}/{f}"))).unwrap();
    }
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.all()))
}

/// (stage, action) of `run --dry-run --json`, and the stale stages of `status --json`.
fn plan_and_status(ws: &Ws) -> (Vec<(String, String)>, Vec<String>) {
    let plan = ws.run(&["run", "--dry-run", "--json"]);
    assert_eq!(plan.code, 0, "{}", plan.all());
    let plan: Vec<(String, String)> = json(&plan)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            for field in ["kind", "reasons", "resources", "key"] {
                assert!(r.get(field).is_some(), "{field} in {r}");
            }
            (
                r["stage"].as_str().unwrap().to_string(),
                r["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let status = ws.run(&["status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
    let stale = json(&status)
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["up_to_date"] == false)
        .map(|r| r["stage"].as_str().unwrap().to_string())
        .collect();
    (plan, stale)
}

fn run_set(plan: &[(String, String)]) -> Vec<String> {
    plan.iter()
        .filter(|(_, a)| a == "run")
        .map(|(s, _)| s.clone())
        .collect()
}

#[test]
fn the_dry_run_json_run_set_equals_the_status_stale_set() {
    let ws = Ws::new(CHAIN);
    let (plan, stale) = plan_and_status(&ws);
    assert_eq!(run_set(&plan), vec!["a", "b", "c", "d"]);
    assert_eq!(run_set(&plan), stale);
    assert_eq!(ws.run(&["run"]).code, 0);
    let (plan, stale) = plan_and_status(&ws);
    assert!(plan.iter().all(|(_, a)| a == "reuse"), "{plan:?}");
    assert!(stale.is_empty(), "{stale:?}");
    // A param change: c runs, the rest is reused; the run does exactly that.
    ws.write("pollard.yaml", &CHAIN.replace("n: 1", "n: 2"));
    let (plan, stale) = plan_and_status(&ws);
    assert_eq!(run_set(&plan), vec!["c"]);
    assert_eq!(run_set(&plan), stale);
    let r = ws.run(&["run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let ran: Vec<String> = json(&r)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[1]["outcome"] == "ran")
        .map(|s| s[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ran, vec!["c"]);
    // A forced stage runs and so does what is downstream of it, re-keyed after it ran.
    let r = ws.run(&["run", "--dry-run", "--json", "--force", "a"]);
    let actions: Vec<String> = json(&r)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r["stage"].as_str().unwrap(),
                r["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(actions, vec!["a=run", "b=run", "c=run", "d=reuse"]);
    let r = ws.run(&["run", "--force", "a", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let outcomes: Vec<String> = json(&r)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s[0].as_str().unwrap(),
                s[1]["outcome"].as_str().unwrap()
            )
        })
        .collect();
    // a's output comes out identical, so b and c are found in the cache (early cutoff).
    assert_eq!(outcomes, vec!["a=ran", "b=reused", "c=reused", "d=reused"]);
}

#[test]
fn a_dry_run_says_blocked_for_a_load_whose_checkpoint_is_missing_and_exits_non_zero() {
    let ws = Ws::new(
        "pipeline: p
stages:
  base:
    kind: load
    with: { path: no/such/checkpoint }
  after:
    kind: command
    inputs: { model: base }
    cmd: ls $POLLARD_IN_MODEL > $POLLARD_OUT/x
  other:
    kind: command
    cmd: echo > $POLLARD_OUT/x
",
    );
    let r = ws.run(&["run", "--dry-run", "--gpus", "none"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let line = |id: &str| {
        r.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("{id}: {}", r.stdout))
            .to_string()
    };
    assert!(
        line("base").contains("blocked deps `no/such/checkpoint` cannot be read"),
        "{}",
        r.stdout
    );
    assert!(
        line("after").contains("blocked input `model` cannot be built (stage `base` is blocked)"),
        "{}",
        r.stdout
    );
    assert!(line("other").contains("run "), "{}", r.stdout);
    let j = ws.run(&["run", "--dry-run", "--json", "--gpus", "none"]);
    assert_eq!(j.code, 2);
    assert_eq!(json(&j)[0]["action"], "blocked");
    // A run refuses before anything runs.
    let r = ws.run(&["run", "--gpus", "none"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("stage `base` cannot run: deps `no/such/checkpoint`"),
        "{}",
        r.stderr
    );
    assert!(!ws.file("pollard.lock").exists(), "nothing ran");
}

#[test]
fn a_stage_needing_more_host_memory_than_the_machine_has_is_refused_at_plan_time() {
    let ws = Ws::new(
        "pipeline: p
stages:
  big:
    kind: command
    resources: { host_memory: 80TiB }
    cmd: echo > $POLLARD_OUT/x
",
    );
    for args in [&["run", "--dry-run"][..], &["run"]] {
        let r: Run = ws
            .cmd(args)
            .env("POLLARD_HOST_MEMORY", "16GiB")
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 2, "{}", r.all());
        assert!(
            r.stderr.contains(
                "pollard.yaml:3:3: stage `big`: needs 80.0 TiB of host memory, but this machine has 16.0 GiB"
            ),
            "{}",
            r.stderr
        );
    }
    assert!(!ws.file("pollard.lock").exists(), "nothing ran");
}

#[test]
fn stages_that_together_exceed_host_memory_do_not_start_together() {
    let mut m = String::from("pipeline: p\nstages:\n");
    for id in ["m1", "m2"] {
        m.push_str(&format!("  {id}:\n    kind: command\n    resources: {{ host_memory: 6GiB }}\n    cmd: echo \"{id} $(date +%s.%N)\" >> starts.txt; sleep 0.5; echo \"{id} $(date +%s.%N)\" >> ends.txt; echo > $POLLARD_OUT/x\n"));
    }
    let ws = Ws::new(&m);
    let r: Run = ws
        .cmd(&["run", "--plain"])
        .env("POLLARD_HOST_MEMORY", "10GiB")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.all());
    let t = |text: String| -> Vec<f64> {
        text.lines()
            .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let (starts, ends) = (t(ws.read("starts.txt")), t(ws.read("ends.txt")));
    assert_eq!(starts.len(), 2);
    assert!(
        starts[1] >= ends[0],
        "the second started after the first ended: {starts:?} {ends:?}"
    );
    assert!(
        r.stdout.contains("[m2] waiting for resources"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_relative_load_path_is_resolved_against_the_manifest_folder_not_the_cwd() {
    let ws = Ws::new("");
    copy_checkpoint(&ws, "sub/ckpt");
    ws.write(
        "sub/pollard.yaml",
        "pipeline: p
stages:
  base:
    kind: load
    with: { path: ckpt, expect: { hidden: 12345 } }
",
    );
    // From the parent folder: the `expect` check reads sub/ckpt, not ./ckpt.
    let r = ws.run(&[
        "run",
        "--dry-run",
        "-f",
        "sub/pollard.yaml",
        "--gpus",
        "none",
    ]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("stage `base`") && r.stderr.contains("does not match"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_rebuilt_stage_whose_output_differs_from_the_lock_is_reported_non_reproducible() {
    let ws = Ws::new(
        "pipeline: p
stages:
  clock:
    kind: command
    cmd: date +%s%N > $POLLARD_OUT/x
",
    );
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stdout.contains("non-reproducible"), "{}", r.stdout);
    let r = ws.run(&["run", "--plain", "--force", "clock"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("[clock] warning: non-reproducible stage: rebuilt under the same key, its output is blake3:"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_killed_run_keeps_the_stages_it_finished_in_the_lock_journal() {
    let ws = Ws::new(
        "pipeline: p
stages:
  a:
    kind: command
    cmd: echo a > $POLLARD_OUT/x
  b:
    kind: command
    inputs: { up: a }
    cmd: echo b > $POLLARD_OUT/x
  die:
    kind: command
    inputs: { up: b }
    cmd: kill -9 $PPID; sleep 5
",
    );
    let r = ws.run(&["run", "--plain"]);
    assert_ne!(r.code, 0, "{}", r.all());
    let journal = ws.read(".pollard/pollard.lock.journal");
    assert!(
        journal.contains("\"stage\":\"a\"") && journal.contains("\"stage\":\"b\""),
        "{journal}"
    );
    // gc counts the journal's entries as roots (it folds the journal into the lock first).
    let g = ws.run(&["gc"]);
    assert_eq!(g.code, 0, "{}", g.all());
    assert!(ws.read("pollard.lock").contains("  a:\n"));
    // Readers see what finished: a and b are up to date, their artifacts kept.
    let s = ws.run(&["status"]);
    assert!(s.stdout.contains("  a    up to date"), "{}", s.stdout);
    // The next run that ends folds the journal into the lock file.
    ws.write(
        "pollard.yaml",
        &ws.read("pollard.yaml")
            .replace("kill -9 $PPID; sleep 5", "echo done > $POLLARD_OUT/x"),
    );
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!ws.file(".pollard/pollard.lock.journal").exists());
    let lock = ws.read("pollard.lock");
    for id in ["a:", "b:", "die:"] {
        assert!(lock.contains(id), "{lock}");
    }
}

#[test]
fn a_lock_file_that_cannot_be_read_is_an_io_failure_exit_1_not_a_usage_error() {
    let ws = Ws::new(CHAIN);
    std::fs::create_dir_all(ws.file("pollard.lock")).unwrap();
    let r = ws.run(&["status"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("cannot read lock file"), "{}", r.stderr);
    // A malformed one is the user's to fix: exit 2.
    std::fs::remove_dir(ws.file("pollard.lock")).unwrap();
    ws.write("pollard.lock", "version: 1\npipeline: p\nstages: 3\n");
    assert_eq!(ws.run(&["status"]).code, 2);
}

#[test]
fn a_built_in_stage_records_its_measured_peak_memory_beside_its_estimate() {
    let ws = Ws::new(
        "pipeline: p
stages:
  base:
    kind: load
    with: { path: ckpt }
",
    );
    copy_checkpoint(&ws, "ckpt");
    let r = ws.run(&["run", "--plain", "--gpus", "none"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let s = ws.run(&["show", "base", "--json"]);
    assert_eq!(s.code, 0, "{}", s.all());
    let v = json(&s);
    let estimated = v["estimated_host_bytes"].as_u64().expect("an estimate");
    let peak = v["peak_host_bytes"].as_u64().expect("a measured peak");
    assert!(estimated > 0, "{v}");
    // The stage ran in a process of its own: its peak is a few MiB, not the driver's.
    assert!(peak > 1 << 20 && peak < 1 << 30, "{v}");
    assert_eq!(v["estimated_gpu_bytes"], 0);
    assert!(
        v["peak_gpu_bytes"].is_null(),
        "no GPU query in this build: {v}"
    );
}
