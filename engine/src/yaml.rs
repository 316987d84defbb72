//! The YAML layer: every manifest, lock file and `-S` value is read (and every lock file written)
//! through here, so the rest of the engine sees only [`Value`] trees and typed structs.
//!
//! The crate is serde-saphyr: maintained, panic-free on malformed input, with budgets on depth
//! and size, and a serde interface for typed structs (lock files, `with` blocks). A manifest is
//! read once into a tree whose nodes carry their source positions ([`Spanned`]), and that one
//! walk yields both the value and the [`SpanMap`] that error messages point into. The dynamic
//! value is serde_json's (`preserve_order`, so a manifest keeps the order it was written in);
//! it is what the cache keys already hash, so no second value type exists.
//!
//! Scalars follow YAML 1.2's core schema: only `true`/`false` are booleans (`yes`, `on`, `y`
//! stay strings), duplicate keys are errors.

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Budget, DuplicateKeyPolicy, Location, Spanned};

use crate::span::{Pos, SpanMap};

pub use serde_json::Value;

/// A YAML map as the engine holds it (string keys, in the order written).
pub type Mapping = serde_json::Map<String, Value>;

/// The deepest nesting of maps and lists a manifest may have. Real recipes nest about six
/// levels; the limit keeps a pathological file from costing stack or quadratic path building.
pub const MAX_DEPTH: usize = 64;

/// Why a text did not parse, with where.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    /// The parser's message, without the position it appends (the caller prints it in front).
    pub message: String,
    /// The nesting went past [`MAX_DEPTH`] at `pos`.
    pub too_deep: bool,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (line {}, column {})",
            self.message, self.pos.line, self.pos.col
        )
    }
}

impl std::error::Error for YamlError {}

/// How much a text may hold. Manifests are written by people: the parser's defaults (a million
/// events, 250,000 nodes) are far above any recipe. Lock files are written by pollard and grow
/// with the pipeline (about 25 nodes a stage), so they get room for a million stages.
#[derive(Clone, Copy)]
enum Size {
    Manifest,
    Lock,
}

fn options(size: Size) -> serde_saphyr::Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    if let Size::Lock = size {
        budget.max_events = 64_000_000;
        budget.max_nodes = 32_000_000;
        budget.max_total_scalar_bytes = 4 << 30;
        budget.max_reader_input_bytes = None;
    }
    serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: DuplicateKeyPolicy::Error,
        with_snippet: false,
        budget: Some(budget),
    }
}

fn pos(l: Location) -> Pos {
    Pos {
        line: l.line() as usize,
        col: l.column() as usize,
    }
}

fn error(e: &serde_saphyr::Error) -> YamlError {
    let e = e.without_snippet();
    let at = e.location().map(pos).unwrap_or(Pos { line: 1, col: 1 });
    // The developer wording is the more precise one ("alias references unknown anchor"),
    // except for a duplicate key, where it suggests parser options to a programmer.
    let text = match e {
        serde_saphyr::Error::DuplicateMappingKey { .. } => {
            e.render_with_formatter(&serde_saphyr::UserMessageFormatter)
        }
        _ => e.to_string(),
    };
    // Block nesting is counted by the budget; flow nesting (`[[[...`) by the parser's own limit.
    let too_deep = matches!(
        e,
        serde_saphyr::Error::Budget {
            breach: BudgetBreach::Depth { .. },
            ..
        }
    ) || text.starts_with("recursion limit exceeded");
    if too_deep {
        return YamlError {
            pos: at,
            message: format!("maps and lists nest deeper than {MAX_DEPTH} levels"),
            too_deep: true,
        };
    }
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    YamlError {
        pos: at,
        message,
        too_deep: false,
    }
}

/// A typed value from YAML text written by people (a `-S` value, a `with` block in a test).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options(Size::Manifest)).map_err(|e| error(&e))
}

/// A typed value from a lock file (which may be as large as the pipeline).
pub fn from_lock_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options(Size::Lock)).map_err(|e| error(&e))
}

/// YAML text of `value`. Only values without a YAML form fail (non-string map keys, NaN in a
/// struct that is not a [`Value`]); the engine's own types have one.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(value)
}

/// A value on one line, for a message: strings as written, anything else as flow YAML.
pub fn inline(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A typed value from a tree: decoding a `with` block or an `executor:` map.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(v)
}

/// A manifest's tree and where each of its keys and values is, from one parse.
pub fn parse_with_spans(text: &str) -> Result<(Value, SpanMap), YamlError> {
    let root: Spanned<Node> = serde_saphyr::from_str_with_options(text, options(Size::Manifest))
        .map_err(|e| error(&e))?;
    let mut spans = SpanMap::default();
    let mut path = String::new();
    let value = into_value(root, &mut path, &mut spans);
    Ok((value, spans))
}

/// One YAML node with its children's positions, as the parser hands it over.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

/// Moves `node` into a [`Value`], recording positions under dotted paths (`stages.a.deps.0`).
/// `path` is the node's own path; it is restored before returning.
fn into_value(node: Spanned<Node>, path: &mut String, spans: &mut SpanMap) -> Value {
    // `referenced` is where the node is written (an alias's own place, not its anchor's).
    spans.set_value(path, pos(node.referenced));
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::from(i),
        Node::Uint(u) => Value::from(u),
        // serde_json has no NaN or infinity: such a value reads as null (the parser rejects
        // `.inf` and `.nan` written plainly before it gets here).
        Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let len = push(path, &i.to_string());
                out.push(into_value(item, path, spans));
                path.truncate(len);
            }
            Value::Array(out)
        }
        Node::Map(entries) => {
            let mut out = Mapping::with_capacity(entries.len());
            for (k, v) in entries {
                let len = push(path, &k.value);
                spans.set_key(path, pos(k.referenced));
                let value = into_value(v, path, spans);
                path.truncate(len);
                out.insert(k.value, value);
            }
            Value::Object(out)
        }
    }
}

/// Appends `.segment` (or `segment` at the root) and returns the length to truncate back to.
fn push(path: &mut String, segment: &str) -> usize {
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(segment);
    len
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Uint(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .or_else(|_| u64::try_from(v).map(Node::Uint))
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        u64::try_from(v)
            .map(Node::Uint)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut items = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = a.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
        let mut entries = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = a.next_key::<Spanned<String>>()? {
            let value = a.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "pipeline: p\nstages:\n  a:\n    kind: command\n    deps: [x, y]\n    with: { n: 3 }\n  b: { kind: train }\n";

    #[test]
    fn one_parse_gives_the_tree_and_one_based_positions() {
        let (v, m) = parse_with_spans(TEXT).unwrap();
        assert_eq!(v["stages"]["a"]["deps"], serde_json::json!(["x", "y"]));
        assert_eq!(m.key("pipeline"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(m.value("pipeline"), Some(Pos { line: 1, col: 11 }));
        assert_eq!(m.key("stages.a.kind"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(m.value("stages.a.deps.1"), Some(Pos { line: 5, col: 15 }));
        assert_eq!(m.value("stages.a.with.n"), Some(Pos { line: 6, col: 16 }));
        assert_eq!(m.value("stages.b.kind"), Some(Pos { line: 7, col: 14 }));
        assert_eq!(m.locate("stages.a.with.missing"), Pos { line: 6, col: 11 });
    }

    #[test]
    fn maps_keep_the_order_they_were_written_in() {
        let (v, _) = parse_with_spans("z: 1\na: 2\nm: 3\n").unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "m"]);
    }

    #[test]
    fn only_true_and_false_are_booleans() {
        let (v, _) = parse_with_spans("a: yes\nb: y\nc: on\nd: true\ne: 1e-4\nf: 20M\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": "yes", "b": "y", "c": "on", "d": true, "e": 1e-4, "f": "20M"})
        );
    }

    #[test]
    fn an_alias_is_located_where_it_is_used() {
        let (v, m) = parse_with_spans("a: &x { k: 1 }\nb: *x\n").unwrap();
        assert_eq!(v["b"]["k"], 1);
        assert_eq!(m.value("b"), Some(Pos { line: 2, col: 4 }));
    }

    #[test]
    fn syntax_errors_name_their_place_without_repeating_it() {
        let e = parse_with_spans("a: 1\nb: [\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 4 });
        assert_eq!(e.message, "unclosed bracket '['");
        let e = parse_with_spans("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 1 });
        assert_eq!(e.message, "duplicate mapping key `a` is not allowed here");
    }

    #[test]
    fn deep_nesting_is_refused_at_the_limit() {
        let d = 100_000;
        let text = format!("a: {}{}\n", "[".repeat(d), "]".repeat(d));
        let e = parse_with_spans(&text).unwrap_err();
        assert!(e.too_deep && e.pos.line == 1, "{e:?}");
        let text = format!(
            "a:\n{}",
            (0..200)
                .map(|i| format!("{}- \n", "  ".repeat(i)))
                .collect::<String>()
        );
        assert!(parse_with_spans(&text).unwrap_err().too_deep);
        assert!(parse_with_spans(TEXT).is_ok());
    }
}
