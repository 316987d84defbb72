//! `pollard params diff` and `pollard metrics diff`: finds the two records to compare (a lock
//! file on disk, or the lock file at a git revision read through `git show`), asks the engine for
//! the changed fields and prints them as a table or JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use pollard_engine::{diff, lock_path_for, DiffRow, DiffWhat, EngineError, LockFile};

#[derive(Subcommand)]
pub enum DiffCommand {
    /// Compare two records: A and B are lock files, run ids (`pollard runs`) or git revisions
    /// (default: HEAD against the working lock file)
    Diff(DiffArgs),
}

#[derive(Args)]
pub struct DiffArgs {
    /// The old side: a lock file, a run id or a git revision (default: HEAD)
    a: Option<String>,
    /// The new side: a lock file, a run id or a git revision (default: the working lock file)
    b: Option<String>,
    /// The manifest whose lock file is compared (default: ./pollard.yaml, else the built-in recipe)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Also list fields that did not change
    #[arg(long)]
    all: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// One side of a comparison, as the user named it.
struct Side {
    label: String,
    lock: LockFile,
}

pub fn run(what: DiffWhat, cmd: DiffCommand) -> Result<u8> {
    let DiffCommand::Diff(args) = cmd;
    let manifest = crate::workspace::manifest_path(args.file.as_deref())?;
    let lock_path = lock_path_for(&manifest);
    let old = match &args.a {
        Some(a) => side(a, &lock_path)?,
        None => at_revision("HEAD", &lock_path)?,
    };
    let new = match &args.b {
        Some(b) => side(b, &lock_path)?,
        None => working(&lock_path)?,
    };
    let rows = diff(&old.lock, &new.lock, what, args.all);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "old": old.label, "new": new.label, "rows": rows,
            }))?
        );
    } else {
        print!("{}", table(what, &old.label, &new.label, &rows));
    }
    Ok(0)
}

/// A file path if one exists by that name, else a run id (`pollard runs`: the lock file as that
/// run left it), else a git revision.
fn side(name: &str, lock_path: &Path) -> Result<Side> {
    let p = Path::new(name);
    let dir = lock_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let run_lock = pollard_engine::history::runs_dir(&pollard_engine::workspace::state_dir(dir))
        .join(name)
        .join("pollard.lock");
    if !p.is_file() && !name.contains('/') && run_lock.is_file() {
        let lock =
            LockFile::read(&run_lock)?.with_context(|| format!("run {name}: no lock file"))?;
        return Ok(Side {
            label: format!("run {name}"),
            lock,
        });
    }
    if p.is_file() {
        let lock = LockFile::read(p)?.with_context(|| format!("{name}: no lock file"))?;
        return Ok(Side {
            label: name.to_string(),
            lock,
        });
    }
    at_revision(name, lock_path)
}

fn working(lock_path: &Path) -> Result<Side> {
    let lock = LockFile::read(lock_path)?.with_context(|| {
        format!(
            "{} does not exist yet: run the pipeline first, or name two records to compare",
            lock_path.display()
        )
    })?;
    Ok(Side {
        label: "workspace".into(),
        lock,
    })
}

/// The lock file as committed at `rev`, read with `git show REV:./NAME` from the lock's folder.
/// A revision where the file did not exist yet compares as an empty record.
fn at_revision(rev: &str, lock_path: &Path) -> Result<Side> {
    let dir = lock_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = lock_path
        .file_name()
        .context("the lock file has no name")?
        .to_string_lossy();
    let rev_ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .with_context(|| "cannot run git to read a revision".to_string())?;
    if !rev_ok.status.success() {
        bail!(EngineError::Usage(format!(
            "`{rev}` is neither a lock file, a run id (`pollard runs`) nor a git revision of the repository at {}",
            dir.canonicalize()
                .unwrap_or_else(|_| dir.to_path_buf())
                .display()
        )));
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .arg("show")
        .arg(format!("{rev}:./{name}"))
        .output()
        .context("cannot run git show")?;
    let lock = if out.status.success() {
        let tmp = tempfile_with(&out.stdout)?;
        LockFile::read(tmp.path())
            .with_context(|| format!("{name} at {rev}"))?
            .unwrap_or_default()
    } else {
        LockFile::default()
    };
    Ok(Side {
        label: rev.to_string(),
        lock,
    })
}

/// The lock reader takes a path; a revision's bytes go through a temporary file.
fn tempfile_with(bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
    f.write_all(bytes)
        .context("cannot write a temporary file")?;
    Ok(f)
}

/// The widest a value gets in the table (the JSON output keeps it whole).
const CELL_LIMIT: usize = 48;

fn show(v: &Option<serde_json::Value>) -> String {
    let s = show_whole(v);
    if s.chars().count() <= CELL_LIMIT {
        return s;
    }
    let head: String = s.chars().take(CELL_LIMIT - 3).collect();
    format!("{head}...")
}

fn show_whole(v: &Option<serde_json::Value>) -> String {
    match v {
        None => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(x) if n.is_f64() => number(x, false),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// A number with at most six decimals and no trailing zeros.
fn number(x: f64, sign: bool) -> String {
    let s = if sign {
        format!("{x:+.6}")
    } else {
        format!("{x:.6}")
    };
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn change(r: &DiffRow) -> String {
    match (r.change, r.old.as_ref().and_then(|v| v.as_f64())) {
        (Some(c), Some(old)) if old != 0.0 => {
            format!("{} ({:+.1}%)", number(c, true), 100.0 * c / old.abs())
        }
        (Some(c), _) => number(c, true),
        _ => String::new(),
    }
}

fn table(what: DiffWhat, old: &str, new: &str, rows: &[DiffRow]) -> String {
    let noun = match what {
        DiffWhat::Params => "params",
        DiffWhat::Metrics => "metrics",
    };
    if rows.is_empty() {
        return format!("no {noun} changed between {old} and {new}\n");
    }
    let header = [
        "stage".to_string(),
        noun.trim_end_matches('s').to_string(),
        old.to_string(),
        new.to_string(),
        "change".to_string(),
    ];
    let body: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.stage.clone(),
                r.field.clone(),
                show(&r.old),
                show(&r.new),
                change(r),
            ]
        })
        .collect();
    let mut width = header.clone().map(|h| h.chars().count());
    for row in &body {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(&format!("{cell:<w$}"));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    for row in &body {
        out.push_str(&line(row));
    }
    out
}
