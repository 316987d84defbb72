//! Manifest text -> [`RawManifest`]: the YAML read into stages and groups with every field
//! checked for shape (unknown fields, wrong types, bad ids), all problems collected as
//! diagnostics with `file:line:col`. Nothing is interpolated or looked up here (see expand.rs).

use std::path::{Path, PathBuf};

use crate::yaml::{Mapping, Value};

use crate::diag::{Diagnostic, Diagnostics};
use crate::registry::closest;
use crate::span::{Pos, SpanMap};
use crate::yaml::YamlError;

/// A manifest file's text and where its values are.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as the user gave it (used in messages).
    pub file: String,
    /// The manifest's folder (absolute): commands run here, `deps` are relative to it.
    pub dir: PathBuf,
    pub text: String,
    /// Shared with the sealed spec, which keeps it for errors found while planning.
    pub spans: std::sync::Arc<SpanMap>,
    /// The YAML tree, parsed once with the positions above (overrides applied), or why it
    /// did not parse.
    pub tree: Result<Value, YamlError>,
    /// `-S PATH=VALUE` overrides applied to the tree before it is read (see overrides.rs).
    pub overrides: Vec<crate::overrides::Override>,
}

impl Source {
    pub fn new(file: impl Into<String>, dir: PathBuf, text: String) -> Source {
        let (tree, spans) = match crate::yaml::parse_with_spans(&text) {
            Ok((tree, spans)) => (Ok(tree), spans),
            Err(e) => (Err(e), SpanMap::default()),
        };
        Source {
            file: file.into(),
            dir,
            text,
            spans: std::sync::Arc::new(spans),
            tree,
            overrides: Vec::new(),
        }
    }

    /// The same manifest with `-S` overrides. Each path is checked against the tree now, so a
    /// typo is a usage error before anything is planned. (A manifest that is not valid YAML is
    /// left for `parse` to report.)
    pub fn with_overrides(
        mut self,
        overrides: Vec<crate::overrides::Override>,
    ) -> Result<Source, Vec<String>> {
        if let Ok(root) = &mut self.tree {
            crate::overrides::apply(root, &overrides)?;
        }
        self.overrides = overrides;
        Ok(self)
    }

    /// Reads a manifest file. The error is the io error with the path.
    pub fn read(path: &Path) -> std::io::Result<Source> {
        let text = std::fs::read_to_string(path)?;
        let abs = std::path::absolute(path)?;
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        Ok(Source::new(path.display().to_string(), dir, text))
    }
}

/// Collects diagnostics for one source.
pub struct Collector<'a> {
    pub src: &'a Source,
    pub diags: Diagnostics,
    /// The kinds, for the fields each takes beside `with` (none: only the common fields).
    pub registry: Option<&'a crate::registry::Registry>,
}

impl<'a> Collector<'a> {
    pub fn new(src: &'a Source) -> Self {
        Collector {
            src,
            diags: Diagnostics::default(),
            registry: None,
        }
    }

    pub fn with_registry(mut self, registry: &'a crate::registry::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Every field a stage may have: the common ones, then each kind's outer fields.
    fn stage_fields(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = STAGE_FIELDS.to_vec();
        if let Some(r) = self.registry {
            for kind in r.kinds() {
                for f in r.outer_fields(kind) {
                    if !all.contains(&f.name) {
                        all.push(f.name);
                    }
                }
            }
        }
        all
    }

    pub fn at_pos(&mut self, pos: Pos, stage: Option<&str>, message: impl Into<String>) {
        self.diags.0.push(Diagnostic {
            file: self.src.file.clone(),
            line: pos.line,
            col: pos.col,
            stage: stage.map(str::to_string),
            message: message.into(),
        });
    }

    /// A problem with the value at `path`.
    pub fn at(&mut self, path: &str, stage: Option<&str>, message: impl Into<String>) {
        let pos = self.src.spans.locate(path);
        self.at_pos(pos, stage, message);
    }

    /// A problem with the key at `path` (unknown fields).
    pub fn at_key(&mut self, path: &str, stage: Option<&str>, message: impl Into<String>) {
        let pos = self.src.spans.locate_key(path);
        self.at_pos(pos, stage, message);
    }
}

/// The manifest as written: stages and groups in file order.
#[derive(Debug, Clone)]
pub struct RawManifest {
    pub pipeline: String,
    pub description: Option<String>,
    pub params: Value,
    pub entries: Vec<RawEntry>,
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per manifest
pub enum RawEntry {
    Stage(RawStage),
    Group(RawGroup),
}

/// One stage as written (top level or inside a group body).
#[derive(Debug, Clone)]
pub struct RawStage {
    /// The id as written (local to its group body when inside one).
    pub id: String,
    /// Span path of the stage's mapping, e.g. `stages.shrink.stages.score`.
    pub path: String,
    pub kind: String,
    /// slot -> upstream reference as written (may be `${prev}`), in file order.
    pub inputs: Vec<(String, String)>,
    pub with: Option<Value>,
    pub resources: Option<Value>,
    pub cache: bool,
    /// The kind's outer fields as written (shape-checked), in the kind's order.
    pub outer: Vec<(crate::stage::OuterField, Value)>,
}

#[derive(Debug, Clone)]
pub struct RawGroup {
    pub id: String,
    pub path: String,
    pub shape: GroupShape,
    /// The `name` template of a matrix copy.
    pub name: Option<String>,
    pub body: Vec<RawStage>,
    /// A matrix group's choice (`select:`), adding `<group>.best`.
    pub select: Option<crate::select::Select>,
}

#[derive(Debug, Clone)]
pub enum GroupShape {
    Repeat {
        from: String,
        rounds: Vec<Value>,
        result: String,
    },
    Matrix {
        axes: Vec<(String, Vec<Value>)>,
    },
}

// `executor` is read by `executor::config` (where stages run is not part of any key).
const TOP_FIELDS: &[&str] = &["pipeline", "description", "params", "stages", "executor"];
/// The fields every stage may have; a kind adds its outer fields (`cmd`, `deps`, `env` for
/// `kind: command`, see [`crate::stage::OuterField`]).
pub const STAGE_FIELDS: &[&str] = &["kind", "inputs", "with", "resources", "cache"];
pub const GROUP_FIELDS: &[&str] = &["repeat", "matrix", "search", "name", "select", "stages"];
pub const REPEAT_FIELDS: &[&str] = &["from", "rounds", "result"];

/// Stage ids (and group and round names) match `[a-z0-9_-]+`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// "`a`, `b` and `c`".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// An outer field's value when it has the field's shape (a single path becomes a list);
/// otherwise says what was found.
fn outer_value(
    c: &mut Collector,
    path: &str,
    stage: Option<&str>,
    f: crate::stage::OuterField,
    v: Option<&Value>,
) -> Option<Value> {
    use crate::stage::OuterShape;
    let at = join(path, f.name);
    let name = f.name;
    match (f.shape, v?) {
        (_, Value::Null) if f.shape != OuterShape::Shell => None,
        (OuterShape::Shell, v @ Value::String(_)) => Some(v.clone()),
        (OuterShape::Shell, other) => {
            c.at(
                &at,
                stage,
                format!("`{name}` must be a string, found {}", type_name(other)),
            );
            None
        }
        (OuterShape::Paths, Value::String(s)) => Some(Value::Array(vec![Value::String(s.clone())])),
        (OuterShape::Paths, v @ Value::Array(_)) => Some(v.clone()),
        (OuterShape::Paths, other) => {
            c.at(
                &at,
                stage,
                format!(
                    "`{name}` must be a list of paths, found {}",
                    type_name(other)
                ),
            );
            None
        }
        (OuterShape::Env, v @ Value::Object(_)) => Some(v.clone()),
        // A whole-value reference (`env: ${params.env}`) becomes a map when expanded.
        (OuterShape::Env, v @ Value::String(s)) if s.contains("${") => Some(v.clone()),
        (OuterShape::Env, other) => {
            c.at(
                &at,
                stage,
                format!("`{name}` must be a map, found {}", type_name(other)),
            );
            None
        }
    }
}

fn unknown_field(
    c: &mut Collector,
    path: &str,
    stage: Option<&str>,
    key: &str,
    allowed: &[&str],
    what: &str,
) {
    let hint = closest(key, allowed.iter().copied())
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    c.at_key(
        &join(path, key),
        stage,
        format!(
            "unknown field `{key}` in {what} (expected one of {}){hint}",
            allowed.join(", ")
        ),
    );
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn as_str(
    c: &mut Collector,
    path: &str,
    stage: Option<&str>,
    v: &Value,
    what: &str,
) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        other => {
            c.at(
                path,
                stage,
                format!("{what} must be a string, found {}", type_name(other)),
            );
            None
        }
    }
}

/// Parses the manifest text. Returns None only when the YAML itself does not parse (the
/// syntax error is then the one diagnostic); shape errors are collected and parsing goes on.
pub fn parse(c: &mut Collector) -> Option<RawManifest> {
    let root: &Value = match &c.src.tree {
        // Overrides were applied by `Source::with_overrides`.
        Ok(v) => v,
        Err(e) if e.too_deep => {
            c.at_pos(
                e.pos,
                None,
                format!(
                    "maps and lists nest deeper than {} levels here; a manifest is limited to {} \
                     (recipes need about six)",
                    crate::yaml::MAX_DEPTH,
                    crate::yaml::MAX_DEPTH
                ),
            );
            return None;
        }
        Err(e) => {
            c.at_pos(e.pos, None, format!("YAML syntax error: {}", e.message));
            return None;
        }
    };
    let Value::Object(top) = root else {
        c.at_pos(
            Pos { line: 1, col: 1 },
            None,
            format!(
                "a manifest must be a map with `pipeline` and `stages`, found {}",
                type_name(root)
            ),
        );
        return None;
    };
    for key in top.keys() {
        let k = key.clone();
        if !TOP_FIELDS.contains(&k.as_str()) {
            unknown_field(c, "", None, &k, TOP_FIELDS, "the manifest");
        }
    }
    let pipeline = match top.get("pipeline") {
        Some(v) => match as_str(c, "pipeline", None, v, "`pipeline`") {
            Some(s) if valid_id(&s) => s,
            Some(s) => {
                c.at(
                    "pipeline",
                    None,
                    format!("pipeline name `{s}` must match [a-z0-9_-]+"),
                );
                s
            }
            None => String::new(),
        },
        None => {
            c.at_pos(
                Pos { line: 1, col: 1 },
                None,
                "missing required field `pipeline` (the recipe's name)",
            );
            String::new()
        }
    };
    let description = top
        .get("description")
        .and_then(|v| as_str(c, "description", None, v, "`description`"));
    let params = match top.get("params") {
        None | Some(Value::Null) => Value::Object(Mapping::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            c.at(
                "params",
                None,
                format!("`params` must be a map, found {}", type_name(other)),
            );
            Value::Object(Mapping::new())
        }
    };
    let mut entries = Vec::new();
    match top.get("stages") {
        Some(Value::Object(stages)) => {
            if stages.is_empty() {
                c.at(
                    "stages",
                    None,
                    "`stages` is empty: a pipeline needs at least one stage",
                );
            }
            for (k, v) in stages {
                let id = k.clone();
                let path = join("stages", &id);
                if !valid_id(&id) {
                    c.at_key(
                        &path,
                        None,
                        format!("stage id `{id}` must match [a-z0-9_-]+"),
                    );
                    continue;
                }
                if let Some(entry) = parse_entry(c, &id, &path, v, &params) {
                    entries.push(entry);
                }
            }
        }
        Some(other) => c.at(
            "stages",
            None,
            format!(
                "`stages` must be a map of stage id -> stage, found {}",
                type_name(other)
            ),
        ),
        None => c.at_pos(
            Pos { line: 1, col: 1 },
            None,
            "missing required field `stages`",
        ),
    }
    Some(RawManifest {
        pipeline,
        description,
        params,
        entries,
    })
}

fn parse_entry(
    c: &mut Collector,
    id: &str,
    path: &str,
    v: &Value,
    params: &Value,
) -> Option<RawEntry> {
    let Value::Object(m) = v else {
        c.at(
            path,
            Some(id),
            format!(
                "a stage must be a map with at least `kind`, found {}",
                type_name(v)
            ),
        );
        return None;
    };
    if m.contains_key("repeat") || m.contains_key("matrix") || m.contains_key("stages") {
        parse_group(c, id, path, m, params).map(RawEntry::Group)
    } else {
        parse_stage(c, id, id, path, m).map(RawEntry::Stage)
    }
}

/// `display` is the id used in messages (the group-qualified id inside a body).
fn parse_stage(
    c: &mut Collector,
    id: &str,
    display: &str,
    path: &str,
    m: &Mapping,
) -> Option<RawStage> {
    let stage = Some(display);
    let fields = c.stage_fields();
    for key in m.keys() {
        let k = key.clone();
        if !fields.contains(&k.as_str()) {
            unknown_field(c, path, stage, &k, &fields, "a stage");
        }
    }
    let kind = match m.get("kind") {
        Some(v) => match as_str(c, &join(path, "kind"), stage, v, "`kind`") {
            Some(k) if k.trim().is_empty() => {
                c.at(
                    &join(path, "kind"),
                    stage,
                    "`kind` is empty: every stage names its kind (e.g. `kind: train`)",
                );
                String::new()
            }
            Some(k) => k,
            None => String::new(),
        },
        None => {
            c.at_key(path, stage, "missing required field `kind`");
            String::new()
        }
    };
    let mut inputs = Vec::new();
    match m.get("inputs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(im)) => {
            for (slot, up) in im {
                let slot = slot.clone();
                let p = join(&join(path, "inputs"), &slot);
                if let Some(up) = as_str(c, &p, stage, up, &format!("input `{slot}`")) {
                    inputs.push((slot, up));
                }
            }
        }
        Some(other) => c.at(
            &join(path, "inputs"),
            stage,
            format!(
                "`inputs` must be a map of slot -> stage id, found {}",
                type_name(other)
            ),
        ),
    }
    let map_field = |c: &mut Collector, name: &str| -> Option<Value> {
        match m.get(name) {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            // A whole-value reference (`with: ${params.distill}`) becomes a map when expanded.
            Some(v @ Value::String(s)) if s.contains("${") => Some(v.clone()),
            Some(other) => {
                c.at(
                    &join(path, name),
                    stage,
                    format!("`{name}` must be a map, found {}", type_name(other)),
                );
                None
            }
        }
    };
    let with = map_field(c, "with");
    let resources = map_field(c, "resources");
    let cache = match m.get("cache") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            c.at(
                &join(path, "cache"),
                stage,
                format!("`cache` must be true or false, found {}", type_name(other)),
            );
            true
        }
    };
    let outer_fields = c.registry.map_or(&[][..], |r| r.outer_fields(&kind));
    let mut outer = Vec::new();
    for f in outer_fields {
        if let Some(v) = outer_value(c, path, stage, *f, m.get(f.name)) {
            outer.push((*f, v));
        }
    }
    if !outer_fields.is_empty() {
        if let Some(f) = outer_fields
            .iter()
            .find(|f| f.required && !m.contains_key(f.name))
        {
            c.at_key(
                path,
                stage,
                format!("a `kind: {kind}` stage needs `{}`", f.name),
            );
        }
        if with.is_some() {
            let names: Vec<String> = outer_fields
                .iter()
                .map(|f| format!("`{}`", f.name))
                .collect();
            c.at_key(
                &join(path, "with"),
                stage,
                format!(
                    "`kind: {kind}` takes {} beside `with`, not `with`",
                    and_list(&names)
                ),
            );
        }
    }
    if let (Some(r), false) = (c.registry, kind.is_empty()) {
        for key in m.keys() {
            let k = key.clone();
            if STAGE_FIELDS.contains(&k.as_str()) || outer_fields.iter().any(|f| f.name == k) {
                continue;
            }
            let owners = r.kinds_with_outer(&k);
            if !owners.is_empty() {
                let owners: Vec<String> = owners.iter().map(|o| format!("`kind: {o}`")).collect();
                c.at_key(
                    &join(path, &k),
                    stage,
                    format!(
                        "`{k}` is only for {} stages (this one is `kind: {kind}`)",
                        owners.join(" or ")
                    ),
                );
            }
        }
    }
    Some(RawStage {
        id: id.to_string(),
        path: path.to_string(),
        kind,
        inputs,
        with,
        resources,
        cache,
        outer,
    })
}

fn parse_group(
    c: &mut Collector,
    id: &str,
    path: &str,
    m: &Mapping,
    params: &Value,
) -> Option<RawGroup> {
    let stage = Some(id);
    for key in m.keys() {
        let k = key.clone();
        if !GROUP_FIELDS.contains(&k.as_str()) {
            unknown_field(
                c,
                path,
                stage,
                &k,
                GROUP_FIELDS,
                "a group (a group has `repeat` or `matrix`, and `stages`)",
            );
        }
    }
    let shape = match (m.get("repeat"), m.get("matrix").or(m.get("search"))) {
        (None, Some(_)) if m.contains_key("matrix") && m.contains_key("search") => {
            c.at_key(
                &join(path, "search"),
                stage,
                "a group has either `matrix` or `search` (which fills the matrix), not both",
            );
            return None;
        }
        (None, Some(sv)) if m.contains_key("search") => {
            crate::search::parse_shape(c, id, &join(path, "search"), sv, params)?
        }
        (Some(_), Some(_)) => {
            c.at_key(
                &join(path, "matrix"),
                stage,
                "a group has either `repeat` or `matrix`, not both",
            );
            return None;
        }
        (None, None) => {
            c.at_key(
                path,
                stage,
                "a group needs `repeat` or `matrix` beside `stages`",
            );
            return None;
        }
        (Some(r), None) => parse_repeat(c, id, &join(path, "repeat"), r)?,
        (None, Some(mx)) => parse_matrix(c, id, &join(path, "matrix"), mx)?,
    };
    let name = m
        .get("name")
        .and_then(|v| as_str(c, &join(path, "name"), stage, v, "`name`"))
        .or_else(|| {
            m.contains_key("search")
                .then(|| crate::search::name_template(&shape))
        });
    if name.is_some() && matches!(shape, GroupShape::Repeat { .. }) {
        c.at_key(
            &join(path, "name"),
            stage,
            "`name` names matrix copies; a repeat round is named by its `name` field",
        );
    }
    let body_path = join(path, "stages");
    let mut body = Vec::new();
    match m.get("stages") {
        Some(Value::Object(stages)) if !stages.is_empty() => {
            for (k, v) in stages {
                let local = k.clone();
                let p = join(&body_path, &local);
                let display = format!("{id}.{local}");
                if !valid_id(&local) {
                    c.at_key(
                        &p,
                        stage,
                        format!("stage id `{local}` must match [a-z0-9_-]+"),
                    );
                    continue;
                }
                match v {
                    Value::Object(sm) if sm.contains_key("repeat") || sm.contains_key("matrix") => {
                        c.at_key(&p, Some(&display), "groups cannot be nested");
                    }
                    Value::Object(sm) => {
                        if let Some(s) = parse_stage(c, &local, &display, &p, sm) {
                            body.push(s);
                        }
                    }
                    other => c.at(
                        &p,
                        Some(&display),
                        format!(
                            "a stage must be a map with at least `kind`, found {}",
                            type_name(other)
                        ),
                    ),
                }
            }
        }
        Some(_) => c.at(
            &body_path,
            stage,
            "a group's `stages` must be a non-empty map of stage id -> stage",
        ),
        None => c.at_key(path, stage, "a group needs `stages` (its body)"),
    }
    if let GroupShape::Repeat { result, .. } = &shape {
        if !result.is_empty() && !body.iter().any(|s| &s.id == result) {
            let hint = closest(result, body.iter().map(|s| s.id.as_str()))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            c.at(
                &join(path, "repeat.result"),
                stage,
                format!("`result: {result}` is not a stage of this group's body{hint}"),
            );
        }
    }
    let select = match (m.get("select"), &shape) {
        (Some(v), GroupShape::Matrix { .. }) => {
            crate::select::parse(c, id, &join(path, "select"), v, &body)
        }
        (Some(_), GroupShape::Repeat { .. }) => {
            c.at_key(
                &join(path, "select"),
                stage,
                "`select` chooses among a `matrix` (or `search`) group's copies; a `repeat` group has its `result`",
            );
            None
        }
        (None, _) => None,
    };
    Some(RawGroup {
        id: id.to_string(),
        path: path.to_string(),
        shape,
        name,
        body,
        select,
    })
}

fn parse_repeat(c: &mut Collector, id: &str, path: &str, v: &Value) -> Option<GroupShape> {
    let stage = Some(id);
    let Value::Object(m) = v else {
        c.at(
            path,
            stage,
            format!(
                "`repeat` must be a map with `from`, `rounds` and `result`, found {}",
                type_name(v)
            ),
        );
        return None;
    };
    for key in m.keys() {
        let k = key.clone();
        if !REPEAT_FIELDS.contains(&k.as_str()) {
            unknown_field(c, path, stage, &k, REPEAT_FIELDS, "`repeat`");
        }
    }
    let mut req = |name: &str| -> String {
        match m.get(name) {
            Some(v) => as_str(c, &join(path, name), stage, v, &format!("`repeat.{name}`"))
                .unwrap_or_default(),
            None => {
                c.at_key(path, stage, format!("`repeat` needs `{name}`"));
                String::new()
            }
        }
    };
    let from = req("from");
    let result = req("result");
    let rounds_path = join(path, "rounds");
    let mut rounds = Vec::new();
    match m.get("rounds") {
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut seen = std::collections::BTreeSet::new();
            for (i, r) in items.iter().enumerate() {
                let rp = join(&rounds_path, &i.to_string());
                match r {
                    Value::Object(rm) => match rm.get("name") {
                        Some(Value::String(n)) if valid_id(n) => {
                            if !seen.insert(n.clone()) {
                                c.at(
                                    &join(&rp, "name"),
                                    stage,
                                    format!("two rounds are named `{n}`"),
                                );
                            }
                            rounds.push(r.clone());
                        }
                        Some(Value::String(n)) => c.at(
                            &join(&rp, "name"),
                            stage,
                            format!("round name `{n}` must match [a-z0-9_-]+"),
                        ),
                        Some(other) => c.at(
                            &join(&rp, "name"),
                            stage,
                            format!(
                                "a round's `name` must be a string, found {}",
                                type_name(other)
                            ),
                        ),
                        None => c.at(
                            &rp,
                            stage,
                            "each round needs a `name` (it becomes part of the stage ids)",
                        ),
                    },
                    other => c.at(
                        &rp,
                        stage,
                        format!(
                            "a round must be a map with a `name`, found {}",
                            type_name(other)
                        ),
                    ),
                }
            }
        }
        Some(_) => c.at(
            &rounds_path,
            stage,
            "`repeat.rounds` must be a non-empty list of rounds",
        ),
        None => c.at_key(path, stage, "`repeat` needs `rounds`"),
    }
    Some(GroupShape::Repeat {
        from,
        rounds,
        result,
    })
}

fn parse_matrix(c: &mut Collector, id: &str, path: &str, v: &Value) -> Option<GroupShape> {
    let stage = Some(id);
    let Value::Object(m) = v else {
        c.at(
            path,
            stage,
            format!(
                "`matrix` must be a map of axis -> list of values, found {}",
                type_name(v)
            ),
        );
        return None;
    };
    let mut axes = Vec::new();
    for (k, vals) in m {
        let axis = k.clone();
        match vals {
            Value::Array(items) if !items.is_empty() => axes.push((axis, items.clone())),
            _ => c.at(
                &join(path, &axis),
                stage,
                format!("matrix axis `{axis}` must be a non-empty list of values"),
            ),
        }
    }
    if axes.is_empty() {
        c.at(path, stage, "`matrix` needs at least one axis");
        return None;
    }
    Some(GroupShape::Matrix { axes })
}
