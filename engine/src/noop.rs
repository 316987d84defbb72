//! The no-op memo: what lets `pollard run` of an unchanged pipeline answer "all up to date"
//! without reading the manifest, the lock file or the cache records again.
//!
//! A run whose plan reused every stage leaves `.pollard/<lock file>.noop`: the digests of the
//! manifest text and of the lock file it left, the program that planned it, the cache folder,
//! every stage with its key and output, and the stat (size, mtime, inode, ctime) of every file
//! the plan's answer rested on: each stage's deps, walked as the key walks them (folders too,
//! whose mtime moves when an entry is added or removed), and each stage's cached result (run
//! record, artifact manifest, objects). The next run reads the two texts, hashes them, stats
//! those files, and when everything is as recorded, the plan would be the same: every stage
//! reused, the same lock. Anything else (an edit, a touched file, a deleted object, `gc`,
//! another build of pollard, `POLLARD_CACHE_DIR`, overrides, a journal left by a killed run)
//! falls back to planning in full, which then records a fresh memo.
//!
//! Like the cache's stat memo, a file is vouched for by its stat only when its mtime and ctime
//! are at least [`RACY_NS`] older than the memo: a write in the same clock tick as the stat
//! could otherwise keep all four. So a memo is written only once the deps have settled, and a
//! run right after an edit plans in full.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::history::Pinned;

/// Files younger than this (mtime or ctime) are not vouched for by their stat.
pub const RACY_NS: i64 = 2_000_000_000;

const VERSION: u32 = 1;

/// A file's identity as far as a `stat` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub ctime_ns: i64,
    pub dir: bool,
}

impl Stamp {
    fn of(md: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stamp {
            size: md.len(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ino: md.ino(),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            dir: md.is_dir(),
        }
    }

    /// `path`'s stamp, following symlinks (a re-pointed link shows as another inode).
    pub fn read(path: &Path) -> Option<Stamp> {
        std::fs::metadata(path).ok().map(|md| Stamp::of(&md))
    }
}

/// One stage as the memo keeps it: what a run record of it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoStage {
    pub id: crate::StageId,
    pub kind: String,
    #[serde(flatten)]
    pub pinned: Pinned,
}

/// The memo file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memo {
    version: u32,
    /// `version` + the path and stamp of the running program: another build may key stages
    /// differently.
    program: (String, PathBuf, Stamp),
    manifest: PathBuf,
    manifest_digest: String,
    lock: PathBuf,
    lock_digest: String,
    cache: PathBuf,
    pub pipeline: String,
    /// In the order the run reported them (topological).
    pub stages: Vec<MemoStage>,
    files: Vec<(PathBuf, Stamp)>,
}

/// Where the memo of the lock file at `lock` lives.
pub fn memo_path(state_dir: &Path, lock: &Path) -> PathBuf {
    let name = lock
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    state_dir.join(format!("{name}.noop"))
}

fn program() -> Option<(String, PathBuf, Stamp)> {
    let exe = std::env::current_exe().ok()?;
    let stamp = Stamp::read(&exe)?;
    Some((env!("CARGO_PKG_VERSION").to_string(), exe, stamp))
}

fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// What a memo is checked against: where this command's manifest, lock and cache are.
pub struct Place<'a> {
    pub manifest: &'a Path,
    pub manifest_text: &'a str,
    pub lock: &'a Path,
    pub cache: &'a Path,
}

/// The memo at `path` when it still holds for `place`: every check passed, so a full plan
/// would reuse every stage it lists. `None` means: plan in full.
pub fn check(path: &Path, place: &Place) -> Option<Memo> {
    let text = std::fs::read(path).ok()?;
    let memo: Memo = serde_json::from_slice(&text).ok()?;
    if memo.version != VERSION
        || Some(&memo.program) != program().as_ref()
        || memo.manifest != place.manifest
        || memo.lock != place.lock
        || memo.cache != place.cache
        || memo.manifest_digest != digest(place.manifest_text.as_bytes())
    {
        return None;
    }
    // A journal holds entries not yet folded into the lock: the lock text alone is not the
    // record then.
    if crate::lockfile::journal_path_for(place.lock).exists() {
        return None;
    }
    let lock_text = std::fs::read(place.lock).ok()?;
    if memo.lock_digest != digest(&lock_text) {
        return None;
    }
    // Tens of thousands of `stat`s at the paper's pipeline sizes: the kernel's path lookups
    // are the cost, and they run in parallel.
    memo.files
        .par_iter()
        .all(|(p, stamp)| Stamp::read(p).as_ref() == Some(stamp))
        .then_some(memo)
}

/// Every file and folder under `path` (itself included), as the key's walk sees them.
fn stamp_tree(path: &Path, out: &mut Vec<(PathBuf, Stamp)>) -> Option<()> {
    let stamp = Stamp::read(path)?;
    out.push((path.to_path_buf(), stamp));
    // Only real folders are entered: the key refuses a symlink to a folder inside a dep.
    let real_dir = std::fs::symlink_metadata(path).ok()?.is_dir();
    if stamp.dir && real_dir {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .ok()?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .ok()?;
        entries.sort();
        for e in entries {
            stamp_tree(&e, out)?;
        }
    }
    Some(())
}

/// What a run that reused every stage hands over for its memo.
pub struct Settled<'a> {
    pub place: Place<'a>,
    pub pipeline: &'a str,
    pub stages: Vec<MemoStage>,
    /// Every dep path of every stage, absolute.
    pub deps: Vec<PathBuf>,
    /// The cache files behind every stage's result (see `Cache::footprint`).
    pub footprints: Vec<PathBuf>,
    /// When the run started planning ([`now_ns`]).
    pub planned_at_ns: i64,
}

/// Nanoseconds since the Unix epoch, on the clock file times are stamped with.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Writes the memo for a run that reused every stage, when its deps have settled (see the
/// module docs). Returns whether it was written; failing to write one only costs speed.
pub fn record(path: &Path, settled: Settled) -> bool {
    let Some(program) = program() else {
        return false;
    };
    let Ok(lock_text) = std::fs::read(settled.place.lock) else {
        return false;
    };
    let mut files = Vec::new();
    let mut deps = settled.deps;
    deps.sort();
    deps.dedup();
    for d in &deps {
        if stamp_tree(d, &mut files).is_none() {
            return false;
        }
    }
    // Older than the plan's start by the racy window: then the file did not change while the
    // plan hashed it, nor after.
    let settled_before = settled.planned_at_ns - RACY_NS;
    if files
        .iter()
        .any(|(_, s)| s.mtime_ns > settled_before || s.ctime_ns > settled_before)
    {
        return false;
    }
    for f in &settled.footprints {
        match Stamp::read(f) {
            Some(s) => files.push((f.clone(), s)),
            None => return false,
        }
    }
    let memo = Memo {
        version: VERSION,
        program,
        manifest: settled.place.manifest.to_path_buf(),
        manifest_digest: digest(settled.place.manifest_text.as_bytes()),
        lock: settled.place.lock.to_path_buf(),
        lock_digest: digest(&lock_text),
        cache: settled.place.cache.to_path_buf(),
        pipeline: settled.pipeline.to_string(),
        stages: settled.stages,
        files,
    };
    let Ok(bytes) = serde_json::to_vec(&memo) else {
        return false;
    };
    let tmp = path.with_extension(format!("noop.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_ok()
}

/// Removes a memo (a run that changed anything makes it stale anyway; removing it saves the
/// next run the checks).
pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path);
}
