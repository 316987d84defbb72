//! The built-in `kind: command` stage: runs `bash -c CMD` in the manifest's folder with the
//! `POLLARD_*` variables, streams its output lines to the progress sink, and stops its whole
//! process group when the run is interrupted, when the command ends, or when pollard dies
//! (watchdog.rs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stage::{
    BoxError, Inputs, OuterField, OuterShape, PlanInputs, Progress, Resources, Slots, Stage,
    StageCtx,
};

/// The command fields of a stage (`cmd`, `deps`, `env` sit beside `with` in the manifest, as
/// [`CommandStage`]'s outer fields; the engine gathers them into this struct so they are keyed
/// like any kind's params).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    pub cmd: String,
    #[serde(default)]
    pub deps: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

pub struct CommandStage;

/// `POLLARD_IN_<SLOT>`: the slot upper-cased, with characters a shell name cannot hold as `_`.
pub fn input_var(slot: &str) -> String {
    let name: String = slot
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("POLLARD_IN_{name}")
}

impl Stage for CommandStage {
    const KIND: &'static str = "command";
    const VERSION: u32 = 1;
    type Params = CommandParams;

    fn slots(&self) -> Slots {
        Slots::Any
    }

    fn outer_fields(&self) -> &'static [OuterField] {
        const FIELDS: &[OuterField] = &[
            OuterField {
                name: "cmd",
                shape: OuterShape::Shell,
                required: true,
            },
            OuterField {
                name: "deps",
                shape: OuterShape::Paths,
                required: false,
            },
            OuterField {
                name: "env",
                shape: OuterShape::Env,
                required: false,
            },
        ];
        FIELDS
    }

    fn own_process(&self) -> bool {
        // bash is the stage's process already.
        false
    }

    fn deps(&self, p: &CommandParams) -> Vec<PathBuf> {
        p.deps.iter().map(PathBuf::from).collect()
    }

    fn resources(&self, _p: &CommandParams, _inputs: &PlanInputs) -> Result<Resources, BoxError> {
        Ok(Resources {
            gpus: 0,
            gpu_memory: 0,
            cpus: 1,
            host_memory: 0,
        })
    }

    fn run(&self, ctx: &mut StageCtx, p: &CommandParams, inputs: &Inputs) -> Result<(), BoxError> {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(&p.cmd)
            .current_dir(ctx.workdir())
            .env("POLLARD_OUT", ctx.out_dir())
            .env("POLLARD_STAGE", ctx.stage_id())
            .env("POLLARD_THREADS", ctx.threads().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (slot, artifact) in inputs.iter() {
            cmd.env(input_var(slot), &artifact.path);
        }
        if !ctx.gpus().is_empty() {
            let ordinals: Vec<String> = ctx.gpus().iter().map(|g| g.to_string()).collect();
            cmd.env("CUDA_VISIBLE_DEVICES", ordinals.join(","));
        }
        cmd.envs(&p.env);
        // SAFETY: only async-signal-safe calls between fork and exec. Its own process group lets
        // an interrupt stop the command and everything it started; PDEATHSIG kills it if pollard
        // itself is killed (kill -9), so no orphan keeps writing into an abandoned staging folder.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start bash: {e}"))?;
        let pid = child.id() as i32;
        // Ends the group if pollard dies, and when this function returns.
        let _watchdog = match crate::watchdog::Watchdog::guard(pid) {
            Ok(w) => w,
            Err(e) => {
                stop_group(pid, &mut child);
                return Err(format!("cannot start the command's watchdog: {e}").into());
            }
        };
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let ctx_ref: &StageCtx = ctx;
        let status = std::thread::scope(|s| {
            s.spawn(move || forward_lines(stdout, ctx_ref));
            s.spawn(move || forward_lines(stderr, ctx_ref));
            let started = Instant::now();
            let mut last_report = 0u64;
            let mut nap = Duration::from_micros(500);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        // What it left running in the background would hold its output open
                        // and keep writing into a folder about to be committed.
                        // SAFETY: a signal to the group this stage created.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                        return Ok(status);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("waiting for the command failed: {e}")),
                }
                if ctx_ref.cancelled() {
                    stop_group(pid, &mut child);
                    return Err("interrupted".to_string());
                }
                let secs = started.elapsed().as_secs();
                if secs > last_report {
                    last_report = secs;
                    ctx_ref.progress(Progress {
                        step: secs,
                        message: Some(format!("{secs}s")),
                        ..Progress::default()
                    });
                }
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(20));
            }
        })?;
        if status.success() {
            Ok(())
        } else if let Some(code) = status.code() {
            Err(format!("command exited with status {code}").into())
        } else {
            Err(format!("command was killed ({status})").into())
        }
    }
}

fn forward_lines(stream: impl Read, ctx: &StageCtx) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                ctx.log(line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

/// SIGTERM to the command's group, then SIGKILL if it has not gone after a grace period.
fn stop_group(pid: i32, child: &mut std::process::Child) {
    // SAFETY: plain syscalls on a process group this stage created.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{InputArtifact, ProgressSink};
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);
    impl ProgressSink for Lines {
        fn progress(&self, _: &str, _: &Progress) {}
        fn log(&self, _: &str, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    fn params(cmd: &str) -> CommandParams {
        CommandParams {
            cmd: cmd.into(),
            deps: vec![],
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
        }
    }

    #[test]
    fn runs_with_pollard_variables_and_forwards_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let input = dir.path().join("in");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&input).unwrap();
        std::fs::write(input.join("x.txt"), "from upstream").unwrap();
        let sink = Arc::new(Lines::default());
        let mut ctx = StageCtx::new(
            "s1",
            out.clone(),
            dir.path().join("scratch"),
            vec![1, 3],
            2,
            sink.clone(),
            Arc::new(AtomicBool::new(false)),
        )
        .with_workdir(dir.path().to_path_buf());
        let mut inputs = Inputs::default();
        inputs.slots.insert(
            "up-stream".into(),
            InputArtifact {
                stage: "u".into(),
                path: input,
                artifact: pollard_cache::ArtifactId(pollard_cache::Digest::of(b"a")),
            },
        );
        let p = params("echo $GREETING $POLLARD_STAGE $CUDA_VISIBLE_DEVICES; cat $POLLARD_IN_UP_STREAM/x.txt > $POLLARD_OUT/y; echo err >&2; pwd");
        CommandStage.run(&mut ctx, &p, &inputs).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("y")).unwrap(),
            "from upstream"
        );
        let lines = sink.0.lock().unwrap().clone();
        assert!(lines.contains(&"hi s1 1,3".to_string()), "{lines:?}");
        assert!(lines.contains(&"err".to_string()), "{lines:?}");
        assert!(
            lines.contains(&dir.path().canonicalize().unwrap().display().to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn failure_reports_the_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = StageCtx::detached("s", dir.path().to_path_buf(), dir.path().to_path_buf());
        let e = CommandStage
            .run(&mut ctx, &params("exit 3"), &Inputs::default())
            .unwrap_err();
        assert_eq!(e.to_string(), "command exited with status 3");
    }

    #[test]
    fn cancellation_stops_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut ctx = StageCtx::new(
            "s",
            dir.path().to_path_buf(),
            dir.path().to_path_buf(),
            vec![],
            1,
            Arc::new(crate::stage::SilentSink),
            cancel.clone(),
        );
        let flag = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let started = Instant::now();
        let e = CommandStage
            .run(
                &mut ctx,
                &params("sleep 30 & sleep 30; wait"),
                &Inputs::default(),
            )
            .unwrap_err();
        t.join().unwrap();
        assert_eq!(e.to_string(), "interrupted");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn input_vars_are_shell_names() {
        assert_eq!(input_var("teacher"), "POLLARD_IN_TEACHER");
        assert_eq!(input_var("a-b.c"), "POLLARD_IN_A_B_C");
    }
}
