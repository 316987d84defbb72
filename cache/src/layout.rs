//! Where things live inside a cache root: the one place that knows the on-disk layout.
//!
//! ```text
//! <root>/v1/objects/<2 hex>/<62 hex>      file contents, read-only, mtime = 1 s after the epoch
//! <root>/v1/manifests/<2 hex>/<62 hex>.json  artifact manifests (their blake3 is the ArtifactId)
//! <root>/v1/artifacts/<64 hex>/...        read-only hardlink trees of artifacts (rebuildable)
//! <root>/v1/records/<2 hex>/<62 hex>.json run records by CacheKey
//! <root>/v1/locks/cache.lock              shared by every open cache, exclusive for gc
//! <root>/v1/locks/keys/<64 hex>.lock      per-key locks
//! <root>/v1/memo/stat.json                the persisted stat memo
//! <root>/v1/tmp/                          staging folders and temp files (same filesystem)
//! <root>/v1/quarantine/                   corrupt objects moved aside, removed by gc
//! ```

use std::path::{Path, PathBuf};

use crate::digest::{ArtifactId, CacheKey, Digest};

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
    v1: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            v1: root.join("v1"),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Every folder `Cache::open` creates.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        vec![
            self.objects_dir(),
            self.manifests_dir(),
            self.trees_dir(),
            self.records_dir(),
            self.key_locks_dir(),
            self.memo_dir(),
            self.tmp_dir(),
            self.quarantine_dir(),
        ]
    }

    pub(crate) fn objects_dir(&self) -> PathBuf {
        self.v1.join("objects")
    }
    pub(crate) fn manifests_dir(&self) -> PathBuf {
        self.v1.join("manifests")
    }
    pub(crate) fn trees_dir(&self) -> PathBuf {
        self.v1.join("artifacts")
    }
    pub(crate) fn records_dir(&self) -> PathBuf {
        self.v1.join("records")
    }
    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.v1.join("locks")
    }
    pub(crate) fn key_locks_dir(&self) -> PathBuf {
        self.locks_dir().join("keys")
    }
    pub(crate) fn memo_dir(&self) -> PathBuf {
        self.v1.join("memo")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.v1.join("tmp")
    }
    pub(crate) fn quarantine_dir(&self) -> PathBuf {
        self.v1.join("quarantine")
    }

    pub(crate) fn cache_lock(&self) -> PathBuf {
        self.locks_dir().join("cache.lock")
    }
    pub(crate) fn memo_file(&self) -> PathBuf {
        self.memo_dir().join("stat.json")
    }
    pub(crate) fn memo_lock(&self) -> PathBuf {
        self.memo_dir().join("stat.lock")
    }

    pub(crate) fn object_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.objects_dir().join(&hex[..2]).join(&hex[2..])
    }
    pub(crate) fn manifest_path(&self, id: &ArtifactId) -> PathBuf {
        let hex = id.0.to_hex();
        self.manifests_dir()
            .join(&hex[..2])
            .join(format!("{}.json", &hex[2..]))
    }
    pub(crate) fn tree_path(&self, id: &ArtifactId) -> PathBuf {
        self.trees_dir().join(id.0.to_hex())
    }
    pub(crate) fn record_path(&self, key: &CacheKey) -> PathBuf {
        let hex = key.0.to_hex();
        self.records_dir()
            .join(&hex[..2])
            .join(format!("{}.json", &hex[2..]))
    }
    pub(crate) fn key_lock_path(&self, key: &CacheKey) -> PathBuf {
        self.key_locks_dir()
            .join(format!("{}.lock", key.0.to_hex()))
    }
}

/// Recovers a digest from a sharded path `<2 hex>/<62 hex>[suffix]` (None for foreign files).
pub(crate) fn digest_of_sharded(path: &Path, suffix: &str) -> Option<Digest> {
    let name = path.file_name()?.to_str()?;
    let shard = path.parent()?.file_name()?.to_str()?;
    let rest = name.strip_suffix(suffix)?;
    if shard.len() != 2 || rest.len() != 62 {
        return None;
    }
    Digest::from_hex(&format!("{shard}{rest}")).ok()
}

/// Lists the files two levels down (`<shard>/<file>`), skipping anything else; a missing
/// folder lists as empty.
pub(crate) fn sharded_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let shards = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in shards {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(shard.path())? {
            let f = f?;
            if f.file_type()?.is_file() {
                out.push(f.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
