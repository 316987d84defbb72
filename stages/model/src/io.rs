//! Hugging Face checkpoint folders <-> (`LlamaConfig`, [`Weights`]): `config.json` plus
//! `model.safetensors` or a sharded `model.safetensors.index.json`, memory-mapped on load.
//!
//! Every tensor is checked against the shapes the config implies before any model is built, so
//! a bad checkpoint fails here with the tensor's name, never later inside a matmul.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};

/// Model parameters by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`, ...), sorted.
pub type Weights = BTreeMap<String, Tensor>;

/// Dtype and shape of one stored tensor, read from a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub file: PathBuf,
}

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The safetensors files of a checkpoint folder, with the tensor names the index assigns to each
/// (empty for a single-file checkpoint).
fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, BTreeSet<String>)>> {
    let index = dir.join(INDEX);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let v: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: index.clone(),
            source,
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Config {
                path: Some(index.clone()),
                field: "weight_map".into(),
                msg: "missing or not an object".into(),
            })?;
        let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| ModelError::Config {
                path: Some(index.clone()),
                field: format!("weight_map.{name}"),
                msg: format!("expected a file name, got {file}"),
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with("..") {
                return Err(ModelError::Config {
                    path: Some(index.clone()),
                    field: format!("weight_map.{name}"),
                    msg: format!(
                        "shard {file:?} must be a plain file name in the checkpoint folder"
                    ),
                });
            }
            files
                .entry(file.to_owned())
                .or_default()
                .insert(name.clone());
        }
        return Ok(files
            .into_iter()
            .map(|(f, names)| (dir.join(f), names))
            .collect());
    }
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![(single, BTreeSet::new())]);
    }
    Err(ModelError::Io {
        path: single,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("neither {SINGLE} nor {INDEX} exists"),
        ),
    })
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let f = File::open(path).map_err(io_err(path))?;
    // SAFETY: checkpoint files are treated as immutable while loaded (the cache makes its objects
    // read-only); a concurrent writer could change the bytes we read, never memory safety of the
    // mapping itself beyond that, which is the documented mmap caveat.
    unsafe { memmap2::Mmap::map(&f) }.map_err(io_err(path))
}

fn candle_dtype(name: &str, d: safetensors::Dtype) -> Result<DType> {
    Ok(match d {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        other => {
            return Err(ModelError::Dtype {
                name: name.to_owned(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

fn deserialize<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        msg: e.to_string(),
    })
}

/// Whether a stored tensor is something transformers itself ignores on load.
fn ignorable(cfg: &LlamaConfig, name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

/// Reads `config.json` and the safetensors headers only (no tensor data): for `model info` and
/// resource estimates. Does not validate shapes.
pub fn inspect_hf(dir: &Path) -> Result<(LlamaConfig, BTreeMap<String, TensorInfo>)> {
    let cfg = LlamaConfig::from_file(&dir.join(CONFIG))?;
    let mut out = BTreeMap::new();
    for (file, _) in weight_files(dir)? {
        let mmap = map_file(&file)?;
        let st = deserialize(&file, &mmap)?;
        for (name, view) in st.tensors() {
            let info = TensorInfo {
                dtype: candle_dtype(&name, view.dtype())?,
                shape: view.shape().to_vec(),
                file: file.clone(),
            };
            out.insert(name, info);
        }
    }
    Ok((cfg, out))
}

/// Loads a checkpoint folder, casting every tensor to `dtype` on `dev`. Checks that every tensor
/// the config implies is present with the right shape and a float dtype, and that nothing else is.
pub fn load_hf(dir: &Path, dtype: DType, dev: &Device) -> Result<(LlamaConfig, Weights)> {
    let cfg = LlamaConfig::from_file(&dir.join(CONFIG))?;
    let expected = cfg.expected_tensors();
    let mut weights = Weights::new();
    for (file, listed) in weight_files(dir)? {
        let mmap = map_file(&file)?;
        let st = deserialize(&file, &mmap)?;
        for name in &listed {
            if st.tensor(name).is_err() {
                return Err(ModelError::MissingTensor {
                    name: name.clone(),
                    path: Some(file.clone()),
                });
            }
        }
        for (name, view) in st.tensors() {
            if ignorable(&cfg, &name) {
                continue;
            }
            let Some(shape) = expected.get(&name) else {
                return Err(ModelError::UnexpectedTensor {
                    name,
                    path: Some(file.clone()),
                });
            };
            if view.shape() != shape.as_slice() {
                return Err(ModelError::Shape {
                    name,
                    expected: shape.clone(),
                    got: view.shape().to_vec(),
                });
            }
            let stored = candle_dtype(&name, view.dtype())?;
            let t =
                Tensor::from_raw_buffer(view.data(), stored, view.shape(), dev)?.to_dtype(dtype)?;
            weights.insert(name, t);
        }
    }
    if let Some(name) = expected.keys().find(|n| !weights.contains_key(*n)) {
        return Err(ModelError::MissingTensor {
            name: name.clone(),
            path: Some(dir.to_owned()),
        });
    }
    Ok((cfg, weights))
}

/// Checks that `weights` holds exactly the tensors `cfg` implies, with the right shapes.
pub fn validate_weights(cfg: &LlamaConfig, weights: &Weights) -> Result<()> {
    let expected = cfg.expected_tensors();
    for (name, shape) in &expected {
        let t = weights.get(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.clone(),
            path: None,
        })?;
        if t.dims() != shape.as_slice() {
            return Err(ModelError::Shape {
                name: name.clone(),
                expected: shape.clone(),
                got: t.dims().to_vec(),
            });
        }
    }
    if let Some(name) = weights.keys().find(|n| !expected.contains_key(*n)) {
        return Err(ModelError::UnexpectedTensor {
            name: name.clone(),
            path: None,
        });
    }
    Ok(())
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "unknown",
    }
}

/// Shard size of written checkpoints, as transformers' `save_pretrained` default (5 GB).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// Writes `weights` as `model.safetensors`, or, when they exceed `shard_bytes`, as
/// `model-0000N-of-0000M.safetensors` shards (tensors in name order, a new shard when the next
/// tensor would overflow) with `model.safetensors.index.json`, the layout transformers writes
/// and [`load_hf`] reads. Each file carries `{"format": "pt"}` metadata.
pub fn write_weights(dir: &Path, weights: &Weights, shard_bytes: u64) -> Result<()> {
    let bytes = |t: &Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let total: u64 = weights.values().map(bytes).sum();
    let mut shards: Vec<Vec<(&String, &Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    for (n, t) in weights {
        let b = bytes(t);
        if size > 0 && size + b > shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        shards.last_mut().expect("one shard exists").push((n, t));
    }
    let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let m = shards.len();
    let mut map = serde_json::Map::new();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = if m == 1 {
            SINGLE.to_owned()
        } else {
            format!("model-{:05}-of-{m:05}.safetensors", i + 1)
        };
        let tensors = shard
            .into_iter()
            .map(|(n, t)| {
                map.insert(n.clone(), file.clone().into());
                Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?))
            })
            .collect::<Result<Vec<_>>>()?;
        let path = dir.join(&file);
        safetensors::serialize_to_file(tensors, Some(meta.clone()), &path).map_err(|e| {
            ModelError::Safetensors {
                path: path.clone(),
                msg: e.to_string(),
            }
        })?;
    }
    if m > 1 {
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": map });
        let path = dir.join(INDEX);
        let text = serde_json::to_string_pretty(&index).expect("a JSON value always serialises");
        std::fs::write(&path, text + "\n").map_err(io_err(&path))?;
    }
    Ok(())
}

/// Writes a folder transformers loads as `LlamaForCausalLM` and [`load_hf`] loads back
/// bit-identically: `config.json` (with `head_dim`, and the weights' dtype), `model.safetensors`
/// with HF names and `{"format": "pt"}` metadata (a tied model has no `lm_head.weight`, as
/// transformers writes it), and `tokenizer.json` copied alongside when given.
pub fn save_hf(
    dir: &Path,
    cfg: &LlamaConfig,
    weights: &Weights,
    tokenizer_json: Option<&Path>,
) -> Result<()> {
    validate_weights(cfg, weights)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut cfg = cfg.clone();
    if let Some(t) = weights.get("model.embed_tokens.weight") {
        cfg.torch_dtype = Some(dtype_name(t.dtype()).to_owned());
    }
    let cfg_path = dir.join(CONFIG);
    let text =
        serde_json::to_string_pretty(&cfg.to_hf_json()).expect("a JSON value always serialises");
    std::fs::write(&cfg_path, text + "\n").map_err(io_err(&cfg_path))?;

    write_weights(dir, weights, DEFAULT_SHARD_BYTES)?;
    if let Some(tok) = tokenizer_json {
        let dst = dir.join("tokenizer.json");
        std::fs::copy(tok, &dst).map_err(io_err(tok))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Llama, Mode};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name)
    }

    fn copy_fixture(name: &str) -> tempfile::TempDir {
        let td = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture(name).join(f), td.path().join(f)).unwrap();
        }
        td
    }

    fn bits(w: &Weights) -> BTreeMap<String, (Vec<usize>, Vec<u32>)> {
        w.iter()
            .map(|(n, t)| {
                let v = t
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                (
                    n.clone(),
                    (t.dims().to_vec(), v.iter().map(|x| x.to_bits()).collect()),
                )
            })
            .collect()
    }

    #[test]
    fn large_checkpoints_are_written_as_shards_with_an_index_that_loads_back() {
        let (_, w) = load_hf(&fixture("tiny-nemotron"), DType::F32, &Device::Cpu).unwrap();
        let td = copy_fixture("tiny-nemotron");
        std::fs::remove_file(td.path().join(SINGLE)).unwrap();
        write_weights(td.path(), &w, 200_000).unwrap();
        assert!(!td.path().join(SINGLE).exists());
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(td.path().join(INDEX)).unwrap()).unwrap();
        let files: BTreeSet<&str> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(files.len() >= 3, "{files:?}");
        let of = format!("-of-{:05}.safetensors", files.len());
        assert!(files.iter().all(|f| f.ends_with(&of)), "{files:?}");
        let (_, w2) = load_hf(td.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(bits(&w), bits(&w2));
    }

    #[test]
    fn save_then_load_is_bit_identical_and_tied_has_no_lm_head() {
        for name in ["tiny-llama", "tiny-llama31"] {
            let (cfg, w) = load_hf(&fixture(name), DType::F32, &Device::Cpu).unwrap();
            let td = tempfile::tempdir().unwrap();
            let tok = td.path().join("tok.json");
            std::fs::write(&tok, "{}").unwrap();
            let out = td.path().join("out");
            save_hf(&out, &cfg, &w, Some(&tok)).unwrap();
            assert!(out.join("tokenizer.json").is_file());
            let (cfg2, w2) = load_hf(&out, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(cfg2.head_dim, cfg.head_dim);
            assert_eq!(cfg2.rope_scaling, cfg.rope_scaling);
            assert_eq!(bits(&w), bits(&w2));
            let (_, infos) = inspect_hf(&out).unwrap();
            assert_eq!(
                infos.contains_key("lm_head.weight"),
                !cfg.tie_word_embeddings
            );
            // The original file and ours hold the same tensors byte for byte.
            let orig = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
            let ours = std::fs::read(out.join("model.safetensors")).unwrap();
            let (a, b) = (
                SafeTensors::deserialize(&orig).unwrap(),
                SafeTensors::deserialize(&ours).unwrap(),
            );
            let mut names = a.names();
            names.sort();
            let mut names_b = b.names();
            names_b.sort();
            assert_eq!(names, names_b);
            for n in names {
                assert_eq!(
                    a.tensor(n).unwrap().data(),
                    b.tensor(n).unwrap().data(),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn sharded_checkpoint_loads_like_a_single_file() {
        let (cfg, w) = load_hf(&fixture("tiny-llama"), DType::F32, &Device::Cpu).unwrap();
        let td = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture("tiny-llama").join("config.json"),
            td.path().join("config.json"),
        )
        .unwrap();
        let mut map = serde_json::Map::new();
        let (first, second): (Vec<_>, Vec<_>) = w.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (file, part) in [
            ("model-00001-of-00002.safetensors", first),
            ("model-00002-of-00002.safetensors", second),
        ] {
            let part: Vec<(String, Tensor)> = part
                .into_iter()
                .map(|(_, (n, t))| (n.clone(), t.clone()))
                .collect();
            for (n, _) in &part {
                map.insert(n.clone(), Value::from(file));
            }
            safetensors::serialize_to_file(part, None, &td.path().join(file)).unwrap();
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(td.path().join(INDEX), index.to_string()).unwrap();
        let (cfg2, w2) = load_hf(td.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(cfg, cfg2);
        assert_eq!(bits(&w), bits(&w2));
    }

    fn write_with(td: &Path, edit: impl FnOnce(&mut Weights)) {
        let (_, mut w) = load_hf(&fixture("tiny-llama"), DType::F32, &Device::Cpu).unwrap();
        edit(&mut w);
        safetensors::serialize_to_file(w, None, &td.join(SINGLE)).unwrap();
    }

    #[test]
    fn bad_checkpoints_give_errors_naming_the_tensor() {
        let q = "model.layers.1.self_attn.q_proj.weight";
        let td = copy_fixture("tiny-llama");
        write_with(td.path(), |w| {
            w.remove(q);
        });
        let e = load_hf(td.path(), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains(q) && e.contains("missing"), "{e}");

        write_with(td.path(), |w| {
            w.insert(
                q.into(),
                Tensor::zeros((64, 32), DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let e = load_hf(td.path(), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(q) && e.contains("[64, 32]") && e.contains("[64, 64]"),
            "{e}"
        );

        write_with(td.path(), |w| {
            w.insert(
                q.into(),
                Tensor::zeros((64, 64), DType::I64, &Device::Cpu).unwrap(),
            );
        });
        let e = load_hf(td.path(), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains(q) && e.contains("I64"), "{e}");

        write_with(td.path(), |w| {
            w.insert(
                "model.layers.9.mlp.up_proj.weight".into(),
                Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let e = load_hf(td.path(), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.layers.9.mlp.up_proj.weight"), "{e}");

        // A truncated file.
        let bytes = std::fs::read(fixture("tiny-llama").join(SINGLE)).unwrap();
        std::fs::write(td.path().join(SINGLE), &bytes[..bytes.len() / 2]).unwrap();
        let e = load_hf(td.path(), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("corrupt"),
            "{e}"
        );

        // Garbage header.
        std::fs::write(td.path().join(SINGLE), b"not a safetensors file at all").unwrap();
        assert!(matches!(
            load_hf(td.path(), DType::F32, &Device::Cpu),
            Err(ModelError::Safetensors { .. })
        ));

        // No weights at all.
        std::fs::remove_file(td.path().join(SINGLE)).unwrap();
        let e = load_hf(td.path(), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.safetensors"), "{e}");
    }

    #[test]
    fn unsupported_architecture_is_an_error_naming_the_field() {
        let td = copy_fixture("tiny-llama");
        let p = td.path().join("config.json");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"llama\"", "\"gpt_neox\"");
        std::fs::write(&p, text).unwrap();
        let e = load_hf(td.path(), DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model_type") && e.contains("gpt_neox") && e.contains("config.json"),
            "{e}"
        );
    }

    #[test]
    fn save_refuses_weights_that_do_not_fit_the_config() {
        let (cfg, mut w) = load_hf(&fixture("tiny-llama"), DType::F32, &Device::Cpu).unwrap();
        w.remove("model.norm.weight");
        let td = tempfile::tempdir().unwrap();
        let e = save_hf(td.path(), &cfg, &w, None).unwrap_err().to_string();
        assert!(e.contains("model.norm.weight"), "{e}");
    }

    #[test]
    fn bf16_save_load_round_trip_keeps_dtype_and_bits() {
        let model = Llama::load_hf(
            &fixture("tiny-llama31"),
            DType::BF16,
            &Device::Cpu,
            Mode::Frozen,
        )
        .unwrap();
        let w = model.weights().unwrap();
        let td = tempfile::tempdir().unwrap();
        save_hf(td.path(), model.config(), &w, None).unwrap();
        let (cfg, w2) = load_hf(td.path(), DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(cfg.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(
            inspect_hf(td.path()).unwrap().1["model.norm.weight"].dtype,
            DType::BF16
        );
        assert_eq!(bits(&w), bits(&w2));
    }
}
