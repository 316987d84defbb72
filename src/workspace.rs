//! The recipes built into the binary and the stage kinds it links; where a command's manifest,
//! lock file and cache are is the engine's (`pollard_engine::workspace`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pollard_engine::workspace::Workspace;
use pollard_engine::Registry;

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

pub fn registry() -> Registry {
    let mut reg = Registry::new();
    pollard_stages::register(&mut reg);
    reg
}

/// The manifest a command means, without reading it (see
/// [`pollard_engine::workspace::manifest_path`]).
pub fn manifest_path(file: Option<&Path>) -> Result<PathBuf> {
    Ok(pollard_engine::workspace::manifest_path(
        file,
        DEFAULT_RECIPE,
    )?)
}

/// Finds and validates the manifest (see [`pollard_engine::workspace`]); says so when the
/// embedded recipe stands in for a missing one.
pub fn load(file: Option<&Path>, sets: &[String], say_embedded: bool) -> Result<Workspace> {
    let ws = pollard_engine::workspace::load(
        file,
        sets,
        &registry(),
        (DEFAULT_RECIPE, recipe(DEFAULT_RECIPE)?),
    )?;
    if ws.embedded && say_embedded {
        eprintln!("no pollard.yaml here: running the built-in `{DEFAULT_RECIPE}` recipe as ./{DEFAULT_RECIPE}.yaml (`pollard init` writes it out)");
    }
    Ok(ws)
}
