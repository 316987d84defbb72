//! Text -> documents -> train/val: the `dataset` stage splits its text into documents at blank
//! lines and sends an evenly spaced, deterministic fraction of them to validation, so the
//! validation set samples the whole source (every file, early and late text) and never shares
//! a document with training.

/// The documents of `text`: runs of non-blank lines separated by one or more blank lines
/// (whitespace-only lines count as blank). Each slice starts at its first line and ends after
/// its last non-whitespace character, so `\r\n` and trailing spaces are dropped.
pub fn documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed.trim_start().is_empty() {
            if let Some(s) = start.take() {
                docs.push(&text[s..end]);
            }
        } else {
            if start.is_none() {
                start = Some(offset);
            }
            end = offset + trimmed.len();
        }
        offset += line.len();
    }
    if let Some(s) = start {
        docs.push(&text[s..end]);
    }
    docs
}

/// Whether document `index` goes to validation when `val_fraction` of the documents should:
/// the val documents are those where `round(index * f)` steps up, which spaces them evenly and
/// makes their count exactly `round(n * f)` for any prefix of n documents.
pub fn is_val(index: usize, val_fraction: f64) -> bool {
    let f = val_fraction;
    ((index as f64 + 1.0) * f + 0.5).floor() > (index as f64 * f + 0.5).floor()
}

/// The documents to split when `val_fraction` of them should go to validation: `docs` as
/// they are when that holds out at least one, else (a single file written without blank
/// lines, say) every non-blank line as its own document, so validation is split within the
/// text. Still none held out (a one-line text) is for the caller to refuse.
pub fn for_validation(docs: Vec<&str>, val_fraction: f64) -> Vec<&str> {
    let holds_out = |n: usize| (0..n).any(|i| is_val(i, val_fraction));
    if val_fraction <= 0.0 || holds_out(docs.len()) {
        return docs;
    }
    let lines: Vec<&str> = docs
        .iter()
        .flat_map(|d| d.lines())
        .map(str::trim_end)
        .filter(|l| !l.trim_start().is_empty())
        .collect();
    if lines.len() > docs.len() {
        lines
    } else {
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_document_is_split_at_lines_for_validation() {
        let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let docs = for_validation(documents(&text), 0.05);
        assert_eq!(docs.len(), 40);
        assert_eq!(docs[3], "line 3");
        assert_eq!((0..40).filter(|&i| is_val(i, 0.05)).count(), 2);
        // Enough documents already: unchanged.
        let many = "a\n\nb\n\nc\n\nd\n\ne\n\nf\n\ng\n\nh\n\ni\n\nj\n";
        assert_eq!(for_validation(documents(many), 0.1).len(), 10);
        assert_eq!(for_validation(vec!["one line"], 0.05), vec!["one line"]);
    }

    #[test]
    fn documents_split_at_blank_lines() {
        let text = "\n\nfirst line\nsecond line  \r\n\n \t\nthird\r\n\n\n\nfourth";
        assert_eq!(
            documents(text),
            vec!["first line\nsecond line", "third", "fourth"]
        );
        assert!(documents("\n \n").is_empty());
        assert_eq!(documents("one"), vec!["one"]);
    }

    #[test]
    fn val_share_is_exact_and_evenly_spaced() {
        for &(n, f) in &[
            (1000usize, 0.05f64),
            (20, 0.05),
            (7, 0.5),
            (100, 0.0),
            (333, 0.1),
        ] {
            let val: Vec<usize> = (0..n).filter(|&i| is_val(i, f)).collect();
            assert_eq!(
                val.len(),
                (n as f64 * f + 0.5).floor() as usize,
                "n={n} f={f}"
            );
            if val.len() > 2 {
                let gaps: Vec<usize> = val.windows(2).map(|w| w[1] - w[0]).collect();
                let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
                assert!(hi - lo <= 1, "uneven gaps {gaps:?}");
            }
        }
    }
}
