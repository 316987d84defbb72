//! Manifest diagnostics: every problem found while parsing, expanding and validating a manifest,
//! each with `file:line:col`, the stage id when there is one, and the offending value. The engine
//! gathers them all before failing, so a user fixes a manifest in one pass.

use std::fmt;

use serde::Serialize;

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub stage: Option<String>,
    pub message: String,
}

impl Diagnostic {
    /// A problem with stage `i` of `spec`, at the stage's position in the manifest.
    pub fn at_stage(spec: &crate::spec::PipelineSpec, i: usize, message: String) -> Diagnostic {
        let stage = &spec.stages[i];
        Diagnostic {
            file: spec.file.clone(),
            line: stage.pos.line,
            col: stage.pos.col,
            stage: Some(stage.id.clone()),
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// All the problems of one manifest, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Sorts by position (then message) and drops exact duplicates.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (a.line, a.col, &a.message).cmp(&(b.line, b.col, &b.message)));
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in the manifest",
            if n == 1 { "" } else { "s" }
        )
    }
}
