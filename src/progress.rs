//! Rendering a run: one line per running stage with its own progress through indicatif on a
//! terminal, plain `[stage] ...` lines otherwise (pipes, CI, tests). Reused stages are counted,
//! not listed, so a no-op run of hundreds of stages prints one line. An overall count (stage k
//! of N, how many cached, running, done) heads the bars and prefixes each start line; a
//! training stage's line carries an ETA from its steps done and their rate. An interrupted
//! stage is reported as interrupted (its checkpoint is kept), not as failed.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pollard_engine::{Event, Progress, ProgressSink, Reporter};

/// How much a text run prints: `--quiet` keeps failures, warnings and the summary; `--verbose`
/// adds why each stage runs and a line per reused stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

pub struct Console {
    bars: Option<Bars>,
    verbosity: Verbosity,
    /// Per stage that will run, why (printed when it starts, under `--verbose`).
    reasons: HashMap<String, Vec<String>>,
    /// Stages selected for this run (0: unknown) and how far the run is.
    counts: Mutex<Counts>,
    /// Per training stage: the first progress step seen and when, for the ETA.
    rate_start: Mutex<HashMap<String, (u64, Instant)>>,
    /// Plain mode: when each stage last printed a progress line (throttle).
    last_progress: Mutex<HashMap<String, Instant>>,
    /// Run events go to stderr when stdout carries JSON.
    to_stderr: bool,
}

struct Bars {
    multi: MultiProgress,
    running: Mutex<HashMap<String, ProgressBar>>,
    overall: ProgressBar,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    total: usize,
    cached: usize,
    started: usize,
    running: usize,
    done: usize,
}

impl Counts {
    /// `stage 3 of 14 (2 cached, 1 running, 0 done)`; `k` counts cached and started stages.
    fn text(&self) -> String {
        let k = self.cached + self.started;
        let of = if self.total > 0 {
            format!("stage {k} of {}", self.total)
        } else {
            format!("stage {k}")
        };
        format!(
            "{of} ({} cached, {} running, {} done)",
            self.cached, self.running, self.done
        )
    }
}

/// `1h02m`, `4m05s`, `12s`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Seconds left at the rate seen since `(step0, t0)`; None until a step has passed.
fn eta(step0: u64, elapsed: f64, step: u64, total: u64) -> Option<f64> {
    if step <= step0 || elapsed <= 0.0 || step > total {
        return None;
    }
    let per_step = elapsed / (step - step0) as f64;
    Some((total - step) as f64 * per_step)
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
        let bars = (tty && !plain).then(|| {
            let multi = MultiProgress::new();
            let overall = multi.add(ProgressBar::new_spinner());
            overall.set_style(
                ProgressStyle::with_template("{prefix:.bold} {wide_msg}")
                    .expect("the template is valid"),
            );
            overall.set_prefix("pollard");
            Bars {
                multi,
                running: Mutex::new(HashMap::new()),
                overall,
            }
        });
        Console {
            bars,
            verbosity: Verbosity::Normal,
            reasons: HashMap::new(),
            counts: Mutex::new(Counts::default()),
            rate_start: Mutex::new(HashMap::new()),
            last_progress: Mutex::new(HashMap::new()),
            to_stderr,
        }
    }

    /// Quiet runs show no bars and no per-stage lines but failures and warnings.
    pub fn with_verbosity(mut self, v: Verbosity) -> Console {
        self.verbosity = v;
        if v == Verbosity::Quiet {
            self.bars = None;
        }
        self
    }

    /// Why each stage that will run runs, for `--verbose`.
    pub fn with_reasons(mut self, reasons: HashMap<String, Vec<String>>) -> Console {
        self.reasons = reasons;
        self
    }

    fn quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }

    /// The number of stages this run covers, for "stage k of N".
    pub fn with_total(self, total: usize) -> Console {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total = total;
        self
    }

    /// Applies `f` to the counts and returns them, refreshing the overall bar.
    fn count(&self, f: impl FnOnce(&mut Counts)) -> Counts {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c);
        let c = *c;
        if let Some(b) = &self.bars {
            b.overall.set_message(c.text());
        }
        c
    }

    /// The progress text of a stage, with an ETA when it reports steps of a known total.
    fn describe_with_eta(&self, stage: &str, p: &Progress) -> String {
        let mut text = describe(p);
        if let (Some(total), true) = (p.total, p.loss.is_some() || p.tokens_per_s.is_some()) {
            let now = Instant::now();
            let mut starts = self.rate_start.lock().unwrap_or_else(|e| e.into_inner());
            let (step0, t0) = *starts.entry(stage.to_string()).or_insert((p.step, now));
            if let Some(left) = eta(step0, now.duration_since(t0).as_secs_f64(), p.step, total) {
                text.push_str(&format!("  ETA {}", duration(left)));
            }
        }
        text
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
        if self.quiet() {
            return;
        }
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
                bar.set_message(self.describe_with_eta(stage, p));
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
        // The rate clock starts at the first report, throttled or not.
        let text = self.describe_with_eta(stage, p);
        if due || p.total == Some(p.step) {
            last.insert(stage.to_string(), now);
            drop(last);
            self.line(&format!("[{stage}] {text}"));
        }
    }

    fn log(&self, stage: &str, line: &str) {
        if !self.quiet() {
            self.line(&format!("[{stage}] {line}"));
        }
    }
}

impl Reporter for Console {
    fn event(&self, e: &Event) {
        match e {
            Event::Reused { stage, artifact } => {
                self.count(|c| c.cached += 1);
                if self.verbosity == Verbosity::Verbose {
                    self.line(&format!("[{stage}] up to date -> {}", artifact.short()));
                }
            }
            Event::Waiting {
                stage, gpus, cpus, ..
            } => {
                if self.quiet() {
                    return;
                }
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
                let counts = self.count(|c| {
                    c.started += 1;
                    c.running += 1;
                });
                if self.verbosity == Verbosity::Verbose {
                    for why in self.reasons.get(stage.as_str()).into_iter().flatten() {
                        self.line(&format!("[{stage}] runs because {why}"));
                    }
                }
                if self.quiet() {
                    return;
                }
                if let Some(b) = &self.bars {
                    let bar = b.multi.add(ProgressBar::new_spinner());
                    let style = ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}",
                    )
                    .expect("the template is valid");
                    bar.set_style(style);
                    bar.set_prefix(stage.to_string());
                    bar.set_message(format!("on {on}"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    b.running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(stage.to_string(), bar);
                } else {
                    self.line(&format!("[{stage}] started on {on} ({})", counts.text()));
                }
            }
            Event::Finished {
                stage,
                artifact,
                seconds,
            } => {
                self.finish_bar(stage);
                self.count(|c| {
                    c.running = c.running.saturating_sub(1);
                    c.done += 1;
                });
                if self.quiet() {
                    return;
                }
                self.line(&format!(
                    "[{stage}] done in {seconds:.1}s -> {}",
                    artifact.short()
                ));
            }
            Event::Joined { stage, artifact } => {
                self.finish_bar(stage);
                self.count(|c| c.cached += 1);
                if self.quiet() {
                    return;
                }
                self.line(&format!(
                    "[{stage}] computed by another run -> {}",
                    artifact.short()
                ));
            }
            Event::Failed { stage, error } => {
                self.finish_bar(stage);
                self.count(|c| c.running = c.running.saturating_sub(1));
                if error == "interrupted" {
                    self.line(&format!(
                        "[{stage}] interrupted: nothing committed; what it saved is resumed by the next run"
                    ));
                } else {
                    self.line(&format!("[{stage}] FAILED: {error}"));
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_steps_left_at_the_rate_seen() {
        assert_eq!(eta(10, 20.0, 20, 100), Some(160.0));
        assert_eq!(eta(10, 20.0, 10, 100), None, "no step yet");
        assert_eq!(duration(160.0), "2m40s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(9.4), "9s");
    }

    #[test]
    fn the_overall_count_says_stage_k_of_n() {
        let c = Counts {
            total: 14,
            cached: 2,
            started: 3,
            running: 1,
            done: 2,
        };
        assert_eq!(c.text(), "stage 5 of 14 (2 cached, 1 running, 2 done)");
    }
}
