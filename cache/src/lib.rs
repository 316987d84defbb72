//! pollard-cache: the content-addressed store under every pollard run. Stages write into a
//! [`Staging`] folder; [`Cache::commit`] turns it into an immutable artifact named by an
//! [`ArtifactId`]; the engine files a [`RunRecord`] under the stage's [`CacheKey`] and finds it
//! again on the next run. Bytes are named by blake3 [`Digest`]s and never handed back wrong:
//! objects whose stat changed are re-hashed before they are trusted.
//!
//! ```no_run
//! # fn main() -> Result<(), pollard_cache::Error> {
//! use pollard_cache::{Cache, CacheKey};
//! let cache = Cache::open(&Cache::default_root(std::path::Path::new(".")))?;
//! let key = CacheKey::of(b"canonical fingerprint bytes");
//! let _guard = cache.lock_key(&key)?;           // one process computes a key at a time
//! if cache.record(&key)?.is_none() {
//!     let staging = cache.staging()?;
//!     std::fs::write(staging.path().join("model.safetensors"), b"...").unwrap();
//!     let id = cache.commit(staging)?;            // atomic; identical bytes stored once
//!     let dir = cache.artifact_dir(&id)?;        // read-only folder for the next stage
//!     # let _ = dir;
//! }
//! # Ok(()) }
//! ```
//!
//! Layout on disk: see `layout.rs`. Concurrency: every open `Cache` holds a shared lock on
//! the cache, gc takes it exclusively; per-key locks are OS file locks, released by the
//! kernel when a process dies, so a crashed run never wedges a key.

mod artifact;
mod digest;
mod error;
mod fsutil;
mod gc;
mod hash;
mod layout;
mod lock;
mod memo;
mod record;
mod staging;
mod time;
mod verify;
mod workspaces;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use artifact::{Artifact, FileEntry, Health, Manifest, Materialized};
pub use digest::{ArtifactId, CacheKey, Digest, ALGORITHM};
pub use error::{Error, Problem, ProblemKind, Result};
pub use gc::{GcReport, GcRoots};
pub use lock::KeyLock;
pub use record::RunRecord;
pub use staging::Staging;
pub use time::Timestamp;
pub use verify::VerifyReport;

use error::io_err;
use fsutil::Budget;
use layout::Layout;
use memo::StatMemo;

/// The environment variable that moves the cache (e.g. onto a shared filesystem).
pub const CACHE_DIR_ENV: &str = "POLLARD_CACHE_DIR";

/// An open cache. `Send + Sync`: share it between worker threads behind an `Arc`.
pub struct Cache {
    layout: Layout,
    memo: StatMemo,
    /// Held shared for the life of the `Cache`; gc converts it to exclusive.
    cache_lock: Mutex<File>,
    /// Staging folders alive in this process (gc must not remove them).
    live_staging: Arc<Mutex<std::collections::HashSet<PathBuf>>>,
    budget: Budget,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("root", &self.layout.root())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// The cache root for a manifest in `manifest_dir`: `$POLLARD_CACHE_DIR` when set and not
    /// empty, else `<manifest_dir>/.pollard/cache`.
    pub fn default_root(manifest_dir: &Path) -> PathBuf {
        match std::env::var_os(CACHE_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => manifest_dir.join(".pollard").join("cache"),
        }
    }

    /// Opens (creating when needed) the cache at `root`. Fails with [`Error::NotWritable`]
    /// naming the folder when it cannot be created or written. Blocks while a gc holds the
    /// cache exclusively.
    pub fn open(root: &Path) -> Result<Cache> {
        let root = std::path::absolute(root).map_err(io_err("resolve", root))?;
        let layout = Layout::new(&root);
        let not_writable = |path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| {
                if error::is_no_space(&source) {
                    Error::NoSpace {
                        op: "create",
                        path,
                        source,
                    }
                } else {
                    Error::NotWritable { path, source }
                }
            }
        };
        for dir in layout.dirs() {
            fs::create_dir_all(&dir).map_err(not_writable(&dir))?;
        }
        // The folders may exist on a read-only mount: prove we can write.
        let probe = layout.tmp_dir().join(fsutil::unique_name("probe"));
        File::create(&probe).map_err(not_writable(&layout.tmp_dir()))?;
        let _ = fs::remove_file(&probe);
        let lock_path = layout.cache_lock();
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(not_writable(&lock_path))?;
        lock.lock_shared().map_err(io_err("lock", &lock_path))?;
        let memo = StatMemo::new(layout.memo_file(), layout.memo_lock(), layout.tmp_dir());
        Ok(Cache {
            layout,
            memo,
            cache_lock: Mutex::new(lock),
            live_staging: Arc::default(),
            budget: Budget::default(),
        })
    }

    /// The cache root (absolute).
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Fault injection for tests: from now on the cache may write at most `bytes` more bytes
    /// (file copies, manifests, records, the memo) before writes fail with ENOSPC, exactly as
    /// on a full device. Renames are free, as on a real filesystem.
    #[doc(hidden)]
    pub fn simulate_space_limit(&mut self, bytes: u64) {
        self.budget = Budget::limited(bytes);
    }

    /// The digest of a regular file's contents, through the stat memo: unchanged
    /// `(size, mtime ns, inode)` costs one `stat`; anything else re-hashes.
    pub fn hash_file(&self, path: &Path) -> Result<Digest> {
        Ok(self.hash_file_stat(path)?.0)
    }

    /// The digest of a file (its content digest) or a folder (the digest of its canonical
    /// listing, equal to the [`ArtifactId`] that committing the folder would give). Used for
    /// command `deps` and `load` paths; every file goes through the stat memo.
    pub fn hash_tree(&self, path: &Path) -> Result<Digest> {
        let md = fs::metadata(path).map_err(io_err("stat", path))?;
        if md.is_file() {
            return self.hash_file(path);
        }
        let manifest = self.manifest_of_folder(path)?;
        Ok(manifest.id().0)
    }

    /// A fresh, empty folder on the cache's filesystem for a stage to write into; removed on
    /// drop unless committed.
    pub fn staging(&self) -> Result<Staging> {
        Staging::create(&self.layout.tmp_dir(), self.live_staging.clone())
    }

    /// Persists the stat memo now (also done, best effort, when the `Cache` drops). Atomic:
    /// merges with entries other processes flushed meanwhile, then renames into place.
    pub fn flush(&self) -> Result<()> {
        self.memo.flush(&self.budget)
    }

    /// How many entries the stat memo holds (for diagnostics and tests).
    pub fn memo_len(&self) -> usize {
        self.memo.len()
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Best effort: the memo is only an accelerator; a failure here costs a re-hash later.
        let _ = self.memo.flush(&self.budget);
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
