//! Run history: every `pollard run` (not a dry run) is recorded under the workspace, in
//! `.pollard/runs/<id>/`: `events.jsonl` (every event as it happened, appended while the run
//! goes, so a killed run still leaves its trace), and when the run ends `run.json` (id, time,
//! manifest and its digest, overrides, per stage: outcome, key, cache hit, start, duration,
//! peak memory, devices), `trace.tsv` (Nextflow's trace columns where they apply) and
//! `pollard.lock`, the lock file as the run left it (so a run id can be one side of
//! `pollard metrics diff`). [`Recorder`] sits between the runner and the display reporter.

use crate::stage_id::StageId;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pollard_cache::{ArtifactId, Cache, CacheKey, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::exec::{Event, Outcome, Reporter, RunSummary};
use crate::lockfile::LockFile;
use crate::stage::{Progress, ProgressSink};

/// The folder of all runs of a workspace.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// What a run record takes from the lock file as the run left it.
#[derive(Debug, Clone, Default)]
pub struct LockState {
    /// The lock file, when there is one (it is linked into the run's folder).
    pub path: Option<PathBuf>,
    pub pipeline: String,
    pub stages: std::collections::HashMap<StageId, Pinned>,
}

/// One stage's lock entry, as far as the run record needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pinned {
    pub key: CacheKey,
    pub output: ArtifactId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

impl LockState {
    pub fn of(lock: Option<&LockFile>, path: &Path) -> LockState {
        let Some(lock) = lock else {
            return LockState::default();
        };
        LockState {
            path: Some(path.to_path_buf()),
            pipeline: lock.pipeline.clone(),
            stages: lock
                .stages
                .iter()
                .map(|(id, e)| {
                    let pinned = Pinned {
                        key: e.key,
                        output: e.output,
                        devices: e.devices.clone(),
                    };
                    (id.clone(), pinned)
                })
                .collect(),
        }
    }
}

/// One run, as `run.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEntry {
    pub id: String,
    pub pipeline: String,
    pub manifest: String,
    /// blake3 of the manifest text the run read.
    pub manifest_digest: String,
    pub overrides: Vec<String>,
    pub executor: String,
    pub started: String,
    pub seconds: f64,
    pub ran: usize,
    pub reused: usize,
    pub failed: usize,
    pub not_run: usize,
    pub interrupted: bool,
    pub stages: Vec<StageEntry>,
}

/// One stage of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageEntry {
    pub stage: StageId,
    /// `ran`, `reused`, `joined` (another run computed it), `failed`, `interrupted`, `not_run`.
    pub status: String,
    pub key: Option<CacheKey>,
    pub artifact: Option<ArtifactId>,
    pub cache_hit: bool,
    /// Seconds after the run started that the stage started.
    pub start: Option<f64>,
    pub seconds: Option<f64>,
    pub peak_host_bytes: Option<u64>,
    pub devices: Vec<String>,
    pub error: Option<String>,
}

/// What the recorder saw of one stage while the run went.
#[derive(Default)]
struct Seen {
    start: Option<f64>,
    status: Option<&'static str>,
}

/// Forwards every event and progress report to `inner` and records them for the history.
pub struct Recorder {
    inner: Arc<dyn Reporter>,
    dir: PathBuf,
    /// Whether this run made `dir` (otherwise nothing is written there).
    claimed: bool,
    id: String,
    started_at: Timestamp,
    clock: Instant,
    events: Mutex<Option<std::io::BufWriter<fs::File>>>,
    seen: Mutex<BTreeMap<StageId, Seen>>,
}

impl Recorder {
    /// Starts recording a run in a new folder under `runs_dir`. When the folder cannot be made
    /// (a read-only workspace) the run still goes: it is just not recorded.
    pub fn start(runs_dir: &Path, inner: Arc<dyn Reporter>) -> Recorder {
        let started_at = Timestamp::now();
        // Two runs may start in the same millisecond: each claims a folder of its own
        // (`create_dir` fails on one that exists), never sharing one.
        let base = run_id(&started_at);
        let _ = fs::create_dir_all(runs_dir);
        let mut id = base.clone();
        let mut claimed = false;
        for n in 2..100 {
            match fs::create_dir(runs_dir.join(&id)) {
                Ok(()) => {
                    claimed = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    id = format!("{base}-{n}");
                }
                Err(_) => break,
            }
        }
        let dir = runs_dir.join(&id);
        let events = claimed
            .then(|| fs::File::create(dir.join("events.jsonl")).ok())
            .flatten()
            .map(std::io::BufWriter::new);
        Recorder {
            inner,
            dir,
            claimed,
            id,
            started_at,
            clock: Instant::now(),
            events: Mutex::new(events),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn now(&self) -> f64 {
        (self.clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
    }

    /// Appends one event; `flush`: written through now (a stage started or ended), so a killed
    /// run's file says how far it got. Reused stages (thousands in a no-op run) are buffered.
    fn append(&self, mut v: Value, flush: bool) {
        v["t"] = json!(self.now());
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = events.as_mut() {
            let mut line = v.to_string();
            line.push('\n');
            let _ = f.write_all(line.as_bytes());
            if flush {
                let _ = f.flush();
            }
        }
    }

    /// Writes `run.json`, `trace.tsv` and the lock copy once the run is over. `lock` is the lock
    /// file as the run left it (its keys name each stage's run) and where it is; the cache's run
    /// records give the peak memory and devices of the stages that ran.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        summary: &RunSummary,
        kinds: &BTreeMap<StageId, String>,
        manifest: (&str, &str),
        overrides: &[String],
        executor: &str,
        lock: &LockState,
        cache: Option<&Cache>,
    ) -> std::io::Result<RunEntry> {
        if !self.claimed {
            return Err(std::io::Error::other(format!(
                "cannot create a folder for run {} under {}",
                self.id,
                self.dir.parent().unwrap_or(&self.dir).display()
            )));
        }
        if let Some(f) = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            f.flush()?;
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut stages = Vec::new();
        for (stage, outcome) in &summary.stages {
            let s = seen.get(stage);
            let locked = lock.stages.get(stage);
            let mut e = StageEntry {
                stage: stage.clone(),
                start: s.and_then(|s| s.start),
                ..StageEntry::default()
            };
            match outcome {
                Outcome::Reused { artifact } => {
                    e.status = s.and_then(|s| s.status).unwrap_or("reused").into();
                    e.artifact = Some(*artifact);
                    e.cache_hit = true;
                }
                Outcome::Ran { artifact, seconds } => {
                    e.status = "ran".into();
                    e.artifact = Some(*artifact);
                    e.seconds = Some(*seconds);
                }
                Outcome::Failed { error } if error == "interrupted" => {
                    e.status = "interrupted".into();
                }
                Outcome::Failed { error } => {
                    e.status = "failed".into();
                    e.error = Some(error.clone());
                }
                Outcome::Skipped { reason } => {
                    e.status = "not_run".into();
                    e.error = Some(reason.clone());
                }
            }
            if let Some(entry) = locked.filter(|l| Some(&l.output) == e.artifact.as_ref()) {
                e.key = Some(entry.key);
                e.devices = entry.devices.clone();
            }
            // Peak memory of what ran now (a reused stage's is that of the run that made it).
            if let (Some(entry), "ran") = (locked, e.status.as_str()) {
                let record = cache.and_then(|cache| cache.record(&entry.key).ok().flatten());
                if let Some(r) = record {
                    e.peak_host_bytes = r.memory.get("peak_host_bytes").copied();
                    e.devices = r.devices.clone();
                }
            }
            stages.push(e);
        }
        let count = |s: &str| stages.iter().filter(|e| e.status == s).count();
        let entry = RunEntry {
            id: self.id.clone(),
            pipeline: lock.pipeline.clone(),
            manifest: manifest.0.to_string(),
            manifest_digest: pollard_cache::Digest::of(manifest.1.as_bytes()).to_string(),
            overrides: overrides.to_vec(),
            executor: executor.to_string(),
            started: self.started_at.to_string(),
            seconds: self.now(),
            ran: count("ran"),
            reused: count("reused") + count("joined"),
            failed: count("failed"),
            not_run: count("not_run"),
            interrupted: summary.interrupted,
            stages,
        };
        write_atomic(&self.dir.join("trace.tsv"), trace(&entry, kinds).as_bytes())?;
        if let Some(lock_path) = &lock.path {
            // A hard link costs nothing, and stays this run's: the lock is replaced by rename,
            // never written in place. Never copy onto an existing file here: it may be a link
            // to the lock itself. Where links fail, a copy goes through a new file.
            let copy = self.dir.join("pollard.lock");
            if !copy.exists() && fs::hard_link(lock_path, &copy).is_err() {
                let tmp = self
                    .dir
                    .join(format!("pollard.lock.tmp{}", std::process::id()));
                fs::copy(lock_path, &tmp)?;
                fs::rename(&tmp, &copy)?;
            }
        }
        let text = serde_json::to_string_pretty(&entry).map_err(std::io::Error::other)?;
        // Written last: a run folder with `run.json` is complete.
        write_atomic(&self.dir.join("run.json"), text.as_bytes())?;
        Ok(entry)
    }
}

impl ProgressSink for Recorder {
    fn progress(&self, stage: &str, p: &Progress) {
        self.inner.progress(stage, p);
    }

    fn log(&self, stage: &str, line: &str) {
        self.append(
            json!({ "event": "log", "stage": stage, "line": line }),
            true,
        );
        self.inner.log(stage, line);
    }
}

impl Reporter for Recorder {
    fn event(&self, e: &Event) {
        let t = self.now();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            match e {
                Event::Started { stage, .. } => {
                    seen.entry(stage.clone()).or_default().start = Some(t)
                }
                Event::Joined { stage, .. } => {
                    seen.entry(stage.clone()).or_default().status = Some("joined")
                }
                _ => {}
            }
        }
        let flush = !matches!(e, Event::Reused { .. });
        self.append(serde_json::to_value(e).unwrap_or_else(|_| json!({})), flush);
        self.inner.event(e);
    }
}

/// `YYYYMMDD-HHMMSS-NNN` in UTC (milliseconds last): sortable, and two runs a millisecond
/// apart get different ids.
fn run_id(t: &Timestamp) -> String {
    let s = t.to_string(); // 2026-12-02T04:35:07.123Z
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 17 {
        format!("{}-{}-{}", &digits[..8], &digits[8..14], &digits[14..17])
    } else {
        digits
    }
}

/// Nextflow's trace columns where they apply: no native job id or I/O counters here.
fn trace(run: &RunEntry, kinds: &BTreeMap<StageId, String>) -> String {
    let mut out = String::from(
        "task_id\thash\tname\tprocess\tstatus\texit\tstart\trealtime\tpeak_rss\tdevices\tcached\n",
    );
    for (i, s) in run.stages.iter().enumerate() {
        let dash = || "-".to_string();
        let exit = match s.status.as_str() {
            "ran" | "reused" | "joined" => "0".to_string(),
            "failed" => "1".to_string(),
            _ => dash(),
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            i + 1,
            s.key.map_or_else(dash, |k| k.short()),
            s.stage,
            kinds.get(&s.stage).cloned().unwrap_or_else(dash),
            s.status,
            exit,
            s.start.map_or_else(dash, |t| format!("{t:.3}")),
            s.seconds.map_or_else(dash, |t| format!("{t:.3}")),
            s.peak_host_bytes.map_or_else(dash, |b| b.to_string()),
            if s.devices.is_empty() {
                dash()
            } else {
                s.devices.join(",")
            },
            s.cache_hit,
        ));
    }
    out
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// A recorded run: its entry when it finished, or only its folder when it did not.
pub enum Recorded {
    Finished(Box<RunEntry>),
    /// No `run.json`: the run was killed (its `events.jsonl` says how far it got).
    Unfinished {
        id: String,
        events: usize,
    },
}

impl Recorded {
    pub fn id(&self) -> &str {
        match self {
            Recorded::Finished(e) => &e.id,
            Recorded::Unfinished { id, .. } => id,
        }
    }
}

/// Every recorded run of the workspace, oldest first.
pub fn list(runs_dir: &Path) -> std::io::Result<Vec<Recorded>> {
    let mut ids: Vec<String> = match fs::read_dir(runs_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    ids.sort();
    Ok(ids.into_iter().map(|id| read(runs_dir, &id)).collect())
}

/// One recorded run by id.
pub fn read(runs_dir: &Path, id: &str) -> Recorded {
    let dir = runs_dir.join(id);
    match fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<RunEntry>(&t).ok())
    {
        Some(e) => Recorded::Finished(Box::new(e)),
        None => Recorded::Unfinished {
            id: id.to_string(),
            events: fs::read_to_string(dir.join("events.jsonl"))
                .map(|t| t.lines().count())
                .unwrap_or(0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_runs_starting_in_the_same_millisecond_get_folders_of_their_own() {
        // They used to share one folder, and the second run's copy of the lock file was written
        // through the first one's hard link into the lock file itself, emptying it.
        let tmp = tempfile::tempdir().unwrap();
        let quiet: Arc<dyn Reporter> = Arc::new(Silent);
        let recorders: Vec<Recorder> = (0..20)
            .map(|_| Recorder::start(tmp.path(), quiet.clone()))
            .collect();
        let mut ids: Vec<&str> = recorders.iter().map(|r| r.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20, "{ids:?}");
        assert!(recorders.iter().all(|r| r.claimed));
    }

    struct Silent;
    impl ProgressSink for Silent {
        fn progress(&self, _: &str, _: &Progress) {}
        fn log(&self, _: &str, _: &str) {}
    }
    impl Reporter for Silent {
        fn event(&self, _: &Event) {}
    }

    #[test]
    fn run_ids_sort_by_time_and_carry_milliseconds() {
        let a = run_id(&Timestamp::from_unix_millis(1_764_650_107_123));
        let b = run_id(&Timestamp::from_unix_millis(1_764_650_107_124));
        assert_eq!(a.len(), "20251202-043507-123".len(), "{a}");
        assert!(a < b, "{a} {b}");
    }
}
