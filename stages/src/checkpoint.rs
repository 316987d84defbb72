//! Hugging Face checkpoint folders as raw named tensors: what `load` copies and `prune` slices.
//! Loads through pollard-model's `load_hf` (single file or shards, names and shapes checked),
//! keeping the raw `config.json` object so fields pollard does not model survive; writes
//! `model.safetensors` (or 5 GB shards with an index) and a config with an explicit `head_dim`. Working on HF names keeps pruning exact (no model code between file and slice).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::error::{Result, StageError};
use crate::shape::ModelShape;

/// A checkpoint in memory: its config object, its shape and its tensors by HF name.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config: serde_json::Map<String, Value>,
    pub shape: ModelShape,
    pub tensors: BTreeMap<String, Tensor>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| StageError::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl Checkpoint {
    /// Loads a folder onto `device` through pollard-model's loader (shards, names and shapes
    /// checked there), converting every tensor to `dtype` when given, else keeping the file's.
    pub fn load(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = read_json(&cfg_path)?;
        let shape = ModelShape::from_hf_config(&cfg, &cfg_path)?;
        let config = cfg.as_object().cloned().ok_or_else(|| StageError::Config {
            path: cfg_path.clone(),
            field: "(top level)".into(),
            message: "not a JSON object".into(),
        })?;
        let dtype = match dtype {
            Some(dt) => dt,
            // A checkpoint stores one float dtype; keep it (pruning must not change the bytes).
            None => pollard_model::inspect_hf(dir)?
                .1
                .values()
                .map(|info| info.dtype)
                .next()
                .unwrap_or(DType::F32),
        };
        let (_, tensors) = pollard_model::load_hf(dir, dtype, device)?;
        Ok(Self {
            config,
            shape,
            tensors,
        })
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| StageError::tensor(name, "missing from the checkpoint"))
    }

    /// Checks the tensors against the sizes in `shape` (pollard-model's rule: exactly the
    /// tensors the config implies, each with its shape), so a slicing mistake is reported by
    /// tensor name before anything is written.
    pub fn check_shapes(&self) -> Result<()> {
        let mut cfg = self.config.clone();
        self.shape.write_into(&mut cfg);
        let llama = pollard_model::LlamaConfig::from_json(&Value::Object(cfg))?;
        pollard_model::validate_weights(&llama, &self.tensors)?;
        Ok(())
    }

    /// Writes `config.json` (sizes from `shape`, explicit `head_dim`, `torch_dtype`) and
    /// `model.safetensors` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
        let mut cfg = self.config.clone();
        self.shape.write_into(&mut cfg);
        if let Some(t) = self.tensors.values().next() {
            let name = match t.dtype() {
                DType::BF16 => "bfloat16",
                DType::F16 => "float16",
                _ => "float32",
            };
            // transformers 5 writes `dtype`, older versions `torch_dtype`; keep whichever is there.
            let key = if cfg.contains_key("dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            cfg.insert(key.into(), name.into());
        }
        let cfg_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&Value::Object(cfg))
            .expect("a JSON map always serializes");
        std::fs::write(&cfg_path, text + "\n").map_err(|e| StageError::io(&cfg_path, e))?;
        // One file, or 5 GB shards with an index for large models (as transformers writes them).
        pollard_model::write_weights(dir, &self.tensors, pollard_model::DEFAULT_SHARD_BYTES)?;
        Ok(())
    }
}

/// The files of a Hugging Face folder that describe how to use the model rather than the model
/// itself; every model stage carries them from its input model to its output unchanged.
const COMPANIONS: [&str; 3] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Copies `tokenizer.json` and its companions from one model folder to another when present,
/// so a loaded or pruned model stays usable with its tokenizer.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    copy_present(from, to, &["tokenizer.json"])?;
    carry_companions(from, to)
}

/// Copies whichever of [`COMPANIONS`] exist in `from` into `to` (a trained model keeps the
/// dataset's `tokenizer.json`, which its training used, but its input's generation settings).
pub fn carry_companions(from: &Path, to: &Path) -> Result<()> {
    copy_present(from, to, &COMPANIONS)
}

fn copy_present(from: &Path, to: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            std::fs::copy(&src, &dst).map_err(|e| StageError::io(&dst, e))?;
        }
    }
    Ok(())
}
