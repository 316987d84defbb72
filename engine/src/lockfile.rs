//! The lock file beside the manifest (`<stem>.lock`): per stage, the cache key, the fingerprint
//! parts, and the output digest, so a recipe plus its lock says exactly what was produced. It is
//! rewritten (atomically, under a file lock shared by concurrent runs) after each stage that
//! succeeds, so an interrupted run keeps what it finished.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lock file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    pub pipeline: String,
    #[serde(default)]
    pub stages: BTreeMap<String, LockEntry>,
}

/// What one stage last produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    pub kind: String,
    pub kind_version: u32,
    pub key: String,
    pub params: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deps: BTreeMap<String, String>,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
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

impl LockFile {
    /// Reads a lock file; a missing one is empty.
    pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
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
        let lock: LockFile = serde_yaml::from_str(&text).map_err(|e| LockError::Parse {
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
        let body = serde_yaml::to_string(self).expect("a lock file always serialises");
        format!("# Written by pollard after each stage that succeeds. Commit it with the manifest:\n# it pins what every stage produced (keys and output digests).\n{body}")
    }
}

/// Applies stage entries to the lock file on disk: lock, re-read (another run may have written),
/// merge, write to a temporary file, rename.
pub struct LockWriter {
    path: PathBuf,
    guard: PathBuf,
    pipeline: String,
    /// Stage ids of the current manifest: entries of stages that no longer exist are dropped.
    known: Vec<String>,
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
        known: Vec<String>,
        current: Option<LockFile>,
    ) -> LockWriter {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        LockWriter {
            guard: guard_dir.join(format!("{name}.guard")),
            path,
            pipeline: pipeline.to_string(),
            known,
            seen: std::sync::Mutex::new(current),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `entries` into the lock file unless it already says exactly that.
    pub fn update(&self, entries: &BTreeMap<String, LockEntry>) -> Result<(), LockError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = seen.as_ref() {
            let stale_ids = lock.stages.keys().any(|id| !self.known.contains(id));
            if !stale_ids
                && lock.pipeline == self.pipeline
                && entries.iter().all(|(id, e)| lock.stages.get(id) == Some(e))
            {
                return Ok(());
            }
        }
        let werr = |source| LockError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(parent) = self.guard.parent() {
            fs::create_dir_all(parent).map_err(werr)?;
        }
        let guard = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.guard)
            .map_err(werr)?;
        // Released when `guard` drops (and by the kernel if the process dies).
        guard.lock().map_err(werr)?;
        let mut lock = LockFile::read(&self.path)?.unwrap_or(LockFile {
            version: LOCK_VERSION,
            pipeline: self.pipeline.clone(),
            stages: BTreeMap::new(),
        });
        let before = lock.clone();
        lock.pipeline = self.pipeline.clone();
        lock.stages.retain(|id, _| self.known.contains(id));
        for (id, e) in entries {
            lock.stages.insert(id.clone(), e.clone());
        }
        if lock == before && self.path.exists() {
            *seen = Some(lock);
            return Ok(());
        }
        let tmp = self
            .path
            .with_extension(format!("lock.tmp{}", std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(werr)?;
        f.write_all(lock.render().as_bytes()).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        fs::rename(&tmp, &self.path).map_err(werr)?;
        *seen = Some(lock);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(output: &str) -> LockEntry {
        LockEntry {
            kind: "command".into(),
            kind_version: 1,
            key: "blake3:00".into(),
            params: serde_json::json!({"cmd": "true"}),
            inputs: BTreeMap::new(),
            deps: BTreeMap::new(),
            output: output.into(),
            metrics: None,
            devices: vec![],
        }
    }

    #[test]
    fn updates_merge_and_drop_removed_stages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        std::fs::write(&path, "version: 1\npipeline: p\nstages:\n  gone:\n    kind: command\n    kind_version: 1\n    key: k\n    params: {}\n    output: o\n").unwrap();
        let w = LockWriter::new(
            path.clone(),
            &dir.path().join(".pollard"),
            "p",
            vec!["a".into(), "b".into()],
            None,
        );
        w.update(&BTreeMap::from([("a".to_string(), entry("x"))]))
            .unwrap();
        w.update(&BTreeMap::from([("b".to_string(), entry("y"))]))
            .unwrap();
        let lock = LockFile::read(&path).unwrap().unwrap();
        assert_eq!(lock.stages.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(lock.stages["a"].output, "x");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("# Written by pollard"));
    }

    #[test]
    fn a_bad_lock_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        std::fs::write(&path, "version: 1\npipeline: p\nstages: 3\n").unwrap();
        let e = LockFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("p.lock") && e.contains("not valid"), "{e}");
        assert_eq!(
            lock_path_for(Path::new("/a/tiny.yaml")),
            PathBuf::from("/a/tiny.lock")
        );
    }
}
