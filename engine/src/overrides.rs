//! Command-line overrides (`pollard run -S params.distill.lr=1e-4`): each `PATH=VALUE` replaces
//! one value of the manifest tree before it is read into stages, so an experiment runs the
//! manifest with other values without editing it. Paths follow the manifest as written:
//! `params.lr`, `stages.teacher.with.tokens`; list items by index or by their `name`
//! (`stages.shrink.repeat.rounds.half.target.ffn`), and `round.NAME.…` as a short form for the
//! round of that name in whichever `repeat` group has it. A path must exist: a typo is refused
//! with a did-you-mean, never silently added as a new field.

use std::path::{Path, PathBuf};

use crate::yaml::Value;
use serde::{Deserialize, Serialize};

use crate::registry::closest;
use crate::yaml::inline;

/// One `-S PATH=VALUE`, its value parsed as YAML (`1e-4` a number, `true` a boolean, `kl` a
/// string, `{ hidden: 128 }` a map).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub path: String,
    pub value: Value,
    /// The argument as given, for records and messages.
    pub text: String,
}

impl Override {
    pub fn parse(arg: &str) -> Result<Override, String> {
        let Some((path, value)) = arg.split_once('=') else {
            return Err(format!(
                "-S {arg}: expected PATH=VALUE (e.g. -S params.lr=1e-4)"
            ));
        };
        let path = path.trim();
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!("-S {arg}: `{path}` is not a dotted path"));
        }
        let value: Value = crate::yaml::from_str(value)
            .map_err(|e| format!("-S {arg}: the value is not valid YAML: {e}"))?;
        Ok(Override {
            path: path.to_string(),
            value,
            text: arg.to_string(),
        })
    }
}

/// Applies every override to the manifest tree `root`, in order. All problems at once.
pub fn apply(root: &mut Value, overrides: &[Override]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    for ov in overrides {
        match resolve(root, &ov.path) {
            Ok(segments) => {
                let slot = walk_mut(root, &segments).expect("resolve checked every segment");
                *slot = ov.value.clone();
            }
            Err(e) => errors.push(format!("-S {}: {e}", ov.text)),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Where a run with overrides keeps its lock file: the manifest's own lock stays the record of
/// the manifest as written (it is what version control shares), so an experiment is recorded
/// beside it under `.pollard/experiments/<stem>-<digest of the overrides>.lock`. The same
/// overrides find the same record again, which `status -S` and a rerun use.
pub fn experiment_lock_path(lock_path: &Path, state_dir: &Path, overrides: &[Override]) -> PathBuf {
    let mut texts: Vec<String> = overrides
        .iter()
        .map(|o| {
            let v = serde_json::to_value(&o.value).unwrap_or(serde_json::Value::Null);
            format!("{}={}", o.path, crate::canonical::canonical_json(&v))
        })
        .collect();
    texts.sort();
    let digest = blake3::hash(texts.join("\n").as_bytes()).to_hex();
    let stem = lock_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pollard".into());
    state_dir
        .join("experiments")
        .join(format!("{stem}-{}.lock", &digest[..12]))
}

/// A path step: a map key, or a list index.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// The steps `path` takes through `root`, or why it does not exist.
fn resolve(root: &Value, path: &str) -> Result<Vec<Step>, String> {
    let segs: Vec<&str> = path.split('.').collect();
    if segs[0] == "round" && segs.len() >= 3 {
        return resolve_round(root, segs[1], &segs[2..]);
    }
    descend(root, &segs, String::new())
}

fn descend(mut node: &Value, segs: &[&str], mut at: String) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for seg in segs {
        let (step, next) =
            match node {
                Value::Object(m) => {
                    let Some((k, v)) = m.iter().find(|(k, _)| k.as_str() == *seg) else {
                        let keys: Vec<String> = m.keys().cloned().collect();
                        let hint = closest(seg, keys.iter().map(String::as_str))
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_default();
                        return Err(format!(
                            "{} has no `{seg}` (it has: {}){hint}",
                            describe(&at),
                            keys.join(", ")
                        ));
                    };
                    (Step::Key(k.clone()), v)
                }
                Value::Array(items) => {
                    let by_index = seg.parse::<usize>().ok().filter(|&i| i < items.len());
                    let by_name = || {
                        items
                            .iter()
                            .position(|it| it.get("name").map(inline).as_deref() == Some(*seg))
                    };
                    let Some(i) = by_index.or_else(by_name) else {
                        let names: Vec<String> = items
                            .iter()
                            .filter_map(|it| it.get("name").map(inline))
                            .collect();
                        let hint = closest(seg, names.iter().map(String::as_str))
                            .map(|c| format!("; did you mean `{c}`?"))
                            .unwrap_or_default();
                        return Err(format!(
                        "{} is a list of {} with no item `{seg}` (an index, or a `name`: {}){hint}",
                        describe(&at),
                        items.len(),
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    ));
                    };
                    (Step::Index(i), &items[i])
                }
                _ => {
                    return Err(format!(
                        "{} is a single value, it has no `{seg}`",
                        describe(&at)
                    ))
                }
            };
        steps.push(step);
        node = next;
        at = if at.is_empty() {
            seg.to_string()
        } else {
            format!("{at}.{seg}")
        };
    }
    Ok(steps)
}

fn describe(at: &str) -> String {
    if at.is_empty() {
        "the manifest".to_string()
    } else {
        format!("`{at}`")
    }
}

/// `round.NAME.rest`: the round called NAME in the one `repeat` group (at any depth of
/// `stages`) that has it.
fn resolve_round(root: &Value, name: &str, rest: &[&str]) -> Result<Vec<Step>, String> {
    let mut found: Vec<String> = Vec::new();
    let mut all_names: Vec<String> = Vec::new();
    if let Some(Value::Object(stages)) = root.get("stages") {
        for (gid, group) in stages {
            if let Some(Value::Array(rounds)) = group.get("repeat").and_then(|r| r.get("rounds")) {
                for r in rounds {
                    if let Some(n) = r.get("name").map(inline) {
                        if n == name {
                            found.push(format!("stages.{}.repeat.rounds.{n}", gid));
                        }
                        all_names.push(n);
                    }
                }
            }
        }
    }
    match found.as_slice() {
        [one] => {
            let full = format!("{one}.{}", rest.join("."));
            let segs: Vec<&str> = full.split('.').collect();
            descend(root, &segs, String::new())
        }
        [] => {
            let hint = closest(name, all_names.iter().map(String::as_str))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            Err(format!(
                "no `repeat` group has a round `{name}` (rounds: {}){hint}",
                if all_names.is_empty() {
                    "none".to_string()
                } else {
                    all_names.join(", ")
                }
            ))
        }
        many => Err(format!(
            "round `{name}` is in several groups ({}): give the whole path",
            many.join(", ")
        )),
    }
}

fn walk_mut<'a>(mut node: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    for step in steps {
        node = match (step, node) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Step::Index(i), Value::Array(s)) => s.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "pipeline: p
params: { lr: 1.0e-3, distill: { tokens: 1M } }
stages:
  shrink:
    repeat:
      from: teacher
      rounds:
        - { name: half, target: { hidden: 192, ffn: 512 } }
        - { name: quarter, target: { hidden: 128, ffn: 384 } }
      result: distill
    stages: {}
";

    fn root() -> Value {
        crate::yaml::from_str(MANIFEST).unwrap()
    }

    fn set(args: &[&str]) -> Result<Value, Vec<String>> {
        let ovs: Vec<Override> = args.iter().map(|a| Override::parse(a).unwrap()).collect();
        let mut r = root();
        apply(&mut r, &ovs).map(|()| r)
    }

    #[test]
    fn values_are_parsed_as_yaml_and_replace_the_field() {
        let r = set(&["params.lr=1e-4", "params.distill.tokens=2M"]).unwrap();
        assert_eq!(r["params"]["lr"].as_f64(), Some(1e-4));
        assert_eq!(r["params"]["distill"]["tokens"].as_str(), Some("2M"));
    }

    #[test]
    fn rounds_are_addressed_by_name_index_or_the_round_short_form() {
        let r = set(&["round.half.target.ffn=448"]).unwrap();
        let rounds = &r["stages"]["shrink"]["repeat"]["rounds"];
        assert_eq!(rounds[0]["target"]["ffn"].as_u64(), Some(448));
        let r = set(&["stages.shrink.repeat.rounds.1.target.hidden=96"]).unwrap();
        assert_eq!(
            r["stages"]["shrink"]["repeat"]["rounds"][1]["target"]["hidden"].as_u64(),
            Some(96)
        );
    }

    #[test]
    fn a_path_that_does_not_exist_is_refused_with_did_you_mean() {
        let e = set(&[
            "params.distil.tokens=1",
            "round.hlaf.target.ffn=1",
            "params.lr.x=1",
        ])
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].contains(
                "`params` has no `distil` (it has: lr, distill); did you mean `distill`?"
            ),
            "{}",
            e[0]
        );
        assert!(e[1].contains("no `repeat` group has a round `hlaf` (rounds: half, quarter); did you mean `half`?"), "{}", e[1]);
        assert!(e[2].contains("`params.lr` is a single value"), "{}", e[2]);
    }

    #[test]
    fn a_malformed_override_is_refused() {
        assert!(Override::parse("params.lr")
            .unwrap_err()
            .contains("expected PATH=VALUE"));
        assert!(Override::parse("params..lr=1")
            .unwrap_err()
            .contains("not a dotted path"));
    }

    #[test]
    fn the_experiment_record_depends_on_the_overrides_not_their_order() {
        let a = [
            Override::parse("params.lr=1e-4").unwrap(),
            Override::parse("params.x=1").unwrap(),
        ];
        let b = [a[1].clone(), a[0].clone()];
        let c = [Override::parse("params.lr=2e-4").unwrap()];
        let lock = Path::new("/w/tiny.lock");
        let state = Path::new("/w/.pollard");
        let pa = experiment_lock_path(lock, state, &a);
        assert_eq!(pa, experiment_lock_path(lock, state, &b));
        assert_ne!(pa, experiment_lock_path(lock, state, &c));
        assert!(pa.starts_with("/w/.pollard/experiments"));
        assert!(pa
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tiny-"));
    }
}
