//! `pollard run` of an unchanged pipeline, answered from the no-op memo
//! (`pollard_engine::noop`): the same progress lines, run record and summary as a full plan
//! that reuses every stage, without reading the manifest into stages or the lock file.
//! Only a plain local run of the whole pipeline takes this path; every flag that changes what
//! is planned (stages, `--force`, `-S`, `--executor`) or printed as JSON plans in full.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use pollard_cache::Cache;
use pollard_engine::exec::{Event, Outcome, Reporter, RunSummary};
use pollard_engine::history::{LockState, Recorder};
use pollard_engine::noop::{self, MemoStage, Place, Settled};
use pollard_engine::plan::{Action, Plan};

use crate::{LogFormat, RunArgs};

/// Where this command's manifest, lock, cache and memo are, when it may use a memo at all.
pub struct Paths {
    /// As the user wrote it (for messages and the run record).
    pub manifest_file: String,
    pub manifest: PathBuf,
    pub lock: PathBuf,
    pub state_dir: PathBuf,
    pub cache: PathBuf,
    pub memo: PathBuf,
}

/// Whether `args` asks for exactly what a memo answers.
fn eligible(args: &RunArgs) -> bool {
    !args.dry_run
        && !args.json
        && args.log_format == LogFormat::Text
        && args.overrides.set.is_empty()
        && args.stages.is_empty()
        && args.force.is_empty()
        && !args.force_all
        && args.executor.is_none()
        && args.slurm_partition.is_none()
        && args.slurm_account.is_none()
        && args.slurm_time.is_none()
        && args.slurm_arg.is_empty()
}

/// The paths for a manifest file on disk (the embedded recipe is always planned).
pub fn paths(args: &RunArgs) -> Option<Paths> {
    if !eligible(args) {
        return None;
    }
    // Not through `manifest_path`: without `-f` or ./pollard.yaml the embedded recipe stands
    // in, even when a file of its name exists here.
    let given = match &args.manifest.file {
        Some(f) => f.clone(),
        None => PathBuf::from(pollard_engine::workspace::DEFAULT_MANIFEST),
    };
    let manifest = std::path::absolute(&given).ok()?;
    let dir = manifest.parent()?.to_path_buf();
    let lock = pollard_engine::lock_path_for(&manifest);
    let state_dir = pollard_engine::workspace::state_dir(&dir);
    let memo = noop::memo_path(&state_dir, &lock);
    Some(Paths {
        manifest_file: given.display().to_string(),
        cache: Cache::default_root(&dir),
        manifest,
        lock,
        state_dir,
        memo,
    })
}

/// Answers the run from the memo when it still holds; `None`: plan in full.
pub fn try_run(args: &RunArgs, p: &Paths) -> Result<Option<u8>> {
    let Ok(text) = std::fs::read_to_string(&p.manifest) else {
        return Ok(None);
    };
    let place = Place {
        manifest: &p.manifest,
        manifest_text: &text,
        lock: &p.lock,
        cache: &p.cache,
    };
    let Some(memo) = noop::check(&p.memo, &place) else {
        return Ok(None);
    };
    if args.verbose {
        eprintln!(
            "up to date by the no-op memo: the manifest, the lock file, every dep and every cached \
             result are as the last run left them ({})",
            p.memo.display()
        );
    }
    let console = crate::console(args, memo.stages.len(), Default::default());
    let recorder = Recorder::start(
        &pollard_engine::history::runs_dir(&p.state_dir),
        Arc::new(console),
    );
    let mut stages = Vec::with_capacity(memo.stages.len());
    for s in &memo.stages {
        recorder.event(&Event::Reused {
            stage: s.id.clone(),
            artifact: s.pinned.output,
        });
        let outcome = Outcome::Reused {
            artifact: s.pinned.output,
        };
        stages.push((s.id.clone(), outcome));
    }
    let summary = RunSummary {
        stages,
        interrupted: false,
    };
    let kinds = memo
        .stages
        .iter()
        .map(|s| (s.id.clone(), s.kind.clone()))
        .collect();
    let lock = LockState {
        path: Some(p.lock.clone()),
        pipeline: memo.pipeline.clone(),
        stages: memo
            .stages
            .iter()
            .map(|s| (s.id.clone(), s.pinned.clone()))
            .collect(),
    };
    let texts: [String; 0] = [];
    if let Err(e) = recorder.finish(
        &summary,
        &kinds,
        (&p.manifest_file, &text),
        &texts,
        "local",
        &lock,
        None,
    ) {
        eprintln!("warning: the run could not be recorded under .pollard/runs/: {e}");
    }
    println!("{}", crate::summary_line(&memo.pipeline, &summary));
    Ok(Some(0))
}

/// A full run, as the memo is recorded from.
pub struct FullRun<'a> {
    /// The manifest text it planned from.
    pub manifest_text: &'a str,
    pub spec: &'a pollard_engine::PipelineSpec,
    pub plan: &'a Plan,
    pub summary: &'a RunSummary,
    pub cache: &'a Cache,
    pub embedded: bool,
    pub slurm: bool,
    /// When it started ([`noop::now_ns`]).
    pub planned_at_ns: i64,
}

/// After a full run: records the memo when the plan reused every stage, else drops a stale one.
pub fn after_run(args: &RunArgs, run: FullRun) {
    let FullRun {
        manifest_text: ws_manifest_text,
        spec,
        plan,
        summary,
        cache,
        embedded,
        slurm,
        planned_at_ns,
    } = run;
    let Some(p) = paths(args) else { return };
    let all_reused = plan
        .stages
        .iter()
        .all(|s| matches!(s.action, Action::Reuse { .. }))
        && plan.stages.len() == spec.stages.len()
        && summary
            .stages
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Reused { .. }));
    if embedded || slurm || !all_reused || Path::new(&p.cache) != cache.root() {
        noop::forget(&p.memo);
        return;
    }
    let mut stages = Vec::with_capacity(plan.stages.len());
    let mut footprints = Vec::new();
    for s in &plan.stages {
        let Action::Reuse { record } = &s.action else {
            return;
        };
        let Ok(Some(files)) = cache.footprint(&record.key, &record.artifact) else {
            noop::forget(&p.memo);
            return;
        };
        footprints.extend(files);
        let stage = &spec.stages[s.index];
        stages.push(MemoStage {
            id: stage.id.clone(),
            kind: stage.kind.clone(),
            pinned: pollard_engine::history::Pinned {
                key: record.key,
                output: record.artifact,
                devices: record.devices.clone(),
            },
        });
    }
    let deps = spec
        .stages
        .iter()
        .flat_map(|s| s.deps.iter())
        .map(|d| {
            if d.is_absolute() {
                d.clone()
            } else {
                spec.dir.join(d)
            }
        })
        .collect();
    let settled = Settled {
        place: Place {
            manifest: &p.manifest,
            manifest_text: ws_manifest_text,
            lock: &p.lock,
            cache: &p.cache,
        },
        pipeline: &spec.name,
        stages,
        deps,
        footprints,
        planned_at_ns,
    };
    if !noop::record(&p.memo, settled) {
        noop::forget(&p.memo);
    }
}
