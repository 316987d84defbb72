//! Source positions for manifest values. serde_yaml's `Value` carries no spans, so the same text
//! is read a second time with yaml-rust2's event parser, recording where each key and value
//! starts under its dotted path (`stages.teacher.with.lr`, `stages.report.deps.0`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

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
    /// Where the nesting first went past [`MAX_DEPTH`]; the walk stopped there.
    pub too_deep: Option<Pos>,
}

/// The deepest nesting of maps and lists a manifest may have. Real recipes nest about six
/// levels; the limit stops a pathological file before its paths (whose length grows with the
/// depth) cost quadratic time, and stays below serde_yaml's own recursion limit of 128.
pub const MAX_DEPTH: usize = 64;

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Recorder {
    map: SpanMap,
    stack: Vec<Frame>,
    /// Depth of a complex (non-scalar) key being skipped; such keys are not addressable.
    skipping: usize,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

fn pos(m: Marker) -> Pos {
    // yaml-rust2 reports 1-based lines and 0-based columns.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

impl Recorder {
    /// The path a value arriving now belongs to, or None when a map key is expected.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { path, key: Some(k) }) => Some(join(path, k)),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Seq { path, index }) => Some(join(path, &index.to_string())),
        }
    }

    /// After a complete value: the enclosing map waits for its next key, a sequence advances.
    fn finish_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.skipping > 0 {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => self.skipping += 1,
                Event::MappingEnd | Event::SequenceEnd => {
                    self.skipping -= 1;
                    if self.skipping == 0 {
                        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                            *key = Some("?".into());
                        }
                    }
                }
                _ => {}
            }
            return;
        }
        match ev {
            Event::Scalar(text, ..) => match self.value_path() {
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        self.map.keys.insert(join(path, &text), pos(mark));
                        *key = Some(text);
                    }
                }
                Some(path) => {
                    self.map.values.insert(path, pos(mark));
                    self.finish_value();
                }
            },
            Event::Alias(_) => {
                if let Some(path) = self.value_path() {
                    self.map.values.insert(path, pos(mark));
                    self.finish_value();
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => match self.value_path() {
                None => self.skipping = 1,
                Some(path) => {
                    self.map.values.insert(path.clone(), pos(mark));
                    let frame = if matches!(ev, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, index: 0 }
                    };
                    self.stack.push(frame);
                }
            },
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.finish_value();
            }
            _ => {}
        }
    }
}

impl SpanMap {
    /// Positions of everything in `text` that parses (a syntax error stops the walk there;
    /// serde_yaml reports the error itself).
    pub fn parse(text: &str) -> SpanMap {
        let mut rec = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        let mut depth = 0usize;
        // Event by event rather than `Parser::load`, so that a too-deep file stops at once.
        loop {
            let (ev, mark) = match parser.next_token() {
                Ok(e) => e,
                // The scanner's own limit on flow nesting (`[[[...`) comes before ours.
                Err(e) if e.info().contains("recursion limit") => {
                    rec.map.too_deep = Some(pos(*e.marker()));
                    break;
                }
                Err(_) => break,
            };
            match ev {
                Event::StreamEnd | Event::DocumentEnd => break,
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        rec.map.too_deep = Some(pos(mark));
                        break;
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
                _ => {}
            }
            rec.on_event(ev, mark);
        }
        rec.map
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

    const TEXT: &str = "pipeline: p\nstages:\n  a:\n    kind: command\n    deps: [x, y]\n    with: { n: 3 }\n  b: { kind: train }\n";

    #[test]
    fn keys_and_values_have_one_based_positions() {
        let m = SpanMap::parse(TEXT);
        assert_eq!(m.key("pipeline"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(m.value("pipeline"), Some(Pos { line: 1, col: 11 }));
        assert_eq!(m.key("stages.a.kind"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(m.value("stages.a.deps.1"), Some(Pos { line: 5, col: 15 }));
        assert_eq!(m.value("stages.a.with.n"), Some(Pos { line: 6, col: 16 }));
        assert_eq!(m.value("stages.b.kind"), Some(Pos { line: 7, col: 14 }));
    }

    #[test]
    fn locate_falls_back_to_ancestors() {
        let m = SpanMap::parse(TEXT);
        assert_eq!(m.locate("stages.a.with.missing"), Pos { line: 6, col: 11 });
        assert_eq!(m.locate_key("stages.a.kind"), Pos { line: 4, col: 5 });
    }

    #[test]
    fn deep_nesting_stops_the_walk_at_the_limit() {
        let d = 100_000;
        let text = format!("a: {}{}\n", "[".repeat(d), "]".repeat(d));
        let m = SpanMap::parse(&text);
        assert!(m.too_deep.is_some_and(|p| p.line == 1), "{:?}", m.too_deep);
        let text = format!(
            "a:\n{}",
            (0..200)
                .map(|i| format!("{}- \n", "  ".repeat(i)))
                .collect::<String>()
        );
        assert!(SpanMap::parse(&text).too_deep.is_some());
        assert_eq!(SpanMap::parse(TEXT).too_deep, None);
    }

    #[test]
    fn syntax_errors_keep_what_was_read() {
        let m = SpanMap::parse("a: 1\nb: [\n");
        assert_eq!(m.value("a"), Some(Pos { line: 1, col: 4 }));
    }
}
