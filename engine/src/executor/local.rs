//! The local executor: a stage runs on this machine, on the devices the run loop granted; a
//! built-in kind in a process of its own (`pollard stage-job`) when isolation is configured,
//! `kind: command` (bash is its process already) and everything else on the worker thread.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;

use super::{Executor, Ran, Task};
use crate::job::{spawn_job, Isolation, JobSpec};
use crate::stage::{Inputs, ProgressSink, StageCtx};

pub struct LocalExecutor {
    /// How to run built-in stages in processes of their own (None: on worker threads).
    pub isolation: Option<Isolation>,
}

impl Executor for LocalExecutor {
    fn run(
        &self,
        task: &Task,
        ctx: &mut StageCtx,
        inputs: &Inputs,
        sink: &dyn ProgressSink,
        cancel: &AtomicBool,
    ) -> Result<Ran, String> {
        let stage = task.stage;
        match &self.isolation {
            Some(iso) if stage.stage.own_process() => {
                let job = JobSpec {
                    manifest: iso.manifest.clone(),
                    stage: stage.id.clone(),
                    cache_root: task.cache_root.to_path_buf(),
                    inputs: task.artifacts.clone(),
                    out_dir: task.out_dir.to_path_buf(),
                    scratch_dir: task.scratch.to_path_buf(),
                    gpus: ctx.gpus().to_vec(),
                    threads: ctx.threads(),
                    from_allocation: false,
                };
                let ended = spawn_job(iso, &job, sink, cancel)?;
                ended.result.map(|()| Ran {
                    peak_host_bytes: Some(ended.peak_host_bytes),
                    devices: None,
                })
            }
            _ => in_process(stage, ctx, inputs).map(|()| Ran::default()),
        }
    }
}

/// Runs a stage on this thread; a panic is the stage's failure, not the run's.
fn in_process(
    stage: &crate::spec::StageSpec,
    ctx: &mut StageCtx,
    inputs: &Inputs,
) -> Result<(), String> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        stage.stage.run(ctx, &stage.params, inputs)
    })) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Err(msg)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("the stage panicked: {what}"))
        }
    }
}
