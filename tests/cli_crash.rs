//! Crashes and concurrency through the binary: `kill -9` of `pollard run` in the middle of a
//! stage, then a rerun that reruns only that stage and what follows; two `pollard run` at once on
//! one workspace compute each stage once and both end correct; SIGTERM stops a run cleanly.

mod cli_support;
use cli_support::*;
use std::time::{Duration, Instant};

const SLOW: &str = r#"pipeline: k
stages:
  a:
    kind: command
    cmd: echo a >> log.txt; echo a > $POLLARD_OUT/a
  b:
    kind: command
    inputs: { a: a }
    cmd: echo b >> log.txt; if [ ! -e fast ]; then sleep 30; fi; echo b > $POLLARD_OUT/b
  c:
    kind: command
    inputs: { b: b }
    cmd: echo c >> log.txt; cat $POLLARD_IN_B/b > $POLLARD_OUT/c
"#;

fn wait_for(ws: &Ws, line: &str) {
    let t0 = Instant::now();
    while !ws.executions().iter().any(|l| l == line) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "stage {line} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_in_the_middle_of_a_stage_then_a_rerun_reruns_only_that_stage_and_what_follows() {
    let ws = Ws::new(SLOW);
    let mut child = ws
        .cmd(&["run"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&ws, "b");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Finished stages are in the lock's journal (folded into the lock file when a run ends).
    let journal = ws.read(".pollard/pollard.lock.journal");
    assert!(
        journal.contains("\"stage\":\"a\"") && !journal.contains("\"stage\":\"b\""),
        "finished stages are kept, nothing half-done: {journal}"
    );
    let s = ws.run(&["status"]);
    assert!(
        s.stdout.contains("a  up to date") && s.stdout.contains("b  stale"),
        "{}",
        s.stdout
    );
    ws.write("fast", "");
    assert_eq!(ws.ran(&[]), vec!["b", "c"]);
    assert_eq!(ws.executions(), vec!["a", "b", "b", "c"]);
    let v = ws.run(&["verify"]);
    assert_eq!(v.code, 0, "{}", v.all());
}

#[test]
fn sigterm_stops_the_running_stage_and_the_next_run_resumes() {
    let ws = Ws::new(SLOW);
    let child = ws
        .cmd(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ws, "b");
    let t0 = Instant::now();
    unsafe { libc_kill(child.id() as i32, 15) };
    let out = child.wait_with_output().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the 30 s stage was stopped"
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ws.write("fast", "");
    assert_eq!(ws.ran(&[]), vec!["b", "c"]);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

const WIDE: &str = r#"pipeline: w
stages:
  s1: { kind: command, cmd: "echo s1 >> log.txt; sleep 0.3; echo 1 > $POLLARD_OUT/x" }
  s2: { kind: command, cmd: "echo s2 >> log.txt; sleep 0.3; echo 2 > $POLLARD_OUT/x" }
  s3: { kind: command, inputs: { u: s1 }, cmd: "echo s3 >> log.txt; sleep 0.3; cat $POLLARD_IN_U/x > $POLLARD_OUT/x" }
  s4: { kind: command, inputs: { u: s2 }, cmd: "echo s4 >> log.txt; sleep 0.3; cat $POLLARD_IN_U/x > $POLLARD_OUT/x" }
  s5: { kind: command, inputs: { a: s3, b: s4 }, cmd: "echo s5 >> log.txt; cat $POLLARD_IN_A/x $POLLARD_IN_B/x > $POLLARD_OUT/x" }
"#;

#[test]
fn two_runs_at_once_compute_each_stage_once_and_both_end_correct() {
    let ws = Ws::new(WIDE);
    let one = ws
        .cmd(&["run", "--json"])
        .stderr(std::process::Stdio::null())
        .spawn_output();
    let two = ws
        .cmd(&["run", "--json"])
        .stderr(std::process::Stdio::null())
        .spawn_output();
    let (one, two) = (one.join().unwrap(), two.join().unwrap());
    assert_eq!(one.code, 0, "{}", one.all());
    assert_eq!(two.code, 0, "{}", two.all());
    let mut ex = ws.executions();
    ex.sort();
    assert_eq!(
        ex,
        vec!["s1", "s2", "s3", "s4", "s5"],
        "no stage computed twice"
    );
    let mut ran = outcomes(&one.stdout, "ran");
    ran.extend(outcomes(&two.stdout, "ran"));
    ran.sort();
    assert_eq!(ran, vec!["s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(ws.ran(&[]), Vec::<String>::new());
    let show = ws.run(&["show", "s5", "--path"]);
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(show.stdout.trim()).join("x")).unwrap(),
        "1\n2\n"
    );
    let lock = ws.read("pollard.lock");
    for id in ["s1", "s2", "s3", "s4", "s5"] {
        assert!(lock.contains(&format!("  {id}:\n")), "{lock}");
    }
}

trait SpawnOutput {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Run>;
}

impl SpawnOutput for std::process::Command {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Run> {
        let child = self.stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap().into())
    }
}
