//! Stage kinds by name: the binary fills a [`Registry`] with the kinds it links; validation looks
//! a stage's `kind` up here and decodes its `with` through the object-safe [`ErasedStage`] layer
//! (the [`Stage`] trait's associated consts and types keep it from being a trait object).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::canonical::canonical_json;
use crate::command::CommandStage;
use crate::stage::{
    BoxError, Inputs, OuterField, ParamError, PlanInputs, Resources, Slots, Stage, StageCtx,
};

/// A stage's `with` decoded into its kind's typed params, plus the canonical JSON of those typed
/// params (sorted keys, defaults filled in) that enters the cache key and the lock file.
pub struct DecodedParams {
    typed: Box<dyn Any + Send + Sync>,
    /// The typed params re-serialised: spelling (`20M` vs `20000000`) and key order do not matter.
    pub canonical: serde_json::Value,
}

impl std::fmt::Debug for DecodedParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecodedParams({})", canonical_json(&self.canonical))
    }
}

/// Why a `with` block did not decode: the dotted field path inside `with` and serde's message
/// (plus a did-you-mean for unknown fields).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub field: String,
    pub message: String,
}

/// The object-safe face of a [`Stage`], implemented for every `S: Stage` by [`Erased`].
pub trait ErasedStage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn slots(&self) -> Slots;
    fn outer_fields(&self) -> &'static [OuterField];
    fn decode(&self, with: &crate::yaml::Value) -> Result<DecodedParams, DecodeError>;
    fn validate(&self, p: &DecodedParams) -> Vec<ParamError>;
    fn deps(&self, p: &DecodedParams) -> Vec<PathBuf>;
    fn describe(
        &self,
        p: &DecodedParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError>;
    fn resources(&self, p: &DecodedParams, inputs: &PlanInputs) -> Result<Resources, BoxError>;
    fn own_process(&self) -> bool;
    fn run(&self, ctx: &mut StageCtx, p: &DecodedParams, inputs: &Inputs) -> Result<(), BoxError>;
}

/// Adapts one concrete [`Stage`] to [`ErasedStage`].
pub struct Erased<S: Stage>(pub S);

impl<S: Stage> Erased<S> {
    fn typed<'a>(&self, p: &'a DecodedParams) -> &'a S::Params {
        // Invariant: a DecodedParams reaches a kind only through the StageSpec that was decoded
        // by that same kind, so the downcast cannot fail.
        p.typed
            .downcast_ref::<S::Params>()
            .expect("params were decoded by this kind")
    }
}

impl<S: Stage> ErasedStage for Erased<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn outer_fields(&self) -> &'static [OuterField] {
        self.0.outer_fields()
    }
    fn slots(&self) -> Slots {
        self.0.slots()
    }
    fn decode(&self, with: &crate::yaml::Value) -> Result<DecodedParams, DecodeError> {
        let typed: S::Params = serde_path_to_error::deserialize(with.clone()).map_err(|e| {
            let field = path_string(e.path());
            let message = did_you_mean(&e.inner().to_string());
            DecodeError { field, message }
        })?;
        let canonical = serde_json::to_value(&typed).map_err(|e| DecodeError {
            field: String::new(),
            message: format!("params do not serialise: {e}"),
        })?;
        Ok(DecodedParams {
            typed: Box::new(typed),
            canonical,
        })
    }
    fn validate(&self, p: &DecodedParams) -> Vec<ParamError> {
        self.0.validate(self.typed(p)).err().unwrap_or_default()
    }
    fn deps(&self, p: &DecodedParams) -> Vec<PathBuf> {
        self.0.deps(self.typed(p))
    }
    fn describe(
        &self,
        p: &DecodedParams,
        inputs: &PlanInputs,
    ) -> Result<Option<serde_json::Value>, BoxError> {
        self.0.describe(self.typed(p), inputs)
    }
    fn resources(&self, p: &DecodedParams, inputs: &PlanInputs) -> Result<Resources, BoxError> {
        self.0.resources(self.typed(p), inputs)
    }
    fn own_process(&self) -> bool {
        self.0.own_process()
    }
    fn run(&self, ctx: &mut StageCtx, p: &DecodedParams, inputs: &Inputs) -> Result<(), BoxError> {
        self.0.run(ctx, self.typed(p), inputs)
    }
}

/// serde_path_to_error's path as the dotted form used in messages (`target.heads`, `axes.2`).
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let parts: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect();
    parts.join(".")
}

/// Adds "did you mean `x`?" to serde's "unknown field `a`, expected one of `b`, `c`" (and the
/// same for variants) when a known name is close.
pub fn did_you_mean(message: &str) -> String {
    let Some(suggestion) = closest_from_serde_message(message) else {
        return message.to_string();
    };
    format!("{message} (did you mean `{suggestion}`?)")
}

fn closest_from_serde_message(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (bad, rest) = rest.split_once('`')?;
    let (_, expected) = rest.split_once("expected")?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    closest(bad, candidates.iter().copied())
}

/// The candidate nearest to `bad`, if any is near enough to be a plausible typo.
pub fn closest<'a>(bad: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    candidates
        .map(|c| (strsim::jaro_winkler(bad, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// Stage kinds by name. [`Registry::new`] has the built-in `command` kind.
#[derive(Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn ErasedStage>>,
    /// Kinds that can use at most this many GPUs, and why (checked at validation).
    gpu_limits: BTreeMap<&'static str, (u32, &'static str)>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding the built-in `command` kind.
    pub fn new() -> Self {
        let mut reg = Registry {
            kinds: BTreeMap::new(),
            gpu_limits: BTreeMap::new(),
        };
        reg.register(CommandStage);
        reg
    }

    /// Adds a kind. Registering two kinds under one name is a programming error of the binary.
    pub fn register<S: Stage>(&mut self, stage: S) {
        let previous = self.kinds.insert(S::KIND, Arc::new(Erased(stage)));
        assert!(
            previous.is_none(),
            "stage kind `{}` registered twice",
            S::KIND
        );
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn ErasedStage>> {
        self.kinds.get(kind).cloned()
    }

    /// Declares that stages of `kind` can use at most `max` GPUs; a manifest asking for more
    /// (`resources: { gpus: N }`) is refused at validation with `why`.
    pub fn limit_gpus(&mut self, kind: &'static str, max: u32, why: &'static str) {
        self.gpu_limits.insert(kind, (max, why));
    }

    /// The GPU limit of `kind`, if it has one (`command` stages keep every GPU they ask for).
    pub fn gpu_limit(&self, kind: &str) -> Option<(u32, &'static str)> {
        self.gpu_limits.get(kind).copied()
    }

    /// Registered kind names, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// The outer fields of `kind` (empty for an unknown kind).
    pub fn outer_fields(&self, kind: &str) -> &'static [OuterField] {
        self.kinds.get(kind).map_or(&[], |k| k.outer_fields())
    }

    /// The kinds that take `field` as an outer field (for "only for `kind: command`").
    pub fn kinds_with_outer(&self, field: &str) -> Vec<&'static str> {
        self.kinds
            .iter()
            .filter(|(_, k)| k.outer_fields().iter().any(|f| f.name == field))
            .map(|(name, _)| *name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantity::Count;
    use serde::{Deserialize, Serialize};

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        hidden: Option<u64>,
        heads: Option<u64>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        tokens: Count,
        #[serde(default)]
        target: Option<Target>,
        #[serde(default = "one")]
        seed: u64,
    }
    fn one() -> u64 {
        1
    }

    struct K;
    impl Stage for K {
        const KIND: &'static str = "k";
        const VERSION: u32 = 1;
        type Params = P;
        fn slots(&self) -> Slots {
            Slots::Any
        }
        fn validate(&self, p: &P) -> Result<(), Vec<ParamError>> {
            if p.tokens.0 == 0 {
                return Err(vec![ParamError::new("tokens", "must be positive")]);
            }
            Ok(())
        }
        fn resources(&self, _p: &P, _i: &PlanInputs) -> Result<Resources, BoxError> {
            Ok(Resources::default())
        }
        fn run(&self, _c: &mut StageCtx, _p: &P, _i: &Inputs) -> Result<(), BoxError> {
            Ok(())
        }
    }

    fn yaml(s: &str) -> crate::yaml::Value {
        crate::yaml::from_str(s).unwrap()
    }

    #[test]
    fn decode_fills_defaults_and_canonicalises_quantities() {
        let mut reg = Registry::new();
        reg.register(K);
        let k = reg.get("k").unwrap();
        let a = k.decode(&yaml("{ tokens: 20M }")).unwrap();
        let b = k.decode(&yaml("{ tokens: 20000000, seed: 1 }")).unwrap();
        assert_eq!(a.canonical, b.canonical);
        assert_eq!(
            canonical_json(&a.canonical),
            r#"{"seed":1,"target":null,"tokens":20000000}"#
        );
    }

    #[test]
    fn decode_errors_name_the_field_and_suggest() {
        let mut reg = Registry::new();
        reg.register(K);
        let k = reg.get("k").unwrap();
        let e = k
            .decode(&yaml("{ tokens: 1, target: { hiden: 3 } }"))
            .unwrap_err();
        assert_eq!(e.field, "target.hiden");
        assert!(
            e.message.contains("did you mean `hidden`?"),
            "{}",
            e.message
        );
        let e = k.decode(&yaml("{ tokens: 12Q }")).unwrap_err();
        assert_eq!(e.field, "tokens");
        assert!(e.message.contains("unknown unit `Q`"), "{}", e.message);
        let p = k.decode(&yaml("{ tokens: 0 }")).unwrap();
        assert_eq!(
            k.validate(&p),
            vec![ParamError::new("tokens", "must be positive")]
        );
    }

    #[test]
    fn closest_ignores_far_names() {
        assert_eq!(
            closest("tokns", ["tokens", "seed"].into_iter()),
            Some("tokens".into())
        );
        assert_eq!(closest("zzz", ["tokens", "seed"].into_iter()), None);
    }

    #[test]
    fn command_is_built_in() {
        let reg = Registry::new();
        assert_eq!(reg.kinds().collect::<Vec<_>>(), vec!["command"]);
    }
}
