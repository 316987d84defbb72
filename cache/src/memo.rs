//! The stat memo: `(path, size, mtime ns, inode, ctime ns) -> digest`, persisted under the
//! cache, so re-checking an unchanged multi-gigabyte file costs a `stat`, not a read. The ctime
//! is there because size, mtime and inode can all be kept by an in-place rewrite (`touch -d`
//! restores the mtime); the ctime moves on every write and cannot be set back. Links pollard
//! makes itself also move it, so after making one the entry is re-vouched ([`StatMemo::relinked`]).
//!
//! Safety rule (git's "racy clean" problem): a write in the same timestamp tick as the one
//! we hashed leaves size and mtime unchanged. So an entry is trusted only when the file's
//! mtime is at least [`RACY_NS`] older than the moment the entry was recorded; a younger entry
//! re-hashes (and is then recorded again, later, and trusted). Objects carry an mtime of 1 s
//! after the epoch, so their entries are never racy.
//!
//! Persistence: flush merges this process's new entries into the file on disk under a short
//! exclusive file lock and replaces it by rename, so concurrent processes never see a torn
//! file and never lose each other's entries. A file that does not parse is treated as empty
//! (it is only an accelerator) and replaced at the next flush.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{io_err, Result};
use crate::fsutil::{write_atomic, Budget};
use crate::hash::FileStat;

/// An entry is trusted only if the file's mtime is this much older than the record time.
pub(crate) const RACY_NS: i64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    ctime_ns: i64,
    digest: Digest,
    recorded_ns: i64,
}

#[derive(Serialize, Deserialize)]
struct MemoFile {
    format: String,
    /// `[path, size, mtime_ns, inode, ctime_ns, digest, recorded_ns]`
    entries: Vec<(String, u64, i64, u64, i64, Digest, i64)>,
}

/// Version 1 had no ctime; its file is ignored (it only accelerates) and rewritten.
const FORMAT: &str = "pollard-stat-memo/2";

#[derive(Default)]
struct State {
    loaded: bool,
    entries: HashMap<PathBuf, Entry>,
    dirty: HashMap<PathBuf, Option<Entry>>,
    /// Set by gc: write our view as-is instead of merging (it removed entries on purpose).
    replace: bool,
}

pub(crate) struct StatMemo {
    file: PathBuf,
    lock: PathBuf,
    tmp_dir: PathBuf,
    state: Mutex<State>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn read_file(path: &Path) -> HashMap<PathBuf, Entry> {
    let Ok(bytes) = fs::read(path) else {
        return HashMap::new();
    };
    let Ok(parsed) = serde_json::from_slice::<MemoFile>(&bytes) else {
        return HashMap::new();
    };
    if parsed.format != FORMAT {
        return HashMap::new();
    }
    parsed
        .entries
        .into_iter()
        .map(|(p, size, mtime_ns, ino, ctime_ns, digest, recorded_ns)| {
            (
                PathBuf::from(p),
                Entry {
                    size,
                    mtime_ns,
                    ino,
                    ctime_ns,
                    digest,
                    recorded_ns,
                },
            )
        })
        .collect()
}

impl StatMemo {
    pub(crate) fn new(file: PathBuf, lock: PathBuf, tmp_dir: PathBuf) -> Self {
        StatMemo {
            file,
            lock,
            tmp_dir,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a map that is still a valid cache.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.loaded {
            st.entries = read_file(&self.file);
            st.loaded = true;
        }
        st
    }

    /// The memoised digest of `path` if its stat still matches and the entry is not racy.
    pub(crate) fn lookup(&self, path: &Path, st: &FileStat) -> Option<Digest> {
        let state = self.state();
        let e = state.entries.get(path)?;
        let same = e.size == st.size
            && e.mtime_ns == st.mtime_ns
            && e.ino == st.ino
            && e.ctime_ns == st.ctime_ns;
        (same && e.recorded_ns.saturating_sub(e.mtime_ns) >= RACY_NS).then_some(e.digest)
    }

    /// After pollard itself linked `path` (which moves only its ctime and link count): keeps
    /// vouching for an entry whose size, mtime and inode still match, at the new ctime.
    pub(crate) fn relinked(&self, path: &Path) {
        let Ok(md) = std::fs::metadata(path) else {
            return;
        };
        let st = FileStat::of(&md);
        let mut state = self.state();
        let Some(e) = state.entries.get(path).copied() else {
            return;
        };
        if e.size == st.size && e.mtime_ns == st.mtime_ns && e.ino == st.ino {
            let e = Entry {
                ctime_ns: st.ctime_ns,
                ..e
            };
            state.entries.insert(path.to_path_buf(), e);
            state.dirty.insert(path.to_path_buf(), Some(e));
        }
    }

    pub(crate) fn insert(&self, path: PathBuf, st: &FileStat, digest: Digest) {
        let e = Entry {
            size: st.size,
            mtime_ns: st.mtime_ns,
            ino: st.ino,
            ctime_ns: st.ctime_ns,
            digest,
            recorded_ns: now_ns(),
        };
        let mut state = self.state();
        state.entries.insert(path.clone(), e);
        state.dirty.insert(path, Some(e));
    }

    pub(crate) fn remove(&self, path: &Path) {
        let mut state = self.state();
        if state.entries.remove(path).is_some() {
            state.dirty.insert(path.to_path_buf(), None);
        }
    }

    /// Drops entries whose path fails `keep`; the next flush writes the result as-is.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&Path) -> bool) {
        let mut state = self.state();
        state.entries.retain(|p, _| keep(p));
        state.replace = true;
    }

    pub(crate) fn len(&self) -> usize {
        self.state().entries.len()
    }

    /// Persists new entries (merging with what other processes wrote meanwhile).
    pub(crate) fn flush(&self, budget: &Budget) -> Result<()> {
        let mut state = self.state();
        if state.dirty.is_empty() && !state.replace {
            return Ok(());
        }
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(io_err("open", &self.lock))?;
        lock.lock().map_err(io_err("lock", &self.lock))?;
        let merged = if state.replace {
            state.entries.clone()
        } else {
            let mut on_disk = read_file(&self.file);
            for (p, e) in state.dirty.iter() {
                match e {
                    Some(e) => on_disk.insert(p.clone(), *e),
                    None => on_disk.remove(p),
                };
            }
            on_disk
        };
        let mut entries: Vec<_> = merged
            .iter()
            .filter_map(|(p, e)| {
                Some((
                    p.to_str()?.to_string(),
                    e.size,
                    e.mtime_ns,
                    e.ino,
                    e.ctime_ns,
                    e.digest,
                    e.recorded_ns,
                ))
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = serde_json::to_vec(&MemoFile {
            format: FORMAT.to_string(),
            entries,
        })
        .expect("the memo is plain strings and numbers");
        write_atomic(&self.tmp_dir, &self.file, &bytes, false, budget)?;
        drop(lock);
        state.entries = merged;
        state.dirty.clear();
        state.replace = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(size: u64, mtime_ns: i64, ino: u64) -> FileStat {
        FileStat {
            size,
            mtime_ns,
            ino,
            mode: 0o644,
            nlink: 1,
            ctime_ns: mtime_ns,
        }
    }

    fn memo(dir: &Path) -> StatMemo {
        StatMemo::new(
            dir.join("stat.json"),
            dir.join("stat.lock"),
            dir.to_path_buf(),
        )
    }

    #[test]
    fn a_changed_stat_misses_and_a_racy_entry_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let m = memo(dir.path());
        let d = Digest::of(b"x");
        let old = stat(10, 1_000_000_000, 7);
        m.insert("/a".into(), &old, d);
        assert_eq!(m.lookup(Path::new("/a"), &old), Some(d));
        assert_eq!(m.lookup(Path::new("/a"), &stat(11, 1_000_000_000, 7)), None);
        assert_eq!(m.lookup(Path::new("/a"), &stat(10, 1_000_000_001, 7)), None);
        assert_eq!(m.lookup(Path::new("/a"), &stat(10, 1_000_000_000, 8)), None);
        assert_eq!(m.lookup(Path::new("/b"), &old), None);
        // mtime = now: the same tick could still see a write, so do not trust it.
        let fresh = stat(10, now_ns(), 9);
        m.insert("/c".into(), &fresh, d);
        assert_eq!(m.lookup(Path::new("/c"), &fresh), None);
    }

    #[test]
    fn flushes_merge_entries_of_two_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (memo(dir.path()), memo(dir.path()));
        let st = stat(1, 5, 1);
        // Both load the (empty) file before either writes.
        drop(a.state());
        drop(b.state());
        a.insert("/from-a".into(), &st, Digest::of(b"a"));
        b.insert("/from-b".into(), &st, Digest::of(b"b"));
        a.flush(&Budget::default()).unwrap();
        b.flush(&Budget::default()).unwrap();
        let c = memo(dir.path());
        assert_eq!(c.lookup(Path::new("/from-a"), &st), Some(Digest::of(b"a")));
        assert_eq!(c.lookup(Path::new("/from-b"), &st), Some(Digest::of(b"b")));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_garbage_file_reads_as_empty_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("stat.json"), b"{not json").unwrap();
        let m = memo(dir.path());
        assert_eq!(m.len(), 0);
        m.insert("/x".into(), &stat(1, 5, 1), Digest::of(b"x"));
        m.flush(&Budget::default()).unwrap();
        assert_eq!(memo(dir.path()).len(), 1);
    }

    #[test]
    fn a_failed_flush_keeps_the_old_file_and_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let m = memo(dir.path());
        m.insert("/x".into(), &stat(1, 5, 1), Digest::of(b"x"));
        m.flush(&Budget::default()).unwrap();
        m.insert("/y".into(), &stat(1, 5, 2), Digest::of(b"y"));
        let err = m.flush(&Budget::limited(3)).unwrap_err().to_string();
        assert!(
            err.contains("no space left") && err.contains("stat.json"),
            "{err}"
        );
        assert_eq!(memo(dir.path()).len(), 1);
        m.flush(&Budget::default()).unwrap();
        assert_eq!(memo(dir.path()).len(), 2);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("write-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
