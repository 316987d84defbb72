//! Every YAML manifest shown in the README is a working manifest: it validates (`dag`) and plans
//! (`run --dry-run`), so a reader who copies one gets no error.

mod cli_support;
use cli_support::*;

/// The ```yaml blocks of a Markdown text, in order.
fn yaml_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") || l.starts_with("```yml") => {
                current = Some(String::new())
            }
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_manifest_in_the_readme_validates_and_plans() {
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let blocks = yaml_blocks(&std::fs::read_to_string(readme).unwrap());
    assert!(!blocks.is_empty(), "the README shows a manifest");
    for (n, block) in blocks.iter().enumerate() {
        if !block.lines().any(|l| l.starts_with("stages:")) {
            continue; // a fragment of a manifest, not a whole one
        }
        let ws = Ws::new(block);
        // Files a command stage depends on are the user's; any content will do for planning.
        for dep in block.lines().filter_map(|l| l.split("deps:").nth(1)) {
            let dep = dep.split('#').next().unwrap();
            for path in dep.trim().trim_matches(|c| c == '[' || c == ']').split(',') {
                let path = path.trim();
                if !path.is_empty() {
                    ws.write(path, "");
                }
            }
        }
        let dag = ws.run(&["dag"]);
        assert_eq!(dag.code, 0, "README manifest #{n}:\n{block}\n{}", dag.all());
        let plan = ws.run(&["run", "--dry-run", "--gpus", "80GiB"]);
        assert_eq!(
            plan.code,
            0,
            "README manifest #{n}:\n{block}\n{}",
            plan.all()
        );
    }
}
