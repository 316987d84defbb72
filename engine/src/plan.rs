//! Plan: per stage, its fingerprint (kind, kind version, typed params, input artifact ids, deps
//! digests), the cache key hashed from it, and whether the cache already holds a run under that
//! key. When it does not, the reasons say which part changed against the lock file, so `status`
//! can answer "why does this rerun". Keys depend on upstream *artifacts*, not upstream keys:
//! that gives early cutoff.

use crate::stage_id::StageId;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use pollard_cache::{ArtifactId, Cache, CacheKey, Digest, Health, RunRecord};
use serde::Serialize;
use serde_json::Value as Json;

use crate::canonical::canonical_json;
use crate::diag::{Diagnostic, Diagnostics};
use crate::error::EngineError;
use crate::lockfile::{LockEntry, LockFile};
use crate::resources::Inventory;
use crate::spec::{PipelineSpec, StageSpec};
use crate::stage::{ParamError, PlanInput, PlanInputs, Resources};

/// Bumped when the fingerprint's layout changes: every key changes with it.
pub const FINGERPRINT_FORMAT: u32 = 1;

/// The parts a key is hashed from, stored in run records and the lock file.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub kind: String,
    pub kind_version: u32,
    pub params: Json,
    pub inputs: BTreeMap<String, ArtifactId>,
    pub deps: BTreeMap<String, Digest>,
    /// The manifest values the params came from (for the lock; not hashed into the key).
    pub uses: BTreeMap<String, Json>,
}

impl Fingerprint {
    pub fn parts(&self) -> BTreeMap<String, Json> {
        let inputs: serde_json::Map<String, Json> = self
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.to_string())))
            .collect();
        let deps: serde_json::Map<String, Json> = self
            .deps
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.to_string())))
            .collect();
        BTreeMap::from([
            ("format".to_string(), Json::from(FINGERPRINT_FORMAT)),
            ("kind".to_string(), Json::String(self.kind.clone())),
            ("kind_version".to_string(), Json::from(self.kind_version)),
            ("params".to_string(), self.params.clone()),
            ("inputs".to_string(), Json::Object(inputs)),
            ("deps".to_string(), Json::Object(deps)),
        ])
    }

    pub fn key(&self) -> CacheKey {
        let obj: serde_json::Map<String, Json> = self.parts().into_iter().collect();
        let text = canonical_json(&Json::Object(obj));
        CacheKey::of(format!("pollard-stage-key\n{text}").as_bytes())
    }

    /// The lock entry for this fingerprint and its output.
    pub fn lock_entry(
        &self,
        key: &CacheKey,
        output: &ArtifactId,
        metrics: Option<Json>,
        devices: Vec<String>,
    ) -> LockEntry {
        LockEntry {
            kind: self.kind.clone(),
            kind_version: self.kind_version,
            key: *key,
            params: self.params.clone(),
            inputs: self.inputs.clone(),
            deps: self.deps.clone(),
            output: *output,
            metrics,
            devices,
            uses: self.uses.clone(),
        }
    }
}

/// Digests of a stage's deps (relative paths are relative to the manifest's folder), through
/// the cache's stat memo, so unchanged files cost a `stat`.
pub fn deps_digests(
    spec: &PipelineSpec,
    stage: &StageSpec,
    cache: &Cache,
) -> Result<BTreeMap<String, Digest>, EngineError> {
    let mut out = BTreeMap::new();
    for dep in &stage.deps {
        let abs = if dep.is_absolute() {
            dep.clone()
        } else {
            spec.dir.join(dep)
        };
        let digest = cache.hash_tree(&abs).map_err(|source| EngineError::Deps {
            stage: stage.id.to_string(),
            path: dep.display().to_string(),
            source: Box::new(source),
        })?;
        out.insert(dep.display().to_string(), digest);
    }
    Ok(out)
}

pub fn fingerprint(
    stage: &StageSpec,
    inputs: BTreeMap<String, ArtifactId>,
    deps: BTreeMap<String, Digest>,
) -> Fingerprint {
    Fingerprint {
        kind: stage.kind.clone(),
        kind_version: stage.stage.version(),
        params: stage.params.canonical.clone(),
        inputs,
        deps,
        uses: stage
            .uses
            .iter()
            .map(|(k, u)| (k.clone(), u.value.clone()))
            .collect(),
    }
}

/// The run record under `key` when its artifact is intact in the cache.
pub fn lookup(cache: &Cache, key: &CacheKey) -> Result<Lookup, EngineError> {
    let Some(rec) = cache.record(key)? else {
        return Ok(Lookup::Missing);
    };
    match cache.check_artifact(&rec.artifact)? {
        Health::Ok => Ok(Lookup::Hit(Box::new(rec))),
        Health::Missing => Ok(Lookup::Missing),
        Health::Damaged(problems) => Ok(Lookup::Damaged(
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

pub enum Lookup {
    Hit(Box<RunRecord>),
    Missing,
    Damaged(String),
}

/// Why a stage is stale.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    NeverRun,
    NotInCache {
        pinned: Option<ArtifactId>,
    },
    Damaged {
        detail: String,
    },
    Forced,
    CacheDisabled,
    /// A manifest value the stage uses changed (`params.lr`), with the fields that use it.
    Value {
        name: String,
        old: Option<Json>,
        new: Json,
        used_in: Vec<String>,
    },
    Param {
        field: String,
        old: Option<Json>,
        new: Option<Json>,
    },
    Input {
        slot: String,
        stage: StageId,
        old: Option<ArtifactId>,
        new: ArtifactId,
    },
    UpstreamStale {
        slot: String,
        stage: StageId,
    },
    Dep {
        path: String,
        old: Option<Digest>,
        new: Option<Digest>,
    },
    KindVersion {
        old: String,
        new: String,
    },
    Fingerprint,
    DepUnreadable {
        path: String,
        error: String,
    },
    /// An upstream stage cannot run, so neither can this one.
    UpstreamBlocked {
        slot: String,
        stage: StageId,
    },
    /// Said of a stage waiting on stale inputs whose own parts match the lock.
    Pinned {
        output: ArtifactId,
    },
}

fn show(v: &Option<Json>) -> String {
    match v {
        None => "(unset)".into(),
        Some(v) => {
            let text = canonical_json(v);
            if text.chars().count() > 60 {
                format!("{}...", text.chars().take(57).collect::<String>())
            } else {
                text
            }
        }
    }
}

/// Both sides of a change; long texts are cut to a window around where they first differ.
fn show_pair(old: &Option<Json>, new: &Option<Json>) -> (String, String) {
    let (a, b) = match (old, new) {
        (Some(a), Some(b)) => (canonical_json(a), canonical_json(b)),
        _ => return (show(old), show(new)),
    };
    if a.chars().count() <= 60 && b.chars().count() <= 60 {
        return (a, b);
    }
    let a_chars: Vec<char> = a.chars().collect();
    let b_chars: Vec<char> = b.chars().collect();
    let first = a_chars
        .iter()
        .zip(&b_chars)
        .take_while(|(x, y)| x == y)
        .count();
    let start = first.saturating_sub(20);
    let cut = |v: &[char]| {
        let end = (start + 50).min(v.len());
        let body: String = v[start.min(v.len())..end].iter().collect();
        format!(
            "{}{body}{}",
            if start > 0 { "..." } else { "" },
            if end < v.len() { "..." } else { "" }
        )
    };
    (cut(&a_chars), cut(&b_chars))
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run (not in the lock file)"),
            Reason::NotInCache { pinned: Some(p) } => {
                write!(f, "not in cache (the lock pins its output {})", p.short())
            }
            Reason::NotInCache { pinned: None } => write!(f, "not in cache"),
            Reason::Damaged { detail } => write!(f, "cached artifact is damaged: {detail}"),
            Reason::Forced => write!(f, "forced"),
            Reason::CacheDisabled => write!(f, "`cache: false`"),
            Reason::Value {
                name,
                old,
                new,
                used_in,
            } => {
                let (a, b) = show_pair(old, &Some(new.clone()));
                let fields: Vec<String> = used_in.iter().map(|f| format!("`{f}`")).collect();
                match old {
                    Some(_) => write!(f, "{name} changed: {a} -> {b}")?,
                    None => write!(f, "{name} is newly used: {b}")?,
                }
                write!(f, " (used in {})", fields.join(", "))
            }
            Reason::Param { field, old, new } => {
                let (a, b) = show_pair(old, new);
                write!(f, "param `{field}` changed: {a} -> {b}")
            }
            Reason::Input {
                slot,
                stage,
                old: Some(old),
                new,
            } => {
                write!(
                    f,
                    "input `{slot}` (stage `{stage}`) changed: {} -> {}",
                    old.short(),
                    new.short()
                )
            }
            Reason::Input {
                slot,
                stage,
                old: None,
                new,
            } => write!(
                f,
                "input `{slot}` (stage `{stage}`) is new: {}",
                new.short()
            ),
            Reason::UpstreamStale { slot, stage } => write!(
                f,
                "input `{slot}` will be rebuilt (stage `{stage}` is stale)"
            ),
            Reason::Dep {
                path,
                old: Some(_),
                new: Some(_),
            } => write!(f, "deps file `{path}` changed"),
            Reason::Dep {
                path, old: None, ..
            } => write!(f, "deps `{path}` added"),
            Reason::Dep {
                path, new: None, ..
            } => write!(f, "deps `{path}` removed"),
            Reason::KindVersion { old, new } => write!(f, "stage kind changed: {old} -> {new}"),
            Reason::Fingerprint => write!(f, "fingerprint changed"),
            Reason::DepUnreadable { path, error } => write!(
                f,
                "deps `{path}` cannot be read, so the stage cannot run: {error}"
            ),
            Reason::UpstreamBlocked { slot, stage } => write!(
                f,
                "input `{slot}` cannot be built (stage `{stage}` is blocked)"
            ),
            Reason::Pinned { output } => write!(
                f,
                "otherwise as locked (the lock pins its output {})",
                output.short()
            ),
        }
    }
}

/// Leaf-level differences between two JSON values, as (dotted field, old, new).
fn json_diff(prefix: &str, old: Option<&Json>, new: Option<&Json>, out: &mut Vec<Reason>) {
    match (old, new) {
        (Some(Json::Object(a)), Some(Json::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                json_diff(&p, a.get(k), b.get(k), out);
            }
        }
        (Some(a), Some(b)) if a == b => {}
        (None, None) => {}
        (a, b) => out.push(Reason::Param {
            field: if prefix.is_empty() {
                "(all)".into()
            } else {
                prefix.to_string()
            },
            old: a.cloned(),
            new: b.cloned(),
        }),
    }
}

/// Compares this stage's parts with what the lock says it last produced. `inputs` holds only
/// the inputs whose artifact is known.
pub fn diff_against_lock(
    entry: Option<&LockEntry>,
    stage: &StageSpec,
    params: &Json,
    inputs: &BTreeMap<String, ArtifactId>,
    deps: &BTreeMap<String, Digest>,
    key: Option<&CacheKey>,
) -> Vec<Reason> {
    let Some(e) = entry else {
        return vec![Reason::NeverRun];
    };
    if let Some(k) = key {
        if e.key == *k {
            return vec![Reason::NotInCache {
                pinned: Some(e.output),
            }];
        }
    }
    let mut out = Vec::new();
    let version = stage.stage.version();
    if e.kind != stage.kind || e.kind_version != version {
        out.push(Reason::KindVersion {
            old: format!("{} v{}", e.kind, e.kind_version),
            new: format!("{} v{version}", stage.kind),
        });
    }
    // The values the user edited first, then the expanded fields they changed. A lock entry
    // from before values were recorded has none: only the field diff can be said then.
    if !e.uses.is_empty() {
        for (name, u) in &stage.uses {
            match e.uses.get(name) {
                Some(old) if *old == u.value => {}
                old => out.push(Reason::Value {
                    name: name.clone(),
                    old: old.cloned(),
                    new: u.value.clone(),
                    used_in: u.fields.clone(),
                }),
            }
        }
    }
    json_diff("", Some(&e.params), Some(params), &mut out);
    for (slot, &up) in &stage.inputs {
        let _ = up;
        if let Some(&new) = inputs.get(slot) {
            match e.inputs.get(slot) {
                Some(&old) if old == new => {}
                old => out.push(Reason::Input {
                    slot: slot.clone(),
                    stage: StageId::default(),
                    old: old.copied(),
                    new,
                }),
            }
        }
    }
    for (path, new) in deps {
        match e.deps.get(path) {
            Some(old) if old == new => {}
            old => out.push(Reason::Dep {
                path: path.clone(),
                old: old.copied(),
                new: Some(*new),
            }),
        }
    }
    for (path, old) in &e.deps {
        if !deps.contains_key(path) {
            out.push(Reason::Dep {
                path: path.clone(),
                old: Some(*old),
                new: None,
            });
        }
    }
    if out.is_empty() && key.is_some() {
        out.push(Reason::Fingerprint);
    }
    out
}

/// One stage's status.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub stage: StageId,
    pub kind: String,
    pub up_to_date: bool,
    /// The key, when every input's artifact is known.
    pub key: Option<CacheKey>,
    /// The cached output, when up to date.
    pub artifact: Option<ArtifactId>,
    pub reasons: Vec<Reason>,
    /// For an up-to-date `select` stage, the candidate it chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice: Option<crate::select::Choice>,
}

/// Which stages a command is about.
#[derive(Debug, Clone)]
pub struct Selection {
    pub selected: Vec<bool>,
    pub forced: Vec<bool>,
}

impl Selection {
    pub fn all(spec: &PipelineSpec) -> Selection {
        let n = spec.stages.len();
        Selection {
            selected: vec![true; n],
            forced: vec![false; n],
        }
    }

    /// `targets` (empty: every stage) plus what they need; `force` ids or every stage.
    pub fn new(
        spec: &PipelineSpec,
        targets: &[String],
        force: &[String],
        force_all: bool,
    ) -> Result<Selection, EngineError> {
        let n = spec.stages.len();
        let selected = if targets.is_empty() {
            vec![true; n]
        } else {
            spec.graph
                .ancestors_of(&spec.resolve_ids(targets).map_err(EngineError::Usage)?)
        };
        let mut forced = vec![force_all; n];
        for i in spec.resolve_ids(force).map_err(EngineError::Usage)? {
            forced[i] = true;
        }
        Ok(Selection { selected, forced })
    }
}

/// Fills each stage's slot bindings for messages (`Reason::Input` carries the upstream id).
fn name_inputs(spec: &PipelineSpec, stage: &StageSpec, reasons: &mut [Reason]) {
    for r in reasons.iter_mut() {
        if let Reason::Input {
            slot, stage: up, ..
        } = r
        {
            if let Some(&i) = stage.inputs.get(slot) {
                *up = spec.stages[i].id.clone();
            }
        }
    }
}

/// A stage's request: the kind's estimate with the manifest's `resources` fields on top.
pub fn effective_resources(stage: &StageSpec, inputs: &PlanInputs) -> Result<Resources, String> {
    let mut r = stage
        .stage
        .resources(&stage.params, inputs)
        .map_err(|e| format!("cannot estimate resources: {e}"))?;
    let o = &stage.resources;
    if let Some(g) = o.gpus {
        r.gpus = g;
    }
    if let Some(m) = o.gpu_memory {
        r.gpu_memory = m.0;
    }
    if let Some(c) = o.cpus {
        r.cpus = c;
    }
    if let Some(h) = o.host_memory {
        r.host_memory = h.0;
    }
    Ok(r)
}

/// What planning knows about a stage's inputs: upstream descriptions, and the folders of
/// upstream artifacts already in the cache.
pub fn plan_inputs(
    spec: &PipelineSpec,
    stage: &StageSpec,
    descriptions: &[Option<Json>],
    paths: &BTreeMap<String, PathBuf>,
) -> PlanInputs {
    let mut p = PlanInputs {
        workdir: spec.dir.clone(),
        ..PlanInputs::default()
    };
    for (slot, &up) in &stage.inputs {
        p.slots.insert(
            slot.clone(),
            PlanInput {
                stage: spec.stages[up].id.clone(),
                description: descriptions[up].clone(),
                path: paths.get(slot).cloned(),
            },
        );
    }
    p
}

/// Why a stage cannot run however long one waits, found while planning: an impossible resource
/// request, or a field its kind refused against the upstream shapes (`describe`), e.g. a prune
/// target wider than the model it prunes.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The refused field, a dotted path inside the kind's fields (`target.hidden`), if one is.
    pub field: Option<String>,
    pub message: String,
}

impl Refusal {
    /// The refusal as a diagnostic at the field's (or else the stage's) place in the manifest.
    pub fn diagnostic(&self, spec: &PipelineSpec, i: usize) -> Diagnostic {
        let mut d = Diagnostic::at_stage(spec, i, self.message.clone());
        if let Some(field) = &self.field {
            let pos = spec.field_pos(i, field);
            (d.line, d.col) = (pos.line, pos.col);
        }
        d
    }
}

/// Asks a stage's kind, upstream descriptions at hand, what its output will be (kept in
/// `descriptions`) and what it needs; says why it could never run, if so: the kind refused a
/// field against the upstream shapes, or no device here could meet the request.
pub fn estimate(
    spec: &PipelineSpec,
    i: usize,
    descriptions: &mut [Option<Json>],
    inventory: &Inventory,
) -> (Resources, Option<Refusal>) {
    let stage = &spec.stages[i];
    let pi = plan_inputs(spec, stage, descriptions, &BTreeMap::new());
    let mut refusal = None;
    descriptions[i] = match stage.stage.describe(&stage.params, &pi) {
        Ok(d) => d,
        Err(e) => {
            refusal = Some(match e.downcast_ref::<ParamError>() {
                Some(pe) if !pe.field.is_empty() => Refusal {
                    field: Some(pe.field.clone()),
                    message: if stage.fields_in_with {
                        format!("with.{}: {}", pe.field, pe.message)
                    } else {
                        format!("{}: {}", pe.field, pe.message)
                    },
                },
                Some(pe) => Refusal {
                    field: None,
                    message: pe.message.clone(),
                },
                None => Refusal {
                    field: None,
                    message: e.to_string(),
                },
            });
            None
        }
    };
    match effective_resources(stage, &pi) {
        Ok(r) => {
            let over = inventory.check(&r).err().map(|message| Refusal {
                field: None,
                message,
            });
            (r, refusal.or(over))
        }
        Err(message) => (
            Resources::default(),
            refusal.or(Some(Refusal {
                field: None,
                message,
            })),
        ),
    }
}

/// What a run would do with a stage.
#[derive(Debug, Clone)]
pub enum Action {
    /// The cache holds its output under its key.
    Reuse { record: Box<RunRecord> },
    /// It runs, for these reasons.
    Run { reasons: Vec<Reason> },
    /// It cannot run: a deps file is missing, or an upstream stage is blocked.
    Blocked { reason: Reason },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Reuse { .. } => "reuse",
            Action::Run { .. } => "run",
            Action::Blocked { .. } => "blocked",
        }
    }
}

/// One selected stage of a [`Plan`].
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// Index into [`PipelineSpec::stages`].
    pub index: usize,
    /// The fingerprint, and the key hashed from it, when every input's artifact is known.
    pub fingerprint: Option<Fingerprint>,
    pub key: Option<CacheKey>,
    pub action: Action,
    /// The request (the kind's estimate with the manifest's fields on top).
    pub resources: Resources,
    /// Why the stage could never run here, if so.
    pub refusal: Option<Refusal>,
    /// The kind's description of its output, as far as it is known before running.
    pub description: Option<Json>,
}

impl PlannedStage {
    pub fn reasons(&self) -> &[Reason] {
        match &self.action {
            Action::Run { reasons } => reasons,
            Action::Blocked { reason } => std::slice::from_ref(reason),
            Action::Reuse { .. } => &[],
        }
    }
}

/// What a run of a selection would do, decided once: `status`, `run --dry-run`, `show` and
/// `run` all read this value.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Selected stages in topological order.
    pub stages: Vec<PlannedStage>,
    /// Spec index -> position in `stages` (None: not selected).
    pub position: Vec<Option<usize>>,
    pub forced: Vec<bool>,
}

impl Plan {
    pub fn get(&self, index: usize) -> Option<&PlannedStage> {
        self.position[index].map(|p| &self.stages[p])
    }

    /// Requests no device here could meet, as manifest diagnostics (file, line, stage, numbers).
    pub fn check(&self, spec: &PipelineSpec) -> Result<(), EngineError> {
        let diags: Vec<Diagnostic> = self
            .stages
            .iter()
            .filter_map(|p| p.refusal.as_ref().map(|r| r.diagnostic(spec, p.index)))
            .collect();
        if diags.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Manifest(Diagnostics(diags)))
        }
    }

    pub fn blocked(&self) -> impl Iterator<Item = &PlannedStage> {
        self.stages
            .iter()
            .filter(|p| matches!(p.action, Action::Blocked { .. }))
    }

    /// One row per stage, as `status` prints it.
    pub fn status(&self, spec: &PipelineSpec) -> Vec<StageStatus> {
        self.stages
            .iter()
            .map(|p| {
                let stage = &spec.stages[p.index];
                let artifact = match &p.action {
                    Action::Reuse { record } => Some(record.artifact),
                    _ => None,
                };
                StageStatus {
                    stage: stage.id.clone(),
                    kind: stage.kind.clone(),
                    up_to_date: artifact.is_some(),
                    key: p.key,
                    artifact,
                    reasons: p.reasons().to_vec(),
                    choice: None,
                }
            })
            .collect()
    }

    /// `run --dry-run --json`: `[{stage, kind, action, reasons, resources, key}]`.
    pub fn to_json(&self, spec: &PipelineSpec) -> Json {
        Json::Array(
            self.stages
                .iter()
                .map(|p| {
                    let stage = &spec.stages[p.index];
                    let mut row = serde_json::json!({
                        "stage": stage.id,
                        "kind": stage.kind,
                        "action": p.action.name(),
                        "reasons": p.reasons(),
                        "resources": p.resources,
                        "key": p.key,
                    });
                    if let Action::Reuse { record } = &p.action {
                        row["artifact"] = serde_json::json!(record.artifact);
                    }
                    row
                })
                .collect(),
        )
    }
}

/// Plans every selected stage, in topological order: its description and resources (from the
/// kinds, upstream first), its key where every input is known, and whether the cache already
/// holds it. One pass; nothing runs.
pub fn plan(
    spec: &PipelineSpec,
    cache: &Cache,
    lock: Option<&LockFile>,
    sel: &Selection,
    inventory: &Inventory,
) -> Result<Plan, EngineError> {
    let n = spec.stages.len();
    let mut known: Vec<Option<ArtifactId>> = vec![None; n];
    let mut blocked = vec![false; n];
    let mut descriptions: Vec<Option<Json>> = vec![None; n];
    let mut position = vec![None; n];
    let mut out = Vec::new();
    for &i in &spec.order {
        if !sel.selected[i] {
            continue;
        }
        let stage = &spec.stages[i];
        let (resources, refusal) = estimate(spec, i, &mut descriptions, inventory);
        let mut planned = PlannedStage {
            index: i,
            fingerprint: None,
            key: None,
            action: Action::Run {
                reasons: Vec::new(),
            },
            resources,
            refusal,
            description: descriptions[i].clone(),
        };
        position[i] = Some(out.len());
        if let Some((slot, &up)) = stage.inputs.iter().find(|(_, &u)| blocked[u]) {
            blocked[i] = true;
            planned.action = Action::Blocked {
                reason: Reason::UpstreamBlocked {
                    slot: slot.clone(),
                    stage: spec.stages[up].id.clone(),
                },
            };
            out.push(planned);
            continue;
        }
        let deps = match deps_digests(spec, stage, cache) {
            Ok(d) => d,
            Err(EngineError::Deps { path, source, .. }) => {
                blocked[i] = true;
                planned.action = Action::Blocked {
                    reason: Reason::DepUnreadable {
                        path,
                        error: source.to_string(),
                    },
                };
                out.push(planned);
                continue;
            }
            Err(e) => return Err(e),
        };
        let entry = lock.and_then(|l| l.stages.get(&stage.id));
        let mut inputs = BTreeMap::new();
        let mut upstream_stale = Vec::new();
        for (slot, &up) in &stage.inputs {
            match known[up] {
                Some(a) => {
                    inputs.insert(slot.clone(), a);
                }
                None => upstream_stale.push(Reason::UpstreamStale {
                    slot: slot.clone(),
                    stage: spec.stages[up].id.clone(),
                }),
            }
        }
        let mut reasons = Vec::new();
        if upstream_stale.is_empty() {
            let fp = fingerprint(stage, inputs.clone(), deps.clone());
            let key = fp.key();
            if sel.forced[i] {
                reasons.push(Reason::Forced);
            }
            if !stage.cache {
                reasons.push(Reason::CacheDisabled);
            }
            if reasons.is_empty() {
                match lookup(cache, &key)? {
                    Lookup::Hit(record) => {
                        known[i] = Some(record.artifact);
                        planned.action = Action::Reuse { record };
                    }
                    Lookup::Damaged(detail) => reasons.push(Reason::Damaged { detail }),
                    Lookup::Missing => {
                        reasons = diff_against_lock(
                            entry,
                            stage,
                            &stage.params.canonical,
                            &inputs,
                            &deps,
                            Some(&key),
                        );
                    }
                }
            }
            planned.fingerprint = Some(fp);
            planned.key = Some(key);
        } else {
            reasons = upstream_stale;
            if let Some(e) = entry {
                let own =
                    diff_against_lock(entry, stage, &stage.params.canonical, &inputs, &deps, None);
                if own.is_empty() {
                    reasons.push(Reason::Pinned { output: e.output });
                }
                reasons.extend(own);
            }
        }
        if !matches!(planned.action, Action::Reuse { .. }) {
            name_inputs(spec, stage, &mut reasons);
            planned.action = Action::Run { reasons };
        }
        out.push(planned);
    }
    Ok(Plan {
        stages: out,
        position,
        forced: sel.forced.clone(),
    })
}

/// The status of every selected stage, in topological order: what a `run` would reuse and what
/// it would run, and why (the [`Plan`]'s rows; resources are not checked).
pub fn status(
    spec: &PipelineSpec,
    cache: &Cache,
    lock: Option<&LockFile>,
    sel: &Selection,
) -> Result<Vec<StageStatus>, EngineError> {
    let inventory = Inventory::unlimited();
    Ok(plan(spec, cache, lock, sel, &inventory)?.status(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp() -> Fingerprint {
        Fingerprint {
            kind: "command".into(),
            kind_version: 1,
            params: json!({"cmd": "echo hi", "deps": [], "env": {}}),
            inputs: BTreeMap::from([(
                "a".to_string(),
                ArtifactId(pollard_cache::Digest::of(b"upstream")),
            )]),
            deps: BTreeMap::from([("x.txt".to_string(), pollard_cache::Digest::of(b"x"))]),
            uses: BTreeMap::new(),
        }
    }

    #[test]
    fn golden_key() {
        // Pinned: a change here invalidates every user's cache, so it must be deliberate
        // (bump FINGERPRINT_FORMAT and say so).
        assert_eq!(
            fp().key().to_string(),
            "blake3:0b1b5277a1ed6bcf958df7b5098cfd14e5a3b69ce01485f094479579797cd272"
        );
    }

    #[test]
    fn every_part_enters_the_key() {
        let base = fp().key();
        let mut f = fp();
        f.params = json!({"cmd": "echo ho", "deps": [], "env": {}});
        assert_ne!(f.key(), base);
        let mut f = fp();
        f.kind_version = 2;
        assert_ne!(f.key(), base);
        let mut f = fp();
        f.inputs
            .insert("a".into(), ArtifactId(pollard_cache::Digest::of(b"other")));
        assert_ne!(f.key(), base);
        let mut f = fp();
        f.deps
            .insert("x.txt".into(), pollard_cache::Digest::of(b"other"));
        assert_ne!(f.key(), base);
    }

    #[test]
    fn param_diffs_name_leaf_fields() {
        let mut out = Vec::new();
        json_diff(
            "",
            Some(&json!({"lr": 0.001, "loss": {"t": 1}})),
            Some(&json!({"lr": 0.002, "loss": {"t": 1}, "new": true})),
            &mut out,
        );
        let text: Vec<String> = out.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "param `lr` changed: 0.001 -> 0.002",
                "param `new` changed: (unset) -> true"
            ]
        );
        let long_a = json!("x".repeat(80) + "aaa" + &"y".repeat(40));
        let long_b = json!("x".repeat(80) + "bbb" + &"y".repeat(40));
        let (a, b) = show_pair(&Some(long_a), &Some(long_b));
        assert!(
            a.contains("aaa") && b.contains("bbb") && a.starts_with("..."),
            "{a} {b}"
        );
    }
}
