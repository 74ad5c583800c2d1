//! The demo agent's words: its plan, its answer, and the answer cut into deltas.
//!
//! The texts are the ones the gateway's built-in demo has always produced, so clients and
//! end-to-end tests see the same runs now that the agent is a backend of its own.

use crate::request::ToolName;

/// Most characters of the input quoted back when no tool was used.
const ECHO_CHARS: usize = 200;
/// Most `delta` messages per answer: the last one carries whatever is left. The gateway
/// allows a run a burst of 1000 messages; a hostile input of thousands of words must not
/// turn into thousands of messages.
pub(crate) const MAX_DELTAS: usize = 256;

/// The `thinking` text: which tools the agent will use, in order.
pub(crate) fn plan(tools: &[ToolName]) -> String {
    if tools.is_empty() {
        return "No tools requested: I will answer from the input alone.".to_owned();
    }
    let names: Vec<&str> = tools.iter().map(ToolName::as_str).collect();
    format!(
        "Plan: use {}, then summarise the results.",
        names.join(", then ")
    )
}

/// The answer: one line per requested tool, or the input quoted back when there were none.
pub(crate) fn answer(input: &str, results: &[String]) -> String {
    if results.is_empty() {
        let input = input.trim();
        let echo: String = input.chars().take(ECHO_CHARS).collect();
        let more = if echo.len() < input.len() { "…" } else { "" };
        return format!("No tools were used. You asked: {echo}{more}");
    }
    let mut answer = String::from("Tool results:");
    for line in results {
        answer.push_str("\n- ");
        answer.push_str(line);
    }
    answer
}

/// `text` as word-sized fragments that concatenate to exactly `text`: each word keeps the
/// whitespace after it ("a b\nc" gives "a ", "b\n", "c"). At most [`MAX_DELTAS`] fragments.
pub(crate) fn fragments(text: &str) -> Vec<&str> {
    let mut fragments = Vec::new();
    let mut start = 0;
    // Whether the current fragment has a word yet, and whether whitespace follows it.
    let (mut has_word, mut after_space) = (false, false);
    for (index, c) in text.char_indices() {
        if fragments.len() + 1 == MAX_DELTAS {
            break;
        }
        let space = c.is_whitespace();
        if has_word && after_space && !space {
            fragments.push(&text[start..index]);
            start = index;
        }
        has_word |= !space;
        after_space = space;
    }
    if start < text.len() {
        fragments.push(&text[start..]);
    }
    fragments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<ToolName> {
        names
            .iter()
            .map(|name| ToolName::parse((*name).to_owned()).unwrap())
            .collect()
    }

    #[test]
    fn the_plan_names_the_tools_in_order() {
        assert_eq!(
            plan(&names(&["calculator", "search"])),
            "Plan: use calculator, then search, then summarise the results."
        );
        assert_eq!(
            plan(&[]),
            "No tools requested: I will answer from the input alone."
        );
    }

    #[test]
    fn the_answer_lists_results_or_echoes_a_bounded_input() {
        let results = [
            "calculator: 1+1 = 2".to_owned(),
            "search: no results".to_owned(),
        ];
        assert_eq!(
            answer("x", &results),
            "Tool results:\n- calculator: 1+1 = 2\n- search: no results"
        );
        assert_eq!(
            answer("  hello  ", &[]),
            "No tools were used. You asked: hello"
        );
        let long = answer(&"é".repeat(1000), &[]);
        assert!(long.ends_with("é…"), "{long}");
        assert_eq!(long.chars().filter(|&c| c == 'é').count(), ECHO_CHARS);
    }

    #[test]
    fn fragments_are_words_that_concatenate_to_the_text() {
        assert_eq!(fragments("a b\nc"), ["a ", "b\n", "c"]);
        assert_eq!(
            fragments("  lead  and trail  "),
            ["  lead  ", "and ", "trail  "]
        );
        assert_eq!(fragments("one"), ["one"]);
        assert!(fragments("").is_empty());
        let text = "Tool results:\n- calculator: (2+3)*4 = 20\n- search: «ünïcode» ok";
        assert_eq!(fragments(text).concat(), text);
        assert!(fragments(text).len() > 5);
    }

    #[test]
    fn a_huge_answer_is_cut_into_a_bounded_number_of_fragments() {
        let text = "word ".repeat(10_000);
        let parts = fragments(&text);
        assert_eq!(parts.len(), MAX_DELTAS);
        assert_eq!(parts.concat(), text);
        assert_eq!(parts[0], "word ");
    }
}
