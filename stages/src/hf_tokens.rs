//! Makes a model folder usable by Hugging Face tools as it is: beside the `tokenizer.json` a
//! training kind copies from the dataset, `tokenizer_config.json` and `special_tokens_map.json`
//! (BOS/EOS/padding tokens) and the same tokens' ids in `config.json`. Without them
//! `AutoTokenizer` has no BOS or EOS and lm-evaluation-harness fails in `tok_encode`.

use std::path::Path;

use pollard_data::hf_files;

use crate::common::{read_json, write_json};
use crate::error::{Result, StageError};

/// Writes the tokenizer companions into `model_dir` (from the dataset folder `data_dir`'s
/// tokenizer) and adds `bos_token_id`, `eos_token_id`, `pad_token_id` to its `config.json`.
/// A tokenizer without special tokens (plain bytes) leaves the folder as it is.
pub fn add_tokenizer_files(model_dir: &Path, data_dir: &Path) -> Result<()> {
    let tok_path = data_dir.join(pollard_data::TOKENIZER_FILE);
    if !tok_path.is_file() {
        return Ok(());
    }
    let tok = pollard_data::Tokenizer::load(&tok_path)?;
    let Some(specials) = hf_files::specials(&tok) else {
        return Ok(());
    };
    hf_files::write_tokenizer_files(model_dir, &tok)?;
    let cfg_path = model_dir.join("config.json");
    let mut cfg = read_json(&cfg_path)?;
    let obj = cfg.as_object_mut().ok_or_else(|| StageError::Config {
        path: cfg_path.clone(),
        field: "(root)".into(),
        message: "is not a JSON object".into(),
    })?;
    obj.extend(hf_files::token_ids(&specials));
    write_json(&cfg_path, &cfg)
}
