//! `--executor slurm` through the binary, against a real Slurm (scripts/slurm-local.sh starts a
//! one-node cluster with 4 fake GPUs): the same lock as a local run, GPU stages placed by Slurm
//! on disjoint devices, a failed job's exit code and stderr, a no-op rerun submitting nothing,
//! an interrupt cancelling the jobs, a killed driver's job re-attached, and requests no node can
//! meet refused before submitting. Without a cluster these tests print a notice and pass, except
//! under CI=true, where a missing cluster is a failure.

mod cli_support;
use cli_support::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a Slurm cluster answers here.
fn cluster() -> bool {
    let ok = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
        && Command::new("sbatch").arg("--version").output().is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true but no Slurm cluster answers (run `bash scripts/slurm-local.sh start`)"
            );
        }
        eprintln!("skipped: no Slurm cluster here (sbatch/sinfo); `sudo bash scripts/slurm-local.sh start` starts one");
    }
    ok
}

/// A pipeline name no other test (or earlier test run) uses, so its jobs can be counted.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// `(job id, state)` of every job Slurm still knows that this pipeline submitted.
fn jobs_of(pipeline: &str) -> Vec<(u64, String)> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o"])
        .output()
        .expect("scontrol runs");
    let prefix = format!("JobName=pollard:{pipeline}:");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|t| t.starts_with(&prefix)))
        .map(|l| {
            let field = |n: &str| {
                l.split_whitespace()
                    .find_map(|t| t.strip_prefix(n))
                    .unwrap_or_default()
                    .to_string()
            };
            (field("JobId=").parse().unwrap(), field("JobState="))
        })
        .collect()
}

fn dag(pipeline: &str) -> String {
    format!(
        "pipeline: {pipeline}\nstages:\n  a:\n    kind: command\n    cmd: echo one > $POLLARD_OUT/a.txt\n  b:\n    kind: command\n    inputs: {{ up: a }}\n    cmd: cat $POLLARD_IN_UP/a.txt > $POLLARD_OUT/b.txt; echo two >> $POLLARD_OUT/b.txt\n  c:\n    kind: command\n    inputs: {{ up: a }}\n    cmd: wc -c < $POLLARD_IN_UP/a.txt > $POLLARD_OUT/c.txt\n  d:\n    kind: command\n    inputs: {{ left: b, right: c }}\n    cmd: cat $POLLARD_IN_LEFT/b.txt $POLLARD_IN_RIGHT/c.txt > $POLLARD_OUT/d.txt\n"
    )
}

#[test]
fn a_command_dag_under_slurm_gives_the_local_lock_and_a_noop_rerun_submits_nothing() {
    if !cluster() {
        return;
    }
    let name = unique("dag");
    let local = Ws::new(&dag(&name));
    let slurm = Ws::new(&dag(&name));
    let l = local.run(&["run", "--plain"]);
    assert_eq!(l.code, 0, "{}", l.all());
    let s = slurm.run(&["run", "--plain", "--executor", "slurm"]);
    assert_eq!(s.code, 0, "{}", s.all());
    assert_eq!(slurm.read("pollard.lock"), local.read("pollard.lock"));
    let submitted = jobs_of(&name);
    assert_eq!(submitted.len(), 4, "one job per stage: {submitted:?}");
    assert!(
        submitted.iter().all(|(_, st)| st == "COMPLETED"),
        "{submitted:?}"
    );
    let out = |ws: &Ws| {
        let r = ws.run(&["show", "d", "--path"]);
        std::fs::read_to_string(format!("{}/d.txt", r.stdout.trim())).unwrap()
    };
    assert_eq!(out(&slurm), "one\ntwo\n4\n");
    // Nothing is stale: the rerun submits no job.
    let again = slurm.run(&["run", "--plain", "--executor", "slurm"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        again.stdout.contains("0 ran, 4 up to date"),
        "{}",
        again.stdout
    );
    assert_eq!(jobs_of(&name).len(), 4, "the no-op rerun submitted jobs");
}

#[test]
fn two_gpu_stages_on_the_four_gpu_node_run_at_most_two_at_a_time_on_disjoint_devices() {
    if !cluster() {
        return;
    }
    let name = unique("gpus");
    let mut m = format!("pipeline: {name}\nstages:\n");
    for id in ["g1", "g2", "g3", "g4"] {
        m.push_str(&format!(
            "  {id}:\n    kind: command\n    resources: {{ gpus: 2 }}\n    cmd: echo \"{id} $CUDA_VISIBLE_DEVICES $(date +%s.%N)\" >> starts.txt; sleep 1.5; echo \"{id} $(date +%s.%N)\" >> ends.txt; echo {id} > $POLLARD_OUT/x\n"
        ));
    }
    let ws = Ws::new(&m);
    let r = ws.run(&["run", "--plain", "--executor", "slurm"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let starts: Vec<(String, Vec<String>, f64)> = ws
        .read("starts.txt")
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            let devices: Vec<String> = p[1].split(',').map(str::to_string).collect();
            (p[0].to_string(), devices, p[2].parse().unwrap())
        })
        .collect();
    let end_of = |id: &str| -> f64 {
        ws.read("ends.txt")
            .lines()
            .find_map(|l| {
                let p: Vec<&str> = l.split_whitespace().collect();
                (p[0] == id).then(|| p[1].parse().unwrap())
            })
            .unwrap()
    };
    assert_eq!(starts.len(), 4, "{starts:?}");
    assert!(
        starts.iter().all(|s| s.1.len() == 2),
        "two devices each: {starts:?}"
    );
    let overlap = |a: &(String, Vec<String>, f64), b: &(String, Vec<String>, f64)| {
        a.2 < end_of(&b.0) && b.2 < end_of(&a.0)
    };
    let mut pairs = 0;
    for (i, a) in starts.iter().enumerate() {
        let together: Vec<_> = starts.iter().filter(|b| overlap(a, b)).collect();
        assert!(together.len() <= 2, "at most two at once: {starts:?}");
        for b in &starts[i + 1..] {
            if overlap(a, b) {
                pairs += 1;
                assert!(
                    a.1.iter().all(|d| !b.1.contains(d)),
                    "overlapping stages on disjoint devices: {starts:?}"
                );
            }
        }
    }
    assert!(
        pairs >= 1,
        "the node runs two 2-GPU stages side by side: {starts:?}"
    );
    // The lock records the devices each job was given.
    let lock = ws.read("pollard.lock");
    assert!(lock.matches("- gpu:").count() == 8, "{lock}");
}

#[test]
fn a_failing_job_surfaces_its_exit_code_and_stderr_and_holds_its_dependents() {
    if !cluster() {
        return;
    }
    let name = unique("fail");
    let ws = Ws::new(&format!(
        "pipeline: {name}\nstages:\n  a:\n    kind: command\n    cmd: echo to-stdout; echo boom-on-stderr >&2; exit 3\n  b:\n    kind: command\n    inputs: {{ up: a }}\n    cmd: \"true\"\n"
    ));
    let r = ws.run(&["run", "--plain", "--executor", "slurm"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let out = r.all();
    assert!(out.contains("FAILED with exit code 1"), "{out}");
    assert!(out.contains("command exited with status 3"), "{out}");
    assert!(out.contains("boom-on-stderr"), "{out}");
    assert!(
        out.contains("[b] skipped: needs `a`, which failed"),
        "{out}"
    );
    assert_eq!(jobs_of(&name).len(), 1, "the dependent was never submitted");
    assert!(
        !ws.read("pollard.lock").contains("  a:"),
        "nothing committed"
    );
}

#[test]
fn a_request_no_node_can_meet_is_refused_before_anything_is_submitted() {
    if !cluster() {
        return;
    }
    let name = unique("refuse");
    let ws = Ws::new(&format!(
        "pipeline: {name}\nstages:\n  fine:\n    kind: command\n    cmd: \"true\"\n  huge:\n    kind: command\n    resources: {{ gpus: 5 }}\n    cmd: \"true\"\n"
    ));
    let r = ws.run(&["run", "--plain", "--executor", "slurm"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(
            "pollard.yaml:6:3: stage `huge`: Slurm cannot place this stage (--gres=gpu:5"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("Requested node configuration is not available"),
        "{}",
        r.stderr
    );
    assert!(jobs_of(&name).is_empty(), "nothing was submitted");
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn slow(name: &str) -> String {
    format!("pipeline: {name}\nstages:\n  s:\n    kind: command\n    cmd: sleep 4; echo slept > $POLLARD_OUT/x\n")
}

#[test]
fn an_interrupt_cancels_the_jobs_it_submitted() {
    if !cluster() {
        return;
    }
    let name = unique("cancel");
    let ws = Ws::new(&slow(&name));
    let child = ws
        .cmd(&["run", "--plain", "--executor", "slurm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the job to run", Duration::from_secs(20), || {
        jobs_of(&name).iter().any(|(_, s)| s == "RUNNING")
    });
    // SAFETY: signalling a child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 130, "{}", r.all());
    wait_for("the job to be cancelled", Duration::from_secs(10), || {
        jobs_of(&name).iter().all(|(_, s)| s == "CANCELLED")
    });
    assert!(
        !ws.read("pollard.lock").contains("  s:"),
        "nothing committed"
    );
}

#[test]
fn a_rerun_after_a_killed_driver_reattaches_to_its_job_instead_of_submitting_again() {
    if !cluster() {
        return;
    }
    let name = unique("attach");
    let ws = Ws::new(&slow(&name));
    let mut child = ws
        .cmd(&["run", "--plain", "--executor", "slurm"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the job to be submitted", Duration::from_secs(20), || {
        !jobs_of(&name).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let r = ws.run(&["run", "--plain", "--executor", "slurm"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let jobs = jobs_of(&name);
    assert_eq!(jobs.len(), 1, "submitted once: {jobs:?}");
    assert!(
        r.stdout
            .contains(&format!("re-attached to Slurm job {}", jobs[0].0)),
        "{}",
        r.stdout
    );
    let path = ws.run(&["show", "s", "--path"]).stdout;
    assert_eq!(
        std::fs::read_to_string(format!("{}/x", path.trim())).unwrap(),
        "slept\n"
    );
}

#[test]
fn the_manifest_chooses_slurm_with_its_options_and_the_flag_overrides_it() {
    if !cluster() {
        return;
    }
    let name = unique("manifest");
    let m = format!(
        "pipeline: {name}\nexecutor: {{ slurm: {{ time: '0:05:00', extra: --comment=from-the-manifest }} }}\nstages:\n  a:\n    kind: command\n    cmd: echo $SLURM_JOB_ID > $POLLARD_OUT/id\n"
    );
    let ws = Ws::new(&m);
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let jobs = jobs_of(&name);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", &jobs[0].0.to_string()])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("TimeLimit=00:05:00"), "{line}");
    assert!(line.contains("Comment=from-the-manifest"), "{line}");
    // `--executor local` wins over the manifest: a forced rerun submits nothing.
    let r = ws.run(&["run", "--plain", "--executor", "local", "--force", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(jobs_of(&name).len(), 1);
}

#[test]
fn an_unknown_field_of_the_manifest_executor_is_a_manifest_error_naming_its_line() {
    // Needs no cluster: the manifest is refused before anything runs.
    let ws = Ws::new(
        "pipeline: p\nstages:\n  a:\n    kind: command\n    cmd: \"true\"\nexecutor:\n  slurm: { partitoin: gpu }\n",
    );
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("pollard.yaml:6:1: `executor` must be `local` or"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("partitoin"), "{}", r.stderr);
    assert!(!ws.file("pollard.lock").exists());
}
