//! Where a command's manifest, lock file and cache are: `-f FILE`, else `./pollard.yaml`, else
//! the embedded default recipe as if it were `./<name>.yaml` in the current folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pollard_cache::Cache;
use pollard_engine::{lock_path_for, EngineError, LockFile, PipelineSpec, Registry, Source};

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
    pub lock_path: PathBuf,
    pub lock: Option<LockFile>,
}

pub fn registry() -> Registry {
    let mut reg = Registry::new();
    pollard_stages::register(&mut reg);
    reg
}

/// Finds and validates the manifest. Manifest errors come back as `EngineError::Manifest`.
pub fn load(file: Option<&Path>, say_embedded: bool) -> Result<Workspace> {
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
    let spec = pollard_engine::load(&source, &registry()).map_err(EngineError::Manifest)?;
    let lock_path = lock_path_for(&manifest);
    let lock = LockFile::read(&lock_path).map_err(EngineError::Lock)?;
    Ok(Workspace {
        spec,
        lock_path,
        lock,
    })
}

impl Workspace {
    pub fn open_cache(&self) -> Result<Cache> {
        let root = Cache::default_root(&self.spec.dir);
        let cache = Cache::open(&root).map_err(EngineError::from)?;
        // gc keeps what this folder's lock files pin, even when run from another project.
        cache
            .register_workspace(&self.spec.dir)
            .map_err(EngineError::from)?;
        Ok(cache)
    }

    /// Where per-workspace bookkeeping lives (the lock file's guard).
    pub fn state_dir(&self) -> PathBuf {
        self.spec.dir.join(".pollard")
    }
}
