//! Sealed jobs: a built-in stage runs in its own process (`pollard stage-job FILE`), reading a
//! job spec written into the cache folder: the manifest's text, the stage id, its input
//! artifacts, its staging and scratch folders, its devices. The parent created the staging
//! folder and commits it, so atomicity and per-key locks stay where they were; what the child
//! adds is a process of its own, whose peak memory wait4 reports (the run record keeps it beside
//! the estimate), and a spec another machine sharing the cache folder can run.

use crate::stage_id::StageId;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pollard_cache::{ArtifactId, Cache};
use serde::{Deserialize, Serialize};

use crate::manifest::Source;
use crate::registry::Registry;
use crate::stage::{InputArtifact, Inputs, Progress, ProgressSink, StageCtx};

/// The manifest a job's stage comes from, as text (the embedded recipe has no file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestText {
    pub file: String,
    pub dir: PathBuf,
    pub text: String,
    /// The `-S` overrides the driver ran with: the job applies the same ones.
    #[serde(default)]
    pub overrides: Vec<crate::overrides::Override>,
}

/// Everything a stage's process needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub manifest: ManifestText,
    pub stage: StageId,
    pub cache_root: PathBuf,
    pub inputs: BTreeMap<String, ArtifactId>,
    pub out_dir: PathBuf,
    pub scratch_dir: PathBuf,
    pub gpus: Vec<u32>,
    pub threads: usize,
    /// Devices and threads come from the batch system's allocation (`CUDA_VISIBLE_DEVICES`,
    /// `SLURM_CPUS_PER_TASK`) instead of `gpus` and `threads`; the job writes what it got to
    /// `allocation.json` beside the spec, for the run record.
    #[serde(default)]
    pub from_allocation: bool,
}

/// The devices and threads a job ran with (`allocation.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub gpus: Vec<u32>,
    pub threads: usize,
}

impl Allocation {
    /// What the batch system granted this process: its visible GPUs and its cores.
    fn from_env(fallback_threads: usize) -> Allocation {
        let gpus = std::env::var("CUDA_VISIBLE_DEVICES")
            .or_else(|_| std::env::var("SLURM_JOB_GPUS"))
            .unwrap_or_default()
            .split(',')
            .filter_map(|g| g.trim().parse().ok())
            .collect();
        let threads = ["SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"]
            .iter()
            .find_map(|v| std::env::var(v).ok().and_then(|n| n.parse().ok()))
            .unwrap_or(fallback_threads)
            .max(1);
        Allocation { gpus, threads }
    }

    /// The run record's device list, as a local grant would read.
    pub fn devices(&self) -> Vec<String> {
        if self.gpus.is_empty() {
            vec![format!("cpu x{}", self.threads)]
        } else {
            self.gpus.iter().map(|g| format!("gpu:{g}")).collect()
        }
    }
}

/// The allocation file of the job spec at `job_file`.
pub fn allocation_path(job_file: &Path) -> PathBuf {
    job_file.with_file_name("allocation.json")
}

/// How the engine starts a stage's process: this binary and the subcommand that runs a job.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub exe: PathBuf,
    pub args: Vec<String>,
    pub manifest: ManifestText,
}

/// One line a job's process prints on stdout.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Log { line: String },
    Progress { progress: Progress },
}

/// The child's sink: progress and log lines as JSON on stdout.
struct StdoutSink;

impl StdoutSink {
    fn send(&self, l: &Line) {
        let text = serde_json::to_string(l).expect("job lines serialise");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

impl ProgressSink for StdoutSink {
    fn progress(&self, _stage: &str, p: &Progress) {
        self.send(&Line::Progress {
            progress: p.clone(),
        });
    }
    fn log(&self, _stage: &str, line: &str) {
        self.send(&Line::Log {
            line: line.to_string(),
        });
    }
}

/// The child side: runs the job at `path` into its staging folder. Err: what went wrong, for
/// stderr (the parent reports it).
pub fn run_job(path: &Path, registry: &Registry, cancel: Arc<AtomicBool>) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read job {}: {e}", path.display()))?;
    let mut job: JobSpec = serde_json::from_str(&text)
        .map_err(|e| format!("job {} is not valid: {e}", path.display()))?;
    if job.from_allocation {
        let got = Allocation::from_env(job.threads);
        let file = allocation_path(path);
        std::fs::write(
            &file,
            serde_json::to_vec(&got).expect("an allocation serialises"),
        )
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        job.gpus = got.gpus;
        job.threads = got.threads;
    }
    let src = Source::new(
        job.manifest.file.clone(),
        job.manifest.dir.clone(),
        job.manifest.text.clone(),
    )
    .with_overrides(job.manifest.overrides.clone())
    .map_err(|e| e.join("\n"))?;
    let spec = crate::spec::load(&src, registry).map_err(|d| d.to_string())?;
    let i = spec
        .index_of(&job.stage)
        .ok_or_else(|| format!("no stage `{}` in the job's manifest", job.stage))?;
    let stage = &spec.stages[i];
    let cache = Cache::open(&job.cache_root).map_err(|e| e.to_string())?;
    let mut inputs = Inputs::default();
    for (slot, artifact) in &job.inputs {
        let up = stage
            .inputs
            .get(slot)
            .ok_or_else(|| format!("stage `{}` has no input `{slot}`", job.stage))?;
        inputs.slots.insert(
            slot.clone(),
            InputArtifact {
                stage: spec.stages[*up].id.clone(),
                path: cache.artifact_dir(artifact).map_err(|e| e.to_string())?,
                artifact: *artifact,
            },
        );
    }
    let mut ctx = StageCtx::new(
        stage.id.clone(),
        job.out_dir.clone(),
        job.scratch_dir.clone(),
        job.gpus.clone(),
        job.threads,
        Arc::new(StdoutSink),
        cancel,
    )
    .with_workdir(spec.dir.clone());
    stage
        .stage
        .run(&mut ctx, &stage.params, &inputs)
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        })
}

/// Passes one line a job's process printed on to `sink` (a log line when it is not a job line).
pub fn forward_line(sink: &dyn ProgressSink, stage: &str, line: &str) {
    match serde_json::from_str::<Line>(line) {
        Ok(Line::Log { line }) => sink.log(stage, &line),
        Ok(Line::Progress { progress }) => sink.progress(stage, &progress),
        Err(_) => sink.log(stage, line),
    }
}

/// How a job's process ended.
pub struct Ended {
    /// Peak resident memory of the process, in bytes (wait4's `ru_maxrss`).
    pub peak_host_bytes: u64,
    /// Err: the stage's error (its stderr tail) or how the process died.
    pub result: Result<(), String>,
}

/// The parent side: writes the job next to its scratch folder, starts the process, forwards its
/// lines to `sink`, stops it (SIGTERM) when `cancel` is set, and reaps it with wait4.
pub fn spawn_job(
    iso: &Isolation,
    job: &JobSpec,
    sink: &dyn ProgressSink,
    cancel: &AtomicBool,
) -> Result<Ended, String> {
    let file = job.scratch_dir.join("job.json");
    std::fs::write(
        &file,
        serde_json::to_vec_pretty(job).expect("a job spec serialises"),
    )
    .map_err(|e| format!("cannot write job {}: {e}", file.display()))?;
    let mut cmd = Command::new(&iso.exe);
    cmd.args(&iso.args)
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; the stage's process dies with the thread that waits
    // for it, so a killed pollard leaves no stage running.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", iso.exe.display()))?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stage = job.stage.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                forward_line(sink, &stage, &line);
            }
        });
        let mut status: libc::c_int = 0;
        // SAFETY: a zeroed rusage is a valid out-parameter.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let mut signalled = false;
        loop {
            // SAFETY: pid is our child; status and usage are valid out-parameters.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == pid {
                break;
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("cannot wait for the stage's process: {e}"));
            }
            if cancel.load(Ordering::Relaxed) && !signalled {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                signalled = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = err_reader.join().unwrap_or_default();
        let peak_host_bytes = (usage.ru_maxrss.max(0) as u64).saturating_mul(1024);
        let result = if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let how = if libc::WIFSIGNALED(status) {
                format!(
                    "the stage's process was killed by signal {}",
                    libc::WTERMSIG(status)
                )
            } else {
                format!(
                    "the stage's process exited with status {}",
                    libc::WEXITSTATUS(status)
                )
            };
            Err(if tail.is_empty() {
                how
            } else {
                let body = tail.join("\n");
                let body = body.strip_prefix("error: ").unwrap_or(&body);
                body.to_string()
            })
        };
        Ok(Ended {
            peak_host_bytes,
            result,
        })
    })
}
