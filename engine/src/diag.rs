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
            stage: Some(stage.id.to_string()),
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

    /// Sorts by position (then message) and reports each mistake once: the same message at the
    /// same place from several copies of one template (`repeat` rounds, `matrix` copies) becomes
    /// one diagnostic whose stage names the template, the differing parts of the ids as `*`
    /// (`shrink.*.distill`).
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.message).cmp(&(&b.file, b.line, b.col, &b.message))
        });
        let mut out: Vec<Diagnostic> = Vec::with_capacity(self.0.len());
        for d in self.0.drain(..) {
            match out.last_mut() {
                Some(last)
                    if last.file == d.file
                        && last.line == d.line
                        && last.col == d.col
                        && last.message == d.message =>
                {
                    last.stage = match (last.stage.take(), d.stage) {
                        (Some(a), Some(b)) => Some(template_id(&a, &b)),
                        (a, b) => a.or(b),
                    };
                }
                _ => out.push(d),
            }
        }
        self.0 = out;
    }
}

/// Two expanded ids of one template stage -> the template: equal dotted parts kept, differing
/// ones as `*` (`shrink.half.distill` + `shrink.quarter.distill` -> `shrink.*.distill`).
fn template_id(a: &str, b: &str) -> String {
    let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    if pa.len() != pb.len() {
        return a.to_string();
    }
    pa.iter()
        .zip(&pb)
        .map(|(x, y)| if x == y { *x } else { "*" })
        .collect::<Vec<_>>()
        .join(".")
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
