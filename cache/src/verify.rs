//! verify: re-hashes every object and manifest in full (no stat memo) and checks that every
//! record's artifact and every manifest's objects exist. Reports; changes nothing but the
//! memo (the caller exits non-zero when anything is wrong, and gc or a rerun repairs).

use std::collections::HashSet;
use std::fs;

use rayon::prelude::*;
use serde::Serialize;

use crate::digest::Digest;
use crate::error::{io_err, Error, Problem, ProblemKind, Result};
use crate::hash::hash_path;
use crate::layout::{digest_of_sharded, sharded_files};
use crate::record::RunRecord;
use crate::Cache;

/// The result of [`Cache::verify`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub manifests_checked: usize,
    pub records_checked: usize,
    pub bytes_hashed: u64,
    /// Every corrupt, missing or unreadable thing, by path and digest.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Cache {
    /// Re-hashes every object and manifest and checks all references (see the module docs).
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();

        let obj_dir = self.layout.objects_dir();
        let objects = sharded_files(&obj_dir).map_err(io_err("list", &obj_dir))?;
        let results: Vec<_> = objects
            .par_iter()
            .map(|path| {
                let expected = digest_of_sharded(path, "");
                (path.clone(), expected, hash_path(path))
            })
            .collect();
        let mut present: HashSet<Digest> = HashSet::new();
        for (path, expected, result) in results {
            let Some(expected) = expected else { continue }; // not an object name: ignore
            report.objects_checked += 1;
            match result {
                Ok((actual, st)) if actual == expected => {
                    report.bytes_hashed += st.size;
                    present.insert(expected);
                    self.memo.insert(path, &st, actual);
                }
                Ok((actual, st)) => {
                    report.bytes_hashed += st.size;
                    report.problems.push(Problem {
                        kind: ProblemKind::CorruptObject,
                        path,
                        expected: Some(expected),
                        actual: Some(actual),
                        detail: String::new(),
                    });
                }
                Err(e) => report.problems.push(Problem {
                    kind: ProblemKind::Unreadable,
                    path,
                    expected: Some(expected),
                    actual: None,
                    detail: e.to_string(),
                }),
            }
        }

        let mut manifests_present: HashSet<Digest> = HashSet::new();
        for (path, id) in self.manifest_files()? {
            let Some(id) = id else { continue };
            report.manifests_checked += 1;
            match self.artifact(&id) {
                Ok(Some(art)) => {
                    manifests_present.insert(id.0);
                    for f in art.files() {
                        if !present.contains(&f.digest) {
                            let obj = self.layout.object_path(&f.digest);
                            // Corrupt objects are already reported above.
                            if !obj.exists() {
                                report.problems.push(Problem {
                                    kind: ProblemKind::MissingObject,
                                    path: obj,
                                    expected: Some(f.digest),
                                    actual: None,
                                    detail: format!("file `{}` of artifact {id}", f.path),
                                });
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => report.problems.push(Problem {
                    kind: ProblemKind::CorruptManifest,
                    path: path.clone(),
                    expected: Some(id.0),
                    actual: fs::read(&path).ok().map(|b| Digest::of(&b)),
                    detail: match e {
                        Error::BadManifest { reason, .. } => reason,
                        other => other.to_string(),
                    },
                }),
            }
        }

        let rec_dir = self.layout.records_dir();
        for path in sharded_files(&rec_dir).map_err(io_err("list", &rec_dir))? {
            let Some(key) = digest_of_sharded(&path, ".json") else {
                continue;
            };
            report.records_checked += 1;
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<RunRecord>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(rec) if rec.key.0 != key => report.problems.push(Problem {
                    kind: ProblemKind::CorruptRecord,
                    path,
                    expected: Some(key),
                    actual: Some(rec.key.0),
                    detail: "the record holds another key".to_string(),
                }),
                Ok(rec) => {
                    if !manifests_present.contains(&rec.artifact.0) {
                        report.problems.push(Problem {
                            kind: ProblemKind::MissingArtifact,
                            path: self.layout.manifest_path(&rec.artifact),
                            expected: Some(rec.artifact.0),
                            actual: None,
                            detail: format!(
                                "artifact of run record `{}` (stage `{}`)",
                                path.display(),
                                rec.stage
                            ),
                        });
                    }
                }
                Err(detail) => report.problems.push(Problem {
                    kind: ProblemKind::CorruptRecord,
                    path,
                    expected: Some(key),
                    actual: None,
                    detail,
                }),
            }
        }
        report.problems.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(report)
    }
}
