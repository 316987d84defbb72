//! Executors: where a keyed, granted stage actually runs. The run loop (exec.rs) keeps the DAG,
//! the cache and the lock file; for each stage it starts, it holds the key lock, makes a staging
//! folder and hands the stage to an executor, which fills that folder (or fails) and reports the
//! stage's log lines and progress. The run loop then commits, as it does for every executor.
//! `local` runs stages on this machine (today's behaviour); `slurm` runs each as a batch job.

pub mod config;
mod local;
pub mod slurm;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use pollard_cache::{ArtifactId, CacheKey};

use crate::error::EngineError;
use crate::spec::{PipelineSpec, StageSpec};
use crate::stage::{Inputs, ProgressSink, Resources, StageCtx};

pub use config::{from_manifest, from_value, ExecutorChoice};
pub use local::LocalExecutor;
pub use slurm::{SlurmExecutor, SlurmOptions};

/// One stage handed to an executor: what it is, what it reads, what it was granted, and where
/// its output goes.
pub struct Task<'a> {
    pub pipeline: &'a str,
    pub stage: &'a StageSpec,
    pub key: CacheKey,
    /// The input artifacts by slot (their folders are in `inputs` of `run`).
    pub artifacts: &'a BTreeMap<String, ArtifactId>,
    /// What the stage asked for.
    pub resources: Resources,
    /// The cache folder (shared with the machines a job may run on).
    pub cache_root: &'a Path,
    /// The staging folder to fill; the run loop commits it when `run` returns Ok.
    pub out_dir: &'a Path,
    /// The stage's own scratch folder in the cache (removed after a success).
    pub scratch: &'a Path,
}

/// How a stage that succeeded ran.
#[derive(Debug, Default)]
pub struct Ran {
    /// Peak resident memory of the stage's process, when it had one of its own.
    pub peak_host_bytes: Option<u64>,
    /// The devices it actually ran on, when the executor learned them (else the local grant's).
    pub devices: Option<Vec<String>>,
}

pub trait Executor: Send + Sync {
    /// Refuses, before anything runs, requests this executor can never meet (the stages and the
    /// resources the plan gave them).
    fn preflight(
        &self,
        _spec: &PipelineSpec,
        _stages: &[(usize, Resources)],
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Runs `task` into its staging folder, reporting log lines and progress to `sink` and
    /// stopping when `cancel` is set. `ctx` carries the local grant (devices, threads) for a stage
    /// that runs in this process. Err: why it failed, for the user.
    fn run(
        &self,
        task: &Task,
        ctx: &mut StageCtx,
        inputs: &Inputs,
        sink: &dyn ProgressSink,
        cancel: &AtomicBool,
    ) -> Result<Ran, String>;
}
