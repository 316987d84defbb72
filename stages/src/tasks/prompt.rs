//! Items -> (context, continuation) requests, as lm-evaluation-harness builds them for a
//! `multiple_choice` task (lm_eval/api/task.py `ConfigurableTask.fewshot_context`,
//! `build_qa_turn`, `multiple_input_context` and `construct_requests`): few-shot examples
//! `question + target_delimiter + answer` each followed by `"\n\n"`, then the item's question;
//! every choice becomes a continuation `target_delimiter + choice` (Winogrande: every filled-in
//! context is scored on `target_delimiter + suffix`).

use super::layout::{Item, Query};
use super::pyrandom::PyRandom;

/// Between few-shot examples (the harness's default `fewshot_delimiter`).
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// The requests of one item: one (context, continuation) pair per choice, in choice order.
pub type Requests = Vec<(String, String)>;

/// The requests of every item in file order. Few-shot examples are drawn from the same file,
/// excluding the item itself, by one Python-compatible generator seeded once and shared by all
/// items in order, as the harness's `ContextSampler.sample(n, eval_doc)` draws `n + 1` and drops
/// the scored document.
pub fn build(items: &[Item], shots: usize, seed: u64, delimiter: &str) -> Vec<Requests> {
    let mut rng = PyRandom::new(seed);
    items
        .iter()
        .map(|item| {
            let mut prefix = item.description.clone();
            if shots > 0 {
                let draw = rng.sample(items.len(), (shots + 1).min(items.len()));
                let examples = draw
                    .into_iter()
                    .map(|j| &items[j])
                    .filter(|x| x.raw != item.raw)
                    .take(shots);
                for ex in examples {
                    prefix.push_str(&example(ex, delimiter));
                    prefix.push_str(FEWSHOT_DELIMITER);
                }
            }
            requests(item, &prefix, delimiter)
        })
        .collect()
}

/// A solved example: the question, the delimiter, the right answer.
fn example(ex: &Item, delimiter: &str) -> String {
    match &ex.query {
        Query::Text(q) => format!("{q}{delimiter}{}", ex.choices[ex.gold]),
        Query::Contexts { suffix } => format!("{}{delimiter}{suffix}", ex.choices[ex.gold]),
    }
}

fn requests(item: &Item, prefix: &str, delimiter: &str) -> Requests {
    match &item.query {
        Query::Text(q) => item
            .choices
            .iter()
            .map(|c| (format!("{prefix}{q}"), format!("{delimiter}{c}")))
            .collect(),
        Query::Contexts { suffix } => item
            .choices
            .iter()
            .map(|c| (format!("{prefix}{c}"), format!("{delimiter}{suffix}")))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::parse_items;
    use super::*;
    use std::path::Path;

    fn items(n: usize) -> Vec<Item> {
        let text: String = (0..n)
            .map(|i| {
                format!(
                    "{{\"context\": \"Q{i}:\", \"choices\": [\"a{i}\", \"b{i}\"], \"gold\": 1}}\n"
                )
            })
            .collect();
        parse_items(Path::new("t.jsonl"), &text).unwrap()
    }

    #[test]
    fn zero_shot_scores_each_choice_after_the_delimiter() {
        let r = build(&items(2), 0, 1234, " ");
        assert_eq!(
            r[0],
            vec![("Q0:".into(), " a0".into()), ("Q0:".into(), " b0".into())]
        );
    }

    #[test]
    fn few_shot_examples_follow_the_harness_draws_and_skip_the_item() {
        // random.Random(1234): sample(range(10), 3) == [7, 1, 0], then [1, 0, 9] (CPython 3.11.7).
        let r = build(&items(10), 2, 1234, " ");
        assert_eq!(r[0][0].0, "Q7: b7\n\nQ1: b1\n\nQ0:");
        // The second item's draw [1, 0, 9] contains it: it is dropped and the third draw kept.
        assert_eq!(r[1][1], ("Q0: b0\n\nQ9: b9\n\nQ1:".into(), " b1".into()));
    }

    #[test]
    fn winogrande_scores_the_suffix_after_each_filled_in_context() {
        let it = parse_items(
            Path::new("w.jsonl"),
            "{\"sentence\": \"A likes B because _ is kind.\", \"option1\": \"A\", \"option2\": \"B\", \"answer\": \"2\"}\n{\"sentence\": \"C met D so _ smiled.\", \"option1\": \"C\", \"option2\": \"D\", \"answer\": \"1\"}",
        )
        .unwrap();
        let r = build(&it, 1, 1234, " ");
        assert_eq!(
            r[0],
            vec![
                (
                    "C met D so C smiled.\n\nA likes B because A".into(),
                    " is kind.".into()
                ),
                (
                    "C met D so C smiled.\n\nA likes B because B".into(),
                    " is kind.".into()
                ),
            ]
        );
    }
}
