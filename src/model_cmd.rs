//! `pollard model info|forward`: inspect a Hugging Face checkpoint folder and run it on token ids.
//!
//! Thin CLI glue over pollard-model; all checking of files happens there, so every error names
//! the file, field or tensor. `forward` runs on the CPU in the requested dtype.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pollard_engine::EngineError;
use pollard_model::candle_core::{Device, Tensor};
use pollard_model::{inspect_hf, mean_next_token_logprob, parse_dtype, Llama, Mode};

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Print a checkpoint's architecture, parameter count by part (exact), and dtype.
    Info {
        /// Hugging Face folder (config.json + model.safetensors or a sharded index).
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a checkpoint on token ids; print last-position logits and the mean next-token log-prob.
    Forward {
        /// Hugging Face folder.
        #[arg(long)]
        model: PathBuf,
        /// JSON file holding a list of token-id lists, all of the same length.
        #[arg(long)]
        ids: PathBuf,
        /// Print `{"last_position_logits": [[...]], "mean_next_token_logprob": x}`.
        #[arg(long)]
        json: bool,
        /// Compute dtype: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

/// Runs a `pollard model` command. Every failure here is about the files or ids the user named,
/// so it is reported as a usage error (exit status 2) carrying the whole cause chain.
pub fn run(cmd: ModelCommand) -> Result<()> {
    let result = match cmd {
        ModelCommand::Info { dir, json } => info(&dir, json),
        ModelCommand::Forward {
            model,
            ids,
            json,
            dtype,
        } => forward(&model, &ids, json, &dtype),
    };
    result.map_err(|e| EngineError::Usage(chain_text(&e)).into())
}

/// The error and its causes on one line, each cause once: messages that already embed their
/// source (as thiserror's often do) would otherwise print it twice.
fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn info(dir: &Path, json: bool) -> Result<()> {
    let (cfg, tensors) =
        inspect_hf(dir).with_context(|| format!("cannot inspect model {}", dir.display()))?;
    let p = cfg.param_count();
    let mut dtypes: Vec<String> = tensors
        .values()
        .map(|t| format!("{:?}", t.dtype).to_lowercase())
        .collect();
    dtypes.sort();
    dtypes.dedup();
    let stored: u64 = tensors
        .values()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    let arch = if cfg.model_type == "mistral" {
        "MistralForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    if json {
        let v = serde_json::json!({
            "architecture": arch,
            "model_type": cfg.model_type,
            "config": cfg.to_hf_json(),
            "parameters": {"embed": p.embed, "attention": p.attention, "mlp": p.mlp, "norms": p.norms,
                           "lm_head": p.lm_head, "total": p.total()},
            "stored_parameters": stored,
            "dtype": dtypes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("architecture: {arch}");
    println!(
        "layers: {}  hidden: {}  intermediate: {}  heads: {} (kv {}, head_dim {})  vocab: {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    println!(
        "rope: theta {} {:?}  tied embeddings: {}",
        cfg.rope_theta, cfg.rope_scaling, cfg.tie_word_embeddings
    );
    println!("parameters:");
    for (part, n) in [
        ("embed", p.embed),
        ("attention", p.attention),
        ("mlp", p.mlp),
        ("norms", p.norms),
        ("lm_head", p.lm_head),
    ] {
        println!("  {part:<10} {n}");
    }
    println!("  {:<10} {}", "total", p.total());
    println!("dtype: {}", dtypes.join(", "));
    Ok(())
}

fn read_ids(path: &Path) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ids file {}", path.display()))?;
    let rows: Vec<Vec<u32>> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON list of lists of non-negative token ids",
            path.display()
        )
    })?;
    let Some(first) = rows.first() else {
        bail!("{}: the list of sequences is empty", path.display())
    };
    if first.len() < 2 {
        bail!(
            "{}: sequences need at least 2 tokens, sequence 0 has {}",
            path.display(),
            first.len()
        );
    }
    if let Some((i, r)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != first.len())
    {
        bail!(
            "{}: sequence {i} has {} tokens, sequence 0 has {}; all must have the same length",
            path.display(),
            r.len(),
            first.len()
        );
    }
    Ok(rows)
}

fn forward(model: &Path, ids_path: &Path, json: bool, dtype: &str) -> Result<()> {
    let rows = read_ids(ids_path)?;
    let dtype = parse_dtype(dtype).context("--dtype")?;
    let dev = Device::Cpu;
    let m = Llama::load_hf(model, dtype, &dev, Mode::Frozen)
        .with_context(|| format!("cannot load model {}", model.display()))?;
    let (b, t) = (rows.len(), rows[0].len());
    let ids = Tensor::from_vec(rows.concat(), (b, t), &dev)?;
    let logits = m
        .forward(&ids)
        .with_context(|| format!("forward pass on {}", ids_path.display()))?;
    let last: Vec<Vec<f32>> = logits
        .narrow(1, t - 1, 1)?
        .squeeze(1)?
        .to_dtype(pollard_model::candle_core::DType::F32)?
        .to_vec2()?;
    let lp = mean_next_token_logprob(&logits, &ids)?;
    if json {
        let v = serde_json::json!({"last_position_logits": last, "mean_next_token_logprob": lp});
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("sequences: {b}  length: {t}");
        println!("mean_next_token_logprob: {lp}");
        for (i, row) in last.iter().enumerate() {
            let (arg, max) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |a, (j, &v)| if v > a.1 { (j, v) } else { a },
                );
            println!("sequence {i}: last-position argmax token {arg} (logit {max})");
        }
    }
    Ok(())
}
