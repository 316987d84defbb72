//! Text for `status`, `dag`, `dag --dot` and `run --dry-run`: plain, aligned, stable (insta
//! snapshots pin it).

use std::fmt::Write;

use pollard_engine::plan::{Action, Plan};
use pollard_engine::resources::Inventory;
use pollard_engine::{Bytes, PipelineSpec, Resources, StageStatus};

fn width(spec: &PipelineSpec) -> usize {
    spec.ids().map(str::len).max().unwrap_or(0)
}

pub fn status(spec: &PipelineSpec, rows: &[StageStatus]) -> String {
    let w = width(spec);
    let fresh = rows.iter().filter(|r| r.up_to_date).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {} ({}): {} stages, {} up to date, {} stale",
        spec.name,
        spec.file,
        rows.len(),
        fresh,
        rows.len() - fresh
    );
    for r in rows {
        if r.up_to_date {
            let _ = write!(
                out,
                "  {:w$}  up to date  {}",
                r.stage,
                r.artifact.map(|a| a.short()).unwrap_or_default()
            );
            if let Some(c) = &r.choice {
                let _ = write!(
                    out,
                    "  chose {} of {} ({} = {}, {})",
                    c.winner, c.candidates, c.by, c.value, c.mode
                );
            }
            out.push('\n');
        } else {
            for (i, reason) in r.reasons.iter().enumerate() {
                if i == 0 {
                    let _ = writeln!(out, "  {:w$}  stale       {reason}", r.stage);
                } else {
                    let _ = writeln!(out, "  {:w$}              {reason}", "");
                }
            }
        }
    }
    out
}

pub fn dag(spec: &PipelineSpec) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pipeline {} ({} stages)", spec.name, spec.stages.len());
    for &i in &spec.order {
        let s = &spec.stages[i];
        let inputs: Vec<String> = s
            .inputs
            .iter()
            .map(|(slot, &u)| {
                if spec.stages[u].id == *slot {
                    slot.clone()
                } else {
                    format!("{slot}={}", spec.stages[u].id)
                }
            })
            .collect();
        if inputs.is_empty() {
            let _ = writeln!(out, "  {} [{}]", s.id, s.kind);
        } else {
            let _ = writeln!(out, "  {} [{}] <- {}", s.id, s.kind, inputs.join(", "));
        }
    }
    out
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz: one node per stage, edges labelled with the slot, groups as clusters.
pub fn dot(spec: &PipelineSpec) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&spec.name));
    let _ = writeln!(
        out,
        "  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];"
    );
    let mut clusters: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let mut loose = Vec::new();
    for &i in &spec.order {
        let id = &spec.stages[i].id;
        match id.rsplit_once('.') {
            Some((group, _)) => clusters.entry(group.to_string()).or_default().push(i),
            None => loose.push(i),
        }
    }
    let node = |out: &mut String, i: usize, indent: &str| {
        let s = &spec.stages[i];
        let _ = writeln!(
            out,
            "{indent}\"{}\" [label=\"{}\\n{}\"];",
            dot_escape(&s.id),
            dot_escape(&s.id),
            dot_escape(&s.kind)
        );
    };
    for i in loose {
        node(&mut out, i, "  ");
    }
    for (n, (group, members)) in clusters.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{n} {{\n    label=\"{}\";",
            dot_escape(group)
        );
        for &i in members {
            node(&mut out, i, "    ");
        }
        let _ = writeln!(out, "  }}");
    }
    for &i in &spec.order {
        let s = &spec.stages[i];
        for (slot, &u) in &s.inputs {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"];",
                dot_escape(&spec.stages[u].id),
                dot_escape(&s.id),
                dot_escape(slot)
            );
        }
    }
    out.push_str("}\n");
    out
}

pub fn inventory(inv: &Inventory) -> String {
    if inv.gpus.is_empty() {
        format!("no GPUs ({}); {} CPU cores", inv.source, inv.cpus)
    } else {
        let mems: Vec<String> = inv
            .gpus
            .iter()
            .map(|g| Bytes(g.memory).to_string())
            .collect();
        format!(
            "{} GPU(s) from {}: {}; {} CPU cores",
            inv.gpus.len(),
            inv.source,
            mems.join(", "),
            inv.cpus
        )
    }
}

/// What a stage asks for, as the dry run prints it.
fn need(res: &Resources) -> String {
    let mut need = format!(
        "{} cpu",
        if res.cpus == 0 {
            "all".to_string()
        } else {
            res.cpus.to_string()
        }
    );
    if res.gpus > 0 {
        need.push_str(&format!(", {} gpu", res.gpus));
        if res.gpu_memory > 0 {
            need.push_str(&format!(" x {}", Bytes(res.gpu_memory)));
        }
    } else if res.gpu_memory > 0 {
        // Model kinds run on the CPU unless asked for GPUs; their estimate still tells the user
        // what a GPU placement of this stage would need.
        need.push_str(&format!(", on a gpu {}", Bytes(res.gpu_memory)));
    }
    if res.host_memory > 0 {
        need.push_str(&format!(", host {}", Bytes(res.host_memory)));
    }
    need
}

/// `run --dry-run`: per stage, reuse / run with resources and reasons / blocked with why.
pub fn dry_run(spec: &PipelineSpec, plan: &Plan, inv: &Inventory) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dry run of {} ({}); {}",
        spec.name,
        spec.file,
        inventory(inv)
    );
    let w = plan
        .stages
        .iter()
        .map(|p| spec.stages[p.index].id.len())
        .max()
        .unwrap_or(0);
    for p in &plan.stages {
        let id = &spec.stages[p.index].id;
        let why: Vec<String> = p.reasons().iter().map(|x| x.to_string()).collect();
        let _ = match &p.action {
            Action::Reuse { record } => {
                writeln!(out, "  {id:w$}  reuse  {}", record.artifact.short())
            }
            Action::Run { .. } => writeln!(
                out,
                "  {id:w$}  run    [{}] {}",
                need(&p.resources),
                why.join("; ")
            ),
            Action::Blocked { .. } => writeln!(out, "  {id:w$}  blocked {}", why.join("; ")),
        };
    }
    let blocked = plan.blocked().count();
    if blocked > 0 {
        let _ = writeln!(
            out,
            "{blocked} stage{} blocked: nothing can run them until that is fixed",
            if blocked == 1 { " is" } else { "s are" }
        );
    }
    out
}

/// Why a run refuses to start: the blocked stages and their reasons.
pub fn blocked(spec: &PipelineSpec, plan: &Plan) -> String {
    let mut out = String::new();
    for p in plan.blocked() {
        let why: Vec<String> = p.reasons().iter().map(|x| x.to_string()).collect();
        let _ = writeln!(
            out,
            "error: stage `{}` cannot run: {}",
            spec.stages[p.index].id,
            why.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "nothing was run (`pollard run --dry-run` shows the plan)"
    );
    out
}
