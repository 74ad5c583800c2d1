//! The `calculator` tool: finds the arithmetic in a run's input and evaluates it with
//! [`arithmetic`](super::arithmetic).
//!
//! Tool output: `{"expression": "(2+3)*4", "value": 20}`, or
//! `{"expression": "1/0", "error": "division by zero"}`. Integral values that an `f64`
//! holds exactly are written as JSON integers.

use serde_json::{Value, json};

use super::ToolOutput;
use super::arithmetic::{evaluate, is_operator};

/// Runs the tool on an already extracted expression.
pub(crate) fn run(expression: &str) -> ToolOutput {
    match evaluate(expression) {
        Ok(value) => ToolOutput {
            summary: format!("{expression} = {}", number_json(value)),
            json: json!({ "expression": expression, "value": number_json(value) }),
        },
        Err(error) => ToolOutput {
            summary: format!("could not evaluate {expression:?}: {error}"),
            json: json!({ "expression": expression, "error": error.to_string() }),
        },
    }
}

/// Renders a finite value as a JSON number, as an integer when that is exact.
pub(crate) fn number_json(value: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is exact.
    if value.fract() == 0.0 && value.abs() < EXACT {
        // Lossless: `value` is integral and within the range where f64 and i64 agree.
        return Value::from(value as i64);
    }
    // Non-finite values cannot be JSON numbers; `evaluate` never returns them anyway.
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// Finds the arithmetic expression in free text: "what is (2+3)*4?" gives "(2+3)*4".
///
/// The text is cut into maximal runs of arithmetic characters; the chosen run is the one
/// with an operator between digits if any (so "in 2024, what is 3*4" picks "3*4"), then the
/// longest, then the first. No run with a digit gives "" (which evaluates to
/// [`CalcError::Empty`](super::arithmetic::CalcError::Empty)).
pub(crate) fn extract_expression(input: &str) -> &str {
    let mut best: Option<(bool, usize, &str)> = None;
    for span in arithmetic_spans(input) {
        // Operators dangling at either end belong to the prose around the expression.
        let trimmed = span
            .trim_start_matches([' ', '.', '*', '/', '%', '^', ')'])
            .trim_end_matches([' ', '.', '+', '-', '*', '/', '%', '^', '(']);
        if !trimmed.bytes().any(|b| b.is_ascii_digit()) {
            continue;
        }
        let has_operator = trimmed
            .trim_start_matches(['-', '+', '('])
            .contains(is_operator);
        let candidate = (has_operator, trimmed.len(), trimmed);
        if best.is_none_or(|(op, len, _)| (has_operator, trimmed.len()) > (op, len)) {
            best = Some(candidate);
        }
    }
    best.map_or("", |(_, _, text)| text)
}

/// Maximal runs of characters that can appear in an expression. An `e`/`E` belongs to a run
/// only as a number's exponent (a digit before it, a digit or a signed digit after it).
fn arithmetic_spans(input: &str) -> impl Iterator<Item = &str> {
    let bytes = input.as_bytes();
    let in_expression = move |i: usize| -> bool {
        let Some(&b) = bytes.get(i) else {
            return false;
        };
        if b.is_ascii_digit() || b" .+-*/%^()".contains(&b) {
            return true;
        }
        let digit_at = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_digit);
        matches!(b, b'e' | b'E')
            && i > 0
            && digit_at(i - 1)
            && (digit_at(i + 1)
                || (matches!(bytes.get(i + 1), Some(b'+' | b'-')) && digit_at(i + 2)))
    };
    let mut start = 0;
    std::iter::from_fn(move || {
        // All boundaries fall on ASCII bytes, so slicing at them is always on a char boundary.
        while start < bytes.len() && !in_expression(start) {
            start += 1;
        }
        if start >= bytes.len() {
            return None;
        }
        let begin = start;
        while start < bytes.len() && in_expression(start) {
            start += 1;
        }
        input.get(begin..start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_found_in_free_text() {
        assert_eq!(extract_expression("what is (2+3)*4?"), "(2+3)*4");
        assert_eq!(extract_expression("In 2024, what is 3 * 4?"), "3 * 4");
        assert_eq!(extract_expression("compute -2^2 please"), "-2^2");
        assert_eq!(extract_expression("the speed 3e8 times 2"), "3e8");
        assert_eq!(extract_expression("3e8*2 is the answer"), "3e8*2");
        assert_eq!(extract_expression("hello there"), "");
        assert_eq!(extract_expression("just 7"), "7");
        assert_eq!(extract_expression("naïve 1+1 ünïcode"), "1+1");
        assert_eq!(extract_expression("is 2+2. Or 1 + 2 - the rest"), "1 + 2");
    }

    #[test]
    fn tool_output_shapes() {
        assert_eq!(
            run("(2+3)*4").json,
            json!({ "expression": "(2+3)*4", "value": 20 })
        );
        assert_eq!(
            run("1/4").json,
            json!({ "expression": "1/4", "value": 0.25 })
        );
        assert_eq!(
            run("1/0").json,
            json!({ "expression": "1/0", "error": "division by zero" })
        );
        assert_eq!(run("(2+3)*4").summary, "(2+3)*4 = 20");
    }
}
