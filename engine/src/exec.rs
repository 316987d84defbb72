//! Schedule and execute: stages start as soon as their inputs exist and their resources are free;
//! each runs into a fresh staging folder that the cache commits atomically; its run record goes
//! into the cache and its entry into the lock file. A stage already in the cache under its key
//! is reused without running. Failure stops new starts (unless `keep_going`); an interrupt stops
//! the running stages and commits nothing half-done.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pollard_cache::{ArtifactId, Cache, CacheKey, RunRecord, Timestamp};
use serde::Serialize;

use crate::diag::{Diagnostic, Diagnostics};
use crate::error::EngineError;
use crate::lockfile::{LockEntry, LockWriter};
use crate::plan::{deps_digests, fingerprint, lookup, Fingerprint, Lookup, Selection};
use crate::resources::{Inventory, Lease, Pool};
use crate::spec::{PipelineSpec, StageSpec};
use crate::stage::{
    InputArtifact, Inputs, PlanInput, PlanInputs, Progress, ProgressSink, Resources, StageCtx,
};

/// What happens to stages during a run, for the command line to render.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Reused {
        stage: String,
        artifact: String,
    },
    Waiting {
        stage: String,
        gpus: u32,
        gpu_memory: u64,
        cpus: u32,
    },
    Started {
        stage: String,
        gpus: Vec<u32>,
        threads: usize,
    },
    Finished {
        stage: String,
        artifact: String,
        seconds: f64,
    },
    /// Another run computed the stage while this one waited for its key.
    Joined {
        stage: String,
        artifact: String,
    },
    Failed {
        stage: String,
        error: String,
    },
    Skipped {
        stage: String,
        reason: String,
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
    Reused { artifact: String },
    Ran { artifact: String, seconds: f64 },
    Failed { error: String },
    Skipped { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Selected stages in topological order.
    pub stages: Vec<(String, Outcome)>,
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
    pub targets: Vec<String>,
    pub force: Vec<String>,
    pub force_all: bool,
    pub jobs: Option<usize>,
    pub keep_going: bool,
}

/// A stage's request: the kind's estimate with the manifest's `resources` fields on top.
pub fn effective_resources(stage: &StageSpec, inputs: &PlanInputs) -> Result<Resources, String> {
    let mut r = stage
        .stage
        .resources(&stage.params, inputs)
        .map_err(|e| format!("cannot estimate resources: {e}"))?;
    let o = &stage.resources;
    if let Some(g) = o.gpus {
        r.gpus = g;
    }
    if let Some(m) = o.gpu_memory {
        r.gpu_memory = m.0;
    }
    if let Some(c) = o.cpus {
        r.cpus = c;
    }
    if let Some(h) = o.host_memory {
        r.host_memory = h.0;
    }
    Ok(r)
}

/// Plans every selected stage's resources from the kinds' descriptions (before anything runs)
/// and refuses, with the numbers, requests no device could meet.
pub fn plan_resources(
    spec: &PipelineSpec,
    sel: &Selection,
    inventory: &Inventory,
) -> Result<Vec<Resources>, EngineError> {
    plan_with_descriptions(spec, sel, inventory).map(|(r, _)| r)
}

type Planned = (Vec<Resources>, Vec<Option<serde_json::Value>>);

/// [`plan_resources`] plus each kind's description of its output (for the run to refine).
fn plan_with_descriptions(
    spec: &PipelineSpec,
    sel: &Selection,
    inventory: &Inventory,
) -> Result<Planned, EngineError> {
    let n = spec.stages.len();
    let mut descriptions: Vec<Option<serde_json::Value>> = vec![None; n];
    let mut out = vec![Resources::default(); n];
    let mut diags = Diagnostics::default();
    for &i in &spec.order {
        if !sel.selected[i] {
            continue;
        }
        let stage = &spec.stages[i];
        let inputs = plan_inputs(spec, stage, &descriptions, &BTreeMap::new());
        descriptions[i] = stage.stage.describe(&stage.params, &inputs).ok().flatten();
        let problem = match effective_resources(stage, &inputs) {
            Ok(r) => {
                out[i] = r;
                inventory.check(&r).err()
            }
            Err(e) => Some(e),
        };
        if let Some(message) = problem {
            diags.0.push(Diagnostic {
                file: spec.file.clone(),
                line: stage.pos.line,
                col: stage.pos.col,
                stage: Some(stage.id.clone()),
                message,
            });
        }
    }
    if diags.is_empty() {
        Ok((out, descriptions))
    } else {
        Err(EngineError::Manifest(diags))
    }
}

fn plan_inputs(
    spec: &PipelineSpec,
    stage: &StageSpec,
    descriptions: &[Option<serde_json::Value>],
    paths: &BTreeMap<String, PathBuf>,
) -> PlanInputs {
    let mut p = PlanInputs::default();
    for (slot, &up) in &stage.inputs {
        p.slots.insert(
            slot.clone(),
            PlanInput {
                stage: spec.stages[up].id.clone(),
                description: descriptions[up].clone(),
                path: paths.get(slot).cloned(),
            },
        );
    }
    p
}

#[derive(Clone, PartialEq)]
enum State {
    Pending,
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
}

impl Runner {
    pub fn run(&self, opts: &RunOptions) -> Result<RunSummary, EngineError> {
        let spec = &self.spec;
        let sel = Selection::new(spec, &opts.targets, &opts.force, opts.force_all)?;
        let (planned, mut descriptions) = plan_with_descriptions(spec, &sel, &self.inventory)?;
        let pool = Pool::new(self.inventory.clone(), opts.jobs);
        let n = spec.stages.len();
        let mut state = vec![State::Pending; n];
        let mut prepared: Vec<Option<Prepared>> = (0..n).map(|_| None).collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut lock_pending: BTreeMap<String, LockEntry> = BTreeMap::new();
        let (tx, rx) = mpsc::channel::<(usize, JobResult)>();
        let mut running = 0usize;
        let mut first_failure: Option<String> = None;
        let mut interrupted = false;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                interrupted = true;
            }
            let stop = interrupted || (first_failure.is_some() && !opts.keep_going);
            for &i in &spec.order {
                if !sel.selected[i] || state[i] != State::Pending {
                    continue;
                }
                let stage = &spec.stages[i];
                let ups: Vec<usize> = stage.inputs.values().copied().collect();
                if let Some(&bad) = ups
                    .iter()
                    .find(|&&u| matches!(state[u], State::Failed | State::Skipped))
                {
                    let reason = format!(
                        "needs `{}`, which {}",
                        spec.stages[bad].id,
                        if state[bad] == State::Failed {
                            "failed"
                        } else {
                            "did not run"
                        }
                    );
                    self.reporter.event(&Event::Skipped {
                        stage: stage.id.clone(),
                        reason: reason.clone(),
                    });
                    state[i] = State::Skipped;
                    outcomes[i] = Some(Outcome::Skipped { reason });
                    continue;
                }
                if !ups.iter().all(|&u| matches!(state[u], State::Done(_))) {
                    continue;
                }
                if prepared[i].is_none() {
                    let inputs: BTreeMap<String, ArtifactId> = stage
                        .inputs
                        .iter()
                        .map(|(slot, &u)| match &state[u] {
                            State::Done(a) => (slot.clone(), *a),
                            _ => unreachable!("checked above: every upstream is done"),
                        })
                        .collect();
                    let deps = match deps_digests(spec, stage, &self.cache) {
                        Ok(d) => d,
                        Err(e) => {
                            let error = e.to_string();
                            self.reporter.event(&Event::Failed {
                                stage: stage.id.clone(),
                                error: error.clone(),
                            });
                            state[i] = State::Failed;
                            outcomes[i] = Some(Outcome::Failed { error });
                            first_failure.get_or_insert(stage.id.clone());
                            continue;
                        }
                    };
                    let fp = fingerprint(stage, inputs, deps);
                    let key = fp.key();
                    if !sel.forced[i] && stage.cache {
                        if let Lookup::Hit(rec) = lookup(&self.cache, &key)? {
                            self.reporter.event(&Event::Reused {
                                stage: stage.id.clone(),
                                artifact: rec.artifact.to_string(),
                            });
                            lock_pending.insert(
                                stage.id.clone(),
                                fp.lock_entry(
                                    &key,
                                    &rec.artifact,
                                    metrics_of(&rec.metrics),
                                    rec.devices.clone(),
                                ),
                            );
                            state[i] = State::Done(rec.artifact);
                            outcomes[i] = Some(Outcome::Reused {
                                artifact: rec.artifact.to_string(),
                            });
                            continue;
                        }
                    }
                    // With inputs known, ask the kind again with their folders (a better estimate).
                    let paths: BTreeMap<String, PathBuf> = stage
                        .inputs
                        .iter()
                        .filter_map(|(slot, &u)| match &state[u] {
                            State::Done(a) => {
                                self.cache.artifact_dir(a).ok().map(|p| (slot.clone(), p))
                            }
                            _ => None,
                        })
                        .collect();
                    let pi = plan_inputs(spec, stage, &descriptions, &paths);
                    if let Ok(Some(d)) = stage.stage.describe(&stage.params, &pi) {
                        descriptions[i] = Some(d);
                    }
                    let resources = match effective_resources(stage, &pi) {
                        Ok(r) if self.inventory.check(&r).is_ok() => r,
                        _ => planned[i],
                    };
                    prepared[i] = Some(Prepared {
                        fp,
                        key,
                        resources,
                        waiting_reported: false,
                    });
                }
                if stop {
                    continue;
                }
                let p = prepared[i].as_mut().expect("prepared just above");
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
                self.reporter.event(&Event::Started {
                    stage: stage.id.clone(),
                    gpus: lease.gpus.clone(),
                    threads: lease.cpus,
                });
                state[i] = State::Running;
                running += 1;
                let job = Job {
                    index: i,
                    spec: spec.clone(),
                    cache: self.cache.clone(),
                    key: p.key,
                    fp: p.fp.clone(),
                    forced: sel.forced[i] || !stage.cache,
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
            if !lock_pending.is_empty() && running == 0 {
                self.lock.update(&lock_pending)?;
                lock_pending.clear();
            }
            if running == 0 {
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
                        artifact: record.artifact.to_string(),
                        seconds,
                    });
                    lock_pending.insert(
                        stage.id.clone(),
                        p.fp.lock_entry(
                            &p.key,
                            &record.artifact,
                            metrics_of(&record.metrics),
                            record.devices.clone(),
                        ),
                    );
                    self.lock.update(&lock_pending)?;
                    lock_pending.clear();
                    state[i] = State::Done(record.artifact);
                    outcomes[i] = Some(Outcome::Ran {
                        artifact: record.artifact.to_string(),
                        seconds,
                    });
                }
                JobResult::Joined { record } => {
                    self.reporter.event(&Event::Joined {
                        stage: stage.id.clone(),
                        artifact: record.artifact.to_string(),
                    });
                    lock_pending.insert(
                        stage.id.clone(),
                        p.fp.lock_entry(
                            &p.key,
                            &record.artifact,
                            metrics_of(&record.metrics),
                            record.devices.clone(),
                        ),
                    );
                    state[i] = State::Done(record.artifact);
                    outcomes[i] = Some(Outcome::Reused {
                        artifact: record.artifact.to_string(),
                    });
                }
                JobResult::Failed(error) => {
                    let interrupted_now = self.cancel.load(Ordering::Relaxed);
                    let error = if interrupted_now {
                        "interrupted".to_string()
                    } else {
                        error
                    };
                    self.reporter.event(&Event::Failed {
                        stage: stage.id.clone(),
                        error: error.clone(),
                    });
                    state[i] = State::Failed;
                    outcomes[i] = Some(Outcome::Failed { error });
                    if !interrupted_now {
                        first_failure.get_or_insert(stage.id.clone());
                    }
                }
            }
        }
        let mut stages = Vec::new();
        for &i in &spec.order {
            if !sel.selected[i] {
                continue;
            }
            let outcome = match outcomes[i].take() {
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
                    artifact: artifact.to_string(),
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
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            stage.stage.run(&mut ctx, &stage.params, &inputs)
        }));
        let duration_s = t0.elapsed().as_secs_f64();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let mut msg = e.to_string();
                let mut src = e.source();
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                return Ok(JobResult::Failed(self.keep_log(&capture, msg)));
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Ok(JobResult::Failed(
                    self.keep_log(&capture, format!("the stage panicked: {what}")),
                ));
            }
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Ok(JobResult::Failed("interrupted".into()));
        }
        let metrics = std::fs::read(staging.path().join("metrics.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let artifact = self.cache.commit(staging)?;
        let devices = if self.lease.gpus.is_empty() {
            vec![format!("cpu x{}", self.lease.cpus)]
        } else {
            self.lease.gpus.iter().map(|g| format!("gpu:{g}")).collect()
        };
        let record = RunRecord {
            key: self.key,
            stage: stage.id.clone(),
            kind: stage.kind.clone(),
            artifact,
            fingerprint: self.fp.parts(),
            metrics,
            inputs: self.fp.inputs.clone(),
            started,
            finished: Timestamp::now(),
            duration_s,
            devices,
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
