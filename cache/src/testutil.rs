//! Test helpers shared by the cache's unit tests: temp caches, file trees, tmpfs mounts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ArtifactId, Cache};

pub(crate) struct TestCache {
    pub dir: tempfile::TempDir,
    pub cache: Cache,
}

impl TestCache {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = Cache::open(&dir.path().join("cache")).expect("open cache");
        TestCache { dir, cache }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Commits `files` (relative path, bytes) through a staging folder.
    pub(crate) fn commit_files(&self, files: &[(&str, &[u8])]) -> ArtifactId {
        let staging = self.cache.staging().expect("staging");
        write_tree(staging.path(), files);
        self.cache.commit(staging).expect("commit")
    }

    pub(crate) fn count(&self, sub: &str) -> usize {
        count_files(&self.root().join("v1").join(sub))
    }
}

pub(crate) fn write_tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (rel, bytes) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        fs::write(&p, bytes).expect("write");
    }
}

pub(crate) fn count_files(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Makes a read-only file writable again (as a user who wants to damage it would).
pub(crate) fn make_writable(p: &Path) {
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).expect("chmod");
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for one test, unmounted on drop. `None` when mounting is not possible
/// (not root, or no CAP_SYS_ADMIN in this container).
pub(crate) struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(options: &str) -> Option<Tmpfs> {
        if !is_root() {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
