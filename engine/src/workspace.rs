//! A workspace: where a command's manifest, lock file, cache and bookkeeping are. The manifest is
//! `-f FILE`, else `./pollard.yaml`, else an embedded recipe taken as if it were
//! `./<name>.yaml` in the current folder; the lock file sits beside it (`<stem>.lock`);
//! `.pollard/` beside it holds the lock's guard and journal, failure logs and (unless
//! `POLLARD_CACHE_DIR` moves it) the cache. The command line asks here, then renders.

use std::path::{Path, PathBuf};

use pollard_cache::{Cache, GcRoots};

use crate::error::EngineError;
use crate::job::ManifestText;
use crate::lockfile::{lock_path_for, LockFile, LockWriter};
use crate::manifest::Source;
use crate::overrides::{experiment_lock_path, Override};
use crate::registry::Registry;
use crate::spec::PipelineSpec;

/// The manifest looked for in the current folder when none is given.
pub const DEFAULT_MANIFEST: &str = "pollard.yaml";

/// The bookkeeping folder of the workspace whose manifest is in `manifest_dir`: the lock's
/// guard, journal and no-op memo, run history, failure logs, Slurm job ids, and (unless
/// `POLLARD_CACHE_DIR` moves it) the cache.
pub fn state_dir(manifest_dir: &Path) -> PathBuf {
    manifest_dir.join(".pollard")
}

/// The manifest a command means, without reading it: `file`, else `./pollard.yaml`, else the
/// embedded recipe `default_recipe` as `./<name>.yaml`.
pub fn manifest_path(file: Option<&Path>, default_recipe: &str) -> Result<PathBuf, EngineError> {
    Ok(match file {
        Some(f) => f.to_path_buf(),
        None if Path::new(DEFAULT_MANIFEST).exists() => PathBuf::from(DEFAULT_MANIFEST),
        None => std::env::current_dir()
            .map_err(|source| EngineError::Io {
                what: "cannot read the current folder".into(),
                source,
            })?
            .join(format!("{default_recipe}.yaml")),
    })
}

/// A recipe built into the binary: (name, text).
pub type Embedded<'a> = (&'a str, &'a str);

/// A loaded, validated manifest with its lock file.
pub struct Workspace {
    pub spec: PipelineSpec,
    /// The manifest's text, for stages that run in processes of their own.
    pub manifest: ManifestText,
    /// The manifest's top-level `executor` value, if any (read by `executor::from_value`).
    pub executor: Option<crate::yaml::Value>,
    /// The manifest's path (for the embedded recipe, where it would be).
    pub manifest_path: PathBuf,
    /// `-S` overrides this command was given; with any, `lock_path` is the experiment's record
    /// (see [`crate::overrides::experiment_lock_path`]).
    pub overrides: Vec<Override>,
    pub lock_path: PathBuf,
    pub lock: Option<LockFile>,
    /// True when no manifest was found and the embedded recipe stands in for one.
    pub embedded: bool,
}

fn read(path: &Path) -> Result<Source, EngineError> {
    Source::read(path).map_err(|source| EngineError::ReadManifest {
        path: path.to_path_buf(),
        source,
    })
}

/// Finds, parses and validates the manifest with its `-S PATH=VALUE` overrides (manifest errors
/// come back as `EngineError::Manifest`, a bad override as `EngineError::Usage`) and reads its
/// lock file.
pub fn load(
    file: Option<&Path>,
    sets: &[String],
    registry: &Registry,
    default: Embedded<'_>,
) -> Result<Workspace, EngineError> {
    let (source, manifest, embedded) = match file {
        Some(f) => (read(f)?, f.to_path_buf(), false),
        None if Path::new(DEFAULT_MANIFEST).exists() => {
            let f = Path::new(DEFAULT_MANIFEST);
            (read(f)?, f.to_path_buf(), false)
        }
        None => {
            let (name, text) = default;
            let file = format!("{name}.yaml");
            let cwd = std::env::current_dir().map_err(|source| EngineError::Io {
                what: "cannot read the current folder".into(),
                source,
            })?;
            let src = Source::new(file.clone(), cwd.clone(), text.to_string());
            (src, cwd.join(file), true)
        }
    };
    let overrides = sets
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(EngineError::Usage)?;
    let source = source
        .with_overrides(overrides.clone())
        .map_err(|errors| EngineError::Usage(errors.join("\n")))?;
    let spec = crate::spec::load(&source, registry).map_err(EngineError::Manifest)?;
    let mut lock_path = lock_path_for(&manifest);
    if !overrides.is_empty() {
        lock_path = experiment_lock_path(&lock_path, &state_dir(&spec.dir), &overrides);
    }
    let lock = LockFile::read(&lock_path)?;
    let executor = source
        .tree
        .as_ref()
        .ok()
        .and_then(|root| root.get("executor").cloned());
    Ok(Workspace {
        spec,
        executor,
        manifest: ManifestText {
            file: source.file.clone(),
            dir: source.dir.clone(),
            text: source.text.clone(),
            overrides: overrides.clone(),
        },
        manifest_path: manifest,
        overrides,
        lock_path,
        lock,
        embedded,
    })
}

impl Workspace {
    pub fn open_cache(&self) -> Result<Cache, EngineError> {
        let cache = Cache::open(&Cache::default_root(&self.spec.dir))?;
        // gc keeps what this folder's lock files pin, even when run from another project.
        cache.register_workspace(&self.spec.dir)?;
        Ok(cache)
    }

    /// Per-workspace bookkeeping: the lock file's guard and journal, failure logs.
    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.spec.dir)
    }

    /// Where a failed stage's output is kept (`<dir>/<stage>.log`).
    pub fn failure_logs(&self) -> PathBuf {
        self.state_dir().join("logs")
    }

    /// The writer a run records finished stages with.
    pub fn lock_writer(&self) -> LockWriter {
        LockWriter::new(
            self.lock_path.clone(),
            &self.state_dir(),
            &self.spec.name,
            self.spec.stages.iter().map(|s| s.id.clone()).collect(),
            self.lock.clone(),
        )
    }

    /// What `gc` keeps: every lock file in the manifest's folder (other recipes sharing this
    /// folder's cache keep their outputs too), each with its journal folded in.
    pub fn gc_roots(&self) -> Result<GcRoots, EngineError> {
        let mut lock_files = vec![self.lock_path.clone()];
        if let Ok(entries) = std::fs::read_dir(&self.spec.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "lock") && !lock_files.contains(&p) {
                    lock_files.push(p);
                }
            }
        }
        lock_files.retain(|p| p.exists());
        // A killed run's journal holds roots too: fold it in first.
        if crate::lockfile::journal_path_for(&self.lock_path).exists() {
            self.lock_writer().finish(&Default::default())?;
            if !lock_files.contains(&self.lock_path) {
                lock_files.push(self.lock_path.clone());
            }
        }
        Ok(GcRoots {
            lock_files,
            ..GcRoots::default()
        })
    }
}
