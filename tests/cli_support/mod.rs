//! Helpers for the `cli_*` tests: a temporary workspace with a manifest, and a runner for the
//! `pollard` binary that captures exit code, stdout and stderr.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Ws {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pollard")
}

impl Ws {
    pub fn new(manifest: &str) -> Ws {
        let ws = Ws {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        ws.write("pollard.yaml", manifest);
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.file(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.file(rel)).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.path())
            .env_remove("POLLARD_GPUS")
            .env_remove("POLLARD_CACHE_DIR")
            .env("NO_COLOR", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("pollard runs").into()
    }

    /// `pollard run --json ARGS`: the stages that ran, in order.
    pub fn ran(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        let r = self.run(&all);
        assert_eq!(r.code, 0, "pollard run failed:\n{}", r.all());
        outcomes(&r.stdout, "ran")
    }

    /// Lines appended by stages to `log.txt` in the workspace (one per execution).
    pub fn executions(&self) -> Vec<String> {
        self.read("log.txt").lines().map(str::to_string).collect()
    }
}

/// Stage ids whose outcome is `kind` in a `run --json` summary.
pub fn outcomes(json: &str, kind: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("bad json ({e}):\n{json}"));
    v["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter(|pair| pair[1]["outcome"] == kind)
        .map(|pair| pair[0].as_str().unwrap().to_string())
        .collect()
}

/// insta settings that hide temporary paths, digests and timings.
pub fn filters(ws: &Ws) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    let root = ws.path().display().to_string();
    let canon = ws.path().canonicalize().unwrap().display().to_string();
    s.add_filter(&regex_escape(&canon), "[WS]");
    s.add_filter(&regex_escape(&root), "[WS]");
    s.add_filter(r"blake3:[0-9a-f]{12,64}", "blake3:[HASH]");
    s.add_filter(r"[0-9a-f]{64}", "[HEX]");
    s.add_filter(r"\d+\.\ds", "[T]s");
    s.add_filter(r"\d+ CPU cores", "[N] CPU cores");
    s.add_filter(r"\d+ threads?", "[N] threads");
    s.set_prepend_module_to_snapshot(false);
    s
}

pub fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
