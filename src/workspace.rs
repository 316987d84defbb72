//! Where a command's manifest, lock file and cache are: `-f FILE`, else `./pollard.yaml`, else
//! the embedded default recipe as if it were `./<name>.yaml` in the current folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pollard_cache::Cache;
use pollard_engine::{
    experiment_lock_path, lock_path_for, EngineError, LockFile, Override, PipelineSpec, Registry,
    Source,
};

/// Recipes built into the binary: (name, text).
pub const RECIPES: &[(&str, &str)] = &[
    ("tiny", include_str!("../pipelines/tiny.yaml")),
    ("demo", include_str!("recipes/demo.yaml")),
];

/// The recipe `pollard run` uses when there is no manifest.
pub const DEFAULT_RECIPE: &str = "tiny";

pub fn recipe(name: &str) -> Result<&'static str> {
    RECIPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .with_context(|| {
            let names: Vec<&str> = RECIPES.iter().map(|(n, _)| *n).collect();
            format!(
                "no embedded recipe `{name}` (embedded: {})",
                names.join(", ")
            )
        })
}

/// A loaded manifest with its lock file and cache.
pub struct Workspace {
    pub spec: PipelineSpec,
    /// The manifest's path (for the embedded recipe, where it would be).
    pub manifest: PathBuf,
    /// `-S` overrides this command was given; with any, `lock_path` is the experiment's record.
    pub overrides: Vec<Override>,
    pub lock_path: PathBuf,
    pub lock: Option<LockFile>,
}

pub fn registry() -> Registry {
    let mut reg = Registry::new();
    pollard_stages::register(&mut reg);
    reg
}

/// The manifest a command means, without reading it: `-f FILE`, else `./pollard.yaml`, else
/// the embedded default recipe as `./<name>.yaml`.
pub fn manifest_path(file: Option<&Path>) -> Result<PathBuf> {
    Ok(match file {
        Some(f) => f.to_path_buf(),
        None if Path::new("pollard.yaml").exists() => PathBuf::from("pollard.yaml"),
        None => std::env::current_dir()
            .context("cannot read the current folder")?
            .join(format!("{DEFAULT_RECIPE}.yaml")),
    })
}

/// Finds and validates the manifest with its `-S` overrides (`sets`). Manifest errors come back
/// as `EngineError::Manifest`, a bad override as `EngineError::Usage`.
pub fn load(file: Option<&Path>, sets: &[String], say_embedded: bool) -> Result<Workspace> {
    let (source, manifest) = match file {
        Some(f) => {
            let src = Source::read(f).map_err(|source| EngineError::ReadManifest {
                path: f.to_path_buf(),
                source,
            })?;
            (src, f.to_path_buf())
        }
        None if Path::new("pollard.yaml").exists() => {
            let f = Path::new("pollard.yaml");
            let src = Source::read(f).map_err(|source| EngineError::ReadManifest {
                path: f.to_path_buf(),
                source,
            })?;
            (src, f.to_path_buf())
        }
        None => {
            let name = format!("{DEFAULT_RECIPE}.yaml");
            let cwd = std::env::current_dir().context("cannot read the current folder")?;
            if say_embedded {
                eprintln!("no pollard.yaml here: running the built-in `{DEFAULT_RECIPE}` recipe as ./{name} (`pollard init` writes it out)");
            }
            let src = Source::new(
                name.clone(),
                cwd.clone(),
                recipe(DEFAULT_RECIPE)?.to_string(),
            );
            (src, cwd.join(name))
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
    let spec = pollard_engine::load(&source, &registry()).map_err(EngineError::Manifest)?;
    let mut lock_path = lock_path_for(&manifest);
    if !overrides.is_empty() {
        lock_path = experiment_lock_path(&lock_path, &spec.dir.join(".pollard"), &overrides);
    }
    let lock = LockFile::read(&lock_path).map_err(EngineError::Lock)?;
    Ok(Workspace {
        spec,
        manifest,
        overrides,
        lock_path,
        lock,
    })
}

impl Workspace {
    pub fn open_cache(&self) -> Result<Cache> {
        let root = Cache::default_root(&self.spec.dir);
        Ok(Cache::open(&root).map_err(EngineError::from)?)
    }

    /// Where per-workspace bookkeeping lives (the lock file's guard).
    pub fn state_dir(&self) -> PathBuf {
        self.spec.dir.join(".pollard")
    }
}
