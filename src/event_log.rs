//! `pollard run --log-format json`: the run's events as JSON lines on stderr, for other tools
//! (a dashboard, a CI annotator, `jq`). One object per line, each with `event` and `t` (seconds
//! since the run started): first `plan` (what will run and why, as `run --dry-run --json`
//! prints it), then the engine's events (`started`, `finished`, `reused`, `failed`, ...), stage
//! `log` lines and `progress` reports as they come, and last `summary`. Every line is written
//! whole under a lock, so concurrent stages never interleave within a line.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use pollard_engine::{Event, Progress, ProgressSink, Reporter};
use serde_json::{json, Value};

pub struct JsonLines {
    start: Instant,
    out: Mutex<Box<dyn Write + Send>>,
}

impl JsonLines {
    pub fn stderr() -> JsonLines {
        JsonLines {
            start: Instant::now(),
            out: Mutex::new(Box::new(std::io::stderr())),
        }
    }

    /// Writes one event: `fields` (an object) with `event` and `t` in front.
    pub fn emit(&self, event: &str, fields: Value) {
        let mut line = serde_json::Map::new();
        line.insert("event".into(), json!(event));
        line.insert(
            "t".into(),
            json!((self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
        );
        if let Value::Object(m) = fields {
            for (k, v) in m {
                if k != "event" {
                    line.insert(k, v);
                }
            }
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed stderr must not stop the run; the lock file still records it.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

impl ProgressSink for JsonLines {
    fn progress(&self, stage: &str, p: &Progress) {
        let mut v = serde_json::to_value(p).unwrap_or_else(|_| json!({}));
        v["stage"] = json!(stage);
        self.emit("progress", v);
    }

    fn log(&self, stage: &str, line: &str) {
        self.emit("log", json!({ "stage": stage, "line": line }));
    }
}

impl Reporter for JsonLines {
    fn event(&self, e: &Event) {
        let v = serde_json::to_value(e).unwrap_or_else(|_| json!({}));
        let name = v
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("event")
            .to_string();
        self.emit(&name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_event_is_one_json_object_per_line_with_its_name_and_time() {
        let buf = Buf::default();
        let log = JsonLines {
            start: Instant::now(),
            out: Mutex::new(Box::new(buf.clone())),
        };
        log.event(&Event::Finished {
            stage: "a".into(),
            artifact: pollard_cache::ArtifactId(pollard_cache::Digest::of(b"a")),
            seconds: 1.5,
        });
        log.log("a", "a line with \"quotes\"\nand a newline");
        log.progress(
            "a",
            &Progress {
                step: 3,
                total: Some(10),
                loss: Some(2.5),
                ..Progress::default()
            },
        );
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["event"], "finished");
        assert_eq!(lines[0]["stage"], "a");
        assert_eq!(lines[0]["seconds"], 1.5);
        assert!(lines[0]["t"].as_f64().unwrap() >= 0.0);
        assert_eq!(lines[1]["event"], "log");
        assert_eq!(lines[1]["line"], "a line with \"quotes\"\nand a newline");
        assert_eq!(lines[2]["event"], "progress");
        assert_eq!(lines[2]["step"], 3);
        assert_eq!(lines[2]["loss"], 2.5);
    }
}
