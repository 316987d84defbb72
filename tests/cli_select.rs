//! A `matrix` group's `select:` and the `search:` helper through the binary: `dag` lists the
//! candidates and `<group>.best` before anything runs; the choice holds the winner's files as
//! hard links of the same cache objects plus `selection.json`; a rerun that reproduces the same
//! choice leaves what follows it up to date; bad `select`/`search` blocks fail with positions.

mod cli_support;
use cli_support::*;

use std::os::unix::fs::MetadataExt;

/// Three copies writing a loss (`v`) and a payload; `after` reads the choice.
fn manifest(extra_for_b: &str) -> String {
    format!(
        r#"pipeline: choose
stages:
  grid:
    matrix: {{ v: [3, 1, 2] }}
    name: "c${{matrix.v}}"
    select: {{ by: m.metrics.loss, mode: min, result: m }}
    stages:
      m:
        kind: command
        cmd: "printf '{{\"metrics\": {{\"loss\": ${{matrix.v}}}}}}' > $POLLARD_OUT/metrics.json; echo payload-${{matrix.v}} > $POLLARD_OUT/w.txt{extra_for_b}"
  after:
    kind: command
    inputs: {{ best: grid.best }}
    cmd: "cat $POLLARD_IN_BEST/w.txt > $POLLARD_OUT/got.txt"
"#
    )
}

#[test]
fn select_links_the_winner_and_a_reproduced_choice_cuts_off_downstream() {
    let ws = Ws::new(&manifest(""));
    let dag = ws.run(&["dag"]);
    assert_eq!(dag.code, 0, "{}", dag.all());
    assert!(
        dag.stdout.contains("grid.best [select] <- by-c1=grid.c1.m, by-c2=grid.c2.m, by-c3=grid.c3.m, c1=grid.c1.m, c2=grid.c2.m, c3=grid.c3.m"),
        "{}",
        dag.stdout
    );
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let path = |stage: &str| {
        let r = ws.run(&["show", stage, "--path"]);
        assert_eq!(r.code, 0, "{}", r.all());
        std::path::PathBuf::from(r.stdout.trim())
    };
    let best = path("grid.best");
    assert_eq!(
        std::fs::read_to_string(best.join("w.txt")).unwrap(),
        "payload-1\n"
    );
    assert_eq!(
        std::fs::read_to_string(path("after").join("got.txt")).unwrap(),
        "payload-1\n"
    );
    // The same inode as the winner's file: linked from the cache, not copied.
    let winner = path("grid.c1.m");
    assert_eq!(
        std::fs::metadata(best.join("w.txt")).unwrap().ino(),
        std::fs::metadata(winner.join("w.txt")).unwrap().ino()
    );
    let sel: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("selection.json")).unwrap())
            .unwrap();
    assert_eq!(sel["winner"], "c1");
    assert_eq!(sel["by"], "m.metrics.loss");
    let order: Vec<&str> = sel["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["c1", "c2", "c3"]);
    // `status` names the choice beside the stage, in text and JSON.
    let status = ws.run(&["status"]);
    let line = status
        .stdout
        .lines()
        .find(|l| l.contains("grid.best"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("up to date") && line.ends_with("chose c1 of 3 (m.metrics.loss = 1, min)"),
        "{}",
        status.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&ws.run(&["status", "--json"]).stdout).unwrap();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == "grid.best")
        .unwrap();
    assert_eq!(row["choice"]["winner"], "c1");
    assert_eq!(row["choice"]["value"], 1.0);

    // A loser reruns with new bytes but the same metric: the choice reruns, reproduces the
    // same output, and `after` stays up to date (early cutoff by artifact id).
    ws.write(
        "pollard.yaml",
        &manifest("; if [ ${matrix.v} = 3 ]; then echo more > $POLLARD_OUT/extra.txt; fi"),
    );
    let r = ws.run(&["run", "--plain"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let status = ws.run(&["status"]);
    assert!(status.stdout.contains("up to date"), "{}", status.stdout);
    assert!(
        !r.all().contains("[after] started"),
        "after must not rerun:\n{}\n{}",
        r.all(),
        ws.read("pollard.yaml")
    );
    assert!(r.all().contains("[grid.best]"), "{}", r.all());
}

#[test]
fn bad_select_and_search_blocks_name_their_position() {
    let ws = Ws::new(
        r#"pipeline: bad
stages:
  grid:
    matrix: { v: [1, 2] }
    select: { by: nope.loss, mode: best, result: m }
    stages:
      m: { kind: command, cmd: "true" }
  s:
    search: { grid: { hidden: [64] }, params: 10 +- 5, count: non_embedding, shape: { hidden: 128, heads: 4 } }
    stages:
      m: { kind: command, cmd: "true" }
"#,
    );
    let r = ws.run(&["dag"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("`select.by`: `nope` is not a stage of this group's body"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("`select.mode: best` must be `min` or `max`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("the tolerance must be a percentage"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("pollard.yaml:5:"), "{}", r.stderr);
}

#[test]
fn search_shape_of_an_unknown_family_is_refused_with_its_position() {
    let ws = Ws::new(
        r#"pipeline: bad
stages:
  s:
    search:
      grid: { hidden: [64] }
      params: 100K +- 5%
      count: non_embedding
      shape: { hidden: 128, ffn: 384, heads: 4, kv_heads: 2, layers: 4, family: gpt2 }
    stages:
      m: { kind: command, cmd: "true" }
"#,
    );
    let r = ws.run(&["dag"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("pollard.yaml:8:")
            && r.stderr.contains("stage `s`")
            && r.stderr.contains(
                "`search.shape.family: gpt2` must be `llama`, `mistral`, `nemotron` or `qwen3`"
            ),
        "{}",
        r.stderr
    );
}

#[test]
fn search_lists_every_candidate_within_the_budget_before_running() {
    let ws = Ws::new(
        r#"pipeline: s
params:
  base: { hidden: 128, ffn: 384, heads: 4, kv_heads: 2, layers: 4 }
stages:
  s:
    search:
      grid: { hidden: { of: 128, by: [1, 2] }, heads: [4, 3, 2], ffn: [384, 128] }
      params: 400K +- 5%
      count: non_embedding
      shape: "${params.base}"
    select: { by: m.loss, mode: min, result: m }
    stages:
      m: { kind: command, cmd: "echo ${matrix.arch.hidden} ${matrix.arch.heads} ${matrix.arch.ffn}" }
"#,
    );
    let r = ws.run(&["dag"]);
    assert_eq!(r.code, 0, "{}", r.all());
    // 128/4/128 -> 394,368 and 64/4/384 -> 393,792 non-embedding parameters; 3 heads do not
    // split into 2 KV groups.
    assert_eq!(
        r.stdout,
        "pipeline s (3 stages)\n  s.h64-a4-f384.m [command]\n  s.h128-a4-f128.m [command]\n  s.best [select] <- by-h128-a4-f128=s.h128-a4-f128.m, by-h64-a4-f384=s.h64-a4-f384.m, h128-a4-f128=s.h128-a4-f128.m, h64-a4-f384=s.h64-a4-f384.m\n"
    );
}
