//! `search:` on a group: the paper's lightweight architecture search as a matrix filled for the
//! user. Every combination of a grid (`layers`, `heads`, `ffn`, `hidden`; each a list or
//! `{ of: N, by: [divisors] }`, like the Minitron paper's Table 9) whose parameter count lies
//! within `params: <target> +- <tolerance>%` becomes one copy of the body, named
//! `l<layers>-h<hidden>-a<heads>-f<ffn>` (the axes the grid names), with those sizes in
//! `${matrix.arch}` (a map a
//! `prune` target takes as it is). The count comes from the base shape (`shape:`, the model being
//! pruned: `head_dim` or `hidden / heads`, `kv_heads`, `family` (default `llama`), `tied`, and
//! `vocab` when counting all parameters). Parsing turns the search into an ordinary one-axis `matrix`, so expansion,
//! `pollard dag` and `select` treat it like any other.

use crate::yaml::{Mapping, Value};

use crate::manifest::{Collector, GroupShape};
use crate::quantity::Count;
use crate::yaml::inline;

/// The matrix axis holding each candidate's architecture.
pub const AXIS: &str = "arch";
const FIELDS: &[&str] = &["grid", "params", "count", "shape"];
const GRID_AXES: &[&str] = &["layers", "heads", "ffn", "hidden"];

/// Which parameters the budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Everything, embeddings (and an untied output projection) included.
    Total,
    /// Transformer blocks and final norm only (Minitron reports both).
    NonEmbedding,
}

/// The fixed parts of the shape being pruned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Base {
    pub head_dim: u64,
    pub kv_heads: u64,
    pub vocab: Option<u64>,
    pub tied: bool,
    pub family: Family,
}

/// The model family of the shape being searched: it decides the MLP's matrices, the norms'
/// parameters and the per-head q/k norms. Mirrors `pollard_model::Family` (the engine has no
/// model dependency); `tests/recipe_tiny.rs` checks the counts against the model layer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// SwiGLU (gate, up, down), RMSNorm (weight only). Mistral counts the same.
    #[default]
    Llama,
    /// Squared-ReLU MLP (up, down), LayerNorm1p (weight and bias).
    Nemotron,
    /// As Llama, plus an RMSNorm over `head_dim` on queries and on keys in every layer.
    Qwen3,
}

impl Family {
    fn parse(name: &str) -> Option<Family> {
        match name {
            "llama" | "mistral" => Some(Family::Llama),
            "nemotron" => Some(Family::Nemotron),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }
}

/// The parameter count of a decoder of `base.family` (q/k/v/o projections, the MLP, two norms
/// per block and the q/k norms where the family has them, a final norm; embeddings and an untied
/// head when counting all).
pub fn param_count(
    base: &Base,
    layers: u64,
    hidden: u64,
    heads: u64,
    ffn: u64,
    counting: Counting,
) -> u64 {
    let hd = base.head_dim;
    let attn = hidden * heads * hd * 2 + hidden * base.kv_heads * hd * 2;
    let (mlp, norm, qk) = match base.family {
        Family::Llama => (3 * hidden * ffn, hidden, 0),
        Family::Nemotron => (2 * hidden * ffn, 2 * hidden, 0),
        Family::Qwen3 => (3 * hidden * ffn, hidden, 2 * hd),
    };
    let block = attn + mlp + 2 * norm + qk;
    let body = layers * block + norm;
    match counting {
        Counting::NonEmbedding => body,
        Counting::Total => {
            let v = base.vocab.unwrap_or(0);
            body + v * hidden * if base.tied { 1 } else { 2 }
        }
    }
}

/// `4.2B +- 5%` (also `±`) -> (target, tolerance as a fraction).
pub fn parse_budget(text: &str) -> Result<(u64, f64), String> {
    let norm = text.replace('±', "+-");
    let (target, tol) = match norm.split_once("+-") {
        Some((t, p)) => (t.trim(), Some(p.trim())),
        None => (norm.trim(), None),
    };
    let target: Count = target
        .parse()
        .map_err(|e: String| format!("`params: {text}`: {e}"))?;
    let tol = match tol {
        None => 0.0,
        Some(p) => {
            let p = p.strip_suffix('%').ok_or_else(|| {
                format!("`params: {text}`: the tolerance must be a percentage, e.g. `+- 5%`")
            })?;
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`params: {text}`: `{p}%` is not a percentage"))?;
            if !(0.0..100.0).contains(&v) {
                return Err(format!(
                    "`params: {text}`: the tolerance must be between 0% and 100%"
                ));
            }
            v / 100.0
        }
    };
    if target.get() == 0 {
        return Err(format!("`params: {text}`: the target must be above 0"));
    }
    Ok((target.get(), tol))
}

fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<Count>().ok().map(Count::get),
        _ => None,
    }
}

/// One grid axis: a list of sizes, or `{ of: N, by: [d, ...] }` -> round(N / d) each.
fn axis_values(v: &Value) -> Result<Vec<u64>, String> {
    let vals = match v {
        Value::Array(items) => items
            .iter()
            .map(|x| uint(x).ok_or_else(|| format!("`{}` is not a size", inline(x))))
            .collect::<Result<Vec<_>, _>>()?,
        Value::Object(m) => {
            let of = m
                .get("of")
                .and_then(uint)
                .ok_or("`{ of: N, by: [divisors] }` needs `of`, a size")?;
            let by = m
                .get("by")
                .and_then(Value::as_array)
                .ok_or("`{ of: N, by: [divisors] }` needs `by`, a list of numbers")?;
            by.iter()
                .map(|d| match d.as_f64() {
                    Some(d) if d >= 1.0 => Ok((of as f64 / d).round() as u64),
                    _ => Err(format!("divisor `{}` must be a number >= 1", inline(d))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        other => {
            return Err(format!(
                "must be a list of sizes or `{{ of: N, by: [divisors] }}`, found `{}`",
                inline(other)
            ))
        }
    };
    if vals.is_empty() || vals.contains(&0) {
        return Err("must hold at least one size, each above 0".into());
    }
    let mut vals = vals;
    vals.sort_unstable_by(|a, b| b.cmp(a));
    vals.dedup();
    Ok(vals)
}

/// A candidate: the axes the grid names, in [`GRID_AXES`] order.
pub type Candidate = Vec<(&'static str, u64)>;

/// Every grid point within the budget, largest first, each with its parameter count.
pub fn candidates(
    grid: &[(&'static str, Vec<u64>)],
    full: &Mapping,
    base: &Base,
    budget: (u64, f64),
    counting: Counting,
) -> Vec<(Candidate, u64)> {
    let base_of = |k: &str| full.get(k).and_then(uint).unwrap_or(0);
    let mut out = Vec::new();
    let mut combo: Vec<(&'static str, u64)> = Vec::new();
    type Visit<'a> = dyn FnMut(&[(&'static str, u64)]) + 'a;
    fn walk(
        grid: &[(&'static str, Vec<u64>)],
        i: usize,
        combo: &mut Vec<(&'static str, u64)>,
        f: &mut Visit<'_>,
    ) {
        if i == grid.len() {
            f(combo);
            return;
        }
        for &v in &grid[i].1 {
            combo.push((grid[i].0, v));
            walk(grid, i + 1, combo, f);
            combo.pop();
        }
    }
    let (lo, hi) = (
        budget.0 as f64 * (1.0 - budget.1),
        budget.0 as f64 * (1.0 + budget.1),
    );
    walk(grid, 0, &mut combo, &mut |c| {
        let get = |k: &str| {
            c.iter()
                .find(|(a, _)| *a == k)
                .map(|p| p.1)
                .unwrap_or_else(|| base_of(k))
        };
        let heads = get("heads");
        if base.kv_heads == 0 || heads % base.kv_heads != 0 {
            return; // grouped-query attention: query heads come in whole KV groups
        }
        let n = param_count(
            base,
            get("layers"),
            get("hidden"),
            heads,
            get("ffn"),
            counting,
        );
        if (lo..=hi).contains(&(n as f64)) {
            out.push((c.to_vec(), n));
        }
    });
    out
}

/// The copy-name template of a search's matrix (`l4-h96-a4-f256` style, over the axes the grid
/// names), from the shape [`parse_shape`] returned.
pub fn name_template(shape: &GroupShape) -> String {
    let short = [
        ("layers", "l"),
        ("hidden", "h"),
        ("heads", "a"),
        ("ffn", "f"),
    ];
    let first = match shape {
        GroupShape::Matrix { axes } => axes.first().and_then(|(_, v)| v.first()),
        GroupShape::Repeat { .. } => None,
    };
    short
        .iter()
        .filter(|(k, _)| first.and_then(|m| m.get(*k)).is_some())
        .map(|(k, s)| format!("{s}${{matrix.{AXIS}.{k}}}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Parses `search:` of group `id` into a one-axis matrix (`arch`) of the candidates.
pub fn parse_shape(
    c: &mut Collector,
    id: &str,
    path: &str,
    v: &Value,
    params: &Value,
) -> Option<GroupShape> {
    let stage = Some(id);
    let Value::Object(m) = v else {
        c.at(
            path,
            stage,
            "`search` must be a map `{ grid: {...}, params: <target> +- <pct>%, shape: {...} }`",
        );
        return None;
    };
    crate::select::check_fields(c, path, stage, m, "search", FIELDS);
    // `shape` may be `${params.x}`: resolve that one reference form here (expansion has not run).
    let shape = match m.get("shape") {
        Some(Value::String(s)) if s.starts_with("${params.") && s.ends_with('}') => {
            let mut cur = params;
            for part in s["${params.".len()..s.len() - 1].split('.') {
                cur = cur.get(part).unwrap_or(&Value::Null);
            }
            cur.clone()
        }
        Some(v) => v.clone(),
        None => {
            c.at_key(path, stage, "`search` needs `shape`: the shape being pruned (`{ hidden, ffn, heads, kv_heads, layers, head_dim, vocab }`)");
            return None;
        }
    };
    let Value::Object(full) = shape else {
        c.at(
            &format!("{path}.shape"),
            stage,
            "`search.shape` must be a map of the pruned model's sizes",
        );
        return None;
    };
    let size = |k: &str| full.get(k).and_then(uint);
    let head_dim = size("head_dim").or_else(|| Some(size("hidden")? / size("heads")?.max(1)));
    let (Some(head_dim), Some(kv_heads)) = (head_dim, size("kv_heads").or(size("heads"))) else {
        c.at(
            &format!("{path}.shape"),
            stage,
            "`search.shape` needs `heads` (and `kv_heads`), and `head_dim` or `hidden`",
        );
        return None;
    };
    let counting = match m.get("count").map(inline).as_deref() {
        None | Some("total") => Counting::Total,
        Some("non_embedding") => Counting::NonEmbedding,
        Some(other) => {
            c.at(
                &format!("{path}.count"),
                stage,
                format!("`search.count: {other}` must be `total` or `non_embedding`"),
            );
            return None;
        }
    };
    let vocab = size("vocab");
    if counting == Counting::Total && vocab.is_none() {
        c.at(
            &format!("{path}.shape"),
            stage,
            "counting all parameters needs `vocab` in `search.shape` (or `count: non_embedding`)",
        );
        return None;
    }
    let family = match full.get("family") {
        None => Family::Llama,
        Some(v) => match Family::parse(&inline(v)) {
            Some(f) => f,
            None => {
                c.at(
                    &format!("{path}.shape.family"),
                    stage,
                    format!(
                        "`search.shape.family: {}` must be `llama`, `mistral`, `nemotron` or `qwen3`",
                        inline(v)
                    ),
                );
                return None;
            }
        },
    };
    let base = Base {
        head_dim,
        kv_heads,
        vocab,
        // `tied` as `arch` and `expect` spell it, with the same default (an untied head).
        tied: full.get("tied").and_then(Value::as_bool).unwrap_or(false),
        family,
    };
    let budget = match m.get("params").map(inline) {
        Some(t) => match parse_budget(&t) {
            Ok(b) => b,
            Err(e) => {
                c.at(&format!("{path}.params"), stage, e);
                return None;
            }
        },
        None => {
            c.at_key(
                path,
                stage,
                "`search` needs `params: <target> +- <tolerance>%`",
            );
            return None;
        }
    };
    let Some(Value::Object(g)) = m.get("grid") else {
        c.at(
            &format!("{path}.grid"),
            stage,
            "`search.grid` must be a map of axis (layers, heads, ffn, hidden) -> sizes",
        );
        return None;
    };
    let mut grid = Vec::new();
    for k in g.keys() {
        if !GRID_AXES.contains(&k.as_str()) {
            c.at_key(
                &format!("{path}.grid.{k}"),
                stage,
                format!(
                    "unknown grid axis `{k}` (expected one of: {})",
                    GRID_AXES.join(", ")
                ),
            );
        }
    }
    for axis in GRID_AXES {
        if let Some(v) = g.get(*axis) {
            match axis_values(v) {
                Ok(vals) => grid.push((*axis, vals)),
                Err(e) => c.at(
                    &format!("{path}.grid.{axis}"),
                    stage,
                    format!("`search.grid.{axis}` {e}"),
                ),
            }
        }
    }
    if grid.is_empty() {
        c.at(
            &format!("{path}.grid"),
            stage,
            "`search.grid` names no axis",
        );
        return None;
    }
    let found = candidates(&grid, &full, &base, budget, counting);
    if found.is_empty() {
        c.at(
            &format!("{path}.params"),
            stage,
            format!(
                "no architecture of the grid has {} parameters within {}% of {} ({:?} counting)",
                if counting == Counting::Total {
                    "total"
                } else {
                    "non-embedding"
                },
                budget.1 * 100.0,
                budget.0,
                counting
            ),
        );
        return None;
    }
    let values = found
        .into_iter()
        .map(|(cand, _)| {
            let mut arch = Mapping::new();
            // Only the sizes the grid varies: the rest stay the pruned model's.
            for (k, v) in cand {
                arch.insert(k.into(), Value::Number(v.into()));
            }
            Value::Object(arch)
        })
        .collect();
    Some(GroupShape::Matrix {
        axes: vec![(AXIS.to_string(), values)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_read_like_the_paper() {
        assert_eq!(parse_budget("4.2B +- 5%").unwrap(), (4_200_000_000, 0.05));
        assert_eq!(parse_budget("600K ± 10%").unwrap(), (600_000, 0.1));
        assert_eq!(parse_budget("1000").unwrap(), (1000, 0.0));
        assert!(parse_budget("4.2B +- 5")
            .unwrap_err()
            .contains("percentage"));
        assert!(parse_budget("lots").is_err());
    }

    #[test]
    fn the_count_matches_a_llama_of_that_shape() {
        // tiny teacher: hidden 128, ffn 384, 4 heads of 32 in 2 KV groups, 4 layers, vocab 1024, tied.
        let base = Base {
            head_dim: 32,
            kv_heads: 2,
            vocab: Some(1024),
            tied: true,
            family: Family::Llama,
        };
        let n = param_count(&base, 4, 128, 4, 384, Counting::NonEmbedding);
        // per block: q,o 128*128*2 + k,v 128*64*2 + mlp 3*128*384 + norms 256
        assert_eq!(n, 4 * (32768 + 16384 + 147456 + 256) + 128);
        assert_eq!(
            param_count(&base, 4, 128, 4, 384, Counting::Total),
            n + 1024 * 128
        );
    }

    #[test]
    fn candidates_keep_only_the_budget_and_whole_kv_groups() {
        let base = Base {
            head_dim: 32,
            kv_heads: 2,
            vocab: None,
            tied: true,
            family: Family::Llama,
        };
        let full: Mapping =
            crate::yaml::from_str("{ layers: 4, hidden: 128, heads: 4, ffn: 384 }").unwrap();
        let grid = vec![
            (
                "heads",
                axis_values(&crate::yaml::from_str("[4, 3, 2]").unwrap()).unwrap(),
            ),
            (
                "ffn",
                axis_values(&crate::yaml::from_str("{ of: 384, by: [1, 1.5, 2, 3] }").unwrap())
                    .unwrap(),
            ),
        ];
        assert_eq!(grid[1].1, vec![384, 256, 192, 128]);
        let all = candidates(&grid, &full, &base, (500_000, 0.2), Counting::NonEmbedding);
        for (c, n) in &all {
            assert!((400_000..=600_000).contains(n), "{c:?} {n}");
            assert_ne!(c[0].1, 3, "3 heads do not split into 2 KV groups");
        }
        assert!(!all.is_empty());
    }
}
