//! Task files -> items: one JSON object per line of a JSONL file, in the generic layout
//! (`context`, `choices`, `gold`) or in the usual layouts of HellaSwag, ARC, MMLU, Winogrande and
//! PIQA, each turned into what lm-evaluation-harness's `doc_to_text` / `doc_to_choice` /
//! `doc_to_target` give for that task (lm_eval/tasks/{hellaswag,arc,mmlu,winogrande,piqa}).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// What a task item asks, as the harness's `doc_to_text` sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// One context; the choices are scored as its continuations.
    Text(String),
    /// Winogrande's partial scoring: the choices are the contexts (the sentence up to the blank
    /// with each option filled in) and every one is scored on the same `suffix`.
    Contexts { suffix: String },
}

/// One multiple-choice item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// 1-based line in the file (for errors and per-item output).
    pub line: usize,
    /// The line's object as read: two items are "the same document" (excluded from their own
    /// few-shot examples) when these are equal, as the harness compares its docs.
    pub raw: Value,
    pub query: Query,
    /// `doc_to_choice`: continuations for [`Query::Text`], contexts for [`Query::Contexts`].
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
    /// Text before the prompt (MMLU's subject line), `""` for most layouts.
    pub description: String,
}

/// The layouts a task file may use; one file holds one layout (found from its first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Generic,
    HellaSwag,
    Arc,
    Mmlu,
    Winogrande,
    Piqa,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Generic => "generic (context, choices, gold)",
            Layout::HellaSwag => "HellaSwag (ctx_a/ctx_b or ctx, endings, label)",
            Layout::Arc => "ARC (question, choices.text, choices.label, answerKey)",
            Layout::Mmlu => "MMLU (question, choices, answer)",
            Layout::Winogrande => "Winogrande (sentence with _, option1, option2, answer)",
            Layout::Piqa => "PIQA (goal, sol1, sol2, label)",
        }
    }

    /// The layout whose keys `obj` has.
    fn detect(obj: &serde_json::Map<String, Value>) -> Option<Layout> {
        let has = |k: &str| obj.contains_key(k);
        Some(if has("sentence") && has("option1") {
            Layout::Winogrande
        } else if has("goal") && has("sol1") {
            Layout::Piqa
        } else if has("endings") {
            Layout::HellaSwag
        } else if has("answerKey") {
            Layout::Arc
        } else if has("question") && has("choices") && has("answer") {
            Layout::Mmlu
        } else if has("context") && has("choices") && has("gold") {
            Layout::Generic
        } else {
            return None;
        })
    }
}

/// A task file that cannot be read as items: names the file, the line and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct LayoutError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

/// Reads every non-blank line of `path` as an item.
pub fn read_items(path: &Path) -> Result<Vec<Item>, LayoutError> {
    let text = std::fs::read_to_string(path).map_err(|e| LayoutError {
        path: path.to_owned(),
        line: 0,
        message: format!("cannot read the task file: {e}"),
    })?;
    parse_items(path, &text)
}

/// Parses JSONL `text` (`path` only names it in errors).
pub fn parse_items(path: &Path, text: &str) -> Result<Vec<Item>, LayoutError> {
    let mut items = Vec::new();
    let mut layout = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| LayoutError {
            path: path.to_owned(),
            line: line_no,
            message,
        };
        let raw: Value =
            serde_json::from_str(line).map_err(|e| err(format!("not a JSON object: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| err("not a JSON object".into()))?;
        let this = Layout::detect(obj).ok_or_else(|| {
            err(format!(
                "unknown layout (keys: {}); expected {}",
                obj.keys().cloned().collect::<Vec<_>>().join(", "),
                ALL.iter().map(|l| l.name()).collect::<Vec<_>>().join("; ")
            ))
        })?;
        let layout = *layout.get_or_insert(this);
        if layout != this {
            return Err(err(format!(
                "layout {} differs from the file's first item ({})",
                this.name(),
                layout.name()
            )));
        }
        let item = to_item(layout, obj, line_no, &raw).map_err(err)?;
        items.push(item);
    }
    if items.is_empty() {
        return Err(LayoutError {
            path: path.to_owned(),
            line: 0,
            message: "holds no items".into(),
        });
    }
    Ok(items)
}

const ALL: [Layout; 6] = [
    Layout::Generic,
    Layout::HellaSwag,
    Layout::Arc,
    Layout::Mmlu,
    Layout::Winogrande,
    Layout::Piqa,
];

type Obj = serde_json::Map<String, Value>;

fn string(o: &Obj, k: &str) -> Result<String, String> {
    match o.get(k) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!("`{k}` must be a string, found {v}")),
        None => Err(format!("`{k}` is missing")),
    }
}

fn strings(v: Option<&Value>, k: &str) -> Result<Vec<String>, String> {
    let arr = v
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{k}` must be a list of strings"))?;
    arr.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("`{k}` must be a list of strings, found {s}"))
        })
        .collect()
}

/// An index given as a number or as a string of digits (HellaSwag's `label` is `"2"`).
fn index(o: &Obj, k: &str) -> Result<usize, String> {
    match o.get(k) {
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| format!("`{k}` must be a non-negative integer, found {n}")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{k}` must be an index, found {s:?}")),
        Some(v) => Err(format!("`{k}` must be an index, found {v}")),
        None => Err(format!("`{k}` is missing")),
    }
}

/// HellaSwag's text clean-up (lm_eval/tasks/hellaswag/utils.py `preprocess`).
fn hellaswag_preprocess(text: &str) -> String {
    let t = text.trim().replace(" [title]", ". ");
    // re.sub("\\[.*?\\]", "", t): drop every shortest bracketed span.
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(open) = rest.find('[') {
        match rest[open..].find(']') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

fn to_item(layout: Layout, o: &Obj, line: usize, raw: &Value) -> Result<Item, String> {
    let mut description = String::new();
    let (query, choices, gold) = match layout {
        Layout::Generic => (
            Query::Text(string(o, "context")?),
            strings(o.get("choices"), "choices")?,
            index(o, "gold")?,
        ),
        Layout::HellaSwag => {
            // The harness joins ctx_a and ctx_b.capitalize(); a file with only `ctx` (which the
            // dataset builds as ctx_a + " " + ctx_b) is used as it is.
            let ctx = match (o.get("ctx_a"), o.get("ctx_b")) {
                (Some(_), Some(_)) => {
                    format!(
                        "{} {}",
                        string(o, "ctx_a")?,
                        capitalize(&string(o, "ctx_b")?)
                    )
                }
                _ => string(o, "ctx")?,
            };
            let query = match o.get("activity_label") {
                Some(_) => format!("{}: {ctx}", string(o, "activity_label")?),
                None => ctx,
            };
            let endings = strings(o.get("endings"), "endings")?;
            (
                Query::Text(hellaswag_preprocess(&query)),
                endings.iter().map(|e| hellaswag_preprocess(e)).collect(),
                index(o, "label")?,
            )
        }
        Layout::Arc => {
            let ch = o
                .get("choices")
                .and_then(Value::as_object)
                .ok_or("`choices` must be an object with `text` and `label`")?;
            let text = strings(ch.get("text"), "choices.text")?;
            let labels = strings(ch.get("label"), "choices.label")?;
            let key = string(o, "answerKey")?;
            let gold = labels.iter().position(|l| *l == key).ok_or_else(|| {
                format!("answerKey {key:?} is not among choices.label {labels:?}")
            })?;
            (
                Query::Text(format!("Question: {}\nAnswer:", string(o, "question")?)),
                text,
                gold,
            )
        }
        Layout::Mmlu => {
            let opts = strings(o.get("choices"), "choices")?;
            if opts.len() != 4 {
                return Err(format!(
                    "MMLU items have 4 choices, this one has {}",
                    opts.len()
                ));
            }
            if let Some(Value::String(subject)) = o.get("subject") {
                description = format!(
                    "The following are multiple choice questions (with answers) about {}.\n\n",
                    subject.replace('_', " ")
                );
            }
            let q = string(o, "question")?;
            (
                Query::Text(format!(
                    "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                    q.trim(),
                    opts[0],
                    opts[1],
                    opts[2],
                    opts[3]
                )),
                ["A", "B", "C", "D"].map(String::from).to_vec(),
                index(o, "answer")?,
            )
        }
        Layout::Winogrande => {
            let sentence = string(o, "sentence")?;
            let blank = sentence
                .find('_')
                .ok_or("`sentence` has no `_` to fill in")?;
            let gold = match index(o, "answer")? {
                1 => 0,
                2 => 1,
                other => return Err(format!("`answer` must be 1 or 2, found {other}")),
            };
            let contexts = vec![
                format!("{}{}", &sentence[..blank], string(o, "option1")?),
                format!("{}{}", &sentence[..blank], string(o, "option2")?),
            ];
            (
                Query::Contexts {
                    suffix: sentence[blank + 1..].trim().to_owned(),
                },
                contexts,
                gold,
            )
        }
        Layout::Piqa => (
            Query::Text(format!("Question: {}\nAnswer:", string(o, "goal")?)),
            vec![string(o, "sol1")?, string(o, "sol2")?],
            index(o, "label")?,
        ),
    };
    if choices.len() < 2 {
        return Err(format!("needs at least 2 choices, has {}", choices.len()));
    }
    if gold >= choices.len() {
        return Err(format!(
            "gold index {gold} is out of range for {} choices",
            choices.len()
        ));
    }
    Ok(Item {
        line,
        raw: raw.clone(),
        query,
        choices,
        gold,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Item {
        parse_items(Path::new("t.jsonl"), line).unwrap().remove(0)
    }

    #[test]
    fn every_layout_reads_as_the_harness_builds_its_prompts() {
        let g = one(r#"{"context": "The cat", "choices": ["sat", "flew"], "gold": 0}"#);
        assert_eq!(g.query, Query::Text("The cat".into()));
        assert_eq!((g.choices.len(), g.gold), (2, 0));

        let h = one(
            r#"{"activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "then he", "endings": ["bakes [title] it.", "sings"], "label": "1"}"#,
        );
        assert_eq!(
            h.query,
            Query::Text("Baking: A man mixes flour. Then he".into())
        );
        assert_eq!(h.choices, vec!["bakes. it.", "sings"]);
        assert_eq!(h.gold, 1);

        let a = one(
            r#"{"question": "2+2?", "choices": {"text": ["3", "4"], "label": ["A", "B"]}, "answerKey": "B"}"#,
        );
        assert_eq!(a.query, Query::Text("Question: 2+2?\nAnswer:".into()));
        assert_eq!(a.gold, 1);

        let m = one(
            r#"{"question": " Q? ", "subject": "abstract_algebra", "choices": ["a", "b", "c", "d"], "answer": 2}"#,
        );
        assert_eq!(
            m.query,
            Query::Text("Q?\nA. a\nB. b\nC. c\nD. d\nAnswer:".into())
        );
        assert_eq!(m.choices, vec!["A", "B", "C", "D"]);
        assert_eq!(
            m.description,
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        );

        let w = one(
            r#"{"sentence": "Anna gave Bea a gift because _ was kind.", "option1": "Anna", "option2": "Bea", "answer": "1"}"#,
        );
        assert_eq!(
            w.query,
            Query::Contexts {
                suffix: "was kind.".into()
            }
        );
        assert_eq!(
            w.choices,
            vec![
                "Anna gave Bea a gift because Anna",
                "Anna gave Bea a gift because Bea"
            ]
        );
        assert_eq!(w.gold, 0);

        let p = one(r#"{"goal": "Open a jar", "sol1": "twist", "sol2": "bite", "label": 0}"#);
        assert_eq!(p.query, Query::Text("Question: Open a jar\nAnswer:".into()));
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let text = "{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0}\n\n{\"context\": \"b\", \"choices\": [\"x\", \"y\"], \"gold\": 5}\n";
        let e = parse_items(Path::new("data/t.jsonl"), text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data/t.jsonl:3: gold index 5 is out of range for 2 choices"
        );
        let e = parse_items(Path::new("t.jsonl"), "{\"foo\": 1}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.jsonl:1: unknown layout (keys: foo)"),
            "{e}"
        );
        let e = parse_items(Path::new("t.jsonl"), "not json").unwrap_err();
        assert!(
            e.to_string().starts_with("t.jsonl:1: not a JSON object"),
            "{e}"
        );
        let e = parse_items(Path::new("t.jsonl"), "\n").unwrap_err();
        assert_eq!(e.to_string(), "t.jsonl:0: holds no items");
    }
}
