//! `log.jsonl` of a training run: one JSON object per logged step. On resume the log is cut
//! back to the resumed step, so a killed-and-resumed run's log has each step once.

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
                        serde_json::from_str::<LogRecord>(l).is_ok_and(|r| r.step <= resume_step)
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
        let line = serde_json::to_string(record)
            .expect("a log record is plain data and always serialises");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(io_err(&self.path))
    }
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
