//! The stage contract: what a stage kind is to the engine. The binary fills a registry with
//! kinds implementing [`Stage`]; the engine decodes each stage's `with` into the kind's typed
//! `Params` during validation, keys the cache on them, asks the kind for its resources when
//! planning, and calls [`Stage::run`] with a [`StageCtx`] when the stage is stale.
//!
//! This file is the contract between `pollard-engine` and `pollard-stages`: change it only
//! additively.

use crate::stage_id::StageId;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The error type stage kinds return; the engine wraps it with the stage id and prints the chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a stage needs to run. `gpu_memory` is per granted GPU, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// GPUs to grant (disjoint devices). 0 runs on the CPU.
    pub gpus: u32,
    /// Bytes of free memory each granted GPU must have.
    pub gpu_memory: u64,
    /// CPU threads wanted; 0 means "a fair share of the cores".
    pub cpus: u32,
    /// Host memory estimate in bytes: stages that together exceed the machine's memory do not
    /// start together, and one that alone exceeds it is refused while planning.
    pub host_memory: u64,
}

/// The input slots a kind accepts (checked against a stage's `inputs` during validation).
#[derive(Debug, Clone, Copy)]
pub enum Slots {
    /// Exactly these names: each required one must be bound, each optional one may be.
    Fixed {
        required: &'static [&'static str],
        optional: &'static [&'static str],
    },
    /// Any slot names (e.g. `command`, `report`).
    Any,
}

/// A field a kind reads at the stage's top level, beside `inputs`, instead of inside `with`
/// (`kind: command` takes `cmd`, `deps` and `env` there). The engine checks its shape while
/// reading the manifest, resolves its references, and gathers such fields into the map the
/// kind's params decode from; a kind with outer fields takes no `with`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterField {
    pub name: &'static str,
    pub shape: OuterShape,
    pub required: bool,
}

/// What an outer field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterShape {
    /// A shell command: `${NAME}` that is not a pollard reference stays for the shell.
    Shell,
    /// One path or a list of paths (a single string becomes a one-item list).
    Paths,
    /// Environment variables: a map of names to strings, numbers or booleans (kept as text);
    /// `POLLARD_*` names are pollard's own and refused.
    Env,
}

/// A semantic parameter error found by [`Stage::validate`]; the engine adds file, line and stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    /// Dotted path of the field inside `with`, e.g. `target.heads`.
    pub field: String,
    /// What is wrong, with the offending values.
    pub message: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

/// A kind's `describe` returns one (boxed) to refuse a field against the upstream shapes; the
/// engine then reports it at the field's place in the manifest.
impl std::error::Error for ParamError {}

impl ParamError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What is known about a stage's inputs while planning, before anything runs: for each bound
/// slot, the upstream kind's [`Stage::describe`] result (e.g. a model's shape), when it could
/// say, and the folder of the upstream artifact when it is already in the cache.
#[derive(Debug, Clone, Default)]
pub struct PlanInputs {
    pub slots: BTreeMap<String, PlanInput>,
    /// The manifest's folder: relative paths in params resolve against it while planning, as
    /// they do when running (empty: the current folder).
    pub workdir: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// The upstream stage id.
    pub stage: StageId,
    /// The upstream kind's description of its output, if known.
    pub description: Option<serde_json::Value>,
    /// The upstream artifact's folder when it is already cached (read-only).
    pub path: Option<PathBuf>,
}

impl PlanInputs {
    /// `p` resolved against the manifest's folder (absolute paths are kept).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.workdir.join(p)
    }

    pub fn description(&self, slot: &str) -> Option<&serde_json::Value> {
        self.slots.get(slot).and_then(|i| i.description.as_ref())
    }
}

/// The input artifacts of a running stage: slot name -> read-only folder.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub slots: BTreeMap<String, InputArtifact>,
}

#[derive(Debug, Clone)]
pub struct InputArtifact {
    /// The upstream stage id.
    pub stage: StageId,
    /// The artifact's folder (read-only; never write into it).
    pub path: PathBuf,
    /// The artifact id (`blake3:<hex>` when printed).
    pub artifact: pollard_cache::ArtifactId,
}

impl Inputs {
    /// The folder bound to `slot`, or an error naming the missing slot.
    pub fn path(&self, slot: &str) -> Result<&Path, BoxError> {
        self.slots
            .get(slot)
            .map(|a| a.path.as_path())
            .ok_or_else(|| format!("input slot `{slot}` is not bound").into())
    }

    /// The folder bound to `slot`, if any.
    pub fn optional(&self, slot: &str) -> Option<&Path> {
        self.slots.get(slot).map(|a| a.path.as_path())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &InputArtifact)> {
        self.slots.iter()
    }
}

/// One progress report of a running stage (built-in kinds report steps, loss and tokens/s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub total: Option<u64>,
    pub loss: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub message: Option<String>,
}

/// Where a running stage's progress and log lines go (a terminal bar, plain lines, a test).
pub trait ProgressSink: Send + Sync {
    fn progress(&self, stage: &str, p: &Progress);
    fn log(&self, stage: &str, line: &str);
}

/// A sink that drops everything (unit tests of stage kinds).
pub struct SilentSink;

impl ProgressSink for SilentSink {
    fn progress(&self, _stage: &str, _p: &Progress) {}
    fn log(&self, _stage: &str, _line: &str) {}
}

/// What the engine grants a running stage.
pub struct StageCtx {
    stage_id: String,
    out_dir: PathBuf,
    scratch_dir: PathBuf,
    gpus: Vec<u32>,
    threads: usize,
    sink: Arc<dyn ProgressSink>,
    cancel: Arc<AtomicBool>,
    workdir: PathBuf,
}

impl StageCtx {
    pub fn new(
        stage_id: impl Into<String>,
        out_dir: PathBuf,
        scratch_dir: PathBuf,
        gpus: Vec<u32>,
        threads: usize,
        sink: Arc<dyn ProgressSink>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        Self {
            stage_id: stage_id.into(),
            out_dir,
            scratch_dir,
            gpus,
            threads: threads.max(1),
            sink,
            cancel,
            workdir: PathBuf::from("."),
        }
    }

    /// Sets the manifest's folder (see [`StageCtx::workdir`]).
    pub fn with_workdir(mut self, dir: PathBuf) -> Self {
        self.workdir = dir;
        self
    }

    /// The manifest's folder: relative paths in params (a `load` path, `deps`) are relative to it,
    /// and commands run in it. `.` for detached contexts.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// A context for unit tests: silent, CPU only, never cancelled.
    pub fn detached(stage_id: &str, out_dir: PathBuf, scratch_dir: PathBuf) -> Self {
        Self::new(
            stage_id,
            out_dir,
            scratch_dir,
            Vec::new(),
            1,
            Arc::new(SilentSink),
            Arc::new(AtomicBool::new(false)),
        )
    }

    pub fn stage_id(&self) -> &str {
        &self.stage_id
    }

    /// The empty folder whose contents become the stage's output artifact.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// A folder that survives an interrupted run of the same cache key (training checkpoints for
    /// resumption); it is outside the content-addressed store and removed after a commit.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch_dir
    }

    /// Ordinals of the GPUs granted to this stage (empty: run on the CPU).
    pub fn gpus(&self) -> &[u32] {
        &self.gpus
    }

    /// CPU threads this stage may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn progress(&self, p: Progress) {
        self.sink.progress(&self.stage_id, &p);
    }

    pub fn log(&self, line: &str) {
        self.sink.log(&self.stage_id, line);
    }

    /// True once the user interrupted the run: long loops check it and return an error early.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// A stage kind. Built-in kinds run in-process on worker threads.
pub trait Stage: Send + Sync + 'static {
    /// The name used in manifests (`kind: prune`).
    const KIND: &'static str;
    /// Bump on any change of meaning: it enters the cache key.
    const VERSION: u32;
    /// The typed `with` block; use `#[serde(deny_unknown_fields)]` and defaults a user expects.
    type Params: DeserializeOwned + Serialize + Send + Sync + 'static;

    /// The input slots this kind takes.
    fn slots(&self) -> Slots;

    /// Fields read beside `with` at the stage's top level (none for most kinds).
    fn outer_fields(&self) -> &'static [OuterField] {
        &[]
    }

    /// Checks beyond what types express (a target larger than the model...), all at once.
    fn validate(&self, _p: &Self::Params) -> Result<(), Vec<ParamError>> {
        Ok(())
    }

    /// Files or folders (relative to the manifest's folder, or absolute) whose content enters
    /// the cache key, like a command's `deps` (a `load` path, a dataset's text files).
    fn deps(&self, _p: &Self::Params) -> Vec<PathBuf> {
        Vec::new()
    }

    /// What the output will be, as far as it is known before running (e.g. a model's shape as
    /// `{"model": {...}}`), so downstream kinds can estimate resources for a dry run.
    fn describe(
        &self,
        _p: &Self::Params,
        _inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        Ok(None)
    }

    /// An estimate of what running needs (from the model's shape when it is known).
    fn resources(&self, p: &Self::Params, inputs: &PlanInputs) -> Result<Resources, BoxError>;

    /// Whether the engine runs the stage in a process of its own (`pollard stage-job`), so its
    /// peak memory is measured and it can run on another machine; a kind that only starts a
    /// process of its own says no.
    fn own_process(&self) -> bool {
        true
    }

    /// Does the work: reads only `inputs` and `p`, writes only into `ctx.out_dir()`.
    fn run(&self, ctx: &mut StageCtx, p: &Self::Params, inputs: &Inputs) -> Result<(), BoxError>;
}
