//! The lock file beside the manifest (`<stem>.lock`): per stage, the cache key, the fingerprint
//! parts, and the output digest, so a recipe plus its lock says exactly what was produced.
//! Each stage that succeeds appends its entry to a journal (`.pollard/<stem>.lock.journal`,
//! synced), so an interrupted run keeps what it finished at a cost that does not grow with the
//! pipeline; the end of a run folds the journal into the lock file (atomically, under a file
//! lock shared by concurrent runs). Reading a lock file applies a leftover journal.

use crate::stage_id::StageId;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use pollard_cache::{ArtifactId, CacheKey, Digest};
use serde::{Deserialize, Serialize};

/// The lock file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    pub pipeline: String,
    #[serde(default)]
    pub stages: BTreeMap<StageId, LockEntry>,
}

/// What one stage last produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    pub kind: String,
    pub kind_version: u32,
    pub key: CacheKey,
    pub params: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, ArtifactId>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deps: BTreeMap<String, Digest>,
    pub output: ArtifactId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// The manifest values the stage's fields used when it ran (`params.lr: 0.0003`): not part
    /// of the key (the expanded params are), but what lets `status` say which value changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uses: BTreeMap<String, serde_json::Value>,
}

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read lock file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock file {path} is not valid: {message} (delete it to start afresh; the cache keeps the artifacts)")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write lock file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `<dir>/<stem>.lock` for a manifest `<dir>/<stem>.yaml`.
pub fn lock_path_for(manifest: &Path) -> PathBuf {
    let stem = manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pollard".into());
    manifest.with_file_name(format!("{stem}.lock"))
}

/// Where the journal of the lock file at `lock` lives.
pub fn journal_path_for(lock: &Path) -> PathBuf {
    let name = lock
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::workspace::state_dir(lock.parent().unwrap_or(Path::new(".")))
        .join(format!("{name}.journal"))
}

/// One journal line.
#[derive(Serialize, Deserialize)]
struct JournalLine {
    stage: StageId,
    entry: LockEntry,
}

/// The journal's entries in order; a torn last line (a crash mid-append) is ignored.
fn read_journal(path: &Path) -> Result<Vec<(StageId, LockEntry)>, LockError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LockError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<JournalLine>(l).ok())
        .map(|j| (j.stage, j.entry))
        .collect())
}

impl LockFile {
    /// Reads a lock file with its journal applied; a missing one is empty.
    pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
        let lock = Self::read_file(path)?;
        let journal = read_journal(&journal_path_for(path))?;
        if journal.is_empty() {
            return Ok(lock);
        }
        let mut lock = lock.unwrap_or(LockFile {
            version: LOCK_VERSION,
            pipeline: String::new(),
            stages: BTreeMap::new(),
        });
        lock.stages.extend(journal);
        Ok(Some(lock))
    }

    /// The lock file alone.
    fn read_file(path: &Path) -> Result<Option<LockFile>, LockError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let lock: LockFile = crate::yaml::from_lock_str(&text).map_err(|e| LockError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Parse {
                path: path.to_path_buf(),
                message: format!("version {} is not {LOCK_VERSION}", lock.version),
            });
        }
        Ok(Some(lock))
    }

    fn render(&self) -> String {
        let body = crate::yaml::to_string(self).expect("a lock file always serialises");
        format!("# Written by pollard after each stage that succeeds. Commit it with the manifest:\n# it pins what every stage produced (keys and output digests).\n{body}")
    }
}

/// Records stage entries: appended to the journal as stages finish, folded into the lock file
/// (lock, re-read: another run may have written, merge, write to a temporary file, rename) at
/// the end.
pub struct LockWriter {
    path: PathBuf,
    journal: PathBuf,
    guard: PathBuf,
    pipeline: String,
    /// Stage ids of the current manifest: entries of stages that no longer exist are dropped.
    known: std::collections::HashSet<StageId>,
    /// What this process last read or wrote: entries equal to it need no write (a no-op run
    /// never touches the file).
    seen: std::sync::Mutex<Option<LockFile>>,
}

impl LockWriter {
    /// `current`: the lock file as read when the command started.
    pub fn new(
        path: PathBuf,
        guard_dir: &Path,
        pipeline: &str,
        known: Vec<StageId>,
        current: Option<LockFile>,
    ) -> LockWriter {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        LockWriter {
            guard: guard_dir.join(format!("{name}.guard")),
            journal: journal_path_for(&path),
            path,
            pipeline: pipeline.to_string(),
            known: known.into_iter().collect(),
            seen: std::sync::Mutex::new(current),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the lock said of `stage` when this run started, or as this run last wrote it.
    pub fn pinned(&self, stage: &str) -> Option<LockEntry> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.as_ref().and_then(|l| l.stages.get(stage).cloned())
    }

    fn werr(&self, source: std::io::Error) -> LockError {
        LockError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Holds the guard shared by every process writing this lock file.
    fn guard(&self) -> Result<fs::File, LockError> {
        if let Some(parent) = self.guard.parent() {
            fs::create_dir_all(parent).map_err(|e| self.werr(e))?;
        }
        let guard = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.guard)
            .map_err(|e| self.werr(e))?;
        // Released when `guard` drops (and by the kernel if the process dies).
        guard.lock().map_err(|e| self.werr(e))?;
        Ok(guard)
    }

    /// Makes one finished stage's entry durable: one synced append to the journal (unless the
    /// lock already says exactly that).
    pub fn record(&self, stage: &StageId, entry: &LockEntry) -> Result<(), LockError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.as_ref().and_then(|l| l.stages.get(stage)) == Some(entry) {
            return Ok(());
        }
        let line = serde_json::to_string(&JournalLine {
            stage: stage.clone(),
            entry: entry.clone(),
        })
        .expect("a lock entry always serialises");
        let _guard = self.guard()?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .map_err(|e| self.werr(e))?;
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| self.werr(e))?;
        f.sync_data().map_err(|e| self.werr(e))?;
        seen.get_or_insert_with(|| LockFile {
            version: LOCK_VERSION,
            pipeline: self.pipeline.clone(),
            stages: BTreeMap::new(),
        })
        .stages
        .insert(stage.clone(), entry.clone());
        Ok(())
    }

    /// Folds the journal and `entries` (stages reused by this run) into the lock file, dropping
    /// stages the manifest no longer has. Writes nothing when the lock already says all that.
    pub fn finish(&self, entries: &BTreeMap<StageId, LockEntry>) -> Result<(), LockError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let journal_exists = self.journal.exists();
        if let Some(lock) = seen.as_ref() {
            let stale_ids = lock.stages.keys().any(|id| !self.known.contains(id));
            if !journal_exists
                && !stale_ids
                && lock.pipeline == self.pipeline
                && entries.iter().all(|(id, e)| lock.stages.get(id) == Some(e))
            {
                return Ok(());
            }
        }
        let _guard = self.guard()?;
        let on_disk = LockFile::read_file(&self.path)?;
        let mut lock = LockFile::read(&self.path)?.unwrap_or(LockFile {
            version: LOCK_VERSION,
            pipeline: self.pipeline.clone(),
            stages: BTreeMap::new(),
        });
        lock.pipeline = self.pipeline.clone();
        lock.stages.retain(|id, _| self.known.contains(id));
        for (id, e) in entries {
            lock.stages.insert(id.clone(), e.clone());
        }
        if on_disk.as_ref() != Some(&lock) {
            let tmp = self
                .path
                .with_extension(format!("lock.tmp{}", std::process::id()));
            let mut f = fs::File::create(&tmp).map_err(|e| self.werr(e))?;
            f.write_all(lock.render().as_bytes())
                .map_err(|e| self.werr(e))?;
            f.sync_all().map_err(|e| self.werr(e))?;
            fs::rename(&tmp, &self.path).map_err(|e| self.werr(e))?;
        }
        if journal_exists {
            // Its entries are in the lock file now (renamed into place before this).
            match fs::remove_file(&self.journal) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.werr(e)),
            }
        }
        *seen = Some(lock);
        Ok(())
    }

    /// The lock file as this writer last read or wrote it (after `finish`: what is on disk).
    pub fn current(&self) -> Option<LockFile> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes `entries` into the lock file at once (the journal and the fold in one step).
    pub fn update(&self, entries: &BTreeMap<StageId, LockEntry>) -> Result<(), LockError> {
        self.finish(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The artifact id a test names `name`.
    fn art(name: &str) -> ArtifactId {
        ArtifactId(Digest::of(name.as_bytes()))
    }

    fn entry(output: &str) -> LockEntry {
        LockEntry {
            kind: "command".into(),
            kind_version: 1,
            key: CacheKey::of(output.as_bytes()),
            params: serde_json::json!({"cmd": "true"}),
            inputs: BTreeMap::new(),
            deps: BTreeMap::new(),
            output: art(output),
            metrics: None,
            devices: vec![],
            uses: BTreeMap::new(),
        }
    }

    #[test]
    fn updates_merge_and_drop_removed_stages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        let gone = format!("version: 1\npipeline: p\nstages:\n  gone:\n    kind: command\n    kind_version: 1\n    key: {}\n    params: {{}}\n    output: {}\n", CacheKey::of(b"k"), art("o"));
        std::fs::write(&path, gone).unwrap();
        let w = LockWriter::new(
            path.clone(),
            &dir.path().join(".pollard"),
            "p",
            vec!["a".into(), "b".into()],
            None,
        );
        w.update(&BTreeMap::from([("a".into(), entry("x"))]))
            .unwrap();
        w.update(&BTreeMap::from([("b".into(), entry("y"))]))
            .unwrap();
        let lock = LockFile::read(&path).unwrap().unwrap();
        assert_eq!(lock.stages.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(lock.stages["a"].output, art("x"));
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("# Written by pollard"));
    }

    #[test]
    fn an_interrupted_run_keeps_its_journal_and_the_next_fold_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        let known: Vec<StageId> = vec!["a".into(), "b".into()];
        let w = LockWriter::new(
            path.clone(),
            &dir.path().join(".pollard"),
            "p",
            known.clone(),
            None,
        );
        w.record(&"a".into(), &entry("x")).unwrap();
        w.record(&"b".into(), &entry("y")).unwrap();
        // A torn append from a crash mid-write is ignored.
        let journal = journal_path_for(&path);
        let mut f = fs::OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"{\"stage\": \"b\", \"ent").unwrap();
        drop(w);
        assert!(!path.exists(), "nothing folded yet");
        let lock = LockFile::read(&path).unwrap().unwrap();
        assert_eq!(lock.stages["a"].output, art("x"));
        assert_eq!(lock.stages["b"].output, art("y"));
        let w = LockWriter::new(
            path.clone(),
            &dir.path().join(".pollard"),
            "p",
            known,
            Some(lock),
        );
        w.finish(&BTreeMap::new()).unwrap();
        assert!(!journal.exists());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("output: {}", art("x")))
                && text.contains(&format!("output: {}", art("y"))),
            "{text}"
        );
        assert_eq!(LockFile::read(&path).unwrap().unwrap().pipeline, "p");
    }

    #[test]
    fn a_bad_lock_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        std::fs::write(&path, "version: 1\npipeline: p\nstages: 3\n").unwrap();
        let e = LockFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("p.lock") && e.contains("not valid"), "{e}");
        // A digest that is not one is refused when the lock is read, not when it is used.
        std::fs::write(&path, "version: 1\npipeline: p\nstages:\n  a:\n    kind: command\n    kind_version: 1\n    key: blake3:00\n    params: {}\n    output: x\n").unwrap();
        let e = LockFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("p.lock") && e.contains("blake3:00"), "{e}");
        assert_eq!(
            lock_path_for(Path::new("/a/tiny.yaml")),
            PathBuf::from("/a/tiny.lock")
        );
    }
}
