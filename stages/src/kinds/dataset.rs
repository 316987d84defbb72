//! `dataset`: text -> tokenizer + token shards, the first stage of every recipe that trains.
//! The text is the synthetic corpus or the user's files (`text.files` globs, relative to the
//! manifest's folder; their folders enter the cache key through `deps`); the tokenizer is a
//! byte-level BPE trained on the training documents, plain bytes, or a `tokenizer.json`. The
//! artifact (`tokenizer.json`, `train.bin`, `val.bin`, `meta.json`) is described in
//! pollard-data's `artifact` module; the work itself lives in pollard-data, this file only
//! decodes parameters and wires them up.

use std::path::{Path, PathBuf};

use pollard_data::{sources, split, synthetic, Tokenizer, MIN_BPE_VOCAB};
use pollard_engine::{
    BoxError, Count, Inputs, ParamError, PlanInputs, Progress, Resources, Slots, Stage, StageCtx,
};
use serde::{Deserialize, Serialize};

use crate::common::resolve;
use crate::error::StageError;

pub struct Dataset;

/// The share of documents held out for validation when `val_fraction` is not given: enough
/// windows for a stable validation loss on the tiny recipe (~130k tokens of 2M words), small
/// enough not to starve training.
pub const DEFAULT_VAL_FRACTION: f64 = 0.05;

/// Largest vocabulary `tokenizer.bpe` accepts: token ids are stored as u32.
const MAX_VOCAB: u64 = u32::MAX as u64;

fn default_val_fraction() -> f64 {
    DEFAULT_VAL_FRACTION
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetParams {
    /// `{ files: [globs] }` or `{ synthetic: { words, seed } }`.
    pub text: TextSource,
    /// `{ bpe: VOCAB }`, `{ byte: true }` or `{ file: PATH }`.
    pub tokenizer: TokenizerSpec,
    /// Share of documents (evenly spaced) held out as `val.bin`, in [0, 1).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

/// `{ files: [globs] }` or `{ synthetic: { words, seed } }`: exactly one of the two. (A struct
/// of options rather than an enum, so that a typo inside either is reported by field name, with
/// the fields of both to choose from.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSource {
    /// Glob patterns relative to the manifest's folder (or absolute); documents are separated
    /// by blank lines, and every file ends a document.
    /// A single pattern is accepted for a one-element list.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "one_or_many"
    )]
    pub files: Option<Vec<String>>,
    /// The deterministic synthetic corpus of pollard-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticText>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticText {
    /// Exact number of whitespace-separated words (`2M`).
    pub words: Count,
    /// Picks the world (people, towns) and the stories; 0 when not given.
    #[serde(default)]
    pub seed: u64,
}

/// `{ bpe: VOCAB }`, `{ byte: true }` or `{ file: PATH }`: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    /// Train a byte-level BPE of this vocabulary size (at least 257) on the training documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpe: Option<Count>,
    /// One id per byte (256 ids); must be `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte: Option<bool>,
    /// A Hugging Face `tokenizer.json`, relative to the manifest's folder or absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// `files: data/*.txt` or `files: [data/*.txt, more/*.txt]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// The text source once validation has checked that exactly one is given.
enum Text<'a> {
    Files(&'a [String]),
    Synthetic(&'a SyntheticText),
}

/// The tokenizer choice once validation has checked that exactly one is given.
#[derive(Clone, Copy)]
enum Tok<'a> {
    Bpe(u64),
    Byte,
    File(&'a Path),
}

impl TextSource {
    fn get(&self) -> Option<Text<'_>> {
        match (&self.files, &self.synthetic) {
            (Some(f), None) => Some(Text::Files(f)),
            (None, Some(s)) => Some(Text::Synthetic(s)),
            _ => None,
        }
    }
}

impl TokenizerSpec {
    fn get(&self) -> Option<Tok<'_>> {
        match (&self.bpe, &self.byte, &self.file) {
            (Some(n), None, None) => Some(Tok::Bpe(n.get())),
            (None, Some(_), None) => Some(Tok::Byte),
            (None, None, Some(p)) => Some(Tok::File(p)),
            _ => None,
        }
    }
}

impl DatasetParams {
    /// The vocabulary the output will have, when it is known without running.
    fn planned_vocab(&self, base: &Path) -> Option<u64> {
        match self.tokenizer.get()? {
            Tok::Bpe(n) => Some(n),
            Tok::Byte => Some(256),
            Tok::File(path) => Tokenizer::load(&base.join(path))
                .ok()
                .map(|t| t.vocab_size() as u64),
        }
    }
}

impl Stage for Dataset {
    const KIND: &'static str = "dataset";
    const VERSION: u32 = 2;
    type Params = DatasetParams;

    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &[],
            optional: &[],
        }
    }

    fn validate(&self, p: &DatasetParams) -> Result<(), Vec<ParamError>> {
        let mut errs = Vec::new();
        match p.text.get() {
            None => errs.push(ParamError::new(
                "text",
                "give exactly one of `files: [globs]` or `synthetic: { words, seed }`",
            )),
            Some(Text::Files(patterns)) => {
                if patterns.is_empty() {
                    errs.push(ParamError::new("text.files", "lists no file or glob"));
                }
                for (i, pat) in patterns.iter().enumerate() {
                    if pat.trim().is_empty() {
                        errs.push(ParamError::new(format!("text.files[{i}]"), "is empty"));
                    } else if let Err(e) = sources::check_glob(pat) {
                        errs.push(ParamError::new(
                            format!("text.files[{i}]"),
                            format!("`{pat}` is not a valid glob: {e}"),
                        ));
                    } else if sources::glob_root(pat) == Path::new(".") {
                        // `deps` keys the stage on the pattern's leading folder; here that would
                        // be the manifest's folder itself, which holds the cache and the lock.
                        errs.push(ParamError::new(
                            format!("text.files[{i}]"),
                            format!(
                                "`{pat}` has a wildcard in its first component: start it with a folder \
                                 (`data/*.txt`), whose content then keys the cache"
                            ),
                        ));
                    }
                }
            }
            Some(Text::Synthetic(s)) => {
                if s.words.get() == 0 {
                    errs.push(ParamError::new(
                        "text.synthetic.words",
                        "must be at least 1",
                    ));
                }
            }
        }
        match p.tokenizer.get() {
            None => errs.push(ParamError::new(
                "tokenizer",
                "give exactly one of `bpe: VOCAB`, `byte: true` or `file: PATH`",
            )),
            Some(Tok::Bpe(n)) if n < MIN_BPE_VOCAB as u64 => errs.push(ParamError::new(
                "tokenizer.bpe",
                format!(
                    "{n} is below {MIN_BPE_VOCAB}, the 256 byte symbols plus the end-of-text token"
                ),
            )),
            Some(Tok::Bpe(n)) if n > MAX_VOCAB => errs.push(ParamError::new(
                "tokenizer.bpe",
                format!("{n} does not fit u32 token ids"),
            )),
            Some(Tok::Byte) if p.tokenizer.byte == Some(false) => errs.push(ParamError::new(
                "tokenizer.byte",
                "must be true (or use `bpe: VOCAB` or `file: PATH`)",
            )),
            Some(Tok::File(path)) if path.as_os_str().is_empty() => errs.push(ParamError::new(
                "tokenizer.file",
                "must name a tokenizer.json",
            )),
            _ => {}
        }
        if !(0.0..1.0).contains(&p.val_fraction) {
            errs.push(ParamError::new(
                "val_fraction",
                format!("{} is not in [0, 1)", p.val_fraction),
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn deps(&self, p: &DatasetParams) -> Vec<PathBuf> {
        // Planning cannot expand the globs (it has no manifest folder), so the key covers each
        // pattern's fixed leading folder: every file a pattern can match lies inside it.
        let mut deps: Vec<PathBuf> = match p.text.get() {
            Some(Text::Files(patterns)) => {
                patterns.iter().map(|pat| sources::glob_root(pat)).collect()
            }
            _ => Vec::new(),
        };
        if let Some(Tok::File(path)) = p.tokenizer.get() {
            deps.push(path.to_path_buf());
        }
        deps.sort();
        deps.dedup();
        deps
    }

    fn describe(
        &self,
        p: &DatasetParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        // A relative `tokenizer.file` resolves against the manifest's folder, as when running;
        // when it cannot be read the vocabulary is simply unknown until the run.
        let base = if inputs.workdir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            inputs.workdir.as_path()
        };
        Ok(p.planned_vocab(base)
            .map(|vocab| serde_json::json!({ "dataset": { "vocab": vocab } })))
    }

    fn resources(&self, p: &DatasetParams, _inputs: &PlanInputs) -> Result<Resources, BoxError> {
        // Peak host memory: the text (~5.4 bytes per synthetic word), the per-document
        // encodings of one chunk and the two shards (4 bytes per token, at most one token per
        // byte): about 9 bytes per byte of text. Files are unknown until they are expanded.
        let host_memory = match p.text.get() {
            Some(Text::Synthetic(s)) => s.words.get().saturating_mul(6).saturating_mul(9),
            _ => 0,
        };
        Ok(Resources {
            gpus: 0,
            gpu_memory: 0,
            cpus: 0,
            host_memory,
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &DatasetParams, _inputs: &Inputs) -> Result<(), BoxError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(ctx.threads())
            .build()
            .map_err(|e| {
                StageError::Device(format!("cannot start {} CPU threads: {e}", ctx.threads()))
            })?;
        // The tokenizers crate parallelises on the current rayon pool: this one is the grant.
        pool.install(|| build(ctx, p)).map_err(BoxError::from)
    }
}

/// Items per synthetic task file (`tasks/<name>.jsonl`).
pub const SYNTHETIC_TASK_ITEMS: usize = 200;

/// Writes the synthetic corpus's multiple-choice tasks (see `pollard_data::synthetic::tasks`)
/// into `out/tasks/`, where `evaluate` finds a task named without a `path`.
fn write_synthetic_tasks(out: &Path, seed: u64) -> Result<(), StageError> {
    let dir = out.join("tasks");
    std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
    for (name, text) in synthetic::tasks(seed, SYNTHETIC_TASK_ITEMS) {
        let path = dir.join(format!("{name}.jsonl"));
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))?;
    }
    Ok(())
}

/// Announces a phase on the progress line.
fn phase(ctx: &StageCtx, step: u64, message: String) -> Result<(), StageError> {
    if ctx.cancelled() {
        return Err(StageError::Cancelled);
    }
    ctx.progress(Progress {
        step,
        total: Some(4),
        message: Some(message),
        ..Progress::default()
    });
    Ok(())
}

fn build(ctx: &StageCtx, p: &DatasetParams) -> Result<(), StageError> {
    let text = p
        .text
        .get()
        .ok_or_else(|| StageError::param("text", "give exactly one of `files` or `synthetic`"))?;
    let spec = p.tokenizer.get().ok_or_else(|| {
        StageError::param("tokenizer", "give exactly one of `bpe`, `byte` or `file`")
    })?;
    let synthetic_seed = match &text {
        Text::Synthetic(s) => Some(s.seed),
        Text::Files(_) => None,
    };
    let meta = match (text, spec) {
        // A fixed tokenizer needs no pass over the text first: files stream through one at a
        // time, so a corpus larger than memory works (the paper recipes' case).
        (Text::Files(patterns), Tok::Byte | Tok::File(_)) => {
            phase(ctx, 0, "reading text files".into())?;
            let files = sources::expand_globs(ctx.workdir(), patterns)?;
            let (tokenizer, vocab) = make_tokenizer(ctx, spec, &[], p.val_fraction)?;
            phase(ctx, 2, format!("encoding {} files", files.len()))?;
            let mut w =
                pollard_data::DatasetWriter::create(ctx.out_dir(), &tokenizer, p.val_fraction)?;
            for f in &files {
                if ctx.cancelled() {
                    return Err(StageError::Cancelled);
                }
                let text = sources::read_text(f)?;
                let docs = split::documents(&text);
                if files.len() == 1 {
                    w.add(&split::for_validation(docs, p.val_fraction))?;
                } else {
                    w.add(&docs)?;
                }
            }
            w.finish(vocab, files_source(ctx.workdir(), &files), None)?
        }
        // Synthetic text, or a BPE to train: the text is held in memory.
        (text, spec) => {
            let (text, source, seed) = match text {
                Text::Synthetic(s) => {
                    phase(
                        ctx,
                        0,
                        format!("generating {} synthetic words", s.words.get()),
                    )?;
                    let text = synthetic::generate(s.words.get(), s.seed);
                    (
                        text,
                        format!("synthetic: {} words, seed {}", s.words.get(), s.seed),
                        Some(s.seed),
                    )
                }
                Text::Files(patterns) => {
                    phase(ctx, 0, "reading text files".into())?;
                    let files = sources::expand_globs(ctx.workdir(), patterns)?;
                    let mut text = String::new();
                    for f in &files {
                        text.push_str(&sources::read_text(f)?);
                        // A file always ends a document, even without a trailing blank line.
                        text.push_str("\n\n");
                    }
                    (text, files_source(ctx.workdir(), &files), None)
                }
            };
            let docs = split::for_validation(split::documents(&text), p.val_fraction);
            ctx.log(&format!(
                "{} documents, {} bytes of text",
                docs.len(),
                text.len()
            ));
            let (tokenizer, vocab) = make_tokenizer(ctx, spec, &docs, p.val_fraction)?;
            phase(ctx, 2, format!("encoding {} documents", docs.len()))?;
            pollard_data::write_dataset(
                ctx.out_dir(),
                &docs,
                &tokenizer,
                vocab,
                p.val_fraction,
                source,
                seed,
            )?
        }
    };
    if p.val_fraction > 0.0 && meta.val_tokens == 0 {
        // Every stage after this one measures on val.bin; an empty one fails them later.
        return Err(StageError::param(
            "val_fraction",
            format!(
                "the text has {} document(s) and no line to hold out for validation \
                 ({} of them at val_fraction {}); split it into documents with blank lines or \
                 more lines, add files, or set `val_fraction: 0` when nothing downstream \
                 evaluates",
                meta.train_documents + meta.val_documents,
                meta.val_documents,
                p.val_fraction
            ),
        ));
    }
    // The tokenizer's special tokens for Hugging Face tools (`tokenizer_config.json`).
    let tok = pollard_data::Tokenizer::load(&ctx.out_dir().join(pollard_data::TOKENIZER_FILE))?;
    pollard_data::hf_files::write_tokenizer_files(ctx.out_dir(), &tok)?;
    if let Some(seed) = synthetic_seed {
        write_synthetic_tasks(ctx.out_dir(), seed)?;
    }
    phase(
        ctx,
        4,
        format!(
            "{} train / {} val tokens, vocab {}",
            meta.train_tokens, meta.val_tokens, meta.vocab_size
        ),
    )?;
    ctx.log(&format!(
        "train {} tokens ({} documents), val {} tokens ({} documents), vocab {}",
        meta.train_tokens,
        meta.train_documents,
        meta.val_tokens,
        meta.val_documents,
        meta.vocab_size
    ));
    Ok(())
}

/// `meta.json`'s `source` for files: their paths relative to the manifest's folder, so the
/// artifact does not depend on where the checkout lives.
fn files_source(base: &Path, files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(base).unwrap_or(f).display().to_string())
        .collect();
    format!("files: {}", names.join(", "))
}

/// The tokenizer and the model vocabulary to record. A BPE trains on the training documents
/// of `docs` only, so validation text stays unseen.
fn make_tokenizer(
    ctx: &StageCtx,
    spec: Tok<'_>,
    docs: &[&str],
    val_fraction: f64,
) -> Result<(Tokenizer, usize), StageError> {
    Ok(match spec {
        Tok::Bpe(n) => {
            phase(ctx, 1, format!("training a {n}-token BPE"))?;
            let train_docs: Vec<&str> = docs
                .iter()
                .enumerate()
                .filter(|(i, _)| !split::is_val(*i, val_fraction))
                .map(|(_, d)| *d)
                .collect();
            let t = Tokenizer::train_bpe(&train_docs, n as usize)?;
            if t.vocab_size() < n as usize {
                ctx.log(&format!(
                    "the text allowed only {} BPE tokens; ids stay below the requested {n}",
                    t.vocab_size()
                ));
            }
            (t, n as usize)
        }
        Tok::Byte => (Tokenizer::byte(), 256),
        Tok::File(path) => {
            let t = Tokenizer::load(&resolve(ctx, path))?;
            let v = t.vocab_size();
            (t, v)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(yaml: &str) -> DatasetParams {
        pollard_engine::yaml::from_str(yaml).unwrap()
    }

    fn run_in(dir: &Path, p: &DatasetParams) -> Result<PathBuf, BoxError> {
        // A fresh output folder per run, as the engine gives.
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let out = dir.join(format!(
            "out-{}",
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&out).unwrap();
        let mut ctx = StageCtx::detached("data", out.clone(), dir.join("scratch"))
            .with_workdir(dir.to_path_buf());
        Dataset.run(&mut ctx, p, &Inputs::default())?;
        Ok(out)
    }

    #[test]
    fn manifest_spellings_decode() {
        let p =
            params("{ text: { synthetic: { words: 2M, seed: 1234 } }, tokenizer: { bpe: 1024 } }");
        assert_eq!(
            p.text.synthetic,
            Some(SyntheticText {
                words: Count(2_000_000),
                seed: 1234
            })
        );
        assert_eq!(p.tokenizer.bpe, Some(Count(1024)));
        assert_eq!(p.val_fraction, DEFAULT_VAL_FRACTION);
        let p = params("{ text: { files: ['data/*.txt'] }, tokenizer: { file: tok/tokenizer.json }, val_fraction: 0.1 }");
        assert_eq!(p.text.files, Some(vec!["data/*.txt".into()]));
        let one = params("{ text: { files: 'data/*.txt' }, tokenizer: { byte: true } }");
        assert_eq!(
            one.text.files,
            Some(vec!["data/*.txt".into()]),
            "a single pattern is a list of one"
        );
        assert_eq!(p.tokenizer.file, Some("tok/tokenizer.json".into()));
        assert_eq!(
            params("{ text: { synthetic: { words: 10 } }, tokenizer: { byte: true } }")
                .tokenizer
                .byte,
            Some(true)
        );
        // The canonical form (what the cache key hashes) keeps only what was given.
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"text": {"files": ["data/*.txt"]}, "tokenizer": {"file": "tok/tokenizer.json"}, "val_fraction": 0.1})
        );
        // Unknown fields are refused while decoding.
        assert!(pollard_engine::yaml::from_str::<DatasetParams>(
            "{ text: { synthetic: { words: 10, sed: 1 } }, tokenizer: { byte: true } }"
        )
        .is_err());
        assert!(pollard_engine::yaml::from_str::<DatasetParams>(
            "{ text: { synthetic: { words: 10 } }, tokenizer: { bpe: 300 }, extra: 1 }"
        )
        .is_err());
    }

    #[test]
    fn bad_params_are_refused_naming_the_field() {
        let fields = |yaml: &str| -> Vec<String> {
            Dataset
                .validate(&params(yaml))
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(
                "{ text: { synthetic: { words: 0 } }, tokenizer: { bpe: 256 }, val_fraction: 1.0 }"
            ),
            vec!["text.synthetic.words", "tokenizer.bpe", "val_fraction"]
        );
        assert_eq!(
            fields("{ text: { files: [] }, tokenizer: { byte: false } }"),
            vec!["text.files", "tokenizer.byte"]
        );
        assert_eq!(
            fields("{ text: { files: ['ok/*.txt', 'bad/['] }, tokenizer: { file: '' } }"),
            vec!["text.files[1]", "tokenizer.file"]
        );
        // Two choices at once, or none.
        assert_eq!(fields("{ text: { files: [a], synthetic: { words: 1 } }, tokenizer: { bpe: 300, byte: true } }"), vec!["text", "tokenizer"]);
        assert_eq!(
            fields("{ text: {}, tokenizer: {} }"),
            vec!["text", "tokenizer"]
        );
        let errs = Dataset
            .validate(&params(
                "{ text: { synthetic: { words: 5 } }, tokenizer: { bpe: 100 } }",
            ))
            .unwrap_err();
        assert!(
            errs[0].message.contains("100") && errs[0].message.contains("257"),
            "{}",
            errs[0].message
        );
        assert!(Dataset
            .validate(&params(
                "{ text: { synthetic: { words: 5 } }, tokenizer: { bpe: 257 } }"
            ))
            .is_ok());
    }

    #[test]
    fn describe_deps_and_resources() {
        let p = params("{ text: { files: ['corpus/**/*.txt', 'extra/a.txt', 'corpus/*.md'] }, tokenizer: { file: tok.json } }");
        assert_eq!(
            Dataset.deps(&p),
            vec![
                PathBuf::from("corpus"),
                PathBuf::from("extra/a.txt"),
                PathBuf::from("tok.json")
            ]
        );
        assert_eq!(
            Dataset.describe(&p, &PlanInputs::default()).unwrap(),
            None,
            "tok.json does not exist here"
        );
        let p = params("{ text: { synthetic: { words: 2M, seed: 1 } }, tokenizer: { bpe: 1024 } }");
        assert!(Dataset.deps(&p).is_empty());
        assert_eq!(
            Dataset.describe(&p, &PlanInputs::default()).unwrap(),
            Some(serde_json::json!({"dataset": {"vocab": 1024}}))
        );
        let r = Dataset.resources(&p, &PlanInputs::default()).unwrap();
        assert_eq!((r.gpus, r.gpu_memory), (0, 0));
        assert!(r.host_memory > 2_000_000 * 5);
        let p = params("{ text: { synthetic: { words: 10 } }, tokenizer: { byte: true } }");
        assert_eq!(
            Dataset.describe(&p, &PlanInputs::default()).unwrap(),
            Some(serde_json::json!({"dataset": {"vocab": 256}}))
        );
    }

    #[test]
    fn synthetic_bpe_dataset_is_deterministic_and_opens() {
        let dir = tempfile::tempdir().unwrap();
        let p = params("{ text: { synthetic: { words: 30K, seed: 7 } }, tokenizer: { bpe: 400 }, val_fraction: 0.1 }");
        let a = run_in(dir.path(), &p).unwrap();
        let b = run_in(dir.path(), &p).unwrap();
        for f in ["tokenizer.json", "train.bin", "val.bin", "meta.json"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{f} differs between runs"
            );
        }
        let ds = pollard_data::Dataset::open(&a).unwrap();
        let meta = ds.meta();
        assert_eq!(
            (meta.vocab_size, meta.eos_id, meta.seed),
            (400, Some(0), Some(7))
        );
        assert_eq!(meta.source, "synthetic: 30000 words, seed 7");
        assert!(
            meta.val_tokens > 0 && meta.train_tokens > 8 * meta.val_tokens,
            "{meta:?}"
        );
        let text = ds.tokenizer().decode(&ds.val()[..200]).unwrap();
        assert!(
            text.chars().any(|c| c.is_ascii_uppercase()),
            "val decodes to text: {text}"
        );
    }

    #[test]
    fn files_with_byte_tokenizer_keep_the_text_and_name_sources_relatively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
        std::fs::write(dir.path().join("corpus/b.txt"), "second file.\n").unwrap();
        std::fs::write(
            dir.path().join("corpus/a.txt"),
            "first doc.\n\nsecond doc\nstill second.",
        )
        .unwrap();
        let p = params(
            "{ text: { files: ['corpus/*.txt'] }, tokenizer: { byte: true }, val_fraction: 0 }",
        );
        let out = run_in(dir.path(), &p).unwrap();
        let ds = pollard_data::Dataset::open(&out).unwrap();
        assert_eq!(ds.meta().source, "files: corpus/a.txt, corpus/b.txt");
        assert_eq!(ds.meta().train_documents, 3);
        assert_eq!(
            ds.tokenizer().decode(ds.train()).unwrap(),
            "first doc.\nsecond doc\nstill second.\nsecond file.\n"
        );
    }

    #[test]
    fn files_with_a_bpe_train_it_on_the_training_documents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
        let text = pollard_data::synthetic::generate(5000, 4);
        std::fs::write(dir.path().join("corpus/stories.txt"), &text).unwrap();
        let p = params("{ text: { files: corpus/stories.txt }, tokenizer: { bpe: 300 } }");
        let out = run_in(dir.path(), &p).unwrap();
        let ds = pollard_data::Dataset::open(&out).unwrap();
        assert_eq!(ds.meta().source, "files: corpus/stories.txt");
        assert_eq!(ds.meta().tokenizer, pollard_data::TokenizerKind::Bpe);
        let docs = pollard_data::split::documents(&text);
        assert_eq!(
            ds.meta().train_documents + ds.meta().val_documents,
            docs.len() as u64
        );
        // The shards decode back to the documents, each ended by a newline and the EOS token.
        let first = ds
            .tokenizer()
            .decode(&ds.train()[..ds.train().iter().position(|&t| t == 0).unwrap()])
            .unwrap();
        assert_eq!(first, format!("{}\n", docs[0]));
    }

    #[test]
    fn a_single_text_file_without_blank_lines_gets_a_validation_split_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..100)
            .map(|i| format!("sentence number {i}.\n"))
            .collect();
        std::fs::write(dir.path().join("one.txt"), &text).unwrap();
        for tok in ["{ byte: true }", "{ bpe: 260 }"] {
            let p = params(&format!(
                "{{ text: {{ files: one.txt }}, tokenizer: {tok} }}"
            ));
            let out = run_in(dir.path(), &p).unwrap();
            let ds = pollard_data::Dataset::open(&out).unwrap();
            let meta = ds.meta();
            assert_eq!((meta.train_documents, meta.val_documents), (95, 5), "{tok}");
            assert!(meta.val_tokens > 0);
        }
        // One line cannot be split: refused, with the fix.
        std::fs::write(dir.path().join("one.txt"), "a single line of text").unwrap();
        let p = params("{ text: { files: one.txt }, tokenizer: { byte: true } }");
        let err = run_in(dir.path(), &p).unwrap_err().to_string();
        assert!(
            err.contains("no line to hold out for validation") && err.contains("val_fraction: 0"),
            "{err}"
        );
    }

    #[test]
    fn a_glob_matching_nothing_fails_the_run_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = params("{ text: { files: ['missing/*.txt'] }, tokenizer: { byte: true } }");
        let err = run_in(dir.path(), &p).unwrap_err().to_string();
        assert!(
            err.contains("text.files[0]")
                && err.contains("missing/*.txt")
                && err.contains("matches no file"),
            "{err}"
        );
    }

    #[test]
    fn a_tokenizer_file_is_used_and_its_vocab_recorded() {
        let dir = tempfile::tempdir().unwrap();
        Tokenizer::byte()
            .save(&dir.path().join("tok.json"))
            .unwrap();
        let p = params(
            // Seven documents hold out none at the default share: no validation split asked.
            "{ text: { synthetic: { words: 500, seed: 1 } }, tokenizer: { file: tok.json }, val_fraction: 0 }",
        );
        let out = run_in(dir.path(), &p).unwrap();
        let ds = pollard_data::Dataset::open(&out).unwrap();
        assert_eq!(ds.meta().vocab_size, 256);
        assert_eq!(ds.meta().tokenizer, pollard_data::TokenizerKind::File);
        let bad = params("{ text: { synthetic: { words: 500 } }, tokenizer: { file: nope.json } }");
        let err = run_in(dir.path(), &bad).unwrap_err().to_string();
        assert!(err.contains("nope.json"), "{err}");
    }
}
