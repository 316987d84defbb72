//! Every manifest in `pipelines/` (and every recipe embedded in the binary) parses, validates
//! with the registered stage kinds, and plans (`run --dry-run`) without running anything.

mod cli_support;
use cli_support::*;

/// Enough GPUs and host memory that planning never refuses a recipe written for a real machine.
const GPUS: &str = "80GiB,80GiB,80GiB,80GiB,80GiB,80GiB,80GiB,80GiB";
const HOST_MEMORY: &str = "2TiB";

/// A dry run plans every stage; the paper recipes' checkpoints are not here, so their `load`
/// stages (and what needs them) are blocked, which is exit 2 with nothing else wrong.
fn plans(m: &std::path::Path, plan: &Run) {
    if plan.code == 2 && plan.stderr.is_empty() {
        for line in plan.stdout.lines().filter(|l| l.contains(" blocked ")) {
            assert!(
                line.contains("cannot be read") || line.contains("is blocked)"),
                "{}: {line}",
                m.display()
            );
        }
        assert!(plan.stdout.contains("blocked"), "{}", plan.stdout);
    } else {
        assert_eq!(plan.code, 0, "{}: {}", m.display(), plan.all());
    }
}

#[test]
fn every_pipeline_parses_and_plans() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut manifests: Vec<std::path::PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    manifests.sort();
    for m in &manifests {
        // Plan from a scratch copy so the repository gets no lock file or cache.
        let ws = Ws::new(&std::fs::read_to_string(m).unwrap());
        let dag = ws.run(&["dag"]);
        assert_eq!(dag.code, 0, "{}: {}", m.display(), dag.all());
        let plan: Run = ws
            .cmd(&["run", "--dry-run", "--gpus", GPUS])
            .env("POLLARD_HOST_MEMORY", HOST_MEMORY)
            .output()
            .unwrap()
            .into();
        plans(m, &plan);
        assert!(plan.stdout.starts_with("dry run of "), "{}", plan.stdout);
        assert!(
            !ws.file("pollard.lock").exists(),
            "a dry run writes no lock file"
        );
    }
    // The embedded default recipe, as `pollard run` would use it.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--dry-run", "--gpus", GPUS])
        .env("POLLARD_HOST_MEMORY", HOST_MEMORY)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dry run of "));
}
