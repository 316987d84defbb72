//! Schedule and execute: stages start as soon as their inputs exist and their resources are free;
//! each runs into a fresh staging folder that the cache commits atomically; its run record goes
//! into the cache and its entry into the lock file. A stage already in the cache under its key
//! is reused without running. Failure stops new starts (unless `keep_going`); an interrupt stops
//! the running stages and commits nothing half-done.

use crate::stage_id::StageId;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pollard_cache::{ArtifactId, Cache, CacheKey, RunRecord, Timestamp};
use serde::Serialize;

use crate::diag::Diagnostics;
use crate::error::EngineError;
use crate::executor::{Executor, Task};
use crate::job::Allocation;
use crate::lockfile::{LockEntry, LockWriter};
use crate::plan::{
    deps_digests, effective_resources, estimate, fingerprint, lookup, plan_inputs, Action,
    Fingerprint, Lookup, Plan, Reason, Selection,
};
use crate::resources::{Inventory, Lease, Pool};
use crate::spec::PipelineSpec;
use crate::stage::{InputArtifact, Inputs, Progress, ProgressSink, Resources, StageCtx};

/// What happens to stages during a run, for the command line to render.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Reused {
        stage: StageId,
        artifact: ArtifactId,
    },
    Waiting {
        stage: StageId,
        gpus: u32,
        gpu_memory: u64,
        cpus: u32,
    },
    Started {
        stage: StageId,
        gpus: Vec<u32>,
        threads: usize,
    },
    Finished {
        stage: StageId,
        artifact: ArtifactId,
        seconds: f64,
    },
    /// Another run computed the stage while this one waited for its key.
    Joined {
        stage: StageId,
        artifact: ArtifactId,
    },
    Failed {
        stage: StageId,
        error: String,
    },
    Skipped {
        stage: StageId,
        reason: String,
    },
    /// Something the user should know that does not stop the run (a non-reproducible stage).
    Warning {
        stage: StageId,
        message: String,
    },
}

/// Receives run events and stage progress.
pub trait Reporter: ProgressSink {
    fn event(&self, e: &Event);
}

/// How a stage ended in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Reused { artifact: ArtifactId },
    Ran { artifact: ArtifactId, seconds: f64 },
    Failed { error: String },
    Skipped { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Selected stages in topological order.
    pub stages: Vec<(StageId, Outcome)>,
    pub interrupted: bool,
}

impl RunSummary {
    pub fn failed(&self) -> bool {
        self.stages
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed { .. }))
    }
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.stages.iter().filter(|(_, o)| f(o)).count()
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub jobs: Option<usize>,
    pub keep_going: bool,
}

/// Plans every selected stage's resources from the kinds' descriptions (before anything runs)
/// and refuses, with the numbers, requests no device could meet.
pub fn plan_resources(
    spec: &PipelineSpec,
    sel: &Selection,
    inventory: &Inventory,
) -> Result<Vec<Resources>, EngineError> {
    let n = spec.stages.len();
    let mut descriptions = vec![None; n];
    let mut out = vec![Resources::default(); n];
    let mut diags = Diagnostics::default();
    for &i in spec.order.iter().filter(|&&i| sel.selected[i]) {
        let (r, refusal) = estimate(spec, i, &mut descriptions, inventory);
        out[i] = r;
        if let Some(r) = refusal {
            diags.0.push(r.diagnostic(spec, i));
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(EngineError::Manifest(diags))
    }
}

#[derive(Clone, PartialEq)]
enum State {
    /// Waiting for this many input bindings to be done.
    Pending(usize),
    /// Inputs done; waiting for resources.
    Ready,
    Running,
    Done(ArtifactId),
    Failed,
    Skipped,
}

/// Keyed and ready to start.
struct Prepared {
    fp: Fingerprint,
    key: CacheKey,
    resources: Resources,
    waiting_reported: bool,
}

enum JobResult {
    Ran { record: Box<RunRecord> },
    Joined { record: Box<RunRecord> },
    Failed(String),
}

/// Everything a run needs.
pub struct Runner {
    pub spec: Arc<PipelineSpec>,
    pub cache: Arc<Cache>,
    pub lock: LockWriter,
    pub inventory: Inventory,
    pub reporter: Arc<dyn Reporter>,
    pub cancel: Arc<AtomicBool>,
    /// Where the output of a failed stage is kept (`<dir>/<stage>.log`); a stage that succeeds
    /// keeps its output in its run record instead.
    pub failure_logs: PathBuf,
    /// Where stages run (`LocalExecutor`: this machine; `SlurmExecutor`: batch jobs).
    pub executor: Arc<dyn Executor>,
}

/// The run's bookkeeping: per stage state, and the ready set in topological order, so each
/// event costs what it touches, not the whole pipeline.
struct Board {
    state: Vec<State>,
    outcomes: Vec<Option<Outcome>>,
    /// Topological position of each stage (for starting ready stages in a stable order).
    rank: Vec<usize>,
    ready: BTreeSet<(usize, usize)>,
    consumers: Vec<Vec<usize>>,
}

impl Board {
    fn make_ready(&mut self, i: usize) {
        self.state[i] = State::Ready;
        self.ready.insert((self.rank[i], i));
    }

    /// Marks `i` done and readies consumers whose inputs are now all done.
    fn done(&mut self, i: usize, a: ArtifactId) {
        self.ready.remove(&(self.rank[i], i));
        self.state[i] = State::Done(a);
        for k in 0..self.consumers[i].len() {
            let c = self.consumers[i][k];
            if let State::Pending(n) = self.state[c] {
                if n <= 1 {
                    self.make_ready(c);
                } else {
                    self.state[c] = State::Pending(n - 1);
                }
            }
        }
    }

    /// `i` is done with a cached output (found by the plan, on re-keying, or computed by another
    /// run meanwhile): says so and keeps its lock entry for the end of the run.
    #[allow(clippy::too_many_arguments)]
    fn reuse(
        &mut self,
        spec: &PipelineSpec,
        i: usize,
        fp: &Fingerprint,
        key: &CacheKey,
        rec: &RunRecord,
        joined: bool,
        lock_pending: &mut BTreeMap<StageId, LockEntry>,
        reporter: &dyn Reporter,
    ) {
        let (stage, artifact) = (spec.stages[i].id.clone(), rec.artifact);
        reporter.event(&if joined {
            Event::Joined {
                stage: stage.clone(),
                artifact,
            }
        } else {
            Event::Reused {
                stage: stage.clone(),
                artifact,
            }
        });
        lock_pending.insert(stage, entry_of(fp, key, rec));
        self.outcomes[i] = Some(Outcome::Reused { artifact });
        self.done(i, rec.artifact);
    }

    /// `i` failed: says why and holds what depends on it.
    fn fail(&mut self, spec: &PipelineSpec, i: usize, error: String, reporter: &dyn Reporter) {
        self.ready.remove(&(self.rank[i], i));
        reporter.event(&Event::Failed {
            stage: spec.stages[i].id.clone(),
            error: error.clone(),
        });
        self.state[i] = State::Failed;
        self.outcomes[i] = Some(Outcome::Failed { error });
        self.hold_dependents(spec, i, reporter);
    }

    /// Everything downstream of a failed or skipped stage is held, saying why.
    fn hold_dependents(&mut self, spec: &PipelineSpec, i: usize, reporter: &dyn Reporter) {
        let mut stack = vec![i];
        while let Some(u) = stack.pop() {
            for k in 0..self.consumers[u].len() {
                let c = self.consumers[u][k];
                if !matches!(self.state[c], State::Pending(_)) {
                    continue;
                }
                let reason = format!(
                    "needs `{}`, which {}",
                    spec.stages[u].id,
                    if self.state[u] == State::Failed {
                        "failed"
                    } else {
                        "did not run"
                    }
                );
                reporter.event(&Event::Skipped {
                    stage: spec.stages[c].id.clone(),
                    reason: reason.clone(),
                });
                self.state[c] = State::Skipped;
                self.outcomes[c] = Some(Outcome::Skipped { reason });
                stack.push(c);
            }
        }
    }
}

impl Runner {
    /// Executes `plan`: reuses what it says is cached, runs the rest as inputs and resources
    /// allow, and re-keys only stages downstream of stages that actually ran (one of those may
    /// then turn out cached: early cutoff).
    pub fn run(&self, plan: &Plan, opts: &RunOptions) -> Result<RunSummary, EngineError> {
        let spec = &self.spec;
        // Requests the executor can never meet are refused before anything starts.
        let to_run: Vec<(usize, Resources)> = plan
            .stages
            .iter()
            .filter(|p| matches!(p.action, Action::Run { .. }))
            .map(|p| (p.index, p.resources))
            .collect();
        self.executor.preflight(spec, &to_run)?;
        let pool = Pool::new(self.inventory.clone(), opts.jobs);
        let n = spec.stages.len();
        let mut board = Board {
            state: vec![State::Skipped; n],
            outcomes: vec![None; n],
            rank: vec![usize::MAX; n],
            ready: BTreeSet::new(),
            consumers: vec![Vec::new(); n],
        };
        let mut descriptions: Vec<Option<serde_json::Value>> = (0..n)
            .map(|i| plan.get(i).and_then(|p| p.description.clone()))
            .collect();
        let mut prepared: Vec<Option<Prepared>> = (0..n).map(|_| None).collect();
        let mut lock_pending: BTreeMap<StageId, LockEntry> = BTreeMap::new();
        for (rank, p) in plan.stages.iter().enumerate() {
            let i = p.index;
            board.rank[i] = rank;
            let stage = &spec.stages[i];
            for &u in stage.inputs.values() {
                board.consumers[u].push(i);
            }
            board.state[i] = State::Pending(stage.inputs.len());
        }
        let mut first_failure: Option<StageId> = None;
        // What the plan settled: reused stages are done, blocked ones fail with the reason.
        for p in &plan.stages {
            let i = p.index;
            let stage = &spec.stages[i];
            match &p.action {
                Action::Reuse { record } => {
                    let fp = p.fingerprint.as_ref().expect("a reused stage is keyed");
                    let key = p.key.expect("a reused stage is keyed");
                    board.reuse(
                        spec,
                        i,
                        fp,
                        &key,
                        record,
                        false,
                        &mut lock_pending,
                        self.reporter.as_ref(),
                    );
                }
                Action::Blocked { reason } => {
                    if !matches!(reason, Reason::UpstreamBlocked { .. }) {
                        board.fail(spec, i, reason.to_string(), self.reporter.as_ref());
                        first_failure.get_or_insert(stage.id.clone());
                    }
                }
                Action::Run { .. } => {
                    if stage.inputs.is_empty() {
                        board.make_ready(i);
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel::<(usize, JobResult)>();
        let mut running = 0usize;
        let mut interrupted = false;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                interrupted = true;
            }
            let stop = interrupted || (first_failure.is_some() && !opts.keep_going);
            // Key what became ready; a stage re-keyed after its inputs ran may be cached.
            let ready: Vec<usize> = board.ready.iter().map(|&(_, i)| i).collect();
            for i in ready {
                if board.state[i] != State::Ready {
                    // Settled by the plan (reused, blocked) after an upstream readied it.
                    board.ready.remove(&(board.rank[i], i));
                    continue;
                }
                if prepared[i].is_some() {
                    continue;
                }
                let stage = &spec.stages[i];
                match self.rekey(plan, &board, &mut descriptions, i)? {
                    Rekeyed::Cached(fp, key, rec) => board.reuse(
                        spec,
                        i,
                        &fp,
                        &key,
                        &rec,
                        false,
                        &mut lock_pending,
                        self.reporter.as_ref(),
                    ),
                    Rekeyed::Run(p) => prepared[i] = Some(p),
                    Rekeyed::Failed(error) => {
                        board.fail(spec, i, error, self.reporter.as_ref());
                        first_failure.get_or_insert(stage.id.clone());
                    }
                }
            }
            if !stop {
                let ready: Vec<usize> = board.ready.iter().map(|&(_, i)| i).collect();
                for i in ready {
                    let Some(p) = prepared[i].as_mut() else {
                        continue;
                    };
                    if board.state[i] != State::Ready {
                        continue;
                    }
                    let stage = &spec.stages[i];
                    let Some(lease) = pool.try_grant(&p.resources) else {
                        if !p.waiting_reported && running > 0 {
                            p.waiting_reported = true;
                            let r = p.resources;
                            self.reporter.event(&Event::Waiting {
                                stage: stage.id.clone(),
                                gpus: r.gpus,
                                gpu_memory: r.gpu_memory,
                                cpus: r.cpus,
                            });
                        }
                        continue;
                    };
                    board.ready.remove(&(board.rank[i], i));
                    self.reporter.event(&Event::Started {
                        stage: stage.id.clone(),
                        gpus: lease.gpus.clone(),
                        threads: lease.cpus,
                    });
                    board.state[i] = State::Running;
                    running += 1;
                    let job = Job {
                        index: i,
                        spec: spec.clone(),
                        cache: self.cache.clone(),
                        key: p.key,
                        fp: p.fp.clone(),
                        forced: plan.forced[i] || !stage.cache,
                        resources: p.resources,
                        executor: self.executor.clone(),
                        lease,
                        reporter: self.reporter.clone(),
                        cancel: self.cancel.clone(),
                        failure_logs: self.failure_logs.clone(),
                    };
                    let tx = tx.clone();
                    std::thread::Builder::new()
                        .name(format!("stage-{}", stage.id))
                        .spawn(move || {
                            let index = job.index;
                            let result = job.execute();
                            let _ = tx.send((index, result));
                        })
                        .map_err(|e| {
                            EngineError::Usage(format!("cannot start a worker thread: {e}"))
                        })?;
                }
            }
            if running == 0 {
                // Keyed stages became ready (a re-keyed stage was cached): go round again.
                if !stop && board.ready.iter().any(|&(_, i)| prepared[i].is_none()) {
                    continue;
                }
                break;
            }
            let (i, result) = rx.recv().expect("a worker always sends its result");
            running -= 1;
            let stage = &spec.stages[i];
            let p = prepared[i].as_ref().expect("a running stage was prepared");
            match result {
                JobResult::Ran { record } => {
                    let seconds = record.duration_s;
                    self.reporter.event(&Event::Finished {
                        stage: stage.id.clone(),
                        artifact: record.artifact,
                        seconds,
                    });
                    if let Some(pinned) = self.lock.pinned(&stage.id) {
                        if pinned.key == p.key && pinned.output != record.artifact {
                            self.reporter.event(&Event::Warning {
                                stage: stage.id.clone(),
                                message: format!(
                                    "non-reproducible stage: rebuilt under the same key, its output is {} but the lock pins {}",
                                    record.artifact.short(),
                                    pinned.output.short()
                                ),
                            });
                        }
                    }
                    self.lock
                        .record(&stage.id, &entry_of(&p.fp, &p.key, &record))?;
                    board.outcomes[i] = Some(Outcome::Ran {
                        artifact: record.artifact,
                        seconds,
                    });
                    board.done(i, record.artifact);
                }
                JobResult::Joined { record } => board.reuse(
                    spec,
                    i,
                    &p.fp,
                    &p.key,
                    &record,
                    true,
                    &mut lock_pending,
                    self.reporter.as_ref(),
                ),
                JobResult::Failed(error) => {
                    let interrupted_now = self.cancel.load(Ordering::Relaxed);
                    let error = if interrupted_now {
                        "interrupted".to_string()
                    } else {
                        error
                    };
                    board.fail(spec, i, error, self.reporter.as_ref());
                    if !interrupted_now {
                        first_failure.get_or_insert(stage.id.clone());
                    }
                }
            }
        }
        self.lock.finish(&lock_pending)?;
        let mut stages = Vec::new();
        for p in &plan.stages {
            let i = p.index;
            let outcome = match board.outcomes[i].take() {
                Some(o) => o,
                None => {
                    let reason = if interrupted {
                        "interrupted before it started".to_string()
                    } else if let Some(f) = &first_failure {
                        format!("not started: stage `{f}` failed (use --keep-going to run what does not depend on it)")
                    } else {
                        "not started".to_string()
                    };
                    self.reporter.event(&Event::Skipped {
                        stage: spec.stages[i].id.clone(),
                        reason: reason.clone(),
                    });
                    Outcome::Skipped { reason }
                }
            };
            stages.push((spec.stages[i].id.clone(), outcome));
        }
        Ok(RunSummary {
            stages,
            interrupted,
        })
    }

    /// Keys a stage whose inputs are now all done but were not known when planning (an
    /// upstream stage ran): its fingerprint from the artifacts it will read, a cache lookup, and
    /// the kind's estimate refined with the input folders.
    fn rekey(
        &self,
        plan: &Plan,
        board: &Board,
        descriptions: &mut [Option<serde_json::Value>],
        i: usize,
    ) -> Result<Rekeyed, EngineError> {
        let spec = &self.spec;
        let stage = &spec.stages[i];
        let planned = plan.get(i).expect("only planned stages become ready");
        let (fp, key) = match (&planned.fingerprint, planned.key) {
            // Every input was reused: the plan's key and lookup stand.
            (Some(fp), Some(key)) => (fp.clone(), key),
            _ => match self.key_from_inputs(plan, board, i)? {
                Ok((fp, key, None)) => (fp, key),
                Ok((fp, key, Some(rec))) => return Ok(Rekeyed::Cached(fp, key, rec)),
                Err(error) => return Ok(Rekeyed::Failed(error)),
            },
        };
        // With the input folders at hand, ask the kind again (a better estimate).
        let paths: BTreeMap<String, PathBuf> = fp
            .inputs
            .iter()
            .filter_map(|(slot, a)| self.cache.artifact_dir(a).ok().map(|p| (slot.clone(), p)))
            .collect();
        let pi = plan_inputs(spec, stage, descriptions, &paths);
        if let Ok(Some(d)) = stage.stage.describe(&stage.params, &pi) {
            descriptions[i] = Some(d);
        }
        let resources = match effective_resources(stage, &pi) {
            Ok(r) if self.inventory.check(&r).is_ok() => r,
            _ => planned.resources,
        };
        Ok(Rekeyed::Run(Prepared {
            fp,
            key,
            resources,
            waiting_reported: false,
        }))
    }

    /// The key of a stage from the artifacts its inputs produced in this run, and the cached
    /// record under it, if any (Err: its deps cannot be hashed).
    #[allow(clippy::type_complexity)]
    fn key_from_inputs(
        &self,
        plan: &Plan,
        board: &Board,
        i: usize,
    ) -> Result<Result<(Fingerprint, CacheKey, Option<Box<RunRecord>>), String>, EngineError> {
        let spec = &self.spec;
        let stage = &spec.stages[i];
        let inputs: BTreeMap<String, ArtifactId> = stage
            .inputs
            .iter()
            .map(|(slot, &u)| match &board.state[u] {
                State::Done(a) => (slot.clone(), *a),
                _ => unreachable!("a ready stage's inputs are done"),
            })
            .collect();
        let deps = match deps_digests(spec, stage, &self.cache) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let fp = fingerprint(stage, inputs, deps);
        let key = fp.key();
        if !plan.forced[i] && stage.cache {
            if let Lookup::Hit(rec) = lookup(&self.cache, &key)? {
                return Ok(Ok((fp, key, Some(rec))));
            }
        }
        Ok(Ok((fp, key, None)))
    }
}

enum Rekeyed {
    Cached(Fingerprint, CacheKey, Box<RunRecord>),
    Run(Prepared),
    Failed(String),
}

/// The run record's memory: the estimates the stage was scheduled with and, when it ran in a
/// process of its own, its measured peak (no GPU query in this build: no GPU peak).
fn memory_of(r: &Resources, peak_host: Option<u64>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::from([
        ("estimated_host_bytes".to_string(), r.host_memory),
        ("estimated_gpu_bytes".to_string(), r.gpu_memory),
    ]);
    if let Some(p) = peak_host {
        m.insert("peak_host_bytes".to_string(), p);
    }
    m
}

/// The lock entry of a stage that produced (or reused) `rec` under `key`.
fn entry_of(fp: &Fingerprint, key: &CacheKey, rec: &RunRecord) -> LockEntry {
    fp.lock_entry(
        key,
        &rec.artifact,
        metrics_of(&rec.metrics),
        rec.devices.clone(),
    )
}

/// The metrics kept in the lock file: every numeric field of `metrics.json`, nested ones under
/// dotted names (`tasks.hellaswag.acc`), so `pollard metrics diff` can compare any of them.
fn metrics_of(m: &serde_json::Value) -> Option<serde_json::Value> {
    crate::diff::numeric_metrics(m)
}

/// Keeps a stage's log lines (for its run record) while passing them on.
struct Capture {
    inner: Arc<dyn Reporter>,
    log: Mutex<String>,
}

/// The most log text a run record keeps (the tail).
const LOG_LIMIT: usize = 256 * 1024;

impl ProgressSink for Capture {
    fn progress(&self, stage: &str, p: &Progress) {
        self.inner.progress(stage, p);
    }
    fn log(&self, stage: &str, line: &str) {
        self.inner.log(stage, line);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push_str(line);
        log.push('\n');
        if log.len() > 2 * LOG_LIMIT {
            let cut = log.len() - LOG_LIMIT;
            let cut = (cut..log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(log.len());
            log.drain(..cut);
        }
    }
}

struct Job {
    index: usize,
    spec: Arc<PipelineSpec>,
    cache: Arc<Cache>,
    key: CacheKey,
    fp: Fingerprint,
    forced: bool,
    resources: Resources,
    executor: Arc<dyn Executor>,
    lease: Lease,
    reporter: Arc<dyn Reporter>,
    cancel: Arc<AtomicBool>,
    failure_logs: PathBuf,
}

impl Job {
    /// Saves a failed stage's output and says where.
    fn keep_log(&self, capture: &Capture, msg: String) -> String {
        let log = capture
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if log.is_empty() {
            return msg;
        }
        let path = self
            .failure_logs
            .join(format!("{}.log", self.spec.stages[self.index].id));
        match std::fs::create_dir_all(&self.failure_logs).and_then(|_| std::fs::write(&path, log)) {
            Ok(()) => format!("{msg} (output in {})", path.display()),
            Err(_) => msg,
        }
    }

    fn execute(self) -> JobResult {
        match self.try_execute() {
            Ok(r) => r,
            Err(e) => JobResult::Failed(e.to_string()),
        }
    }

    fn try_execute(&self) -> Result<JobResult, EngineError> {
        let stage = &self.spec.stages[self.index];
        // One process computes a key at a time; a second run waits here, then finds the record.
        let _key_lock = self.cache.lock_key(&self.key)?;
        if !self.forced {
            if let Lookup::Hit(record) = lookup(&self.cache, &self.key)? {
                return Ok(JobResult::Joined { record });
            }
        }
        let mut inputs = Inputs::default();
        for (slot, &up) in &stage.inputs {
            let artifact = self.fp.inputs[slot];
            let path = self.cache.artifact_dir(&artifact)?;
            inputs.slots.insert(
                slot.clone(),
                InputArtifact {
                    stage: self.spec.stages[up].id.clone(),
                    path,
                    artifact,
                },
            );
        }
        let staging = self.cache.staging()?;
        let scratch = self
            .cache
            .root()
            .join("scratch")
            .join(self.key.digest().to_hex());
        std::fs::create_dir_all(&scratch).map_err(|e| {
            EngineError::Usage(format!(
                "cannot create scratch folder {}: {e}",
                scratch.display()
            ))
        })?;
        let capture = Arc::new(Capture {
            inner: self.reporter.clone(),
            log: Mutex::new(String::new()),
        });
        let mut ctx = StageCtx::new(
            stage.id.clone(),
            staging.path().to_path_buf(),
            scratch.clone(),
            self.lease.gpus.clone(),
            self.lease.cpus,
            capture.clone(),
            self.cancel.clone(),
        )
        .with_workdir(self.spec.dir.clone());
        let started = Timestamp::now();
        let t0 = Instant::now();
        let task = Task {
            pipeline: &self.spec.name,
            stage,
            key: self.key,
            artifacts: &self.fp.inputs,
            resources: self.resources,
            cache_root: self.cache.root(),
            out_dir: staging.path(),
            scratch: &scratch,
        };
        let outcome = self
            .executor
            .run(&task, &mut ctx, &inputs, capture.as_ref(), &self.cancel);
        let duration_s = t0.elapsed().as_secs_f64();
        let ran = match outcome {
            Ok(ran) => ran,
            Err(msg) => return Ok(JobResult::Failed(self.keep_log(&capture, msg))),
        };
        if self.cancel.load(Ordering::Relaxed) {
            return Ok(JobResult::Failed("interrupted".into()));
        }
        let used: Vec<_> = self
            .fp
            .inputs
            .iter()
            .map(|(s, a)| (s.clone(), *a))
            .collect();
        if let Some(msg) = crate::input_guard::changed_inputs(&self.cache, &stage.id, &used)? {
            return Ok(JobResult::Failed(self.keep_log(&capture, msg)));
        }
        let metrics = std::fs::read(staging.path().join("metrics.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let artifact = self.cache.commit(staging)?;
        let devices = ran.devices.unwrap_or_else(|| {
            Allocation {
                gpus: self.lease.gpus.clone(),
                threads: self.lease.cpus,
            }
            .devices()
        });
        let record = RunRecord {
            key: self.key,
            stage: stage.id.to_string(),
            kind: stage.kind.clone(),
            artifact,
            fingerprint: self.fp.parts(),
            metrics,
            inputs: self.fp.inputs.clone(),
            started,
            finished: Timestamp::now(),
            duration_s,
            devices,
            memory: memory_of(&self.resources, ran.peak_host_bytes),
            log: Some(
                capture
                    .log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
        };
        self.cache.put_record(&record)?;
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(JobResult::Ran {
            record: Box::new(record),
        })
    }
}
