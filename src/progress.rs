//! Rendering a run: one line per running stage with its own progress through indicatif on a
//! terminal, plain `[stage] ...` lines otherwise (pipes, CI, tests). Reused stages are counted,
//! not listed, so a no-op run of hundreds of stages prints one line.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pollard_engine::plan::short;
use pollard_engine::{Event, Progress, ProgressSink, Reporter};

pub struct Console {
    bars: Option<Bars>,
    /// Plain mode: when each stage last printed a progress line (throttle).
    last_progress: Mutex<HashMap<String, Instant>>,
    /// Run events go to stderr when stdout carries JSON.
    to_stderr: bool,
}

struct Bars {
    multi: MultiProgress,
    running: Mutex<HashMap<String, ProgressBar>>,
}

fn describe(p: &Progress) -> String {
    let mut parts = Vec::new();
    match p.total {
        Some(t) if p.loss.is_some() || p.tokens_per_s.is_some() => {
            parts.push(format!("step {}/{t}", p.step))
        }
        _ => {}
    }
    if p.total.is_none() && (p.loss.is_some() || p.tokens_per_s.is_some()) {
        parts.push(format!("step {}", p.step));
    }
    if let Some(l) = p.loss {
        parts.push(format!("loss {l:.4}"));
    }
    if let Some(t) = p.tokens_per_s {
        parts.push(format!("{:.1}k tok/s", t / 1000.0));
    }
    if let Some(m) = &p.message {
        parts.push(m.clone());
    }
    parts.join("  ")
}

impl Console {
    /// Bars on a terminal unless `plain`; events on stderr when `to_stderr`.
    pub fn new(plain: bool, to_stderr: bool) -> Console {
        let tty = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let bars = (tty && !plain).then(|| Bars {
            multi: MultiProgress::new(),
            running: Mutex::new(HashMap::new()),
        });
        Console {
            bars,
            last_progress: Mutex::new(HashMap::new()),
            to_stderr,
        }
    }

    fn line(&self, text: &str) {
        if let Some(b) = &self.bars {
            let _ = b.multi.println(text);
        } else if self.to_stderr {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    }
}

impl ProgressSink for Console {
    fn progress(&self, stage: &str, p: &Progress) {
        if let Some(b) = &self.bars {
            if let Some(bar) = b
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(stage)
            {
                if let Some(t) = p.total {
                    bar.set_length(t);
                    bar.set_position(p.step);
                }
                bar.set_message(describe(p));
            }
            return;
        }
        // Plain lines only for stages that report training-like progress, at most every 5 s.
        if p.loss.is_none() && p.tokens_per_s.is_none() {
            return;
        }
        let mut last = self.last_progress.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let due = last
            .get(stage)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(5));
        if due || p.total == Some(p.step) {
            last.insert(stage.to_string(), now);
            drop(last);
            self.line(&format!("[{stage}] {}", describe(p)));
        }
    }

    fn log(&self, stage: &str, line: &str) {
        self.line(&format!("[{stage}] {line}"));
    }
}

impl Reporter for Console {
    fn event(&self, e: &Event) {
        match e {
            Event::Reused { .. } => {}
            Event::Waiting {
                stage, gpus, cpus, ..
            } => {
                self.line(&format!(
                    "[{stage}] waiting for resources ({gpus} GPU(s), {cpus} CPU(s))"
                ));
            }
            Event::Started {
                stage,
                gpus,
                threads,
            } => {
                let on = if gpus.is_empty() {
                    format!("{threads} thread{}", if *threads == 1 { "" } else { "s" })
                } else {
                    format!(
                        "GPU {}",
                        gpus.iter()
                            .map(|g| g.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                };
                if let Some(b) = &self.bars {
                    let bar = b.multi.add(ProgressBar::new_spinner());
                    let style = ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}",
                    )
                    .expect("the template is valid");
                    bar.set_style(style);
                    bar.set_prefix(stage.clone());
                    bar.set_message(format!("on {on}"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    b.running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(stage.clone(), bar);
                } else {
                    self.line(&format!("[{stage}] started on {on}"));
                }
            }
            Event::Finished {
                stage,
                artifact,
                seconds,
            } => {
                self.finish_bar(stage);
                self.line(&format!(
                    "[{stage}] done in {seconds:.1}s -> {}",
                    short(artifact)
                ));
            }
            Event::Joined { stage, artifact } => {
                self.finish_bar(stage);
                self.line(&format!(
                    "[{stage}] computed by another run -> {}",
                    short(artifact)
                ));
            }
            Event::Failed { stage, error } => {
                self.finish_bar(stage);
                self.line(&format!("[{stage}] FAILED: {error}"));
            }
            Event::Skipped { stage, reason } => self.line(&format!("[{stage}] skipped: {reason}")),
            Event::Warning { stage, message } => {
                self.line(&format!("[{stage}] warning: {message}"))
            }
        }
    }
}

impl Console {
    fn finish_bar(&self, stage: &str) {
        if let Some(b) = &self.bars {
            if let Some(bar) = b
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(stage)
            {
                bar.finish_and_clear();
            }
        }
    }
}
