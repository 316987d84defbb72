//! `pollard runs [--json]` and `pollard runs show ID`: the workspace's run history (engine/src/history.rs) as a table,
//! newest last, or one run stage by stage.

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use pollard_engine::history::{list, read, Recorded, RunEntry};

pub fn runs(runs_dir: &Path, id: Option<&str>, json: bool) -> Result<u8> {
    match id {
        None => {
            let all = list(runs_dir)?;
            if json {
                let v: Vec<serde_json::Value> = all.iter().map(to_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", table(&all));
            }
        }
        Some(id) => {
            if !runs_dir.join(id).is_dir() {
                let known: Vec<String> =
                    list(runs_dir)?.iter().map(|r| r.id().to_string()).collect();
                return Err(pollard_engine::EngineError::Usage(format!(
                    "no run `{id}` in {} (`pollard runs` lists {} run{})",
                    runs_dir.display(),
                    known.len(),
                    if known.len() == 1 { "" } else { "s" }
                ))
                .into());
            }
            let run = read(runs_dir, id);
            if json {
                println!("{}", serde_json::to_string_pretty(&to_json(&run))?);
            } else {
                print!("{}", show(&run));
            }
        }
    }
    Ok(0)
}

fn to_json(r: &Recorded) -> serde_json::Value {
    match r {
        Recorded::Finished(e) => serde_json::to_value(e).unwrap_or_default(),
        Recorded::Unfinished { id, events } => {
            serde_json::json!({ "id": id, "finished": false, "events": events })
        }
    }
}

fn table(all: &[Recorded]) -> String {
    let mut out = String::new();
    if all.is_empty() {
        out.push_str(
            "no runs recorded yet (`pollard run` records each run under .pollard/runs/)\n",
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{:19}  {:24}  {:>4}  {:>6}  {:>6}  {:>9}  overrides",
        "run", "started", "ran", "reused", "failed", "seconds"
    );
    for r in all {
        match r {
            Recorded::Finished(e) => {
                let _ = writeln!(
                    out,
                    "{:19}  {:24}  {:>4}  {:>6}  {:>6}  {:>9.2}  {}",
                    e.id,
                    e.started,
                    e.ran,
                    e.reused,
                    e.failed,
                    e.seconds,
                    if e.interrupted {
                        format!("(interrupted) {}", e.overrides.join(" "))
                    } else {
                        e.overrides.join(" ")
                    }
                );
            }
            Recorded::Unfinished { id, events } => {
                let _ = writeln!(
                    out,
                    "{id:19}  did not finish (killed?): {events} events in its events.jsonl"
                );
            }
        }
    }
    out
}

fn show(r: &Recorded) -> String {
    let e: &RunEntry = match r {
        Recorded::Finished(e) => e,
        Recorded::Unfinished { id, events } => {
            return format!(
                "run {id}: did not finish; {events} events in .pollard/runs/{id}/events.jsonl\n"
            )
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} of {} ({}), started {}, {:.2} s, executor {}",
        e.id, e.pipeline, e.manifest, e.started, e.seconds, e.executor
    );
    let _ = writeln!(out, "manifest {}", e.manifest_digest);
    if !e.overrides.is_empty() {
        let _ = writeln!(out, "overrides {}", e.overrides.join(" "));
    }
    let w = e
        .stages
        .iter()
        .map(|s| s.stage.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "  {:w$}  {:11}  {:19}  {:>8}  {:>9}  devices",
        "stage", "status", "key", "start", "seconds"
    );
    for s in &e.stages {
        let num = |v: Option<f64>| v.map_or("-".to_string(), |t| format!("{t:.2}"));
        let mut line = format!(
            "  {:w$}  {:11}  {:19}  {:>8}  {:>9}  {}",
            s.stage,
            s.status,
            s.key.map_or("-".to_string(), |k| k.short()),
            num(s.start),
            num(s.seconds),
            if s.devices.is_empty() {
                "-".to_string()
            } else {
                s.devices.join(",")
            }
        );
        if let Some(b) = s.peak_host_bytes {
            line.push_str(&format!("  peak {}", pollard_engine::Bytes(b)));
        }
        if let Some(err) = &s.error {
            line.push_str(&format!("  ({err})"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
