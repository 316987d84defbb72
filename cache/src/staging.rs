//! Staging folders: where a stage writes its outputs before commit. They live in the cache's
//! `tmp/` so that commit can move files into the object store by rename (same filesystem).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{io_err, Result};
use crate::fsutil::{remove_tree, unique_name};

/// A fresh, empty folder owned by one stage run; removed on drop (whatever commit did not
/// move into the store goes with it).
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    live: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Staging {
    pub(crate) fn create(tmp_dir: &Path, live: Arc<Mutex<HashSet<PathBuf>>>) -> Result<Staging> {
        let path = tmp_dir.join(unique_name("staging"));
        fs::create_dir(&path).map_err(io_err("create staging folder", &path))?;
        live.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone());
        Ok(Staging { path, live })
    }

    /// The folder to write into.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: a leftover is garbage that gc collects, never a half artifact.
        let _ = remove_tree(&self.path);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
    }
}
