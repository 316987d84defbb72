//! The parameter fields a stage kind accepts in `with`, found by asking its own decoder: a
//! probe map with one unknown key makes serde's `deny_unknown_fields` list the expected
//! fields, and each field is probed the same way for nested structs. The reference in `docs/`
//! is checked against this list, so the documentation cannot drift from the code.

use crate::yaml::{Mapping, Value};

use crate::registry::ErasedStage;

const PROBE: &str = "zz_probe_field";

/// Every field path (`arch`, `arch.hidden`, `loss.logits`) of `kind`'s params, sorted.
pub fn param_fields(kind: &dyn ErasedStage) -> Vec<String> {
    let mut out = Vec::new();
    probe(kind, &[], &mut out);
    out.sort();
    out.dedup();
    out
}

/// `{a: {b: {PROBE: 1}}}` for the path `[a, b]`.
fn nested(path: &[String]) -> Value {
    let mut v = Value::Object(Mapping::from_iter([(PROBE.to_string(), Value::from(1))]));
    for p in path.iter().rev() {
        v = Value::Object(Mapping::from_iter([(p.clone(), v)]));
    }
    v
}

fn probe(kind: &dyn ErasedStage, path: &[String], out: &mut Vec<String>) {
    if path.len() > 4 {
        return;
    }
    let Err(e) = kind.decode(&nested(path)) else {
        return;
    };
    // serde_path_to_error puts the unknown key itself on the path for some structs.
    let here = path.join(".");
    let at_probe = if here.is_empty() {
        PROBE.to_string()
    } else {
        format!("{here}.{PROBE}")
    };
    if (e.field != here && e.field != at_probe)
        || !e.message.starts_with(&format!("unknown field `{PROBE}`"))
    {
        return; // not a struct with known fields here
    }
    let Some((_, expected)) = e.message.split_once("expected") else {
        return;
    };
    let expected = expected.split(" (did you mean").next().unwrap_or(expected);
    for name in expected.split('`').skip(1).step_by(2) {
        let mut p = path.to_vec();
        p.push(name.to_string());
        out.push(p.join("."));
        probe(kind, &p, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn the_command_kind_has_cmd_deps_and_env() {
        let r = Registry::new();
        let k = r.get("command").unwrap();
        let e = k.decode(&nested(&[])).unwrap_err();
        assert_eq!(
            param_fields(k.as_ref()),
            vec!["cmd", "deps", "env"],
            "{e:?}"
        );
    }
}
