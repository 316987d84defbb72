//! Small filesystem helpers shared by commit, records, memo and materialize: unique temp
//! names, atomic writes (temp + fsync + rename), copies (reflink, else bytes) and a write
//! budget that lets tests simulate a full disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{io_err, Result};

/// The mtime every object gets: far in the past, so a stat-memo entry for an object is never
/// "racy" (see `memo`), and any later write to it shows as a changed mtime.
pub(crate) const OBJECT_MTIME: Duration = Duration::from_secs(1);

/// A name no other process or thread will pick: pid, time and a counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:08x}-{n}", std::process::id())
}

/// How many more bytes the cache may write; `None` = unlimited. Tests set a limit to make
/// writes fail with ENOSPC exactly as a full disk would.
#[derive(Clone, Debug, Default)]
pub(crate) struct Budget(Option<Arc<AtomicU64>>);

impl Budget {
    pub(crate) fn limited(bytes: u64) -> Self {
        Budget(Some(Arc::new(AtomicU64::new(bytes))))
    }

    pub(crate) fn is_limited(&self) -> bool {
        self.0.is_some()
    }

    /// Takes `n` bytes from the budget, or fails like a full device.
    pub(crate) fn charge(&self, n: u64) -> io::Result<()> {
        let Some(left) = &self.0 else { return Ok(()) };
        let ok = left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(n))
            .is_ok();
        if ok {
            Ok(())
        } else {
            left.store(0, Ordering::SeqCst);
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }
}

/// Creates `dir` and its parents.
pub(crate) fn create_dirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err("create folder", dir))
}

/// Writes `bytes` to `dest` atomically: a temp file in `tmp_dir` (same filesystem), fsync when
/// `durable`, then rename. Readers see the old file or the new one, never a mix; on error the
/// temp file is removed.
pub(crate) fn write_atomic(
    tmp_dir: &Path,
    dest: &Path,
    bytes: &[u8],
    durable: bool,
    budget: &Budget,
) -> Result<()> {
    let tmp = tmp_dir.join(unique_name("write"));
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", dest))?;
        budget
            .charge(bytes.len() as u64)
            .map_err(io_err("write", dest))?;
        f.write_all(bytes).map_err(io_err("write", dest))?;
        if durable {
            f.sync_all().map_err(io_err("sync", dest))?;
        }
        drop(f);
        if let Some(parent) = dest.parent() {
            create_dirs(parent)?;
        }
        fs::rename(&tmp, dest).map_err(io_err("rename into place", dest))?;
        if durable {
            if let Some(parent) = dest.parent() {
                // Make the rename itself durable.
                if let Ok(d) = File::open(parent) {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// How a file reached its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyKind {
    Reflink,
    Copy,
}

const FICLONE: libc::c_ulong = 0x4004_9409;

/// Clones `src` into the new file `dst` sharing extents (btrfs, XFS, ...); false when the
/// filesystem cannot.
pub(crate) fn try_reflink(src: &Path, dst: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(s) = File::open(src) else { return false };
    let Ok(d) = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dst)
    else {
        return false;
    };
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source fd as its argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(d.as_raw_fd(), FICLONE as _, s.as_raw_fd()) };
    if rc == 0 {
        true
    } else {
        drop(d);
        let _ = fs::remove_file(dst);
        false
    }
}

/// Copies bytes from `src` to the new file `dst`, charging the budget. With no budget it uses
/// `fs::copy` (copy_file_range in the kernel).
pub(crate) fn copy_bytes(src: &Path, dst: &Path, budget: &Budget) -> Result<()> {
    let result = if !budget.is_limited() {
        fs::copy(src, dst).map(|_| ()).map_err(|e| {
            // fs::copy does not say which side failed; a full disk is always the destination.
            if crate::error::is_no_space(&e) {
                io_err("write", dst)(e)
            } else {
                io_err("copy to", dst)(e)
            }
        })
    } else {
        (|| -> Result<()> {
            let mut r = File::open(src).map_err(io_err("open", src))?;
            let mut w = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(dst)
                .map_err(io_err("create", dst))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = r.read(&mut buf).map_err(io_err("read", src))?;
                if n == 0 {
                    break;
                }
                budget.charge(n as u64).map_err(io_err("write", dst))?;
                w.write_all(&buf[..n]).map_err(io_err("write", dst))?;
            }
            Ok(())
        })()
    };
    if result.is_err() {
        let _ = fs::remove_file(dst);
    }
    result
}

/// Reflink, else copy: an independent file with the same bytes.
pub(crate) fn clone_or_copy(src: &Path, dst: &Path, budget: &Budget) -> Result<CopyKind> {
    if try_reflink(src, dst) {
        return Ok(CopyKind::Reflink);
    }
    copy_bytes(src, dst, budget)?;
    Ok(CopyKind::Copy)
}

/// Sets permissions to read-only (`0o444`, or `0o555` when executable).
pub(crate) fn set_readonly(path: &Path, executable: bool) -> Result<()> {
    let mode = if executable { 0o555 } else { 0o444 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("make read-only", path))
}

/// Gives `path` the fixed object mtime.
pub(crate) fn set_object_mtime(path: &Path) -> Result<()> {
    let f = File::options()
        .write(false)
        .read(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.set_modified(UNIX_EPOCH + OBJECT_MTIME)
        .map_err(io_err("set mtime of", path))
}

/// Removes a folder tree even when parts of it were made read-only; a missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(path);
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
    }
}

fn make_dirs_writable(path: &Path) {
    let Ok(md) = fs::symlink_metadata(path) else {
        return;
    };
    if !md.is_dir() {
        return;
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}

/// Removes a file or folder, whichever it is; a missing path is fine. Returns bytes freed
/// (sizes of regular files with a single link).
pub(crate) fn remove_any(path: &Path) -> io::Result<u64> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if md.is_dir() {
        remove_tree(path)?;
        Ok(0)
    } else {
        let freed = if md.nlink() <= 1 { md.len() } else { 0 };
        match fs::remove_file(path) {
            Ok(()) => Ok(freed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// Joins a manifest's `/`-separated relative path onto `base`.
pub(crate) fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let mut p = base.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
    }
    p
}
