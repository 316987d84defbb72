//! [`RawManifest`] -> flat stages: `repeat` and `matrix` groups become ordinary stages with
//! ids `group.round.stage`, every `${...}` is resolved, and bare ids inside a body are bound to
//! their siblings. What comes out is what `pollard dag` shows; kinds are checked later (spec.rs).

use std::collections::{BTreeMap, HashMap};

use crate::yaml::{Mapping, Value};

use crate::interp::{interpolate, Scope, Use, Uses};
use crate::manifest::{valid_id, Collector, GroupShape, RawEntry, RawManifest, RawStage};
use crate::stage::OuterShape;
use crate::yaml::inline;

/// One input binding after expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatInput {
    pub slot: String,
    /// The upstream stage's expanded id (not yet checked to exist).
    pub stage: String,
    /// Span path of the binding (for messages).
    pub path: String,
}

/// One stage after expansion and interpolation.
#[derive(Debug, Clone)]
pub struct FlatStage {
    pub id: String,
    /// Span path of the stage's mapping in the manifest.
    pub path: String,
    pub kind: String,
    pub inputs: Vec<FlatInput>,
    /// The `with` block (an empty map when absent); for `kind: command` the map
    /// `{cmd, deps, env}` gathered from the fields beside `with`.
    pub with: Value,
    pub resources: Option<Value>,
    pub cache: bool,
    /// A reference in this stage did not resolve (already reported): its params are not
    /// decoded, so the raw `${...}` text does not give a second, confusing error.
    pub unresolved: bool,
    /// The manifest values (`params.lr`, `round.target`) its fields used, by reference.
    pub uses: BTreeMap<String, Use>,
}

/// The most stages a manifest may expand to. Counted before a group is expanded, so a small
/// file with a large `matrix` is refused instead of exhausting memory.
pub const MAX_STAGES: usize = 10_000;

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// Expands groups and resolves references; problems go to the collector.
pub fn expand(c: &mut Collector, m: &RawManifest) -> Vec<FlatStage> {
    let mut out = Vec::new();
    for entry in &m.entries {
        match entry {
            RawEntry::Stage(s) => {
                let scope = Scope {
                    params: &m.params,
                    prev: None,
                    round: None,
                    matrix: None,
                    uses: None,
                };
                out.push(flatten(c, s, &s.id, &scope, &|r: &str| r.to_string()));
            }
            RawEntry::Group(g) => {
                match &g.shape {
                    GroupShape::Repeat {
                        from,
                        rounds,
                        result,
                    } => {
                        let stages = rounds.len().checked_mul(g.body.len());
                        if stages
                            .and_then(|n| n.checked_add(out.len()))
                            .is_none_or(|t| t > MAX_STAGES)
                        {
                            c.at(
                                &join(&g.path, "repeat.rounds"),
                                Some(&g.id),
                                format!(
                                    "{} rounds of {} stages go past the limit of {MAX_STAGES} \
                                     stages in a manifest",
                                    rounds.len(),
                                    g.body.len()
                                ),
                            );
                            continue;
                        }
                        let mut prev = from.clone();
                        for (r, round) in rounds.iter().enumerate() {
                            // A round's own fields may reference params (`target: ${params.t}`).
                            let mut errs = Vec::new();
                            let top = Scope {
                                params: &m.params,
                                prev: None,
                                round: None,
                                matrix: None,
                                uses: None,
                            };
                            let round = &interpolate(
                                round,
                                &top,
                                &format!("{}.repeat.rounds.{r}", g.path),
                                false,
                                &mut errs,
                            );
                            for e in errs {
                                c.at(&e.path, Some(&g.id), e.message);
                            }
                            let name = round.get("name").map(inline).unwrap_or_default();
                            let prefix = format!("{}.{}", g.id, name);
                            let scope = Scope {
                                params: &m.params,
                                prev: Some(&prev),
                                round: Some(round),
                                matrix: None,
                                uses: None,
                            };
                            for s in &g.body {
                                let id = format!("{prefix}.{}", s.id);
                                let bind = sibling_binder(&prefix, &g.body);
                                out.push(flatten(c, s, &id, &scope, &bind));
                            }
                            prev = format!("{prefix}.{result}");
                        }
                    }
                    GroupShape::Matrix { axes } => {
                        let mut errs = Vec::new();
                        let top = Scope {
                            params: &m.params,
                            prev: None,
                            round: None,
                            matrix: None,
                            uses: None,
                        };
                        let axes: Vec<(String, Vec<Value>)> = axes
                            .iter()
                            .map(|(axis, vals)| {
                                let p = format!("{}.matrix.{axis}", g.path);
                                let vals = vals
                                    .iter()
                                    .enumerate()
                                    .map(|(i, v)| {
                                        interpolate(v, &top, &format!("{p}.{i}"), false, &mut errs)
                                    })
                                    .collect();
                                (axis.clone(), vals)
                            })
                            .collect();
                        for e in errs {
                            c.at(&e.path, Some(&g.id), e.message);
                        }
                        let axes = &axes;
                        let copies = axes
                            .iter()
                            .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()));
                        let stages = copies.and_then(|n| n.checked_mul(g.body.len()));
                        let total = stages.and_then(|n| n.checked_add(out.len()));
                        if total.is_none_or(|t| t > MAX_STAGES) {
                            let sizes: Vec<String> = axes
                                .iter()
                                .map(|(a, v)| format!("{a}: {}", v.len()))
                                .collect();
                            let copies = copies
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| "more than 2^64".into());
                            c.at(
                                &join(&g.path, "matrix"),
                                Some(&g.id),
                                format!(
                                    "this matrix expands to {copies} copies of {} stage{} ({}), past \
                                     the limit of {MAX_STAGES} stages in a manifest; split the sweep",
                                    g.body.len(),
                                    if g.body.len() == 1 { "" } else { "s" },
                                    sizes.join(" x ")
                                ),
                            );
                            continue;
                        }
                        let mut copies = Vec::new();
                        for combo in combinations(axes) {
                            let scope = Scope {
                                params: &m.params,
                                prev: None,
                                round: None,
                                matrix: Some(&combo),
                                uses: None,
                            };
                            let name = match &g.name {
                                Some(template) => {
                                    let mut errs = Vec::new();
                                    let v = interpolate(
                                        &Value::String(template.clone()),
                                        &scope,
                                        &join(&g.path, "name"),
                                        false,
                                        &mut errs,
                                    );
                                    for e in errs {
                                        c.at(&e.path, Some(&g.id), e.message);
                                    }
                                    match v {
                                        Value::String(s) if valid_id(&s) => s,
                                        other => {
                                            let text = inline(&other);
                                            c.at(&join(&g.path, "name"), Some(&g.id), format!("matrix copy name `{text}` must match [a-z0-9_-]+"));
                                            continue;
                                        }
                                    }
                                }
                                None => default_name(&combo),
                            };
                            let prefix = format!("{}.{}", g.id, name);
                            for s in &g.body {
                                let id = format!("{prefix}.{}", s.id);
                                let bind = sibling_binder(&prefix, &g.body);
                                out.push(flatten(c, s, &id, &scope, &bind));
                            }
                            copies.push(name);
                        }
                        if let Some(sel) = &g.select {
                            out.push(crate::select::best_stage(&g.id, sel, &copies));
                        }
                    }
                }
            }
        }
    }
    let mut first: HashMap<String, String> = HashMap::new();
    for s in &out {
        if let Some(other) = first.get(&s.id) {
            let line = c.src.spans.locate(other).line;
            c.at_key(
                &s.path,
                Some(&s.id),
                format!(
                    "duplicate stage id `{}` after expansion (first defined at line {line})",
                    s.id
                ),
            );
        } else {
            first.insert(s.id.clone(), s.path.clone());
        }
    }
    out
}

/// Inside a body, a bare id that names a sibling means the sibling in the same round or copy.
fn sibling_binder<'a>(prefix: &'a str, body: &'a [RawStage]) -> impl Fn(&str) -> String + 'a {
    move |r: &str| {
        if !r.contains('.') && body.iter().any(|s| s.id == r) {
            format!("{prefix}.{r}")
        } else {
            r.to_string()
        }
    }
}

/// Every combination of the matrix axes, first axis outermost, in declaration order.
fn combinations(axes: &[(String, Vec<Value>)]) -> Vec<BTreeMap<String, Value>> {
    let mut combos = vec![BTreeMap::new()];
    for (axis, values) in axes {
        let mut next = Vec::new();
        for combo in &combos {
            for v in values {
                let mut c = combo.clone();
                c.insert(axis.clone(), v.clone());
                next.push(c);
            }
        }
        combos = next;
    }
    combos
}

/// A copy's name without a `name` template: its values joined by `-`, made id-safe.
fn default_name(combo: &BTreeMap<String, Value>) -> String {
    let parts: Vec<String> = combo.values().map(inline).collect();
    parts
        .join("-")
        .to_ascii_lowercase()
        .chars()
        .map(|ch| {
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-' {
                ch
            } else {
                '_'
            }
        })
        .collect()
}

fn flatten(
    c: &mut Collector,
    s: &RawStage,
    id: &str,
    scope: &Scope,
    bind: &dyn Fn(&str) -> String,
) -> FlatStage {
    let recorded = Uses::default();
    let scope = &Scope {
        uses: Some(&recorded),
        ..*scope
    };
    let mut errs = Vec::new();
    let mut inputs = Vec::new();
    for (slot, reference) in &s.inputs {
        let path = join(&join(&s.path, "inputs"), slot);
        let is_expr = reference.contains("${");
        let v = interpolate(
            &Value::String(reference.clone()),
            scope,
            &path,
            false,
            &mut errs,
        );
        match v {
            Value::String(up) => {
                let stage = if is_expr { up } else { bind(&up) };
                inputs.push(FlatInput {
                    slot: slot.clone(),
                    stage,
                    path,
                });
            }
            other => c.at(
                &path,
                Some(id),
                format!(
                    "input `{slot}` must name a stage, but `{reference}` is {}",
                    inline(&other)
                ),
            ),
        }
    }
    let with = match &s.with {
        Some(w) => {
            let v = interpolate(w, scope, &join(&s.path, "with"), false, &mut errs);
            expect_map(c, id, &join(&s.path, "with"), "with", v, w)
        }
        None => Value::Object(Mapping::new()),
    };
    let resources = s.resources.as_ref().map(|r| {
        let v = interpolate(r, scope, &join(&s.path, "resources"), false, &mut errs);
        expect_map(c, id, &join(&s.path, "resources"), "resources", v, r)
    });
    // A kind with outer fields (`kind: command`) decodes from them, gathered into one map.
    let takes_outer = c
        .registry
        .is_some_and(|r| !r.outer_fields(&s.kind).is_empty());
    let with = if takes_outer {
        let mut m = Mapping::new();
        for (f, raw) in &s.outer {
            let at = join(&s.path, f.name);
            let v = match f.shape {
                OuterShape::Shell => interpolate(raw, scope, &at, true, &mut errs),
                OuterShape::Paths => interpolate(raw, scope, &at, false, &mut errs),
                OuterShape::Env => {
                    let env = interpolate(raw, scope, &at, true, &mut errs);
                    let env = expect_map(c, id, &at, f.name, env, raw);
                    stringify_env(c, id, &at, env)
                }
            };
            m.insert(f.name.to_string(), v);
        }
        Value::Object(m)
    } else {
        with
    };
    let unresolved = !errs.is_empty();
    for e in errs {
        c.at(&e.path, Some(id), e.message);
    }
    // The fields that used each value, relative to the stage (`cmd`, `with.lr`).
    let prefix = format!("{}.", s.path);
    let uses = recorded
        .into_inner()
        .into_iter()
        .map(|(expr, mut u)| {
            for p in &mut u.paths {
                if let Some(rest) = p.strip_prefix(&prefix) {
                    *p = rest.to_string();
                }
            }
            (expr, u)
        })
        .collect();
    FlatStage {
        id: id.to_string(),
        path: s.path.clone(),
        kind: s.kind.clone(),
        inputs,
        with,
        resources,
        cache: s.cache,
        unresolved,
        uses,
    }
}

/// A field that must be a map once references are resolved (`with: ${params.distill}`). An
/// unresolved reference was already reported, so it is not reported twice.
fn expect_map(c: &mut Collector, id: &str, path: &str, name: &str, v: Value, raw: &Value) -> Value {
    match v {
        Value::Object(_) => v,
        Value::Null => Value::Object(Mapping::new()),
        ref other if other == raw => Value::Object(Mapping::new()),
        other => {
            let what = match other {
                Value::String(_) => "a string",
                Value::Array(_) => "a list",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "not a map",
            };
            c.at(
                path,
                Some(id),
                format!("`{name}` must be a map, but its reference gives {what}"),
            );
            Value::Object(Mapping::new())
        }
    }
}

/// Environment values may be written as numbers or booleans; the process sees strings.
fn stringify_env(c: &mut Collector, id: &str, path: &str, env: Value) -> Value {
    let Value::Object(m) = env else { return env };
    let mut out = Mapping::new();
    for (k, v) in m {
        let name = k;
        if name.starts_with("POLLARD_") {
            // pollard sets these (POLLARD_OUT, POLLARD_IN_<SLOT>, ...); overriding one would
            // send the stage's output outside its folder.
            c.at_key(
                &join(path, &name),
                Some(id),
                format!(
                    "env `{name}`: names starting with `POLLARD_` are set by pollard for every \
                     command (POLLARD_OUT, POLLARD_IN_<SLOT>); choose another name"
                ),
            );
            continue;
        }
        let text = match &v {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => inline(&v),
            _ => {
                c.at(
                    &join(path, &name),
                    Some(id),
                    format!("env `{name}` must be a string, number or boolean"),
                );
                continue;
            }
        };
        out.insert(name, Value::String(text));
    }
    Value::Object(out)
}
