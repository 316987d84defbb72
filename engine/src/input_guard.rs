//! After a stage runs, before its result is committed: were its inputs left as they were? A
//! stage's inputs are read-only hardlinks to cache objects, but a process running as root can
//! still rewrite one in place, and then every later reader of that object gets the changed
//! bytes. Each input artifact is checked again (a `stat` per object through the stat memo,
//! whose ctime sees an in-place write even with size and mtime restored); a changed object is
//! quarantined by the check, so the artifact reads as missing and is recomputed by the next
//! run, and this stage's result, made from bytes that changed under it, is not committed.

use pollard_cache::{ArtifactId, Cache, Health};

use crate::error::EngineError;

/// The message refusing the stage when one of `inputs` (slot, artifact) changed while it ran.
pub fn changed_inputs(
    cache: &Cache,
    stage: &str,
    inputs: &[(String, ArtifactId)],
) -> Result<Option<String>, EngineError> {
    let mut bad = Vec::new();
    for (slot, id) in inputs {
        match cache.check_artifact(id)? {
            Health::Ok => {}
            Health::Missing => bad.push(format!("input `{slot}` ({id}) vanished")),
            Health::Damaged(problems) => {
                let what: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                bad.push(format!("input `{slot}`: {}", what.join("; ")));
            }
        }
    }
    Ok((!bad.is_empty()).then(|| {
        format!(
            "stage `{stage}` changed its inputs in place ({}); its result is not committed, \
             and the next run recomputes the damaged input (inputs are read-only: write only \
             into $POLLARD_OUT)",
            bad.join("; ")
        )
    }))
}
