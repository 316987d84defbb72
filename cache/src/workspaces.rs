//! The workspaces that use a cache. A cache may be shared (`POLLARD_CACHE_DIR`), and gc must
//! keep what every one of its users' lock files pins, not only the caller's. Each workspace
//! folder that opens the cache is registered as one small file under `v1/workspaces/`, named by
//! the blake3 of its path (so concurrent registrations never write the same file twice), and
//! gc reads the `*.lock` files of every registered folder.

use std::fs;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{io_err, Result};
use crate::fsutil::{create_dirs, write_atomic};
use crate::Cache;

impl Cache {
    fn workspaces_dir(&self) -> PathBuf {
        self.layout.root().join("v1").join("workspaces")
    }

    /// Records that the workspace folder `dir` (the manifest's folder, where its lock files
    /// live) uses this cache. Idempotent and cheap when already registered.
    pub fn register_workspace(&self, dir: &Path) -> Result<()> {
        let abs = std::path::absolute(dir).map_err(io_err("resolve", dir))?;
        let text = abs.to_string_lossy().to_string();
        let entry = self
            .workspaces_dir()
            .join(Digest::of(text.as_bytes()).to_hex());
        if entry.exists() {
            return Ok(());
        }
        create_dirs(&self.workspaces_dir())?;
        write_atomic(
            &self.layout.tmp_dir(),
            &entry,
            text.as_bytes(),
            true,
            &self.budget,
        )
    }

    /// Every registered workspace folder, as (registration file, folder).
    pub(crate) fn registered_workspaces(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let dir = self.workspaces_dir();
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for e in entries.flatten() {
            let path = e.path();
            let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
            out.push((path, PathBuf::from(text.trim_end())));
        }
        out.sort();
        Ok(out)
    }
}

/// The lock files (`*.lock`) in a workspace folder.
pub(crate) fn lock_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "lock") && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}
