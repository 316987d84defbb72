//! The reference in `docs/` against the code: every stage kind the binary registers has a
//! section in `docs/kinds.md` whose table lists exactly the parameter fields the kind's own
//! decoder accepts (found by probing it, see pollard-engine's `fields`), and the manifest
//! language reference names every field a stage, a group and `resources` accept.

use std::collections::BTreeSet;

use pollard_engine::fields::param_fields;
use pollard_engine::Registry;

fn registry() -> Registry {
    let mut reg = Registry::new();
    pollard_stages::register(&mut reg);
    reg
}

/// `## \`kind\`` section -> the first cells of its table rows (`| \`a.b\` | ...`).
fn documented(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(kind) = line.strip_prefix("## `").and_then(|r| r.strip_suffix('`')) {
            out.push((kind.to_string(), BTreeSet::new()));
        } else if let (Some(cell), Some((_, fields))) = (
            line.strip_prefix("| `")
                .and_then(|r| r.split_once('`'))
                .map(|(c, _)| c),
            out.last_mut(),
        ) {
            fields.insert(cell.to_string());
        }
    }
    out
}

#[test]
fn docs_list_every_kind_and_exactly_its_param_fields() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/kinds.md"))
        .expect("docs/kinds.md");
    let docs = documented(&text);
    let reg = registry();
    let kinds: Vec<&str> = reg.kinds().collect();
    let doc_kinds: Vec<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
    let mut a = kinds.clone();
    let mut b = doc_kinds.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "docs/kinds.md sections vs the registered kinds");
    let mut problems = Vec::new();
    for (kind, fields) in &docs {
        let stage = reg.get(kind).unwrap();
        let real: BTreeSet<String> = param_fields(stage.as_ref()).into_iter().collect();
        assert!(!real.is_empty(), "no fields probed for `{kind}`");
        for f in real.difference(fields) {
            problems.push(format!(
                "`{kind}`: field `{f}` exists but is not documented"
            ));
        }
        for f in fields.difference(&real) {
            problems.push(format!(
                "`{kind}`: docs name `{f}`, which the kind does not accept"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_manifest_reference_names_every_stage_group_and_resources_field() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/manifest.md"))
        .expect("docs/manifest.md");
    let fields = pollard_engine::manifest::STAGE_FIELDS
        .iter()
        .chain(pollard_engine::manifest::GROUP_FIELDS)
        .chain(pollard_engine::manifest::REPEAT_FIELDS)
        .chain(["gpus", "gpu_memory", "cpus", "host_memory"].iter());
    for f in fields {
        assert!(
            text.contains(&format!("`{f}`")),
            "docs/manifest.md does not mention `{f}`"
        );
    }
    // The limits the engine enforces are the ones documented.
    assert!(text.contains(&format!("{} stages", pollard_engine::expand::MAX_STAGES)));
    assert!(text.contains(&format!("{} levels", pollard_engine::yaml::MAX_DEPTH)));
}

#[test]
fn the_readme_report_table_has_the_columns_show_report_prints() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let printed = pollard_stages::kinds::report::table(&[]);
    let header: Vec<&str> = printed.lines().take(2).collect();
    let pos = readme
        .find(header[0])
        .expect("README's report table has the header `pollard show report` prints");
    // The README's table may go on with task columns after the fixed ones.
    assert!(
        readme[pos..]
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(header[1])),
        "alignment row differs"
    );
    let readme_header = readme[pos..].lines().next().unwrap();
    // Every row of that table has as many cells as the header.
    let cells = |l: &str| l.matches('|').count();
    for row in readme[pos..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        assert_eq!(cells(row), cells(readme_header), "{row}");
    }
}
