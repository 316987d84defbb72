//! `log.jsonl` of a training run: one JSON object per logged step. On resume the log is cut
//! back to the resumed step, so a killed-and-resumed run's log has each step once.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result};

/// One line of `log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step: u64,
    pub tokens: u64,
    pub lr: f64,
    pub loss: f64,
    pub grad_norm: f64,
    /// Seconds of training so far (summed over resumed runs).
    pub elapsed: f64,
    pub tokens_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Named parts of the loss (e.g. `kl`, `ce`), each the mean over the step's micro-batches;
    /// written as top-level fields.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, f64>,
}

/// How the trainer writes `log.jsonl` (see [`crate::Trainer::with_log_options`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    /// Write the wall-clock fields `elapsed` and `tokens_per_s`. Off, the log is a pure
    /// function of the run, so a rerun (or a resumed run) reproduces it byte for byte, which a
    /// content-addressed cache needs.
    pub wall_clock: bool,
    /// The key the eval loss is written under.
    pub eval_key: String,
    /// Also log (and report progress for) step 1, whatever `log_every` is.
    pub first_step: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            wall_clock: true,
            eval_key: "eval_loss".into(),
            first_step: false,
        }
    }
}

/// Appends records to a log file, one flushed line each (a kill loses at most the line being
/// written, which resume then drops).
pub struct LogWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl LogWriter {
    /// Opens `path` for appending after removing every line past `resume_step` (and any line
    /// that does not parse, such as a half-written last line). `resume_step = 0` starts afresh.
    pub fn open(path: &Path, resume_step: u64) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let kept: Vec<String> = if resume_step == 0 {
            Vec::new()
        } else {
            match fs::read_to_string(path) {
                Ok(text) => text
                    .lines()
                    .filter(|l| {
                        // Any complete line with a step (whatever the [`LogOptions`]) is kept.
                        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                            v.get("step")
                                .and_then(serde_json::Value::as_u64)
                                .is_some_and(|s| s <= resume_step)
                        })
                    })
                    .map(str::to_owned)
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_err(path)(e)),
            }
        };
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        fs::write(path, body).map_err(io_err(path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, record: &LogRecord) -> Result<()> {
        self.write_with(record, &LogOptions::default())
    }

    /// Writes `record` shaped by `options`.
    pub fn write_with(&mut self, record: &LogRecord, options: &LogOptions) -> Result<()> {
        let plain = options.wall_clock && options.eval_key == "eval_loss";
        let line = if plain {
            // Field order as declared.
            serde_json::to_string(record)
        } else {
            serde_json::to_value(record).map(|v| reshape(v, options).to_string())
        }
        .expect("a log record is plain data and always serialises");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(io_err(&self.path))
    }
}

/// Drops the wall-clock fields and renames the eval loss as `options` say.
fn reshape(mut value: serde_json::Value, options: &LogOptions) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        if !options.wall_clock {
            map.remove("elapsed");
            map.remove("tokens_per_s");
        }
        if let Some(v) = map.remove("eval_loss") {
            map.insert(options.eval_key.clone(), v);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: u64) -> LogRecord {
        LogRecord {
            step,
            tokens: step * 10,
            lr: 0.1,
            loss: 2.0,
            grad_norm: 1.0,
            elapsed: 0.5,
            tokens_per_s: 20.0,
            eval_loss: None,
            parts: BTreeMap::new(),
        }
    }

    #[test]
    fn resume_cuts_the_log_back_to_the_resumed_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/log.jsonl");
        let mut w = LogWriter::open(&path, 0).unwrap();
        for s in 1..=5 {
            w.write(&rec(s)).unwrap();
        }
        drop(w);
        // Simulate a kill mid-line.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 6, \"tok");
        fs::write(&path, text).unwrap();
        let mut w = LogWriter::open(&path, 3).unwrap();
        w.write(&LogRecord {
            eval_loss: Some(1.5),
            ..rec(4)
        })
        .unwrap();
        drop(w);
        let steps: Vec<u64> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<LogRecord>(l).unwrap().step)
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("\"eval_loss\":1.5"));
    }
}
