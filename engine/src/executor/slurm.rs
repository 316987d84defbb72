//! The Slurm executor: each stage the run loop starts becomes one batch job named
//! `pollard:<pipeline>:<stage>` that runs `pollard stage-job SPEC` with the spec in the stage's
//! scratch folder in the cache (a shared filesystem on a cluster). The job writes into a folder
//! beside its spec; when it has COMPLETED with exit code 0, the driver moves that folder's
//! contents into the staging folder the run loop commits, under the key lock it holds, so a
//! Slurm run commits exactly as a local one does and nothing half-written is committed.
//!
//! The driver follows jobs with `scontrol show job` (no `sacct` without slurmdbd), forwards the
//! job's log lines as they appear, cancels its jobs (`scancel`) on an interrupt, and records each
//! job id under `.pollard/slurm/`, so a rerun after a killed driver re-attaches to a job that is
//! still queued or running (or finished unseen) instead of submitting it twice. A job lost to
//! a node failure or preemption is submitted again. Requests no node can meet are refused
//! before anything is submitted (`sbatch --test-only`).

use crate::stage_id::StageId;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Executor, Ran, Task};
use crate::diag::{Diagnostic, Diagnostics};
use crate::error::EngineError;
use crate::job::{allocation_path, forward_line, Allocation, Isolation, JobSpec};
use crate::resources::{Gpu, Inventory};
use crate::spec::PipelineSpec;
use crate::stage::{Inputs, Progress, ProgressSink, Resources, StageCtx};

/// What every job of a run is submitted with (`--partition`, `--account`, `--time`, and
/// further `sbatch` arguments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<String>,
    pub extra: Vec<String>,
}

pub struct SlurmExecutor {
    pub options: SlurmOptions,
    /// This binary, `stage-job`, and the manifest's text for the job spec.
    pub isolation: Isolation,
    /// Where job ids are recorded (`.pollard/slurm`).
    pub jobs_dir: PathBuf,
}

/// How often a job's state is read at first; the interval doubles up to `POLL_MAX`.
const POLL_MIN: Duration = Duration::from_millis(25);
const POLL_MAX: Duration = Duration::from_millis(400);
/// How many times a job lost to the cluster (node failure, preemption) is submitted again.
const RESUBMITS: usize = 3;
/// Lines of a failed job's stderr and output quoted in its error.
const TAIL_LINES: usize = 10;

/// The job id recorded for a stage's key while its job is in flight.
#[derive(Serialize, Deserialize)]
struct Recorded {
    job: u64,
    stage: StageId,
}

/// What `scontrol show job` says about a job.
#[derive(Debug, Clone, PartialEq)]
enum JobState {
    /// Queued, running, completing: not finished.
    Live(String),
    /// Finished: the state (`COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, ...) and `ExitCode`.
    Ended { state: String, exit: String },
    /// Slurm no longer knows the job (older than `MinJobAge`, or never existed).
    Gone,
}

impl JobState {
    fn succeeded(&self) -> bool {
        matches!(self, JobState::Ended { state, exit } if state == "COMPLETED" && exit == "0:0")
    }
    /// Lost to the cluster rather than failed by the stage: worth submitting again.
    fn lost(&self) -> bool {
        matches!(self, JobState::Ended { state, .. }
            if matches!(state.as_str(), "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL"))
    }
}

/// Reads `JobState` and `ExitCode` from one line of `scontrol show job -o`.
fn parse_job_state(line: &str) -> Option<JobState> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let state = field("JobState")?;
    Ok::<_, ()>(match state.as_str() {
        "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "PREEMPTED"
        | "BOOT_FAIL" | "DEADLINE" | "OUT_OF_MEMORY" => JobState::Ended {
            exit: field("ExitCode").unwrap_or_else(|| "?".into()),
            state,
        },
        _ => JobState::Live(state),
    })
    .ok()
}

fn query(job: u64) -> Result<JobState, String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", &job.to_string()])
        .output()
        .map_err(|e| format!("cannot run scontrol: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        if let Some(s) = text.lines().find_map(parse_job_state) {
            return Ok(s);
        }
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Invalid job id") {
        return Ok(JobState::Gone);
    }
    Err(format!(
        "scontrol show job {job} failed: {}",
        err.trim().lines().last().unwrap_or("no output")
    ))
}

fn scancel(job: u64) {
    let _ = Command::new("scancel").arg(job.to_string()).output();
}

/// Single quotes for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last `n` lines of a file (empty when it cannot be read).
fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Forwards what a job appended to its output file since the last call (whole lines only),
/// keeping the last log lines for a failure message.
struct Follow {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    last: Mutex<VecDeque<String>>,
}

impl Follow {
    fn new(path: PathBuf) -> Follow {
        Follow {
            path,
            offset: 0,
            partial: Vec::new(),
            last: Mutex::new(VecDeque::new()),
        }
    }

    fn pump(&mut self, sink: &dyn ProgressSink, stage: &str) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let keep = Keep {
            sink,
            last: &self.last,
        };
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            forward_line(
                &keep,
                stage,
                &String::from_utf8_lossy(&line[..line.len() - 1]),
            );
        }
    }

    fn last_lines(&self) -> Vec<String> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// A sink that passes everything on and keeps the last log lines.
struct Keep<'a> {
    sink: &'a dyn ProgressSink,
    last: &'a Mutex<VecDeque<String>>,
}

impl ProgressSink for Keep<'_> {
    fn progress(&self, stage: &str, p: &Progress) {
        self.sink.progress(stage, p);
    }
    fn log(&self, stage: &str, line: &str) {
        self.sink.log(stage, line);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() == TAIL_LINES {
            last.pop_front();
        }
        last.push_back(line.to_string());
    }
}

/// A job's files in the stage's scratch folder.
struct JobFiles {
    spec: PathBuf,
    out: PathBuf,
    tmp: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl JobFiles {
    fn new(scratch: &Path) -> JobFiles {
        JobFiles {
            spec: scratch.join("job.json"),
            out: scratch.join("out"),
            tmp: scratch.join("tmp"),
            stdout: scratch.join("slurm.out"),
            stderr: scratch.join("slurm.err"),
        }
    }

    /// Empty output and scratch folders, no files of an earlier attempt.
    fn reset(&self) -> Result<(), String> {
        for f in [&self.stdout, &self.stderr, &allocation_path(&self.spec)] {
            let _ = std::fs::remove_file(f);
        }
        for d in [&self.out, &self.tmp] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        Ok(())
    }
}

impl SlurmExecutor {
    /// What the run loop grants from under Slurm: the cluster places jobs, so the driver only
    /// bounds how many it has in flight; devices are read back from each job's allocation.
    pub fn inventory() -> Inventory {
        Inventory {
            gpus: (0..256)
                .map(|ordinal| Gpu {
                    ordinal,
                    name: "slurm".into(),
                    memory: u64::MAX,
                })
                .collect(),
            cpus: 4096,
            host_memory: 0,
            source: "Slurm (the cluster places stages)".into(),
        }
    }

    /// The `sbatch` arguments a stage's resources and the run's options ask for.
    fn request(&self, r: &Resources) -> Vec<String> {
        let mut args = Vec::new();
        if r.gpus > 0 {
            args.push(format!("--gres=gpu:{}", r.gpus));
        }
        if r.cpus > 0 {
            args.push(format!("--cpus-per-task={}", r.cpus));
        }
        if r.host_memory > 0 {
            args.push(format!("--mem={}M", r.host_memory.div_ceil(1 << 20)));
        }
        let o = &self.options;
        if let Some(t) = &o.time {
            args.push(format!("--time={t}"));
        }
        if let Some(p) = &o.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &o.account {
            args.push(format!("--account={a}"));
        }
        args.extend(o.extra.iter().cloned());
        args
    }

    fn record_path(&self, task: &Task) -> PathBuf {
        self.jobs_dir
            .join(format!("{}.json", task.key.digest().to_hex()))
    }

    /// The recorded job of a killed driver worth attaching to: still in Slurm's hands, or
    /// finished successfully with its output in place.
    fn recorded(&self, task: &Task, files: &JobFiles) -> Option<u64> {
        let text = std::fs::read_to_string(self.record_path(task)).ok()?;
        let rec: Recorded = serde_json::from_str(&text).ok()?;
        match query(rec.job).ok()? {
            JobState::Live(_) => Some(rec.job),
            s if s.succeeded() && files.out.is_dir() => Some(rec.job),
            _ => None,
        }
    }

    fn record(&self, task: &Task, job: u64) -> Result<(), String> {
        let path = self.record_path(task);
        std::fs::create_dir_all(&self.jobs_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.jobs_dir.display()))?;
        let tmp = path.with_extension("tmp");
        let rec = Recorded {
            job,
            stage: task.stage.id.clone(),
        };
        std::fs::write(&tmp, serde_json::to_vec(&rec).expect("a record serialises"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot record job {job} in {}: {e}", path.display()))
    }

    fn forget(&self, task: &Task) {
        let _ = std::fs::remove_file(self.record_path(task));
    }

    /// Writes the job spec and submits it; the job id.
    fn submit(&self, task: &Task, files: &JobFiles) -> Result<u64, String> {
        files.reset()?;
        let spec = JobSpec {
            manifest: self.isolation.manifest.clone(),
            stage: task.stage.id.clone(),
            cache_root: task.cache_root.to_path_buf(),
            inputs: task.artifacts.clone(),
            out_dir: files.out.clone(),
            scratch_dir: files.tmp.clone(),
            gpus: Vec::new(),
            threads: task.resources.cpus.max(1) as usize,
            from_allocation: true,
        };
        std::fs::write(
            &files.spec,
            serde_json::to_vec_pretty(&spec).expect("a job spec serialises"),
        )
        .map_err(|e| format!("cannot write job {}: {e}", files.spec.display()))?;
        let mut wrap = format!("exec {}", quote(&self.isolation.exe.to_string_lossy()));
        for a in &self.isolation.args {
            wrap.push(' ');
            wrap.push_str(&quote(a));
        }
        wrap.push(' ');
        wrap.push_str(&quote(&files.spec.to_string_lossy()));
        let out = Command::new("sbatch")
            .arg("--parsable")
            .arg(format!(
                "--job-name=pollard:{}:{}",
                task.pipeline, task.stage.id
            ))
            .arg(format!("--output={}", files.stdout.display()))
            .arg(format!("--error={}", files.stderr.display()))
            .arg(format!("--chdir={}", self.isolation.manifest.dir.display()))
            .arg("--export=ALL")
            .args(self.request(&task.resources))
            .arg(format!("--wrap={wrap}"))
            .output()
            .map_err(|e| format!("cannot run sbatch: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .trim()
            .split(';')
            .next()
            .and_then(|id| id.parse::<u64>().ok());
        match id {
            Some(id) if out.status.success() => {
                self.record(task, id)?;
                Ok(id)
            }
            _ => Err(format!(
                "sbatch refused the job: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// Follows `job` until it ends (or `cancel` is set: then cancels it).
    fn follow(
        &self,
        job: u64,
        follow: &mut Follow,
        stage: &str,
        sink: &dyn ProgressSink,
        cancel: &AtomicBool,
    ) -> Result<JobState, String> {
        let mut nap = POLL_MIN;
        let mut shown = String::new();
        loop {
            follow.pump(sink, stage);
            if cancel.load(Ordering::Relaxed) {
                scancel(job);
                return Err("interrupted".into());
            }
            match query(job)? {
                JobState::Live(s) => {
                    if s != shown {
                        sink.progress(
                            stage,
                            &Progress {
                                message: Some(format!("Slurm job {job} {s}")),
                                ..Progress::default()
                            },
                        );
                        shown = s;
                    }
                }
                ended => {
                    // The job's last lines may land after its state changes.
                    std::thread::sleep(POLL_MIN);
                    follow.pump(sink, stage);
                    return Ok(ended);
                }
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(POLL_MAX);
        }
    }
}

/// Moves a finished job's output into the staging folder the run loop commits.
fn move_into(from: &Path, to: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        let dest = to.join(e.file_name());
        std::fs::rename(e.path(), &dest)
            .map_err(|err| format!("cannot move {} into staging: {err}", e.path().display()))?;
    }
    Ok(())
}

impl Executor for SlurmExecutor {
    fn preflight(
        &self,
        spec: &PipelineSpec,
        stages: &[(usize, Resources)],
    ) -> Result<(), EngineError> {
        let mut verdicts: BTreeMap<Vec<String>, Option<String>> = BTreeMap::new();
        let mut diags = Diagnostics::default();
        for &(i, r) in stages {
            let args = self.request(&r);
            if !verdicts.contains_key(&args) {
                let out = Command::new("sbatch")
                    .arg("--test-only")
                    .args(&args)
                    .arg("--wrap=true")
                    .output()
                    .map_err(|e| {
                        EngineError::Usage(format!(
                            "--executor slurm needs `sbatch` on PATH: cannot run it: {e}"
                        ))
                    })?;
                let refusal = (!out.status.success()).then(|| {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let why = err
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no reason given")
                        .trim()
                        .to_string();
                    format!("Slurm cannot place this stage ({}): {why}", args.join(" "))
                });
                verdicts.insert(args.clone(), refusal);
            }
            if let Some(message) = &verdicts[&args] {
                diags.0.push(Diagnostic::at_stage(spec, i, message.clone()));
            }
        }
        if diags.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Manifest(diags))
        }
    }

    fn run(
        &self,
        task: &Task,
        _ctx: &mut StageCtx,
        _inputs: &Inputs,
        sink: &dyn ProgressSink,
        cancel: &AtomicBool,
    ) -> Result<Ran, String> {
        let stage = &task.stage.id;
        let files = JobFiles::new(task.scratch);
        let mut job = match self.recorded(task, &files) {
            Some(job) => {
                sink.log(stage, &format!("re-attached to Slurm job {job}"));
                job
            }
            None => self.submit(task, &files)?,
        };
        let mut attempts = 1;
        let ended = loop {
            let mut follow = Follow::new(files.stdout.clone());
            let ended = match self.follow(job, &mut follow, stage, sink, cancel) {
                Ok(s) => s,
                Err(e) => {
                    self.forget(task);
                    return Err(e);
                }
            };
            if ended.lost() && attempts <= RESUBMITS {
                sink.log(
                    stage,
                    &format!("Slurm job {job} was lost ({ended:?}); submitting it again"),
                );
                attempts += 1;
                job = self.submit(task, &files)?;
                continue;
            }
            break (ended, follow.last_lines());
        };
        self.forget(task);
        let (state, output) = ended;
        if !state.succeeded() {
            let how = match &state {
                JobState::Ended { state, exit } => {
                    let code = exit.split(':').next().unwrap_or(exit);
                    format!("Slurm job {job} {state} with exit code {code}")
                }
                JobState::Gone => format!("Slurm job {job} vanished before pollard saw it end"),
                JobState::Live(s) => format!("Slurm job {job} is still {s}"),
            };
            let err: Vec<String> = tail(&files.stderr, TAIL_LINES)
                .into_iter()
                .map(|l| l.strip_prefix("error: ").unwrap_or(&l).to_string())
                .collect();
            let mut msg = how;
            if !err.is_empty() {
                msg.push_str(": ");
                msg.push_str(&err.join("\n"));
            }
            let output: Vec<String> = output.into_iter().filter(|l| !err.contains(l)).collect();
            if !output.is_empty() {
                msg.push_str("\nlast output:\n  ");
                msg.push_str(&output.join("\n  "));
            }
            return Err(msg);
        }
        move_into(&files.out, task.out_dir)?;
        let devices = std::fs::read(allocation_path(&files.spec))
            .ok()
            .and_then(|b| serde_json::from_slice::<Allocation>(&b).ok())
            .map(|a| a.devices());
        Ok(Ran {
            peak_host_bytes: None,
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_state_and_exit_code_not_the_derived_one() {
        let line = "JobId=7 JobName=pollard:p:a JobState=FAILED Reason=NonZeroExitCode Dependency=(null) DerivedExitCode=0:0 ExitCode=3:0 RunTime=00:00:01";
        assert_eq!(
            parse_job_state(line),
            Some(JobState::Ended {
                state: "FAILED".into(),
                exit: "3:0".into()
            })
        );
        let live = "JobId=8 JobState=PENDING Reason=Resources ExitCode=0:0";
        assert_eq!(
            parse_job_state(live),
            Some(JobState::Live("PENDING".into()))
        );
        assert!(parse_job_state("JobId=9 JobState=COMPLETED ExitCode=0:0")
            .unwrap()
            .succeeded());
        assert!(parse_job_state("JobId=9 JobState=NODE_FAIL ExitCode=0:0")
            .unwrap()
            .lost());
        assert_eq!(parse_job_state("no state here"), None);
    }

    #[test]
    fn quotes_for_bash() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
