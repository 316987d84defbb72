//! Which executor a run uses: the manifest's top-level `executor:` (`local`, or
//! `{ slurm: { partition, account, time, extra } }`), which `run --executor` and the `--slurm-*`
//! flags override field by field. Where stages run enters no cache key.

use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics};
use crate::error::EngineError;
use crate::job::ManifestText;

use super::SlurmOptions;

/// The manifest's choice.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutorChoice {
    Local,
    Slurm(SlurmOptions),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SlurmFields {
    partition: Option<String>,
    account: Option<String>,
    time: Option<String>,
    /// Further `sbatch` arguments: a list, or one string split on whitespace.
    #[serde(default)]
    extra: Extra,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Extra {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// The manifest's `executor:`, if it has one (Err: a manifest error naming its line).
pub fn from_manifest(m: &ManifestText) -> Result<Option<ExecutorChoice>, EngineError> {
    let doc: crate::yaml::Value = match crate::yaml::from_str(&m.text) {
        Ok(v) => v,
        // The manifest was validated already; nothing more to say here.
        Err(_) => return Ok(None),
    };
    from_value(m, doc.get("executor"))
}

/// [`from_manifest`] on the manifest's already parsed `executor` value (the workspace keeps it,
/// so a large manifest is not parsed again).
pub fn from_value(
    m: &ManifestText,
    value: Option<&crate::yaml::Value>,
) -> Result<Option<ExecutorChoice>, EngineError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let line = m
        .text
        .lines()
        .position(|l| l.starts_with("executor:"))
        .map_or(1, |i| i + 1);
    let bad = |message: String| {
        EngineError::Manifest(Diagnostics(vec![Diagnostic {
            file: m.file.clone(),
            line,
            col: 1,
            stage: None,
            message,
        }]))
    };
    const SHAPE: &str =
        "`executor` must be `local` or `{ slurm: { partition, account, time, extra } }`";
    let slurm = match value {
        crate::yaml::Value::String(s) if s == "local" => return Ok(Some(ExecutorChoice::Local)),
        crate::yaml::Value::Object(m) if m.len() == 1 && m.contains_key("slurm") => &m["slurm"],
        _ => {
            return Err(bad(format!(
                "{SHAPE}, found {}",
                crate::yaml::inline(value)
            )))
        }
    };
    let f: SlurmFields = if slurm.is_null() {
        SlurmFields::default()
    } else {
        crate::yaml::from_value(slurm.clone()).map_err(|e| bad(format!("{SHAPE}: {e}")))?
    };
    Ok(Some(ExecutorChoice::Slurm(SlurmOptions {
        partition: f.partition,
        account: f.account,
        time: f.time,
        extra: match f.extra {
            Extra::None => Vec::new(),
            Extra::One(s) => s.split_whitespace().map(str::to_string).collect(),
            Extra::Many(v) => v,
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> ManifestText {
        ManifestText {
            file: "pollard.yaml".into(),
            dir: ".".into(),
            text: t.into(),
            overrides: Vec::new(),
        }
    }

    #[test]
    fn reads_local_and_slurm_with_its_fields() {
        assert_eq!(from_manifest(&text("pipeline: p\n")).unwrap(), None);
        assert_eq!(
            from_manifest(&text("pipeline: p\nexecutor: local\n")).unwrap(),
            Some(ExecutorChoice::Local)
        );
        let m = "pipeline: p\nexecutor: { slurm: { partition: gpu, time: '1:00:00', extra: --qos=high --exclusive } }\n";
        assert_eq!(
            from_manifest(&text(m)).unwrap(),
            Some(ExecutorChoice::Slurm(SlurmOptions {
                partition: Some("gpu".into()),
                account: None,
                time: Some("1:00:00".into()),
                extra: vec!["--qos=high".into(), "--exclusive".into()],
            }))
        );
    }

    #[test]
    fn an_unknown_executor_field_names_the_line() {
        let e = from_manifest(&text(
            "pipeline: p\nexecutor:\n  slurm: { partitoin: gpu }\n",
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("pollard.yaml:2:1"), "{msg}");
        assert!(msg.contains("partitoin"), "{msg}");
    }
}
