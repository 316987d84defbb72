//! The `pollard` command line: parses flags with clap, fills the stage registry, calls the
//! engine, renders results, and maps failures to exit codes (0 ok, 1 a stage failed, 2 a usage
//! or manifest error, 130 interrupted).

mod model_cmd;
mod progress;
mod render;
mod workspace;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use pollard_cache::{ArtifactId, GcRoots};
use pollard_engine::exec::plan_resources;
use pollard_engine::{
    status, EngineError, Inventory, LockWriter, Outcome, RunOptions, Runner, Selection,
};

#[derive(Parser)]
#[command(
    name = "pollard",
    version = pollard_engine::BUILD,
    about = "Runs model-compression recipes (score, prune, distill, evaluate) from YAML manifests, cached by content hash"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ManifestArg {
    /// The manifest (default: ./pollard.yaml, else the built-in recipe)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run what is stale, in dependency order, reusing the cache for the rest
    Run(RunArgs),
    /// For every stage: up to date, or stale and why (which param, input or file changed)
    Status {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Only these stages and what they need
        stages: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the expanded stage graph
    Dag {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Graphviz output
        #[arg(long)]
        dot: bool,
        /// Print JSON
        #[arg(long, conflicts_with = "dot")]
        json: bool,
    },
    /// Show a stage's artifact: where it is, its files, its metrics and report
    Show {
        /// The stage id (expanded, e.g. `shrink.half.distill`)
        stage: String,
        #[command(flatten)]
        manifest: ManifestArg,
        /// Print only the artifact's folder
        #[arg(long)]
        path: bool,
        /// Print JSON
        #[arg(long, conflicts_with = "path")]
        json: bool,
    },
    /// Drop cache objects that nothing references (the lock files beside the manifest are roots)
    Gc {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Re-hash the cache and report corruption
    Verify {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Inspect a checkpoint, or run it on token ids
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// Write a built-in recipe out as ./pollard.yaml to edit
    Init {
        /// The recipe to write
        #[arg(long, default_value = workspace::DEFAULT_RECIPE)]
        recipe: String,
        /// Overwrite an existing pollard.yaml
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    manifest: ManifestArg,
    /// Only these stages and what they need
    stages: Vec<String>,
    /// Rerun this stage even if cached (repeatable)
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Rerun every stage
    #[arg(long)]
    force_all: bool,
    /// At most N stages at once (default: as many as resources allow)
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// GPU inventory: memory sizes, one per device (`80GiB,80GiB`), or `none`; replaces probing
    #[arg(long, value_name = "SPEC", env = "POLLARD_GPUS")]
    gpus: Option<String>,
    /// Print what would run and why, with resources, and run nothing
    #[arg(long)]
    dry_run: bool,
    /// After a failure, still run every stage that does not depend on it
    #[arg(long)]
    keep_going: bool,
    /// Plain log lines even on a terminal
    #[arg(long)]
    plain: bool,
    /// Print a JSON summary on stdout (progress goes to stderr)
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e
                .downcast_ref::<EngineError>()
                .map(|e| e.exit_code())
                .unwrap_or(1);
            match e.downcast_ref::<EngineError>() {
                Some(EngineError::Manifest(d)) => {
                    for diag in &d.0 {
                        eprintln!("error: {diag}");
                    }
                    let n = d.len();
                    eprintln!("{n} error{} in the manifest", if n == 1 { "" } else { "s" });
                }
                _ => {
                    let mut said = e.to_string();
                    eprintln!("error: {said}");
                    for cause in e.chain().skip(1) {
                        let text = cause.to_string();
                        // thiserror messages often embed their source already.
                        if !said.contains(&text) {
                            eprintln!("  caused by: {text}");
                        }
                        said = text;
                    }
                }
            }
            ExitCode::from(code as u8)
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Status {
            manifest,
            stages,
            json,
        } => {
            let ws = workspace::load(manifest.file.as_deref(), false)?;
            let cache = ws.open_cache()?;
            let sel = Selection::new(&ws.spec, &stages, &[], false)?;
            let rows = status(&ws.spec, &cache, ws.lock.as_ref(), &sel)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", render::status(&ws.spec, &rows));
            }
            Ok(0)
        }
        Command::Dag {
            manifest,
            dot,
            json,
        } => {
            let ws = workspace::load(manifest.file.as_deref(), false)?;
            if dot {
                print!("{}", render::dot(&ws.spec));
            } else if json {
                let stages: Vec<serde_json::Value> = ws
                    .spec
                    .order
                    .iter()
                    .map(|&i| {
                        let s = &ws.spec.stages[i];
                        let inputs: serde_json::Map<String, serde_json::Value> =
                            s.inputs.iter().map(|(slot, &u)| (slot.clone(), ws.spec.stages[u].id.clone().into())).collect();
                        serde_json::json!({ "id": s.id, "kind": s.kind, "inputs": inputs, "params": s.params.canonical })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "pipeline": ws.spec.name, "stages": stages })
                    )?
                );
            } else {
                print!("{}", render::dag(&ws.spec));
            }
            Ok(0)
        }
        Command::Show {
            stage,
            manifest,
            path,
            json,
        } => show(manifest.file.as_deref(), &stage, path, json),
        Command::Gc { manifest, json } => {
            let ws = workspace::load(manifest.file.as_deref(), false)?;
            let cache = ws.open_cache()?;
            let mut lock_files = vec![ws.lock_path.clone()];
            // Other recipes sharing this folder's cache keep their outputs too.
            if let Ok(entries) = std::fs::read_dir(&ws.spec.dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "lock") && !lock_files.contains(&p) {
                        lock_files.push(p);
                    }
                }
            }
            lock_files.retain(|p| p.exists());
            let report = cache
                .gc(&GcRoots {
                    lock_files,
                    ..GcRoots::default()
                })
                .map_err(EngineError::from)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "removed {} records, {} artifacts, {} objects, {} temporary files; freed {}",
                    report.records_removed,
                    report.artifacts_removed,
                    report.objects_removed,
                    report.temp_removed,
                    pollard_engine::Bytes(report.bytes_freed)
                );
                println!(
                    "kept {} records, {} artifacts, {} objects",
                    report.records_kept, report.artifacts_kept, report.objects_kept
                );
            }
            Ok(0)
        }
        Command::Verify { manifest, json } => {
            let ws = workspace::load(manifest.file.as_deref(), false)?;
            let cache = ws.open_cache()?;
            let report = cache.verify().map_err(EngineError::from)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "objects_checked": report.objects_checked,
                        "manifests_checked": report.manifests_checked,
                        "records_checked": report.records_checked,
                        "bytes_hashed": report.bytes_hashed,
                        "problems": report.problems,
                    }))?
                );
            } else {
                println!(
                    "checked {} objects ({}), {} artifact manifests, {} run records",
                    report.objects_checked,
                    pollard_engine::Bytes(report.bytes_hashed),
                    report.manifests_checked,
                    report.records_checked
                );
                for p in &report.problems {
                    println!("  {p}");
                }
                if report.is_ok() {
                    println!("no problems found");
                }
            }
            Ok(if report.is_ok() { 0 } else { 1 })
        }
        Command::Model { command } => {
            model_cmd::run(command)?;
            Ok(0)
        }
        Command::Init { recipe, force } => {
            let text = workspace::recipe(&recipe).map_err(|e| EngineError::Usage(e.to_string()))?;
            let dest = Path::new("pollard.yaml");
            if dest.exists() && !force {
                return Err(EngineError::Usage(
                    "pollard.yaml already exists here (use --force to overwrite it)".into(),
                )
                .into());
            }
            std::fs::write(dest, text).context("cannot write pollard.yaml")?;
            println!("wrote pollard.yaml (the `{recipe}` recipe); `pollard run` runs it");
            Ok(0)
        }
    }
}

fn run(args: RunArgs) -> Result<u8> {
    let ws = workspace::load(args.manifest.file.as_deref(), true)?;
    let inventory = Inventory::resolve(args.gpus.as_deref()).map_err(EngineError::Usage)?;
    let cache = Arc::new(ws.open_cache()?);
    if args.dry_run {
        let sel = Selection::new(&ws.spec, &args.stages, &args.force, args.force_all)?;
        let resources = plan_resources(&ws.spec, &sel, &inventory)?;
        let rows = status(&ws.spec, &cache, ws.lock.as_ref(), &sel)?;
        println!(
            "dry run of {} ({}); {}",
            ws.spec.name,
            ws.spec.file,
            render::inventory(&inventory)
        );
        let w = rows.iter().map(|r| r.stage.len()).max().unwrap_or(0);
        for r in &rows {
            let i = ws
                .spec
                .index_of(&r.stage)
                .expect("status rows are stages of the spec");
            if r.up_to_date {
                println!(
                    "  {:w$}  reuse  {}",
                    r.stage,
                    render::short(r.artifact.as_deref().unwrap_or(""))
                );
            } else {
                let res = resources[i];
                let mut need = format!(
                    "{} cpu",
                    if res.cpus == 0 {
                        "all".to_string()
                    } else {
                        res.cpus.to_string()
                    }
                );
                if res.gpus > 0 {
                    need.push_str(&format!(", {} gpu", res.gpus));
                    if res.gpu_memory > 0 {
                        need.push_str(&format!(" x {}", pollard_engine::Bytes(res.gpu_memory)));
                    }
                } else if res.gpu_memory > 0 {
                    // Model kinds run on the CPU unless asked for GPUs; their estimate still tells
                    // the user what a GPU placement of this stage would need.
                    need.push_str(&format!(
                        ", on a gpu {}",
                        pollard_engine::Bytes(res.gpu_memory)
                    ));
                }
                if res.host_memory > 0 {
                    need.push_str(&format!(
                        ", host {}",
                        pollard_engine::Bytes(res.host_memory)
                    ));
                }
                let why: Vec<String> = r.reasons.iter().map(|x| x.to_string()).collect();
                println!("  {:w$}  run    [{need}] {}", r.stage, why.join("; "));
            }
        }
        return Ok(0);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // First Ctrl-C/SIGTERM: stop the running stages and commit nothing half-done.
        // A second one exits at once.
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("interrupted: stopping running stages (again to quit at once)");
        });
    }
    let console = Arc::new(progress::Console::new(args.plain, args.json));
    let known: Vec<String> = ws.spec.ids().map(str::to_string).collect();
    let lock = LockWriter::new(
        ws.lock_path.clone(),
        &ws.state_dir(),
        &ws.spec.name,
        known,
        ws.lock.clone(),
    );
    let spec = Arc::new(ws.spec);
    let failure_logs = spec.dir.join(".pollard").join("logs");
    let runner = Runner {
        spec: spec.clone(),
        cache,
        lock,
        inventory,
        reporter: console,
        cancel,
        failure_logs,
    };
    let opts = RunOptions {
        targets: args.stages,
        force: args.force,
        force_all: args.force_all,
        jobs: args.jobs,
        keep_going: args.keep_going,
    };
    let summary = runner.run(&opts)?;
    let ran = summary.count(|o| matches!(o, Outcome::Ran { .. }));
    let reused = summary.count(|o| matches!(o, Outcome::Reused { .. }));
    let failed = summary.count(|o| matches!(o, Outcome::Failed { .. }));
    let skipped = summary.count(|o| matches!(o, Outcome::Skipped { .. }));
    let line = format!(
        "{}: {ran} ran, {reused} up to date, {failed} failed, {skipped} not run",
        spec.name
    );
    if args.json {
        eprintln!("{line}");
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{line}");
    }
    if summary.interrupted {
        return Ok(130);
    }
    Ok(if summary.failed() { 1 } else { 0 })
}

fn show(file: Option<&Path>, stage: &str, path_only: bool, json: bool) -> Result<u8> {
    let ws = workspace::load(file, false)?;
    let cache = ws.open_cache()?;
    let Some(i) = ws.spec.index_of(stage) else {
        let e = ws
            .spec
            .resolve_ids(&[stage.to_string()])
            .expect_err("the id is unknown");
        return Err(EngineError::Usage(e).into());
    };
    let sel = Selection::new(&ws.spec, &[stage.to_string()], &[], false)?;
    let rows = status(&ws.spec, &cache, ws.lock.as_ref(), &sel)?;
    let row = rows
        .iter()
        .find(|r| r.stage == ws.spec.stages[i].id)
        .expect("the stage is selected");
    // The current output when up to date, else what the lock file last recorded (marked stale).
    let (artifact, note) = match (
        &row.artifact,
        ws.lock.as_ref().and_then(|l| l.stages.get(stage)),
    ) {
        (Some(a), _) => (a.clone(), None),
        (None, Some(e)) => (
            e.output.clone(),
            Some("stale: this is the last recorded output; `pollard status` says why"),
        ),
        (None, None) => bail!(EngineError::Usage(format!(
            "stage `{stage}` has no output yet (run `pollard run {stage}`)"
        ))),
    };
    let id: ArtifactId = artifact.parse().map_err(EngineError::from)?;
    let dir = cache.artifact_dir(&id).map_err(EngineError::from)?;
    if path_only {
        println!("{}", dir.display());
        return Ok(0);
    }
    let art = cache
        .artifact(&id)
        .map_err(EngineError::from)?
        .context("the artifact's manifest vanished")?;
    let metrics = std::fs::read_to_string(dir.join("metrics.json")).ok();
    let report = std::fs::read_to_string(dir.join("report.md")).ok();
    if json {
        let files: Vec<serde_json::Value> = art.files().iter().map(|f| serde_json::json!({"path": f.path, "size": f.size, "digest": f.digest.to_string()})).collect();
        let metrics: Option<serde_json::Value> = metrics
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok());
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stage": stage, "artifact": artifact, "path": dir, "stale": note.is_some(), "files": files, "metrics": metrics, "report": report,
            }))?
        );
        return Ok(0);
    }
    println!("stage {stage} ({})", ws.spec.stages[i].kind);
    if let Some(n) = note {
        println!("  {n}");
    }
    println!("artifact {artifact}");
    println!("folder   {}", dir.display());
    println!("files:");
    for f in art.files() {
        println!(
            "  {:>10}  {}",
            pollard_engine::Bytes(f.size).to_string(),
            f.path
        );
    }
    if let Some(m) = metrics {
        println!("metrics.json:\n{}", m.trim_end());
    }
    if let Some(r) = report {
        println!("report.md:\n{}", r.trim_end());
    }
    Ok(0)
}
