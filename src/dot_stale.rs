//! Colours `pollard dag --dot` by status: stale stages (what the next `pollard run` would run)
//! filled amber, up-to-date ones green, with a legend. Graphviz merges a node's attributes
//! from every statement naming it, so the colours are added after the graph's own nodes.

use std::fmt::Write;

use pollard_engine::StageStatus;

const STALE: &str = "#f6c177";
const FRESH: &str = "#b8e0b8";

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn colour(dot: &str, rows: &[StageStatus]) -> String {
    let Some(end) = dot.rfind('}') else {
        return dot.to_string();
    };
    let mut extra = String::new();
    for r in rows {
        let (fill, what) = if r.up_to_date {
            (FRESH, "up to date")
        } else {
            (STALE, "stale")
        };
        let _ = writeln!(
            extra,
            "  \"{}\" [style=filled, fillcolor=\"{fill}\", tooltip=\"{what}\"];",
            escape(&r.stage)
        );
    }
    let _ = writeln!(
        extra,
        "  legend [shape=plaintext, label=<<font color=\"#a0522d\">&#9632;</font> stale &nbsp; <font color=\"#2e8b57\">&#9632;</font> up to date>];"
    );
    format!("{}{extra}{}", &dot[..end], &dot[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_stages_are_filled() {
        let row = |id: &str, fresh: bool| StageStatus {
            stage: id.into(),
            kind: "command".into(),
            up_to_date: fresh,
            key: None,
            artifact: None,
            reasons: vec![],
            choice: None,
        };
        let out = colour(
            "digraph \"p\" {\n  \"a\";\n}\n",
            &[row("a", false), row("b", true)],
        );
        assert!(out.contains("\"a\" [style=filled, fillcolor=\"#f6c177\", tooltip=\"stale\"];"));
        assert!(out.contains("\"b\" [style=filled, fillcolor=\"#b8e0b8\""));
        assert!(out.trim_end().ends_with('}'));
    }
}
