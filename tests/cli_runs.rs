//! Run history through the binary: every run (not a dry run) is recorded under
//! `.pollard/runs/<id>/` with its outcome per stage, `trace.tsv`, `events.jsonl` and the lock
//! as it left it; `pollard runs` lists them, `pollard runs ID` shows one, and a run id is a side
//! of `pollard metrics diff`.

mod cli_support;
use cli_support::*;

const MANIFEST: &str = "pipeline: hist\nparams: { n: 3 }\nstages:\n  a:\n    kind: command\n    cmd: echo ${params.n} > $POLLARD_OUT/n\n  m:\n    kind: command\n    inputs: { a: a }\n    cmd: |\n      printf '{\"score\": %s}' $(cat $POLLARD_IN_A/n) > $POLLARD_OUT/metrics.json\n";

fn runs_json(ws: &Ws) -> Vec<serde_json::Value> {
    let r = ws.run(&["runs", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    serde_json::from_str::<serde_json::Value>(&r.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn every_run_is_recorded_listed_shown_and_comparable() {
    let ws = Ws::new(MANIFEST);
    assert!(ws.run(&["runs"]).stdout.starts_with("no runs recorded yet"));
    ws.ran(&[]);
    assert_eq!(ws.run(&["run", "--dry-run"]).code, 0);
    ws.write("pollard.yaml", &MANIFEST.replace("n: 3", "n: 5"));
    ws.ran(&[]);
    ws.ran(&[]); // nothing to do: recorded as all reused
    let runs = runs_json(&ws);
    assert_eq!(runs.len(), 3, "a dry run is not recorded: {runs:?}");
    let (first, second, third) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(
        (first["ran"].as_u64(), first["reused"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        (second["ran"].as_u64(), second["reused"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        (third["ran"].as_u64(), third["reused"].as_u64()),
        (Some(0), Some(2))
    );
    assert_ne!(first["manifest_digest"], second["manifest_digest"]);
    assert_eq!(second["manifest_digest"], third["manifest_digest"]);
    let stage_a = &third["stages"][0];
    assert_eq!(stage_a["stage"], "a");
    assert_eq!(stage_a["status"], "reused");
    assert_eq!(stage_a["cache_hit"], true);
    assert!(stage_a["key"].as_str().unwrap().starts_with("blake3:"));
    let ran_a = &second["stages"][0];
    assert_eq!(ran_a["status"], "ran");
    assert_eq!(ran_a["cache_hit"], false);
    assert!(ran_a["seconds"].as_f64().is_some());
    assert_eq!(ran_a["devices"], serde_json::json!(["cpu x1"]));

    let id = second["id"].as_str().unwrap();
    let dir = ws.file(&format!(".pollard/runs/{id}"));
    let trace = std::fs::read_to_string(dir.join("trace.tsv")).unwrap();
    let rows: Vec<&str> = trace.lines().collect();
    assert_eq!(
        rows[0],
        "task_id\thash\tname\tprocess\tstatus\texit\tstart\trealtime\tpeak_rss\tdevices\tcached"
    );
    assert_eq!(rows.len(), 3, "{trace}");
    assert!(rows[1].starts_with("1\tblake3:"), "{trace}");
    assert!(rows[1].contains("\ta\tcommand\tran\t0\t"), "{trace}");
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("\"event\":\"finished\""))
            .count(),
        2
    );

    let shown = ws.run(&["runs", "show", id]);
    assert_eq!(shown.code, 0, "{}", shown.all());
    assert!(
        shown
            .stdout
            .starts_with(&format!("run {id} of hist (pollard.yaml)")),
        "{}",
        shown.stdout
    );
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("m ") && l.contains(" ran ")),
        "{}",
        shown.stdout
    );

    // A run id is a side of a metrics diff: the lock as that run left it.
    let first_id = first["id"].as_str().unwrap();
    let d = ws.run(&["metrics", "diff", first_id, id, "--json"]);
    assert_eq!(d.code, 0, "{}", d.all());
    let v: serde_json::Value = serde_json::from_str(&d.stdout).unwrap();
    assert_eq!(v["old"], format!("run {first_id}"));
    let row = &v["rows"][0];
    assert_eq!(
        (row["stage"].as_str(), row["field"].as_str()),
        (Some("m"), Some("score")),
        "{v}"
    );
    assert_eq!(
        (row["old"].as_f64(), row["new"].as_f64()),
        (Some(3.0), Some(5.0)),
        "{v}"
    );

    let missing = ws.run(&["runs", "show", "20000101-000000-000"]);
    assert_eq!(missing.code, 2, "{}", missing.all());
    assert!(
        missing.stderr.contains("no run `20000101-000000-000`"),
        "{}",
        missing.stderr
    );
}

#[test]
fn a_killed_run_is_listed_as_unfinished_with_its_events() {
    let ws = Ws::new(MANIFEST);
    ws.ran(&[]);
    let id = runs_json(&ws)[0]["id"].as_str().unwrap().to_string();
    // What a `kill -9` leaves: the events so far, no run.json.
    std::fs::remove_file(ws.file(&format!(".pollard/runs/{id}/run.json"))).unwrap();
    let r = ws.run(&["runs"]);
    assert!(
        r.stdout
            .contains(&format!("{id}  did not finish (killed?): ")),
        "{}",
        r.stdout
    );
    assert_eq!(runs_json(&ws)[0]["finished"], false);
}
