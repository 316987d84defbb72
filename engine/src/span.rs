//! Source positions for manifest values: where each key and value starts, under its dotted
//! path (`stages.teacher.with.lr`, `stages.report.deps.0`). Filled by the one parse in yaml.rs.

use std::collections::HashMap;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Dotted path -> position of its key and of its value.
#[derive(Debug, Default, Clone)]
pub struct SpanMap {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
}

impl SpanMap {
    pub(crate) fn set_key(&mut self, path: &str, pos: Pos) {
        self.keys.insert(path.to_string(), pos);
    }

    pub(crate) fn set_value(&mut self, path: &str, pos: Pos) {
        self.values.insert(path.to_string(), pos);
    }

    /// Where the key of `path` is written.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied()
    }

    /// Where the value of `path` starts.
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.values.get(path).copied()
    }

    /// The best position for a message about `path`: its value, else its key, else the nearest
    /// ancestor that has one, else the top of the file.
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.value(p).or_else(|| self.key(p)) {
                if !p.is_empty() || pos.line > 0 {
                    return pos;
                }
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None if !p.is_empty() => p = "",
                None => return Pos { line: 1, col: 1 },
            }
        }
    }

    /// Like [`SpanMap::locate`] but prefers the key (for "unknown field" messages).
    pub fn locate_key(&self, path: &str) -> Pos {
        self.key(path).unwrap_or_else(|| self.locate(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_falls_back_to_ancestors_then_the_top() {
        let mut m = SpanMap::default();
        m.set_key("stages.a.with", Pos { line: 6, col: 5 });
        m.set_value("stages.a.with", Pos { line: 6, col: 11 });
        m.set_key("stages.a.kind", Pos { line: 4, col: 5 });
        assert_eq!(m.locate("stages.a.with.missing"), Pos { line: 6, col: 11 });
        assert_eq!(m.locate_key("stages.a.kind"), Pos { line: 4, col: 5 });
        assert_eq!(m.locate("nothing.here"), Pos { line: 1, col: 1 });
    }
}
