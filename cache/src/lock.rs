//! Per-key locks: one process (or thread) computes a stage key while the others wait, then
//! find its run record. OS file locks (flock), so the kernel releases them when a process
//! dies and a crashed run never wedges a key; they also exclude threads of one process,
//! because each `KeyLock` opens its own file description.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::digest::CacheKey;
use crate::error::{io_err, Result};
use crate::Cache;

/// Holds the lock of one [`CacheKey`] until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
    path: PathBuf,
    key: CacheKey,
}

impl KeyLock {
    /// The key held.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open lock file", path))
}

impl Cache {
    /// Blocks until this process holds the lock of `key`. Not re-entrant: a second
    /// `lock_key` of the same key while the first guard lives waits forever, even on the
    /// same thread (each guard is its own open file description).
    pub fn lock_key(&self, key: &CacheKey) -> Result<KeyLock> {
        let path = self.layout.key_lock_path(key);
        let file = open_lock_file(&path)?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(KeyLock {
            _file: file,
            path,
            key: *key,
        })
    }

    /// Takes the lock of `key` if it is free; `None` when someone else holds it.
    pub fn try_lock_key(&self, key: &CacheKey) -> Result<Option<KeyLock>> {
        let path = self.layout.key_lock_path(key);
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock {
                _file: file,
                path,
                key: *key,
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
        }
    }

    /// Runs `f` with the whole cache locked exclusively (no other process has it open);
    /// fails with `Busy` instead of waiting. The shared lock is taken back afterwards.
    pub(crate) fn with_exclusive<T>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let path = self.layout.cache_lock();
        let file = self.cache_lock.lock().unwrap_or_else(|p| p.into_inner());
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(crate::Error::Busy { path, what }),
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        let out = f();
        let back = file.lock_shared().map_err(io_err("lock", &path));
        let out = out?;
        back?;
        Ok(out)
    }
}
