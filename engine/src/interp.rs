//! `${...}` interpolation inside a manifest's `with`, `resources`, `cmd`, `deps`, `env` and
//! `inputs`, run while groups are expanded. A string that is exactly one reference becomes the
//! referenced value with its type (a map stays a map); inside a longer string the value is
//! formatted into it. `$${` writes a literal `${`.

use std::collections::BTreeMap;

use crate::yaml::{Mapping, Value};

use crate::registry::closest;

/// What references can see at one place in the manifest.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub params: &'a Value,
    /// The expanded id `${prev}` names (inside a `repeat` body).
    pub prev: Option<&'a str>,
    /// The current round's map (inside a `repeat` body).
    pub round: Option<&'a Value>,
    /// The current combination (inside a `matrix` body).
    pub matrix: Option<&'a BTreeMap<String, Value>>,
    /// Where to record the references that resolve (a stage's fields are interpolated with
    /// one), so `status` can name the manifest value a change came from.
    pub uses: Option<&'a Uses>,
}

/// One manifest value a stage's fields used (`params.lr`, `round.target`, `matrix.method`):
/// its value and the span paths of the fields that used it.
#[derive(Debug, Clone, PartialEq)]
pub struct Use {
    pub value: Value,
    pub paths: Vec<String>,
}

/// The references a stage resolved, by expression.
pub type Uses = std::cell::RefCell<BTreeMap<String, Use>>;

/// Records that `expr` resolved to `v` at `path`, when the scope collects uses.
fn note_use(scope: &Scope, expr: &str, v: &Value, path: &str) {
    let Some(uses) = scope.uses else { return };
    if expr.split('.').next() == Some("prev") {
        return; // a stage id: its change shows as an input change
    }
    let mut uses = uses.borrow_mut();
    let u = uses.entry(expr.to_string()).or_insert_with(|| Use {
        value: v.clone(),
        paths: Vec::new(),
    });
    if !u.paths.iter().any(|p| p == path) {
        u.paths.push(path.to_string());
    }
}

/// A failed reference: the dotted manifest path of the string that holds it, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpError {
    pub path: String,
    pub message: String,
}

const ROOTS: &[&str] = &["params", "prev", "round", "matrix"];

/// Interpolates every string inside `v`. `shell` strings (a command's `cmd` and `env`) leave
/// `${NAME}` alone when NAME is not one of pollard's roots, since the shell expands those.
pub fn interpolate(
    v: &Value,
    scope: &Scope,
    path: &str,
    shell: bool,
    errs: &mut Vec<InterpError>,
) -> Value {
    match v {
        Value::String(s) => interpolate_str(s, scope, path, shell, errs),
        Value::Object(m) => {
            let mut out = Mapping::with_capacity(m.len());
            for (k, val) in m {
                out.insert(
                    k.clone(),
                    interpolate(val, scope, &join(path, k), shell, errs),
                );
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| interpolate(item, scope, &join(path, &i.to_string()), shell, errs))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

enum Piece<'s> {
    Text(String),
    Ref(&'s str),
}

/// Splits a string into literal text and references; None (with an error) when a `${` is
/// never closed.
fn split(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            // `$${` is an escaped literal `${`.
            text.push_str(&rest[..i - 1]);
            text.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        text.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("`${{` without a closing `}}` in `{s}`"));
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Ref(&after[..end]));
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn interpolate_str(
    s: &str,
    scope: &Scope,
    path: &str,
    shell: bool,
    errs: &mut Vec<InterpError>,
) -> Value {
    if !s.contains("${") {
        return Value::String(s.to_string());
    }
    let pieces = match split(s) {
        Ok(p) => p,
        Err(message) => {
            errs.push(InterpError {
                path: path.to_string(),
                message,
            });
            return Value::String(s.to_string());
        }
    };
    if let [Piece::Ref(expr)] = pieces.as_slice() {
        if !shell || is_pollard_ref(expr) {
            return match resolve(expr.trim(), scope) {
                Ok(v) => {
                    note_use(scope, expr.trim(), &v, path);
                    v
                }
                Err(message) => {
                    errs.push(InterpError {
                        path: path.to_string(),
                        message,
                    });
                    Value::String(s.to_string())
                }
            };
        }
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Ref(expr) if shell && !is_pollard_ref(expr) => {
                out.push_str("${");
                out.push_str(expr);
                out.push('}');
            }
            Piece::Ref(expr) => {
                let resolved = resolve(expr.trim(), scope).and_then(|v| {
                    note_use(scope, expr.trim(), &v, path);
                    format_scalar(expr.trim(), &v)
                });
                match resolved {
                    Ok(text) => out.push_str(&text),
                    Err(message) => errs.push(InterpError {
                        path: path.to_string(),
                        message,
                    }),
                }
            }
        }
    }
    Value::String(out)
}

fn is_pollard_ref(expr: &str) -> bool {
    let root = expr.trim().split('.').next().unwrap_or("");
    ROOTS.contains(&root)
}

fn format_scalar(expr: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".into()),
        Value::Object(_) | Value::Array(_) => Err(format!(
            "`${{{expr}}}` is a {} and cannot be formatted into a longer string (use it as the whole value)",
            if v.is_object() { "map" } else { "list" }
        )),
    }
}

/// Resolves one reference such as `params.arch.hidden`, `prev`, `round.target`, `matrix.method`.
pub fn resolve(expr: &str, scope: &Scope) -> Result<Value, String> {
    let mut segs = expr.split('.');
    let root = segs.next().unwrap_or("");
    let rest: Vec<&str> = segs.collect();
    // Walked by reference: cloning `params` per reference made expansion cost grow with the
    // number of stages times the size of `params` (a 5,000-stage manifest with 1,000 params).
    let matrix_map;
    let (base, what): (&Value, &str) = match root {
        "params" => (scope.params, "params"),
        "prev" => {
            let Some(prev) = scope.prev else {
                return Err("`${prev}` is only available inside a `repeat` group's stages".into());
            };
            if !rest.is_empty() {
                return Err(format!(
                    "`${{{expr}}}`: `prev` is a stage id and has no fields"
                ));
            }
            return Ok(Value::String(prev.to_string()));
        }
        "round" => match scope.round {
            Some(r) => (r, "round"),
            None => {
                return Err(format!(
                    "`${{{expr}}}`: `round` is only available inside a `repeat` group's stages"
                ))
            }
        },
        "matrix" => match scope.matrix {
            Some(m) => {
                let map: Mapping = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                matrix_map = Value::Object(map);
                (&matrix_map, "matrix")
            }
            None => {
                return Err(format!(
                    "`${{{expr}}}`: `matrix` is only available inside a `matrix` group's stages"
                ))
            }
        },
        other => {
            let hint = closest(other, ROOTS.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(format!("unknown reference `${{{expr}}}`: references start with `params.`, `prev`, `round.` or `matrix.`{hint}"));
        }
    };
    let mut cur = base;
    let mut walked = what.to_string();
    for seg in rest {
        let next = match cur {
            Value::Object(m) => m.get(seg).ok_or_else(|| {
                let names: Vec<String> = m.keys().cloned().collect();
                let hint = closest(seg, names.iter().map(|s| s.as_str())).map(|c| format!("; did you mean `{c}`?")).unwrap_or_default();
                format!("unknown reference `${{{expr}}}`: `{walked}` has no `{seg}` (it has: {}){hint}", names.join(", "))
            })?,
            Value::Array(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .ok_or_else(|| format!("unknown reference `${{{expr}}}`: `{walked}` is a list of {} and `{seg}` is not an index in it", items.len()))?,
            _ => return Err(format!("unknown reference `${{{expr}}}`: `{walked}` is not a map")),
        };
        walked.push('.');
        walked.push_str(seg);
        cur = next;
    }
    Ok(cur.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        crate::yaml::from_str(s).unwrap()
    }

    fn run(v: &str, scope: &Scope, shell: bool) -> (Value, Vec<InterpError>) {
        let mut errs = Vec::new();
        let out = interpolate(&y(v), scope, "x", shell, &mut errs);
        (out, errs)
    }

    #[test]
    fn a_whole_reference_keeps_its_type() {
        let params = y("{ seed: 7, arch: { hidden: 256 } }");
        let scope = Scope {
            params: &params,
            prev: None,
            round: None,
            matrix: None,
            uses: None,
        };
        let (out, errs) = run("{ a: '${params.arch}', b: '${params.seed}', c: 'seed-${params.seed}-${params.arch.hidden}' }", &scope, false);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(out, y("{ a: { hidden: 256 }, b: 7, c: seed-7-256 }"));
    }

    #[test]
    fn unknown_references_are_errors_with_suggestions() {
        let params = y("{ seed: 7 }");
        let scope = Scope {
            params: &params,
            prev: None,
            round: None,
            matrix: None,
            uses: None,
        };
        let (_, errs) = run(
            "{ a: '${params.sed}', b: '${prev}', c: '${parms.seed}', d: 'x ${params.seed' }",
            &scope,
            false,
        );
        let messages: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs[0].path, "x.a");
        assert!(
            messages[0].contains("`params` has no `sed` (it has: seed); did you mean `seed`?"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("only available inside a `repeat`"),
            "{messages:?}"
        );
        assert!(
            messages[2].contains("did you mean `params`?"),
            "{messages:?}"
        );
        assert!(messages[3].contains("without a closing"), "{messages:?}");
    }

    #[test]
    fn shell_strings_keep_shell_variables_and_escapes() {
        let params = y("{ n: 3 }");
        let scope = Scope {
            params: &params,
            prev: None,
            round: None,
            matrix: None,
            uses: None,
        };
        let (out, errs) = run(
            "'echo ${POLLARD_OUT} ${params.n} $${params.n}'",
            &scope,
            true,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            out,
            Value::String("echo ${POLLARD_OUT} 3 ${params.n}".into())
        );
        let (_, errs) = run("'${params.n'", &scope, true);
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn group_scopes_resolve() {
        let params = Value::Null;
        let round = y("{ name: half, target: { hidden: 192 } }");
        let m = BTreeMap::from([("method".to_string(), y("magnitude"))]);
        let scope = Scope {
            params: &params,
            prev: Some("teacher"),
            round: Some(&round),
            matrix: Some(&m),
            uses: None,
        };
        let (out, errs) = run(
            "['${prev}', '${round.target}', '${matrix.method}', '${round.target.hidden}x']",
            &scope,
            false,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(out, y("[teacher, { hidden: 192 }, magnitude, 192x]"));
        let (_, errs) = run("'a ${round.target}'", &scope, false);
        assert!(errs[0].message.contains("is a map and cannot be formatted"));
    }
}
