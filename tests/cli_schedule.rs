//! Scheduling through the binary: GPU grants are disjoint and never oversubscribed, a stage
//! waits while its request does not fit, impossible requests are refused before anything runs,
//! and the failure policy (stop, or --keep-going).

mod cli_support;
use cli_support::*;

fn stamp(id: &str) -> String {
    // Each stage records its devices and when it started and ended.
    format!("echo \"{id} $CUDA_VISIBLE_DEVICES $(date +%s.%N)\" >> starts.txt; sleep 0.6; echo \"{id} $(date +%s.%N)\" >> ends.txt; echo {id} > $POLLARD_OUT/x")
}

fn gpu_manifest() -> String {
    let mut m = String::from("pipeline: g\nstages:\n");
    for id in ["g1", "g2", "g3"] {
        m.push_str(&format!("  {id}:\n    kind: command\n    resources: {{ gpus: 1, gpu_memory: 40GiB }}\n    cmd: {}\n", stamp(id)));
    }
    m
}

fn times(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            let (devs, t) = if parts.len() == 3 {
                (parts[1], parts[2])
            } else {
                ("", parts[1])
            };
            (parts[0].to_string(), devs.to_string(), t.parse().unwrap())
        })
        .collect()
}

#[test]
fn two_gpus_run_two_stages_on_disjoint_devices_and_a_third_waits() {
    let ws = Ws::new(&gpu_manifest());
    let r = ws.run(&["run", "--gpus", "80GiB,80GiB"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let starts = times(&ws.read("starts.txt"));
    let ends = times(&ws.read("ends.txt"));
    assert_eq!(starts.len(), 3);
    let end_of = |id: &str| ends.iter().find(|e| e.0 == id).unwrap().2;
    // The first two start together on different devices.
    let (a, b, c) = (&starts[0], &starts[1], &starts[2]);
    let mut devices = vec![a.1.clone(), b.1.clone()];
    devices.sort();
    assert_eq!(devices, vec!["0", "1"], "{starts:?}");
    assert!(
        b.2 < end_of(&a.0),
        "the first two overlap: {starts:?} {ends:?}"
    );
    // The third starts only after one of them ended, on the device that was freed.
    let first_end = end_of(&a.0).min(end_of(&b.0));
    assert!(c.2 >= first_end, "the third waited: {starts:?} {ends:?}");
    assert!(r.stdout.contains("waiting for resources"), "{}", r.stdout);
    let lock = ws.read("pollard.lock");
    assert!(
        lock.contains("gpu:0") && lock.contains("gpu:1"),
        "the lock records devices: {lock}"
    );
}

#[test]
fn the_gpus_environment_variable_sets_the_inventory() {
    let ws = Ws::new(&gpu_manifest());
    let r: Run = ws
        .cmd(&["run", "--dry-run"])
        .env("POLLARD_GPUS", "24GiB")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("needs 1 GPU with 40.0 GiB, largest has 24.0 GiB"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_impossible_request_is_refused_before_anything_runs() {
    let ws = Ws::new("pipeline: big\nstages:\n  small:\n    kind: command\n    cmd: echo ran >> log.txt\n  huge:\n    kind: command\n    resources: { gpus: 2, gpu_memory: 96GiB }\n    cmd: echo ran >> log.txt\n");
    let r = ws.run(&["run", "--gpus", "80GiB,80GiB"]);
    assert_eq!(r.code, 2);
    let settings = filters(&ws);
    settings.bind(|| insta::assert_snapshot!("impossible_request", r.stderr));
    assert!(ws.executions().is_empty(), "nothing ran");
    let r = ws.run(&["run", "--gpus", "none"]);
    assert!(
        r.stderr
            .contains("needs 2 GPUs with 96.0 GiB, but there are no GPUs"),
        "{}",
        r.stderr
    );
    let r = ws.run(&["run", "--gpus", "80GiB,lots"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("device 1"), "{}", r.stderr);
}

const FAILING: &str = r#"pipeline: f
stages:
  bad:
    kind: command
    cmd: echo bad >> log.txt; exit 3
  after_bad:
    kind: command
    inputs: { b: bad }
    cmd: echo after_bad >> log.txt
  slow:
    kind: command
    cmd: sleep 0.5; echo slow >> log.txt
  independent:
    kind: command
    inputs: { s: slow }
    cmd: echo independent >> log.txt
"#;

#[test]
fn a_failure_stops_new_stages_and_names_those_that_will_not_run() {
    let ws = Ws::new(FAILING);
    let r = ws.run(&["run", "--jobs", "2"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .contains("[bad] FAILED: command exited with status 3"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("[after_bad] skipped: needs `bad`, which failed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("[independent] skipped: not started: stage `bad` failed"),
        "{}",
        r.stdout
    );
    let mut ex = ws.executions();
    ex.sort();
    assert_eq!(
        ex,
        vec!["bad", "slow"],
        "the running stage finishes, nothing new starts"
    );
}

#[test]
fn keep_going_runs_everything_that_does_not_depend_on_the_failure() {
    let ws = Ws::new(FAILING);
    let r = ws.run(&["run", "--keep-going"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let mut ex = ws.executions();
    ex.sort();
    assert_eq!(ex, vec!["bad", "independent", "slow"]);
    assert!(
        r.stdout
            .contains("[after_bad] skipped: needs `bad`, which failed"),
        "{}",
        r.stdout
    );
}

#[test]
fn jobs_one_runs_stages_one_at_a_time() {
    let mut m = String::from("pipeline: j\nstages:\n");
    for id in ["p1", "p2", "p3"] {
        m.push_str(&format!(
            "  {id}:\n    kind: command\n    cmd: {}\n",
            stamp(id)
        ));
    }
    let ws = Ws::new(&m);
    let r = ws.run(&["run", "--jobs", "1"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let starts = times(&ws.read("starts.txt"));
    let ends = times(&ws.read("ends.txt"));
    for w in 0..2 {
        let end = ends.iter().find(|e| e.0 == starts[w].0).unwrap().2;
        assert!(
            starts[w + 1].2 >= end,
            "no overlap with --jobs 1: {starts:?} {ends:?}"
        );
    }
}
