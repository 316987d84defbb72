//! Checkpoints of the training loop: weights + optimizer state + step + data position, one
//! folder per step inside a caller-given scratch folder, published atomically (written under a
//! temporary name, synced, then renamed) so a run killed at any instant leaves either a whole
//! checkpoint or none; resume takes the newest one that validates.
//!
//! Layout: `<dir>/step-0000000120/{weights.safetensors, optimizer.safetensors, state.json}`.
//! `state.json` is written last and records every file's size, so a truncated file is caught.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};

/// Version of the checkpoint layout; a different one is not resumed from.
pub const CHECKPOINT_FORMAT: u32 = 1;

const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-step-";

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// The batch source's position after the last completed step.
    pub data_position: u64,
    pub tokens: u64,
    /// Wall time spent training before this checkpoint (summed over resumed runs).
    pub elapsed_s: f64,
    /// The training config the run was started with, as JSON (resume refuses a different one).
    pub config: serde_json::Value,
    /// File name -> size in bytes, checked before loading.
    pub files: HashMap<String, u64>,
}

/// A checkpoint found on disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: CheckpointState,
}

impl Checkpoint {
    /// The saved weights, by parameter name, on the CPU.
    pub fn weights(&self) -> Result<HashMap<String, Tensor>> {
        load_tensors(&self.path.join(WEIGHTS))
    }

    /// The saved optimizer moments (see [`crate::AdamW::state_tensors`]).
    pub fn optimizer(&self) -> Result<HashMap<String, Tensor>> {
        load_tensors(&self.path.join(OPTIMIZER))
    }
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("cannot read tensors: {e}"),
    })
}

/// Writes a checkpoint for `state.step` into `dir` and publishes it atomically; then keeps only
/// the newest `keep` checkpoints (at least the one just written). Returns its folder.
pub fn write(
    dir: &Path,
    mut state: CheckpointState,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    keep: usize,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let final_dir = dir.join(format!("{PREFIX}{:010}", state.step));
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{:010}-{}",
        state.step,
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;

    for (name, tensors) in [(WEIGHTS, weights), (OPTIMIZER, optimizer)] {
        let path = tmp.join(name);
        candle_core::safetensors::save(tensors, &path).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            reason: format!("cannot write tensors: {e}"),
        })?;
        sync_file(&path)?;
        let size = fs::metadata(&path).map_err(io_err(&path))?.len();
        state.files.insert(name.to_string(), size);
    }
    state.format = CHECKPOINT_FORMAT;
    let state_path = tmp.join(STATE);
    let json = serde_json::to_vec_pretty(&state)
        .expect("checkpoint state is plain data and always serialises");
    let mut f = fs::File::create(&state_path).map_err(io_err(&state_path))?;
    f.write_all(&json).map_err(io_err(&state_path))?;
    f.sync_all().map_err(io_err(&state_path))?;
    drop(f);
    sync_dir(&tmp)?;

    // A checkpoint for the same step from an earlier, killed run is replaced.
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
    }
    fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
    sync_dir(dir)?;
    prune(dir, keep.max(1))?;
    Ok(final_dir)
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Makes a rename durable; directories cannot be fsynced on every platform, so failure is ignored
/// where the OS refuses to open one.
fn sync_dir(path: &Path) -> Result<()> {
    if let Ok(f) = fs::File::open(path) {
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(())
}

/// Step numbers of the published checkpoint folders in `dir`, newest first.
fn steps_on_disk(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(TrainError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((step, entry.path()));
    }
    out.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(out)
}

/// Removes all but the newest `keep` checkpoints and any temporary folders of killed writes.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    for (_, path) in steps_on_disk(dir)?.into_iter().skip(keep) {
        fs::remove_dir_all(&path).map_err(io_err(&path))?;
    }
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let is_tmp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX));
        if is_tmp {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Reads and checks one checkpoint folder: state parses, format matches, files have their sizes.
pub fn validate(path: &Path) -> Result<Checkpoint> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let state_path = path.join(STATE);
    let text = fs::read(&state_path).map_err(|e| bad(format!("cannot read {STATE}: {e}")))?;
    let state: CheckpointState =
        serde_json::from_slice(&text).map_err(|e| bad(format!("{STATE} is not valid: {e}")))?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(bad(format!(
            "format {} is not the supported {CHECKPOINT_FORMAT}",
            state.format
        )));
    }
    for name in [WEIGHTS, OPTIMIZER] {
        let expected = state
            .files
            .get(name)
            .ok_or_else(|| bad(format!("{STATE} does not list {name}")))?;
        let actual = fs::metadata(path.join(name))
            .map_err(|e| bad(format!("{name}: {e}")))?
            .len();
        if actual != *expected {
            return Err(bad(format!(
                "{name} is {actual} bytes, {STATE} says {expected}"
            )));
        }
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        state,
    })
}

/// All checkpoints in `dir` that validate, newest first, with the reasons the others did not.
pub fn list(dir: &Path) -> Result<(Vec<Checkpoint>, Vec<TrainError>)> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for (_, path) in steps_on_disk(dir)? {
        match validate(&path) {
            Ok(c) => good.push(c),
            Err(e) => bad.push(e),
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> CheckpointState {
        CheckpointState {
            format: 0,
            step,
            data_position: step * 3,
            tokens: step * 100,
            elapsed_s: 1.5,
            config: serde_json::json!({"lr": 0.1}),
            files: HashMap::new(),
        }
    }

    fn tensors(x: f32) -> HashMap<String, Tensor> {
        HashMap::from([(
            "w".to_string(),
            Tensor::new(&[x, x + 1.0], &Device::Cpu).unwrap(),
        )])
    }

    #[test]
    fn write_publishes_atomically_keeps_newest_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        for step in [10, 20, 30] {
            write(
                dir.path(),
                state(step),
                &tensors(step as f32),
                &tensors(-1.0),
                2,
            )
            .unwrap();
        }
        let (good, bad) = list(dir.path()).unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            good.iter().map(|c| c.state.step).collect::<Vec<_>>(),
            vec![30, 20],
            "keeps the newest two"
        );
        let w = good[0].weights().unwrap();
        assert_eq!(w["w"].to_vec1::<f32>().unwrap(), vec![30.0, 31.0]);
        assert_eq!(good[0].state.data_position, 90);
        assert_eq!(
            good[0].optimizer().unwrap()["w"].to_vec1::<f32>().unwrap(),
            vec![-1.0, 0.0]
        );
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with(PREFIX)),
            "no temporary folders left: {names:?}"
        );
    }

    #[test]
    fn truncated_or_half_written_checkpoints_are_skipped_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), state(1), &tensors(1.0), &tensors(1.0), 5).unwrap();
        let newest = write(dir.path(), state(2), &tensors(2.0), &tensors(2.0), 5).unwrap();
        // Truncate the newest weights: resume must fall back to step 1.
        let w = newest.join(WEIGHTS);
        let len = fs::metadata(&w).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&w)
            .unwrap()
            .set_len(len - 4)
            .unwrap();
        // A killed write leaves a temp folder without state.json; a stray step folder has none either.
        fs::create_dir(dir.path().join(format!("{TMP_PREFIX}0000000003-1"))).unwrap();
        fs::create_dir(dir.path().join(format!("{PREFIX}0000000004"))).unwrap();
        let (good, bad) = list(dir.path()).unwrap();
        assert_eq!(
            good.iter().map(|c| c.state.step).collect::<Vec<_>>(),
            vec![1]
        );
        let reasons: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("state.json")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("weights.safetensors is") && r.contains("step-0000000002")),
            "{reasons:?}"
        );
    }

    #[test]
    fn missing_dir_has_no_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = list(&dir.path().join("absent")).unwrap();
        assert!(good.is_empty() && bad.is_empty());
    }
}
