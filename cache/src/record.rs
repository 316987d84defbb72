//! Run records: what a stage run produced under a [`CacheKey`], with the fingerprint parts
//! that made the key (so the engine can say which part changed), metrics and timings.

use std::collections::BTreeMap;
use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

use crate::digest::{ArtifactId, CacheKey};
use crate::error::{io_err, Error, Result};
use crate::fsutil::write_atomic;
use crate::time::Timestamp;
use crate::Cache;

/// One completed stage run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The key the run was computed for.
    pub key: CacheKey,
    /// The stage's name in the manifest.
    pub stage: String,
    /// The stage kind (e.g. `prune`).
    pub kind: String,
    /// What it produced.
    pub artifact: ArtifactId,
    /// The named parts of the key's fingerprint (kind, version, params, inputs, ...).
    pub fingerprint: BTreeMap<String, serde_json::Value>,
    /// Headline metrics (loss, perplexity, parameter count, ...).
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// The artifacts the run read, by input name.
    #[serde(default)]
    pub inputs: BTreeMap<String, ArtifactId>,
    pub started: Timestamp,
    pub finished: Timestamp,
    pub duration_s: f64,
    /// Devices granted (e.g. `cuda:0`, `cpu`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Memory in bytes: the estimates the run was scheduled with (`estimated_host_bytes`,
    /// `estimated_gpu_bytes`) and what it measured (`peak_host_bytes`, `peak_gpu_bytes`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub memory: BTreeMap<String, u64>,
    /// The run's log (a path or a tail of it), when kept.
    #[serde(default)]
    pub log: Option<String>,
}

impl Cache {
    /// Files `record` under its key, atomically (readers see the old record or the new one);
    /// a later record for the same key replaces the earlier one.
    pub fn put_record(&self, record: &RunRecord) -> Result<()> {
        let path = self.layout.record_path(&record.key);
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::BadRecord {
            path: path.clone(),
            source: e,
        })?;
        bytes.push(b'\n');
        write_atomic(&self.layout.tmp_dir(), &path, &bytes, true, &self.budget)
    }

    /// The record of `key`, if any. A record that does not parse, or was filed under another
    /// key, is an error naming its path (`verify` lists them; `gc` removes them).
    pub fn record(&self, key: &CacheKey) -> Result<Option<RunRecord>> {
        let path = self.layout.record_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let rec: RunRecord = serde_json::from_slice(&bytes).map_err(|e| Error::BadRecord {
            path: path.clone(),
            source: e,
        })?;
        if rec.key != *key {
            return Err(Error::BadRecord {
                path,
                source: serde::de::Error::custom(format!("it holds key {} instead", rec.key)),
            });
        }
        Ok(Some(rec))
    }
}
