//! Hugging Face checkpoint folders as raw named tensors: what `load` copies and `prune` slices.
//! Reads `config.json` and `model.safetensors` (or the shards listed in
//! `model.safetensors.index.json`); writes one `model.safetensors` and a config with an explicit
//! `head_dim`. Working on HF names keeps pruning exact (no model code between file and slice).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::error::{CandleContext, Result, StageError};
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

/// The safetensors files of a checkpoint folder: the single file, or every shard of the index.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(StageError::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors and no model.safetensors.index.json",
            ),
        ));
    }
    let v = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| StageError::Config {
            path: index.clone(),
            field: "weight_map".into(),
            message: "missing or not an object".into(),
        })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| StageError::Config {
            path: index.clone(),
            field: format!("weight_map.{name}"),
            message: "not a file name".into(),
        })?;
        // A shard name is a plain file name inside the folder; refuse paths that escape it.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(StageError::Config {
                path: index.clone(),
                field: format!("weight_map.{name}"),
                message: format!("`{file}` is not a file in the folder"),
            });
        }
        let p = dir.join(file);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

impl Checkpoint {
    /// Loads a folder onto `device`, converting every floating tensor to `dtype` when given.
    pub fn load(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg = read_json(&cfg_path)?;
        let shape = ModelShape::from_hf_config(&cfg, &cfg_path)?;
        let config = cfg.as_object().cloned().ok_or_else(|| StageError::Config {
            path: cfg_path.clone(),
            field: "(top level)".into(),
            message: "not a JSON object".into(),
        })?;
        let mut tensors = BTreeMap::new();
        for file in weight_files(dir)? {
            let loaded: HashMap<String, Tensor> = candle_core::safetensors::load(&file, device)
                .ctx(|| format!("reading {}", file.display()))?;
            for (name, t) in loaded {
                let t = match dtype {
                    Some(dt) if t.dtype().is_float() && t.dtype() != dt => t
                        .to_dtype(dt)
                        .ctx(|| format!("converting `{name}` to {dt:?}"))?,
                    _ => t,
                };
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(StageError::tensor(
                        name,
                        format!("appears in more than one shard of {}", dir.display()),
                    ));
                }
            }
        }
        let ck = Self {
            config,
            shape,
            tensors,
        };
        ck.check_shapes()?;
        Ok(ck)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| StageError::tensor(name, "missing from the checkpoint"))
    }

    /// Checks every tensor the Llama layout needs against the config's sizes, so a
    /// config/weights mismatch is reported by name before any slicing.
    pub fn check_shapes(&self) -> Result<()> {
        let s = &self.shape;
        let q = s.heads * s.head_dim;
        let kv = s.kv_heads * s.head_dim;
        let mut want: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![s.vocab, s.hidden]),
            ("model.norm.weight".into(), vec![s.hidden]),
        ];
        if !s.tied || self.tensors.contains_key("lm_head.weight") {
            want.push(("lm_head.weight".into(), vec![s.vocab, s.hidden]));
        }
        for i in 0..s.layers {
            let p = format!("model.layers.{i}.");
            want.extend([
                (format!("{p}input_layernorm.weight"), vec![s.hidden]),
                (
                    format!("{p}post_attention_layernorm.weight"),
                    vec![s.hidden],
                ),
                (format!("{p}self_attn.q_proj.weight"), vec![q, s.hidden]),
                (format!("{p}self_attn.k_proj.weight"), vec![kv, s.hidden]),
                (format!("{p}self_attn.v_proj.weight"), vec![kv, s.hidden]),
                (format!("{p}self_attn.o_proj.weight"), vec![s.hidden, q]),
                (format!("{p}mlp.gate_proj.weight"), vec![s.ffn, s.hidden]),
                (format!("{p}mlp.up_proj.weight"), vec![s.ffn, s.hidden]),
                (format!("{p}mlp.down_proj.weight"), vec![s.hidden, s.ffn]),
            ]);
        }
        for (name, dims) in want {
            let t = self.get(&name)?;
            if t.dims() != dims.as_slice() {
                return Err(StageError::tensor(
                    name,
                    format!("has shape {:?}, config.json implies {:?}", t.dims(), dims),
                ));
            }
        }
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
        let st = dir.join("model.safetensors");
        // safetensors orders tensors itself (by dtype, then name), so the bytes are deterministic.
        let map: HashMap<&str, Tensor> = self
            .tensors
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        candle_core::safetensors::save(&map, &st).ctx(|| format!("writing {}", st.display()))?;
        Ok(())
    }
}

/// Copies `tokenizer.json` (and its companions) from one model folder to another when present,
/// so a pruned or trained model stays usable with its tokenizer.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        let src = from.join(name);
        if src.is_file() {
            let dst = to.join(name);
            std::fs::copy(&src, &dst).map_err(|e| StageError::io(&dst, e))?;
        }
    }
    Ok(())
}
