//! Tests of parse -> expand -> validate on small manifests with fake kinds.

use super::*;
use crate::quantity::Count;
use crate::stage::{BoxError, Inputs, ParamError, PlanInputs, Resources, Stage, StageCtx};
use serde::Serialize;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PruneParams {
    #[serde(default)]
    target: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    tokens: Option<Count>,
}

struct Prune;
impl Stage for Prune {
    const KIND: &'static str = "prune";
    const VERSION: u32 = 1;
    type Params = PruneParams;
    fn slots(&self) -> Slots {
        Slots::Fixed {
            required: &["model"],
            optional: &["scores", "data"],
        }
    }
    fn validate(&self, p: &PruneParams) -> Result<(), Vec<ParamError>> {
        match p.method.as_deref() {
            Some("bogus") => Err(vec![ParamError::new("method", "`bogus` is not a method")]),
            _ => Ok(()),
        }
    }
    fn resources(&self, _: &PruneParams, _: &PlanInputs) -> Result<Resources, BoxError> {
        Ok(Resources::default())
    }
    fn run(&self, _: &mut StageCtx, _: &PruneParams, _: &Inputs) -> Result<(), BoxError> {
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Prune);
    r
}

fn load_text(text: &str) -> Result<PipelineSpec, Diagnostics> {
    let src = Source::new("m.yaml", PathBuf::from("/tmp"), text.to_string());
    load(&src, &registry())
}

fn errors(text: &str) -> Vec<String> {
    match load_text(text) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
    }
}

const GROUPS: &str = r#"
pipeline: g
params:
  t: { hidden: 192 }
stages:
  teacher: { kind: command, cmd: "true" }
  data: { kind: command, cmd: "true" }
  shrink:
    repeat:
      from: teacher
      rounds:
        - { name: half, target: "${params.t}" }
        - { name: quarter, target: { hidden: 128 } }
      result: distill
    stages:
      score: { kind: command, inputs: { model: "${prev}", data: data }, cmd: "echo ${round.name}" }
      distill: { kind: prune, inputs: { model: score }, with: { target: "${round.target}" } }
  arms:
    matrix: { method: [activation, magnitude] }
    name: "m-${matrix.method}"
    stages:
      prune: { kind: prune, inputs: { model: teacher, scores: shrink.half.score }, with: { method: "${matrix.method}", tokens: 2K } }
"#;

#[test]
fn groups_expand_into_ids_and_bindings() {
    let spec = load_text(GROUPS).unwrap();
    let ids: Vec<&str> = spec.ids().collect();
    assert_eq!(
        ids,
        vec![
            "teacher",
            "data",
            "shrink.half.score",
            "shrink.half.distill",
            "shrink.quarter.score",
            "shrink.quarter.distill",
            "arms.m-activation.prune",
            "arms.m-magnitude.prune"
        ]
    );
    let up = |id: &str, slot: &str| {
        spec.stages[spec.stages[spec.index_of(id).unwrap()].inputs[slot]]
            .id
            .clone()
    };
    assert_eq!(up("shrink.half.score", "model"), "teacher");
    assert_eq!(up("shrink.quarter.score", "model"), "shrink.half.distill");
    assert_eq!(
        up("shrink.quarter.distill", "model"),
        "shrink.quarter.score"
    );
    assert_eq!(up("shrink.half.score", "data"), "data");
    assert_eq!(up("arms.m-magnitude.prune", "scores"), "shrink.half.score");
    let p = &spec.stages[spec.index_of("shrink.half.distill").unwrap()]
        .params
        .canonical;
    assert_eq!(p["target"], serde_json::json!({"hidden": 192}));
    let p = &spec.stages[spec.index_of("arms.m-magnitude.prune").unwrap()]
        .params
        .canonical;
    assert_eq!(p["method"], "magnitude");
    assert_eq!(p["tokens"], 2000);
    let c = &spec.stages[spec.index_of("shrink.quarter.score").unwrap()]
        .params
        .canonical;
    assert_eq!(c["cmd"], "echo quarter");
}

#[test]
fn every_error_is_reported_at_once_with_positions() {
    let errs = errors(
        r#"pipeline: e
stages:
  a: { kind: prune, inputs: { modle: b }, with: { methd: x } }
  b: { kind: prnue }
  c: { kind: prune, inputs: { model: a }, with: { method: bogus } }
  d: { kind: command, cmd: "true", with: { x: 1 } }
  e: { kind: prune, inputs: { model: a }, cmd: "true" }
"#,
    );
    assert_eq!(
        errs,
        vec![
            "m.yaml:3:3: stage `a`: kind `prune` needs input `model`",
            "m.yaml:3:31: stage `a`: kind `prune` takes no input `modle` (its inputs: model, scores, data); did you mean `model`?",
            "m.yaml:3:51: stage `a`: with.methd: unknown field `methd`, expected one of `target`, `method`, `tokens` (did you mean `method`?)",
            "m.yaml:4:14: stage `b`: unknown stage kind `prnue` (known kinds: command, prune); did you mean `prune`?",
            "m.yaml:5:59: stage `c`: with.method: `bogus` is not a method",
            "m.yaml:6:36: stage `d`: `kind: command` takes `cmd`, `deps` and `env` beside `with`, not `with`",
            "m.yaml:7:43: stage `e`: `cmd` is only for `kind: command` stages (this one is `kind: prune`)",
        ]
    );
}

#[test]
fn cycles_print_their_path() {
    let errs = errors(
        "pipeline: c\nstages:\n  a: { kind: command, cmd: x, inputs: { i: c } }\n  b: { kind: command, cmd: x, inputs: { i: a } }\n  c: { kind: command, cmd: x, inputs: { i: b } }\n",
    );
    assert_eq!(
        errs,
        vec!["m.yaml:3:3: stage `a`: the inputs form a cycle: a -> b -> c -> a"]
    );
}

#[test]
fn bad_ids_and_missing_fields() {
    let errs = errors(
        "pipeline: Bad Name\nstages:\n  Up: { kind: command, cmd: x }\n  ok: { inputs: {} }\n",
    );
    assert_eq!(
        errs,
        vec![
            "m.yaml:1:11: pipeline name `Bad Name` must match [a-z0-9_-]+",
            "m.yaml:3:3: stage id `Up` must match [a-z0-9_-]+",
            "m.yaml:4:3: stage `ok`: missing required field `kind`",
        ]
    );
    let errs = errors("stages: {}\nextra: 1\n");
    assert!(
        errs.iter()
            .any(|e| e.contains("missing required field `pipeline`")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("unknown field `extra`")),
        "{errs:?}"
    );
}

#[test]
fn duplicate_ids_after_expansion() {
    let errs = errors(
        "pipeline: d\nstages:\n  g:\n    matrix: { m: [a, b] }\n    name: same\n    stages:\n      s: { kind: command, cmd: x }\n",
    );
    assert_eq!(errs, vec!["m.yaml:7:7: stage `g.same.s`: duplicate stage id `g.same.s` after expansion (first defined at line 7)"]);
}

#[test]
fn quantities_are_checked_while_decoding() {
    let errs = errors("pipeline: q\nstages:\n  t: { kind: command, cmd: x }\n  p: { kind: prune, inputs: { model: t }, with: { tokens: 20Q } }\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(
            "m.yaml:4:59: stage `p`: with.tokens: `20Q` is not a valid count: unknown unit `Q`"
        ),
        "{errs:?}"
    );
}

#[test]
fn command_fields_are_interpolated_and_typed() {
    let spec = load_text("pipeline: c\nparams: { n: 3, name: x }\nstages:\n  a:\n    kind: command\n    cmd: echo ${params.n} $HOME ${HOME}\n    deps: [\"data/${params.name}.txt\"]\n    env: { N: \"${params.n}\", FLAG: true }\n").unwrap();
    let p = &spec.stages[0].params.canonical;
    assert_eq!(p["cmd"], "echo 3 $HOME ${HOME}");
    assert_eq!(p["env"], serde_json::json!({"N": "3", "FLAG": "true"}));
    assert_eq!(spec.stages[0].deps, vec![PathBuf::from("data/x.txt")]);
}

#[test]
fn a_cycle_is_reported_with_the_other_errors() {
    let errs = errors("pipeline: c\nstages:\n  a: { kind: command, cmd: x, inputs: { i: b } }\n  b: { kind: command, cmd: x, inputs: { i: a } }\n  c: { kind: comand }\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(
        errs[0],
        "m.yaml:3:3: stage `a`: the inputs form a cycle: a -> b -> a"
    );
    assert!(errs[1].contains("unknown stage kind `comand`"), "{errs:?}");
}

/// A kind declaring an outer field, like `kind: command` does: nothing in the engine names it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ScriptParams {
    script: String,
}

struct Script;
impl Stage for Script {
    const KIND: &'static str = "script";
    const VERSION: u32 = 1;
    type Params = ScriptParams;
    fn slots(&self) -> Slots {
        Slots::Any
    }
    fn outer_fields(&self) -> &'static [crate::stage::OuterField] {
        &[crate::stage::OuterField {
            name: "script",
            shape: crate::stage::OuterShape::Shell,
            required: true,
        }]
    }
    fn resources(&self, _: &ScriptParams, _: &PlanInputs) -> Result<Resources, BoxError> {
        Ok(Resources::default())
    }
    fn run(&self, _: &mut StageCtx, _: &ScriptParams, _: &Inputs) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn a_kind_with_outer_fields_decodes_them_from_beside_with_like_command() {
    let mut r = registry();
    r.register(Script);
    let load = |text: &str| {
        let src = Source::new("m.yaml", PathBuf::from("/tmp"), text.to_string());
        super::load(&src, &r)
    };
    let spec = load("pipeline: p\nparams: { n: 2 }\nstages:\n  s:\n    kind: script\n    script: echo ${params.n} $HOME ${HOME}\n")
        .unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(
        spec.stages[0].params.canonical,
        serde_json::json!({ "script": "echo 2 $HOME ${HOME}" })
    );
    let errs: Vec<String> = load("pipeline: p\nstages:\n  s:\n    kind: script\n    with: { script: x }\n  t:\n    kind: prune\n    inputs: { model: s }\n    script: x\n")
        .err()
        .unwrap()
        .0
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        errs,
        [
            "m.yaml:3:3: stage `s`: a `kind: script` stage needs `script`",
            "m.yaml:5:5: stage `s`: `kind: script` takes `script` beside `with`, not `with`",
            "m.yaml:9:5: stage `t`: `script` is only for `kind: script` stages (this one is `kind: prune`)",
        ]
    );
}
