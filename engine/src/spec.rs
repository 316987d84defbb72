//! Validation and sealing: flat stages -> [`PipelineSpec`]. Each stage's kind is looked up in the
//! registry, its `with` decoded into the kind's typed params and checked, its inputs bound to
//! existing stages through slots the kind takes, its `resources` read, and the graph checked for
//! cycles. Every problem is reported at once; a `PipelineSpec` is only built when there are none.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::diag::Diagnostics;
use crate::expand::{expand, FlatStage};
use crate::graph::Graph;
use crate::manifest::{parse, Collector, Source};
use crate::quantity::Bytes;
use crate::registry::{closest, DecodedParams, ErasedStage, Registry};
use crate::span::{Pos, SpanMap};
use crate::stage::Slots;
use crate::stage_id::StageId;

/// Resource fields a manifest may set on a stage; each replaces the kind's estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceOverride {
    pub gpus: Option<u32>,
    pub gpu_memory: Option<Bytes>,
    pub cpus: Option<u32>,
    pub host_memory: Option<Bytes>,
}

/// One validated stage.
pub struct StageSpec {
    pub id: StageId,
    pub kind: String,
    pub stage: Arc<dyn ErasedStage>,
    pub params: DecodedParams,
    /// slot -> index of the upstream stage in [`PipelineSpec::stages`].
    pub inputs: BTreeMap<String, usize>,
    pub resources: ResourceOverride,
    pub cache: bool,
    /// Files or folders whose content enters the key, as the kind gave them.
    pub deps: Vec<PathBuf>,
    /// Where the stage is written.
    pub pos: Pos,
    /// Span path of the block its kind's fields are read from (`with`, or the stage itself for
    /// a command), so a planning-time refusal of a field points at the field.
    pub field_base: String,
    /// Whether those fields sit under `with` (messages then say `with.<field>`).
    pub fields_in_with: bool,
    /// The manifest values its fields used (`params.lr` -> 3e-4, used in `with.lr`), recorded
    /// in the lock so a stale reason can name the value the user edited.
    pub uses: BTreeMap<String, ValueUse>,
}

/// A manifest value a stage used, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueUse {
    pub value: serde_json::Value,
    /// Fields of the stage that used it (`cmd`, `with.target`).
    pub fields: Vec<String>,
}

/// A sealed pipeline: every stage valid, every input bound, acyclic.
pub struct PipelineSpec {
    pub name: String,
    pub description: Option<String>,
    /// The manifest path as given (messages) and its folder (absolute).
    pub file: String,
    pub dir: PathBuf,
    pub stages: Vec<StageSpec>,
    /// Topological order (indices into `stages`).
    pub order: Vec<usize>,
    pub graph: Graph,
    index: HashMap<String, usize>,
    /// Positions of the manifest's values, for errors found after validation (while planning).
    spans: Arc<SpanMap>,
}

impl PipelineSpec {
    /// Where field `field` (a dotted path inside the kind's fields, empty for the block itself)
    /// of stage `i` is written, or the nearest enclosing value that is.
    pub fn field_pos(&self, i: usize, field: &str) -> Pos {
        let base = &self.stages[i].field_base;
        if field.is_empty() {
            self.spans.locate(base)
        } else {
            self.spans.locate(&format!("{base}.{field}"))
        }
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.stages.iter().map(|s| s.id.as_str())
    }

    /// Resolves stage ids given on the command line; unknown ids are an error naming the
    /// closest known one.
    pub fn resolve_ids(&self, ids: &[String]) -> Result<Vec<usize>, String> {
        ids.iter()
            .map(|id| {
                self.index_of(id).ok_or_else(|| {
                    let hint = closest(id, self.ids())
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    format!("no stage `{id}` in {}{hint}", self.file)
                })
            })
            .collect()
    }
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// Parses, expands and validates a manifest.
pub fn load(src: &Source, registry: &Registry) -> Result<PipelineSpec, Diagnostics> {
    let mut c = Collector::new(src).with_registry(registry);
    let Some(raw) = parse(&mut c) else {
        return Err(c.diags);
    };
    let flat = expand(&mut c, &raw);
    let index: HashMap<String, usize> = flat
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    let mut stages = Vec::new();
    for s in &flat {
        if let Some(spec) = check_stage(&mut c, registry, s, &flat, &index) {
            stages.push(spec);
        }
    }
    // The graph over every input that names a stage, so a cycle is reported with the rest.
    let graph = Graph::new(
        flat.iter()
            .map(|s| {
                s.inputs
                    .iter()
                    .filter_map(|i| index.get(&i.stage).copied())
                    .collect()
            })
            .collect(),
    );
    let order = match graph.topo_order() {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<&str> = cycle.iter().map(|&i| flat[i].id.as_str()).collect();
            let first = &flat[cycle[0]];
            let pos = c.src.spans.locate_key(&first.path);
            c.at_pos(
                pos,
                Some(&first.id),
                format!("the inputs form a cycle: {}", names.join(" -> ")),
            );
            Vec::new()
        }
    };
    if c.diags.is_empty() && stages.len() != flat.len() {
        // A stage was dropped without a message: refuse rather than index past the end later.
        for s in flat
            .iter()
            .filter(|f| !stages.iter().any(|st| st.id == f.id))
        {
            c.at_key(
                &s.path,
                Some(&s.id),
                format!("stage `{}` is not valid", s.id),
            );
        }
    }
    if !c.diags.is_empty() {
        c.diags.sort();
        return Err(c.diags);
    }
    // No errors: every flat stage became a StageSpec, so indices line up with `flat`.
    Ok(PipelineSpec {
        name: raw.pipeline,
        description: raw.description,
        file: src.file.clone(),
        dir: src.dir.clone(),
        stages,
        order,
        graph,
        index,
        spans: src.spans.clone(),
    })
}

fn check_stage(
    c: &mut Collector,
    registry: &Registry,
    s: &FlatStage,
    flat: &[FlatStage],
    index: &HashMap<String, usize>,
) -> Option<StageSpec> {
    let id = Some(s.id.as_str());
    let pos = c.src.spans.locate_key(&s.path);
    let mut inputs = BTreeMap::new();
    for input in &s.inputs {
        match index.get(&input.stage) {
            Some(&i) => {
                inputs.insert(input.slot.clone(), i);
            }
            None => {
                let hint = closest(&input.stage, flat.iter().map(|f| f.id.as_str()))
                    .map(|h| format!("; did you mean `{h}`?"))
                    .unwrap_or_default();
                c.at(
                    &input.path,
                    id,
                    format!(
                        "input `{}` names unknown stage `{}`{hint}",
                        input.slot, input.stage
                    ),
                );
            }
        }
    }
    let resources = match &s.resources {
        None => ResourceOverride::default(),
        Some(v) => match serde_path_to_error::deserialize::<_, ResourceOverride>(v.clone()) {
            Ok(r) => r,
            Err(e) => {
                let field = e.path().to_string();
                let path = if field == "." {
                    join(&s.path, "resources")
                } else {
                    join(&join(&s.path, "resources"), &field)
                };
                c.at(
                    &path,
                    id,
                    format!(
                        "resources: {}",
                        crate::registry::did_you_mean(&e.inner().to_string())
                    ),
                );
                ResourceOverride::default()
            }
        },
    };
    if s.kind.is_empty() {
        return None; // already reported as missing
    }
    let Some(kind) = registry.get(&s.kind) else {
        let known: Vec<&str> = registry.kinds().collect();
        let hint = closest(&s.kind, known.iter().copied())
            .map(|h| format!("; did you mean `{h}`?"))
            .unwrap_or_default();
        c.at(
            &join(&s.path, "kind"),
            id,
            format!(
                "unknown stage kind `{}` (known kinds: {}){hint}",
                s.kind,
                known.join(", ")
            ),
        );
        return None;
    };
    if let (Some(want), Some((max, why))) = (resources.gpus, registry.gpu_limit(&s.kind)) {
        if want > max {
            c.at(
                &join(&join(&s.path, "resources"), "gpus"),
                id,
                format!(
                    "resources.gpus: {want} asked, but a `{}` stage uses at most {max}: {why}",
                    s.kind
                ),
            );
        }
    }
    if let Slots::Fixed { required, optional } = kind.slots() {
        let takes: Vec<&str> = required.iter().chain(optional.iter()).copied().collect();
        for input in &s.inputs {
            if !takes.contains(&input.slot.as_str()) {
                let hint = closest(&input.slot, takes.iter().copied())
                    .map(|h| format!("; did you mean `{h}`?"))
                    .unwrap_or_default();
                let list = if takes.is_empty() {
                    "none".to_string()
                } else {
                    takes.join(", ")
                };
                c.at_key(
                    &input.path,
                    id,
                    format!(
                        "kind `{}` takes no input `{}` (its inputs: {list}){hint}",
                        s.kind, input.slot
                    ),
                );
            }
        }
        for req in required {
            if !s.inputs.iter().any(|i| i.slot == *req) {
                c.at_key(
                    &s.path,
                    id,
                    format!("kind `{}` needs input `{req}`", s.kind),
                );
            }
        }
    }
    if s.unresolved {
        return None; // its params hold an unresolved `${...}`, already reported
    }
    // A kind with outer fields decodes them from beside `with`; others from inside it.
    let outer = !kind.outer_fields().is_empty();
    let field_base = if outer {
        s.path.clone()
    } else {
        join(&s.path, "with")
    };
    let params = match kind.decode(&s.with) {
        Ok(p) => p,
        // A missing required outer field was reported while reading the stage.
        Err(e)
            if kind
                .outer_fields()
                .iter()
                .any(|f| f.required && e.message == format!("missing field `{}`", f.name)) =>
        {
            return None;
        }
        Err(e) => {
            let path = if e.field.is_empty() {
                field_base.clone()
            } else {
                join(&field_base, &e.field)
            };
            let label = if e.field.is_empty() || outer {
                String::new()
            } else {
                format!("with.{}: ", e.field)
            };
            if e.message.starts_with("unknown field") {
                c.at_key(&path, id, format!("{label}{}", e.message));
            } else {
                c.at(&path, id, format!("{label}{}", e.message));
            }
            return None;
        }
    };
    for e in kind.validate(&params) {
        let path = if e.field.is_empty() {
            field_base.clone()
        } else {
            join(&field_base, &e.field)
        };
        let label = if e.field.is_empty() {
            String::new()
        } else {
            format!("with.{}: ", e.field)
        };
        c.at(&path, id, format!("{label}{}", e.message));
    }
    let deps = kind.deps(&params);
    Some(StageSpec {
        id: s.id.clone().into(),
        kind: s.kind.clone(),
        stage: kind,
        params,
        inputs,
        resources,
        cache: s.cache,
        deps,
        pos,
        fields_in_with: field_base != s.path,
        field_base,
        uses: s
            .uses
            .iter()
            .map(|(expr, u)| {
                let value = serde_json::to_value(&u.value)
                    .unwrap_or_else(|_| serde_json::Value::String(format!("{:?}", u.value)));
                (
                    expr.clone(),
                    ValueUse {
                        value,
                        fields: u.paths.clone(),
                    },
                )
            })
            .collect(),
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
