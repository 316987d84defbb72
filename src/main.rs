//! The `pollard` command line: parses flags with clap, fills the stage registry, calls the
//! engine, renders results, and maps failures to exit codes (0 ok, 1 a stage failed, 2 a usage
//! or manifest error, 130 interrupted).

mod diff_cmd;
mod dot_stale;
mod event_log;
mod gc_text;
mod model_cmd;
mod progress;
mod render;
mod run_memo;
mod runs_cmd;
mod workspace;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use pollard_cache::{ArtifactId, Cache};
use pollard_engine::executor::{
    from_value, Executor, ExecutorChoice, LocalExecutor, SlurmExecutor, SlurmOptions,
};
use pollard_engine::lockfile::LockError;
use pollard_engine::plan::{plan, Action, Plan};
use pollard_engine::{EngineError, Inventory, Outcome, RunOptions, Runner, Selection, StageStatus};

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

/// `-S PATH=VALUE`: run the manifest with other values without editing it.
#[derive(Args, Clone, Default)]
struct OverrideArg {
    /// Override a manifest value, e.g. `-S params.lr=1e-4` or `-S round.half.target.ffn=448`
    /// (repeatable; values are YAML). The run is recorded under .pollard/experiments/, and the
    /// lock file beside the manifest stays the record of the manifest as written
    #[arg(short = 'S', long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run what is stale, in dependency order, reusing the cache for the rest
    Run(RunArgs),
    /// For every stage: up to date, or stale and why (which param, input or file changed)
    Status {
        #[command(flatten)]
        manifest: ManifestArg,
        #[command(flatten)]
        overrides: OverrideArg,
        /// Only these stages and what they need
        stages: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// The runs recorded in this workspace (newest last); `runs show ID`: one run stage by stage
    Runs {
        #[command(flatten)]
        manifest: ManifestArg,
        #[command(subcommand)]
        show: Option<RunsShow>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the expanded stage graph
    Dag {
        #[command(flatten)]
        manifest: ManifestArg,
        #[command(flatten)]
        overrides: OverrideArg,
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
        #[command(flatten)]
        overrides: OverrideArg,
        /// Print only the artifact's folder
        #[arg(long)]
        path: bool,
        /// Print JSON
        #[arg(long, conflicts_with = "path")]
        json: bool,
    },
    /// Drop cache objects that nothing references (the lock files of every workspace that
    /// uses the cache are roots)
    Gc {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Say what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
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
    /// Run one built-in stage from a sealed job spec (started by `pollard run`)
    #[command(hide = true)]
    StageJob {
        /// The job spec (JSON) in the stage's scratch folder
        file: PathBuf,
    },
    /// Compare the params of two records (lock files or git revisions)
    Params {
        #[command(subcommand)]
        command: diff_cmd::DiffCommand,
    },
    /// Compare the metrics of two records (lock files or git revisions)
    Metrics {
        #[command(subcommand)]
        command: diff_cmd::DiffCommand,
    },
    /// Print a shell completion script (`pollard completions bash > ~/.local/share/bash-completion/completions/pollard`)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
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
    #[command(flatten)]
    overrides: OverrideArg,
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
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// After a failure, still run every stage that does not depend on it
    #[arg(long)]
    keep_going: bool,
    /// Plain log lines even on a terminal
    #[arg(long)]
    plain: bool,
    /// Print only failures, warnings and the summary
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print why each stage runs, and a line per stage reused from the cache
    #[arg(short, long)]
    verbose: bool,
    /// `text` (lines or bars) or `json` (one JSON object per event on stderr, for other tools)
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    log_format: LogFormat,
    /// Print a JSON summary on stdout (progress goes to stderr)
    #[arg(long)]
    json: bool,
    /// Where stages run: `local` (this machine) or `slurm` (one batch job per stage); overrides
    /// the manifest's `executor:` (default: local)
    #[arg(long, value_enum)]
    executor: Option<ExecutorKind>,
    /// Slurm partition for every job (`sbatch --partition`)
    #[arg(long, value_name = "NAME")]
    slurm_partition: Option<String>,
    /// Slurm account for every job (`sbatch --account`)
    #[arg(long, value_name = "NAME")]
    slurm_account: Option<String>,
    /// Time limit for every job (`sbatch --time`, e.g. `2:00:00`)
    #[arg(long, value_name = "TIME")]
    slurm_time: Option<String>,
    /// A further `sbatch` argument for every job (repeatable, e.g. `--slurm-arg=--qos=high`)
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    slurm_arg: Vec<String>,
}

#[derive(Subcommand)]
enum RunsShow {
    /// One recorded run, stage by stage
    Show {
        /// The run id, as `pollard runs` lists it
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExecutorKind {
    Local,
    Slurm,
}

fn main() -> ExitCode {
    // Before any thread or tensor exists (stage jobs run through here too).
    pollard_model::host::configure();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.downcast_ref::<EngineError>().map_or(1, exit_code);
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

/// 2 for problems with what the user wrote (manifest, flags, a missing manifest or deps path, a
/// malformed lock file), 1 for failures of the machine (I/O, the cache).
fn exit_code(e: &EngineError) -> i32 {
    match e {
        EngineError::Manifest(_)
        | EngineError::Usage(_)
        | EngineError::Deps { .. }
        | EngineError::Lock(LockError::Parse { .. }) => 2,
        EngineError::ReadManifest { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            2
        }
        EngineError::ReadManifest { .. }
        | EngineError::Io { .. }
        | EngineError::Lock(_)
        | EngineError::Cache(_) => 1,
    }
}

/// Fills in what each up-to-date `select` stage chose, from its cached `selection.json`.
fn with_choices(mut rows: Vec<StageStatus>, cache: &Cache) -> Vec<StageStatus> {
    for row in rows
        .iter_mut()
        .filter(|r| r.kind == pollard_engine::select::KIND)
    {
        let dir = row.artifact.and_then(|id| cache.artifact_dir(&id).ok());
        row.choice = dir.and_then(|d| pollard_engine::select::choice_in(&d));
    }
    rows
}

/// Exit code of a dry run or a run refused because a stage cannot run.
const BLOCKED: u8 = 2;

fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Status {
            manifest,
            overrides,
            stages,
            json,
        } => {
            let ws = workspace::load(manifest.file.as_deref(), &overrides.set, false)?;
            let cache = ws.open_cache()?;
            let sel = Selection::new(&ws.spec, &stages, &[], false)?;
            let rows = plan(
                &ws.spec,
                &cache,
                ws.lock.as_ref(),
                &sel,
                &Inventory::unlimited(),
            )?
            .status(&ws.spec);
            let rows = with_choices(rows, &cache);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", render::status(&ws.spec, &rows));
            }
            Ok(0)
        }
        Command::Dag {
            manifest,
            overrides,
            dot,
            json,
        } => {
            let ws = workspace::load(manifest.file.as_deref(), &overrides.set, false)?;
            if dot {
                let cache = ws.open_cache()?;
                let rows = plan(
                    &ws.spec,
                    &cache,
                    ws.lock.as_ref(),
                    &Selection::all(&ws.spec),
                    &Inventory::unlimited(),
                )?
                .status(&ws.spec);
                print!("{}", dot_stale::colour(&render::dot(&ws.spec), &rows));
            } else if json {
                let stages: Vec<serde_json::Value> = ws
                    .spec
                    .order
                    .iter()
                    .map(|&i| {
                        let s = &ws.spec.stages[i];
                        let inputs: serde_json::Map<String, serde_json::Value> =
                            s.inputs.iter().map(|(slot, &u)| (slot.clone(), ws.spec.stages[u].id.to_string().into())).collect();
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
            overrides,
            path,
            json,
        } => show(manifest.file.as_deref(), &overrides.set, &stage, path, json),
        Command::Gc {
            manifest,
            dry_run,
            json,
        } => {
            let ws = workspace::load(manifest.file.as_deref(), &[], false)?;
            let cache = ws.open_cache()?;
            let mut roots = ws.gc_roots()?;
            roots.dry_run = dry_run;
            let report = cache.gc(&roots).map_err(EngineError::from)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", gc_text::roots(&report));
                println!(
                    "{} {} records, {} artifacts, {} objects, {} temporary files; {} {}",
                    if dry_run { "would remove" } else { "removed" },
                    report.records_removed,
                    report.artifacts_removed,
                    report.objects_removed,
                    report.temp_removed,
                    if dry_run { "would free" } else { "freed" },
                    pollard_engine::Bytes(report.bytes_freed)
                );
                println!(
                    "kept {} records, {} artifacts, {} objects",
                    report.records_kept, report.artifacts_kept, report.objects_kept
                );
            }
            Ok(0)
        }
        Command::Runs {
            manifest,
            show,
            json,
        } => {
            let (id, json) = match show {
                Some(RunsShow::Show { id, json: j }) => (Some(id), json || j),
                None => (None, json),
            };
            // The history is read without validating the manifest: it may have changed since.
            let path = std::path::absolute(workspace::manifest_path(manifest.file.as_deref())?)?;
            let dir = path.parent().unwrap_or(Path::new("/"));
            runs_cmd::runs(
                &pollard_engine::history::runs_dir(&pollard_engine::workspace::state_dir(dir)),
                id.as_deref(),
                json,
            )
        }
        Command::Verify { manifest, json } => {
            let ws = workspace::load(manifest.file.as_deref(), &[], false)?;
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
        Command::StageJob { file } => {
            let cancel = Arc::new(AtomicBool::new(false));
            let flag = cancel.clone();
            let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
            match pollard_engine::job::run_job(&file, &workspace::registry(), cancel) {
                Ok(()) => Ok(0),
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(1)
                }
            }
        }
        Command::Model { command } => {
            model_cmd::run(command)?;
            Ok(0)
        }
        Command::Params { command } => diff_cmd::run(pollard_engine::DiffWhat::Params, command),
        Command::Metrics { command } => diff_cmd::run(pollard_engine::DiffWhat::Metrics, command),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "pollard", &mut std::io::stdout());
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
    let planned_at_ns = pollard_engine::noop::now_ns();
    if let Some(paths) = run_memo::paths(&args) {
        if let Some(code) = run_memo::try_run(&args, &paths)? {
            return Ok(code);
        }
    }
    let ws = workspace::load(args.manifest.file.as_deref(), &args.overrides.set, true)?;
    if !ws.overrides.is_empty() && !args.dry_run {
        if let Some(dir) = ws.lock_path.parent() {
            // The record and, beside it, the journal its entries are appended to first.
            let journal_dir = pollard_engine::workspace::state_dir(dir);
            std::fs::create_dir_all(&journal_dir)
                .with_context(|| format!("cannot create {}", journal_dir.display()))?;
        }
        let texts: Vec<&str> = ws.overrides.iter().map(|o| o.text.as_str()).collect();
        eprintln!(
            "with {}: recorded in {} ({} stays the record of {} as written)",
            texts.join(" "),
            ws.lock_path.display(),
            pollard_engine::lock_path_for(&ws.manifest_path).display(),
            ws.spec.file
        );
    }
    let slurm_options = slurm_options(&args, from_value(&ws.manifest, ws.executor.as_ref())?);
    let slurm = slurm_options.is_some();
    if slurm && args.gpus.is_some() {
        return Err(EngineError::Usage(
            "--gpus describes this machine; under --executor slurm the cluster places stages"
                .into(),
        )
        .into());
    }
    let inventory = if slurm {
        SlurmExecutor::inventory()
    } else {
        Inventory::resolve(args.gpus.as_deref()).map_err(EngineError::Usage)?
    };
    let cache = Arc::new(ws.open_cache()?);
    let sel = Selection::new(&ws.spec, &args.stages, &args.force, args.force_all)?;
    let plan = plan(&ws.spec, &cache, ws.lock.as_ref(), &sel, &inventory)?;
    plan.check(&ws.spec)?;
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan.to_json(&ws.spec))?);
        } else {
            print!("{}", render::dry_run(&ws.spec, &plan, &inventory));
        }
        return Ok(if plan.blocked().next().is_some() {
            BLOCKED
        } else {
            0
        });
    }
    if plan.blocked().next().is_some() {
        eprint!("{}", render::blocked(&ws.spec, &plan));
        return Ok(BLOCKED);
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
    let json_log =
        (args.log_format == LogFormat::Json).then(|| Arc::new(event_log::JsonLines::stderr()));
    let reporter: Arc<dyn pollard_engine::Reporter> = match &json_log {
        Some(log) => {
            log.emit(
                "plan",
                serde_json::json!({ "pipeline": ws.spec.name, "stages": plan.to_json(&ws.spec) }),
            );
            log.clone()
        }
        None => {
            // Only `--verbose` prints them: a large run should not format them for nothing.
            let reasons = plan
                .stages
                .iter()
                .filter(|_| args.verbose)
                .filter(|p| matches!(p.action, Action::Run { .. }))
                .map(|p| {
                    let why = p.reasons().iter().map(|r| r.to_string()).collect();
                    (ws.spec.stages[p.index].id.to_string(), why)
                })
                .collect();
            Arc::new(console(&args, plan.stages.len(), reasons))
        }
    };
    let lock = ws.lock_writer();
    let failure_logs = ws.failure_logs();
    let state_dir = ws.state_dir();
    let spec = Arc::new(ws.spec);
    let isolation = std::env::current_exe()
        .ok()
        .map(|exe| pollard_engine::job::Isolation {
            exe,
            args: vec!["stage-job".into()],
            manifest: ws.manifest.clone(),
        });
    let executor: Arc<dyn Executor> = if slurm {
        Arc::new(SlurmExecutor {
            options: slurm_options.unwrap_or_default(),
            isolation: isolation.context("cannot find this program's path for Slurm jobs")?,
            jobs_dir: state_dir.join("slurm"),
        })
    } else {
        Arc::new(LocalExecutor { isolation })
    };
    let recorder = Arc::new(pollard_engine::history::Recorder::start(
        &pollard_engine::history::runs_dir(&state_dir),
        reporter,
    ));
    let runner = Runner {
        spec: spec.clone(),
        cache,
        lock,
        inventory,
        reporter: recorder.clone(),
        cancel,
        failure_logs,
        executor,
    };
    let opts = RunOptions {
        jobs: args.jobs,
        keep_going: args.keep_going,
    };
    let summary = runner.run(&plan, &opts)?;
    let kinds = spec
        .stages
        .iter()
        .map(|s| (s.id.clone(), s.kind.clone()))
        .collect();
    let final_lock = runner.lock.current();
    let texts: Vec<String> = ws.overrides.iter().map(|o| o.text.clone()).collect();
    if let Err(e) = recorder.finish(
        &summary,
        &kinds,
        (&ws.manifest.file, &ws.manifest.text),
        &texts,
        if slurm { "slurm" } else { "local" },
        &pollard_engine::history::LockState::of(final_lock.as_ref(), runner.lock.path()),
        Some(&runner.cache),
    ) {
        eprintln!("warning: the run could not be recorded under .pollard/runs/: {e}");
    }
    run_memo::after_run(
        &args,
        run_memo::FullRun {
            manifest_text: &ws.manifest.text,
            spec: &spec,
            plan: &plan,
            summary: &summary,
            cache: &runner.cache,
            embedded: ws.embedded,
            slurm,
            planned_at_ns,
        },
    );
    let tally = Tally::of(&summary);
    let line = summary_line(&spec.name, &summary);
    if let Some(log) = &json_log {
        log.emit(
            "summary",
            serde_json::json!({
                "pipeline": spec.name, "ran": tally.ran, "reused": tally.reused,
                "failed": tally.failed, "interrupted": tally.interrupted,
                "not_run": tally.not_run,
            }),
        );
    }
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

/// The progress display a run's flags ask for.
fn console(
    args: &RunArgs,
    total: usize,
    reasons: std::collections::HashMap<String, Vec<String>>,
) -> progress::Console {
    let verbosity = match (args.quiet, args.verbose) {
        (true, _) => progress::Verbosity::Quiet,
        (_, true) => progress::Verbosity::Verbose,
        _ => progress::Verbosity::Normal,
    };
    progress::Console::new(args.plain, args.json)
        .with_total(total)
        .with_verbosity(verbosity)
        .with_reasons(reasons)
}

/// How a run's stages ended, counted once for the summary line and the JSON summary event.
struct Tally {
    ran: usize,
    reused: usize,
    failed: usize,
    interrupted: usize,
    not_run: usize,
}

impl Tally {
    fn of(summary: &pollard_engine::exec::RunSummary) -> Tally {
        let stopped =
            |o: &Outcome| matches!(o, Outcome::Failed { error } if error == "interrupted");
        Tally {
            ran: summary.count(|o| matches!(o, Outcome::Ran { .. })),
            reused: summary.count(|o| matches!(o, Outcome::Reused { .. })),
            failed: summary.count(|o| matches!(o, Outcome::Failed { .. }) && !stopped(o)),
            interrupted: summary.count(stopped),
            not_run: summary.count(|o| matches!(o, Outcome::Skipped { .. })),
        }
    }
}

/// `tiny: 0 ran, 14 up to date, 0 failed, 0 not run` (and how many were interrupted).
fn summary_line(pipeline: &str, summary: &pollard_engine::exec::RunSummary) -> String {
    let t = Tally::of(summary);
    let mut line = format!(
        "{pipeline}: {} ran, {} up to date, {} failed",
        t.ran, t.reused, t.failed
    );
    if t.interrupted > 0 {
        line.push_str(&format!(", {} interrupted", t.interrupted));
    }
    line.push_str(&format!(", {} not run", t.not_run));
    line
}

/// The Slurm options when stages run on Slurm: the manifest's `executor:` unless `--executor`
/// says otherwise, each `--slurm-*` flag replacing its field (`--slurm-arg`s add to `extra`).
fn slurm_options(args: &RunArgs, manifest: Option<ExecutorChoice>) -> Option<SlurmOptions> {
    let mut o = match (args.executor, manifest) {
        (Some(ExecutorKind::Local), _) | (None, None | Some(ExecutorChoice::Local)) => return None,
        (_, Some(ExecutorChoice::Slurm(o))) => o,
        (Some(ExecutorKind::Slurm), _) => SlurmOptions::default(),
    };
    let flag = |f: &Option<String>, field: &mut Option<String>| {
        if f.is_some() {
            field.clone_from(f);
        }
    };
    flag(&args.slurm_partition, &mut o.partition);
    flag(&args.slurm_account, &mut o.account);
    flag(&args.slurm_time, &mut o.time);
    o.extra.extend(args.slurm_arg.iter().cloned());
    Some(o)
}

fn show(
    file: Option<&Path>,
    sets: &[String],
    stage: &str,
    path_only: bool,
    json: bool,
) -> Result<u8> {
    let ws = workspace::load(file, sets, false)?;
    let cache = ws.open_cache()?;
    let Some(i) = ws.spec.index_of(stage) else {
        let e = ws
            .spec
            .resolve_ids(&[stage.to_string()])
            .expect_err("the id is unknown");
        return Err(EngineError::Usage(e).into());
    };
    let sel = Selection::new(&ws.spec, &[stage.to_string()], &[], false)?;
    let inventory = Inventory::unlimited();
    let plan: Plan = plan(&ws.spec, &cache, ws.lock.as_ref(), &sel, &inventory)?;
    let planned = plan.get(i).expect("the stage is selected");
    // The current output when up to date, else what the lock file last recorded (marked stale).
    let (artifact, note) = match (
        &planned.action,
        ws.lock.as_ref().and_then(|l| l.stages.get(stage)),
    ) {
        (Action::Reuse { record }, _) => (record.artifact, None),
        (_, Some(e)) => (
            e.output,
            Some("stale: this is the last recorded output; `pollard status` says why"),
        ),
        (_, None) => bail!(EngineError::Usage(format!(
            "stage `{stage}` has no output yet (run `pollard run {stage}`)"
        ))),
    };
    let record = match &planned.action {
        Action::Reuse { record } => Some((**record).clone()),
        _ => ws
            .lock
            .as_ref()
            .and_then(|l| l.stages.get(stage))
            .and_then(|e| cache.record(&e.key).ok().flatten()),
    };
    let memory = |field: &str| -> serde_json::Value {
        record
            .as_ref()
            .and_then(|r| r.memory.get(field))
            .map_or(serde_json::Value::Null, |&b| b.into())
    };
    let id: ArtifactId = artifact;
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
                "estimated_host_bytes": memory("estimated_host_bytes"), "peak_host_bytes": memory("peak_host_bytes"),
                "estimated_gpu_bytes": memory("estimated_gpu_bytes"), "peak_gpu_bytes": memory("peak_gpu_bytes"),
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
