//! How much a run says, and in which form: `--quiet` keeps failures and the summary,
//! `--verbose` adds why each stage runs and what was reused, `--log-format json` gives other
//! tools one JSON object per event on stderr (plan first, summary last).

mod cli_support;
use cli_support::*;

const MANIFEST: &str = "pipeline: talk\nparams: { word: alpha }\nstages:\n  a:\n    kind: command\n    cmd: echo ${params.word} > $POLLARD_OUT/w; echo said ${params.word}\n  b:\n    kind: command\n    inputs: { a: a }\n    cmd: cat $POLLARD_IN_A/w > $POLLARD_OUT/w\n  side:\n    kind: command\n    cmd: echo side > $POLLARD_OUT/s\n";

#[test]
fn quiet_prints_the_summary_and_failures_only() {
    let ws = Ws::new(MANIFEST);
    let r = ws.run(&["run", "--quiet"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout, "talk: 3 ran, 0 up to date, 0 failed, 0 not run\n");
    assert_eq!(r.stderr, "");
    ws.write(
        "pollard.yaml",
        &MANIFEST.replace("echo side", "echo failing; exit 3; echo"),
    );
    let r = ws.run(&["run", "-q"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stdout
            .starts_with("[side] FAILED: command exited with status 3"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("failing"),
        "a quiet run hides stage output: {}",
        r.stdout
    );
}

#[test]
fn verbose_says_why_each_stage_runs_in_the_users_words_and_lists_reused_ones() {
    let ws = Ws::new(MANIFEST);
    ws.ran(&[]);
    ws.write(
        "pollard.yaml",
        &MANIFEST.replace("word: alpha", "word: beta"),
    );
    let r = ws.run(&["run", "--plain", "--verbose"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let lines: Vec<&str> = r.stdout.lines().collect();
    // The edited value comes first among `a`'s reasons, before the expanded field.
    let first_reason = lines.iter().find(|l| l.starts_with("[a] runs because"));
    assert_eq!(
        first_reason,
        Some(&"[a] runs because params.word changed: \"alpha\" -> \"beta\" (used in `cmd`)"),
        "{}",
        r.stdout
    );
    assert!(lines.contains(&"[a] said beta"), "{}", r.stdout);
    assert!(
        lines.contains(&"[b] runs because input `a` will be rebuilt (stage `a` is stale)"),
        "{}",
        r.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[side] up to date -> blake3:")),
        "{}",
        r.stdout
    );
    assert!(
        ws.run(&["run", "-q", "-v"])
            .stderr
            .contains("cannot be used with"),
        "--quiet and --verbose exclude each other"
    );
}

#[test]
fn json_log_format_is_one_object_per_event_plan_first_summary_last() {
    let ws = Ws::new(MANIFEST);
    let r = ws.run(&["run", "--log-format", "json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let events: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"plan"), "{names:?}");
    assert_eq!(names.last(), Some(&"summary"), "{names:?}");
    assert_eq!(events[0]["stages"].as_array().unwrap().len(), 3);
    assert_eq!(
        names.iter().filter(|n| **n == "started").count(),
        3,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "finished").count(),
        3,
        "{names:?}"
    );
    let said = events
        .iter()
        .find(|e| e["event"] == "log")
        .expect("the stage's output line");
    assert_eq!(said["stage"], "a");
    assert_eq!(said["line"], "said alpha");
    let summary = events.last().unwrap();
    assert_eq!(summary["ran"], 3);
    assert_eq!(summary["failed"], 0);
    let times: Vec<f64> = events.iter().map(|e| e["t"].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // A no-op run reports each stage as reused.
    let r = ws.run(&["run", "--log-format", "json"]);
    let reused = r
        .stderr
        .lines()
        .filter(|l| l.contains("\"event\":\"reused\""))
        .count();
    assert_eq!(reused, 3, "{}", r.stderr);
}
