//! Garbage collection: removes the records, artifacts and objects that no root references.
//! Roots are the lock files the caller names (every `blake3:` digest in them is kept, so the
//! cache need not know the lock file's format), explicit artifacts and keys, and records
//! younger than `keep_newer_than`. The lock files of every workspace registered with the cache
//! (workspaces.rs) are roots too, so a cache shared through `POLLARD_CACHE_DIR` keeps every
//! project's work. Runs with the cache locked exclusively: no other process can be committing
//! or reading while objects disappear. A dry run counts the same things and removes nothing.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::digest::{ArtifactId, CacheKey, Digest};
use crate::error::{io_err, Result};
use crate::fsutil::remove_any;
use crate::layout::{digest_of_sharded, sharded_files};
use crate::record::RunRecord;
use crate::workspaces::lock_files_in;
use crate::Cache;

/// What gc must keep.
#[derive(Debug, Clone, Default)]
pub struct GcRoots {
    /// Lock files (e.g. `recipe.lock`): every `blake3:<64 hex>` in them is a root.
    pub lock_files: Vec<PathBuf>,
    /// Artifacts to keep.
    pub artifacts: Vec<ArtifactId>,
    /// Run records (and their artifacts) to keep.
    pub keys: Vec<CacheKey>,
    /// Keep records whose file is younger than this (and their artifacts).
    pub keep_newer_than: Option<Duration>,
    /// Count what would go, remove nothing.
    pub dry_run: bool,
}

/// What gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub records_removed: usize,
    pub artifacts_removed: usize,
    pub objects_removed: usize,
    /// Staging leftovers of crashed runs, quarantined files, stale key locks.
    pub temp_removed: usize,
    pub bytes_freed: u64,
    pub records_kept: usize,
    pub artifacts_kept: usize,
    pub objects_kept: usize,
    /// Nothing was removed; the counts say what would have gone.
    pub dry_run: bool,
    /// The registered workspace folders whose lock files were roots.
    pub workspaces: Vec<PathBuf>,
    /// Registered folders that no longer exist (their registration is dropped).
    pub workspaces_gone: Vec<PathBuf>,
    /// The stage ids of the run records removed (or that would be), sorted.
    pub stages_removed: Vec<String>,
}

/// Every `blake3:<64 hex>` in `text`.
pub(crate) fn digests_in(text: &str) -> Vec<Digest> {
    let prefix = "blake3:";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        if let Some(hex) = after.get(..64) {
            if let Ok(d) = Digest::from_hex(hex) {
                let boundary = after
                    .as_bytes()
                    .get(64)
                    .is_none_or(|b| !b.is_ascii_hexdigit());
                if boundary {
                    out.push(d);
                }
            }
        }
        rest = &rest[i + prefix.len()..];
    }
    out
}

impl Cache {
    /// Collects garbage (see the module docs). Fails with `Busy` when another process has the
    /// cache open, and with an error naming a lock file that cannot be read.
    pub fn gc(&self, roots: &GcRoots) -> Result<GcReport> {
        // Read the roots before locking: a missing lock file fails fast.
        let mut root_digests: HashSet<Digest> = HashSet::new();
        let mut lock_files = roots.lock_files.clone();
        let mut workspaces = Vec::new();
        let mut gone = Vec::new();
        for (entry, dir) in self.registered_workspaces()? {
            if dir.is_dir() {
                lock_files.extend(lock_files_in(&dir)?);
                workspaces.push(dir);
            } else {
                gone.push((entry, dir));
            }
        }
        lock_files.sort();
        lock_files.dedup();
        for lf in &lock_files {
            let text = fs::read_to_string(lf).map_err(io_err("read lock file", lf))?;
            root_digests.extend(digests_in(&text));
        }
        root_digests.extend(roots.artifacts.iter().map(|a| a.0));
        root_digests.extend(roots.keys.iter().map(|k| k.0));
        let mut report = self.with_exclusive(
            "gc needs the cache to itself; rerun when no pollard run uses it",
            || self.gc_locked(&root_digests, roots.keep_newer_than, roots.dry_run),
        )?;
        if !roots.dry_run {
            for (entry, _) in &gone {
                remove_any(entry).map_err(io_err("remove", entry))?;
            }
        }
        report.workspaces = workspaces;
        report.workspaces_gone = gone.into_iter().map(|(_, d)| d).collect();
        Ok(report)
    }

    fn gc_locked(
        &self,
        roots: &HashSet<Digest>,
        keep: Option<Duration>,
        dry_run: bool,
    ) -> Result<GcReport> {
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        // In a dry run, what remove_any would free, without removing.
        let remove_any = |path: &Path| -> std::io::Result<u64> {
            if dry_run {
                would_free(path)
            } else {
                remove_any(path)
            }
        };
        let now = SystemTime::now();

        // 1. Records: keep rooted and young ones; their artifacts become roots.
        let mut keep_artifacts: HashSet<Digest> = roots.clone();
        let mut kept_keys: HashSet<Digest> = HashSet::new();
        let rec_dir = self.layout.records_dir();
        for path in sharded_files(&rec_dir).map_err(io_err("list", &rec_dir))? {
            let key = digest_of_sharded(&path, ".json");
            let parsed = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<RunRecord>(&b).ok());
            let young = match (keep, fs::metadata(&path).and_then(|m| m.modified())) {
                (Some(age), Ok(mtime)) => {
                    now.duration_since(mtime).map(|d| d < age).unwrap_or(true)
                }
                _ => false,
            };
            let rooted = key.is_some_and(|k| roots.contains(&k));
            match (parsed, key) {
                (Some(rec), Some(k)) if rooted || young => {
                    keep_artifacts.insert(rec.artifact.0);
                    kept_keys.insert(k);
                    report.records_kept += 1;
                }
                (parsed, _) => {
                    if let Some(rec) = parsed {
                        report.stages_removed.push(rec.stage);
                    }
                    report.bytes_freed += remove_any(&path).map_err(io_err("remove", &path))?;
                    report.records_removed += 1;
                }
            }
        }

        // 2. Manifests: keep the referenced ones; their objects are live.
        let mut live_objects: HashSet<Digest> = HashSet::new();
        let mut live_trees: HashSet<String> = HashSet::new();
        for (path, id) in self.manifest_files()? {
            let keep_it = id.is_some_and(|id| keep_artifacts.contains(&id.0));
            let manifest = if keep_it {
                self.artifact(&id.expect("kept manifests have an id"))
                    .ok()
                    .flatten()
            } else {
                None
            };
            match manifest {
                Some(art) => {
                    live_objects.extend(art.files().iter().map(|f| f.digest));
                    live_trees.insert(art.id.0.to_hex());
                    report.artifacts_kept += 1;
                }
                None => {
                    // Unreferenced, or damaged beyond use (verify reports those first).
                    report.bytes_freed += if dry_run {
                        would_free(&path).map_err(io_err("stat", &path))?
                    } else {
                        self.remove_artifact_files(&path, id.as_ref())?
                    };
                    report.artifacts_removed += 1;
                }
            }
        }

        // 3. Artifact folders without a live manifest.
        let trees = self.layout.trees_dir();
        for e in fs::read_dir(&trees)
            .map_err(io_err("list", &trees))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if !live_trees.contains(&name) && !dry_run {
                remove_any(&e.path()).map_err(io_err("remove", e.path()))?;
            }
        }

        // 4. Objects nobody references.
        let obj_dir = self.layout.objects_dir();
        let mut removed_paths = Vec::new();
        for path in sharded_files(&obj_dir).map_err(io_err("list", &obj_dir))? {
            let live = digest_of_sharded(&path, "").is_some_and(|d| live_objects.contains(&d));
            if live {
                report.objects_kept += 1;
            } else {
                report.bytes_freed += remove_any(&path).map_err(io_err("remove", &path))?;
                report.objects_removed += 1;
                removed_paths.push(path);
            }
        }

        // 5. Leftovers: crashed staging folders and temp files (not this process's live
        // ones), quarantine, locks of keys without a record.
        let live_staging = self
            .live_staging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for dir in [self.layout.tmp_dir(), self.layout.quarantine_dir()] {
            for e in fs::read_dir(&dir).map_err(io_err("list", &dir))?.flatten() {
                if live_staging.contains(&e.path()) {
                    continue;
                }
                report.bytes_freed += remove_any(&e.path()).map_err(io_err("remove", e.path()))?;
                report.temp_removed += 1;
            }
        }
        let locks = self.layout.key_locks_dir();
        for e in fs::read_dir(&locks)
            .map_err(io_err("list", &locks))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let key = name
                .strip_suffix(".lock")
                .and_then(|h| Digest::from_hex(h).ok());
            if key.is_some_and(|k| kept_keys.contains(&k)) {
                continue;
            }
            // Held by a thread of this process: leave it.
            if let Some(k) = key {
                if self.try_lock_key(&CacheKey(k))?.is_none() {
                    continue;
                }
            }
            remove_any(&e.path()).map_err(io_err("remove", e.path()))?;
            report.temp_removed += 1;
        }
        report.stages_removed.sort();
        if dry_run {
            return Ok(report);
        }

        // 6. Forget memo entries of removed objects and of vanished files.
        let removed: HashSet<PathBuf> = removed_paths.into_iter().collect();
        // Best effort: a stale entry can only name an object path, whose digest is its name,
        // so it can never vouch for wrong bytes; a failed flush costs a re-hash at most.
        self.memo.retain(|p| !removed.contains(p) && p.exists());
        let _ = self.memo.flush(&self.budget);
        Ok(report)
    }
}

/// The bytes removing `path` would free (as `remove_any` counts them).
fn would_free(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_file() && md.nlink() <= 1 => Ok(md.len()),
        Ok(_) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_digests_in_any_text() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let text = format!("stages:\n  x:\n    key: {a}\n    out: \"{b}\"\n    bad: blake3:1234\n    long: {a}ff\n");
        assert_eq!(digests_in(&text), vec![a, b]);
    }
}
