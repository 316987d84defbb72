//! Text for `pollard gc [--dry-run]`: which workspaces' lock files kept their work, which
//! registered folders are gone, and (on a dry run) which stages' results would be removed.

use std::fmt::Write;

use pollard_cache::GcReport;

pub fn roots(r: &GcReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "roots: the lock files of {} workspace{} using this cache",
        r.workspaces.len(),
        if r.workspaces.len() == 1 { "" } else { "s" }
    );
    for w in &r.workspaces {
        let _ = writeln!(out, "  {}", w.display());
    }
    for w in &r.workspaces_gone {
        let _ = writeln!(
            out,
            "  {} (gone; {})",
            w.display(),
            if r.dry_run {
                "would be forgotten"
            } else {
                "forgotten"
            }
        );
    }
    if r.dry_run {
        for s in &r.stages_removed {
            let _ = writeln!(out, "would remove a result of stage `{s}`");
        }
    }
    out
}
