//! The arithmetic evaluator behind the `calculator` and `code_interpreter` tools.
//!
//! Why hand-written: the grammar is six operators and parentheses, and owning it lets us bound
//! every resource an untrusted client can push on us. Input is capped at [`MAX_LEN`] bytes,
//! parentheses at [`MAX_DEPTH`] levels (the only recursion in the parser: signs and `^`
//! chains are parsed with loops), and every intermediate result must stay a finite `f64`.
//! Anything else is a [`CalcError`], never a panic.
//!
//! Grammar, loosest binding first:
//!
//! ```text
//! sum     = product (("+" | "-") product)*
//! product = signed (("*" | "/" | "%") signed)*
//! signed  = ("+" | "-")* power                  -- so -2^2 = -(2^2) = -4
//! power   = primary ("^" ("+" | "-")* primary)*  -- right-associative: 2^3^2 = 2^9,
//!                                               --   and 2^-1^2 = 2^(-(1^2))
//! primary = number | "(" sum ")"
//! number  = digits ["." digits] [("e" | "E") ["+" | "-"] digits]   -- also ".5" and "5."
//! ```
//!
//! `%` is the truncated remainder (the sign follows the dividend), as in Rust and C.

/// Longest expression accepted, in bytes.
pub(crate) const MAX_LEN: usize = 1024;
/// Deepest parenthesis nesting accepted.
pub(crate) const MAX_DEPTH: usize = 64;

/// Why an expression could not be evaluated. Messages are safe to show a client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum CalcError {
    #[error("no arithmetic expression found")]
    Empty,
    #[error("expression is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("parentheses are nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("unexpected character {found:?} at column {column}")]
    UnexpectedChar { found: char, column: usize },
    #[error("malformed number at column {column}")]
    BadNumber { column: usize },
    #[error("expected {expected} at column {column}")]
    Expected {
        expected: &'static str,
        column: usize,
    },
    #[error("expected {expected} but the expression ended")]
    UnexpectedEnd { expected: &'static str },
    #[error("division by zero")]
    DivisionByZero,
    #[error("the result is too large (overflow)")]
    Overflow,
    #[error("the result is undefined (such as a fractional power of a negative number)")]
    Undefined,
}

pub(crate) fn is_operator(c: char) -> bool {
    matches!(c, '+' | '-' | '*' | '/' | '%' | '^')
}

/// Evaluates an arithmetic expression.
pub(crate) fn evaluate(expression: &str) -> Result<f64, CalcError> {
    if expression.len() > MAX_LEN {
        return Err(CalcError::TooLong { max: MAX_LEN });
    }
    let tokens = tokenize(expression)?;
    if tokens.is_empty() {
        return Err(CalcError::Empty);
    }
    let mut parser = Parser {
        tokens: &tokens,
        pos: 0,
        depth: 0,
    };
    let value = parser.sum()?;
    match parser.peek() {
        None => Ok(value),
        Some(token) => Err(CalcError::Expected {
            expected: "an operator",
            column: token.column,
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Number(f64),
    Op(char),
    Open,
    Close,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    /// 1-based character column, for error messages.
    column: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, CalcError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().enumerate().peekable();
    while let Some((index, (offset, c))) = chars.next() {
        let column = index + 1;
        let kind = match c {
            c if c.is_whitespace() => continue,
            '(' => Kind::Open,
            ')' => Kind::Close,
            c if is_operator(c) => Kind::Op(c),
            '0'..='9' | '.' => {
                let len = number_len(&text[offset..]);
                // The number's other characters are all ASCII: skip them one by one.
                for _ in 1..len {
                    chars.next();
                }
                let literal = &text[offset..offset + len];
                let value = literal
                    .parse::<f64>()
                    .map_err(|_| CalcError::BadNumber { column })?;
                Kind::Number(finite(value)?)
            }
            found => return Err(CalcError::UnexpectedChar { found, column }),
        };
        tokens.push(Token { kind, column });
    }
    Ok(tokens)
}

/// Byte length of the number literal at the start of `text` (which starts with a digit or '.').
fn number_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let digits_from = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut end = digits_from(0);
    if bytes.get(end) == Some(&b'.') {
        end = digits_from(end + 1);
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exponent_end = digits_from(end + 1 + sign);
        if exponent_end > end + 1 + sign {
            end = exponent_end;
        }
    }
    end
}

fn finite(value: f64) -> Result<f64, CalcError> {
    if value.is_nan() {
        Err(CalcError::Undefined)
    } else if value.is_infinite() {
        Err(CalcError::Overflow)
    } else {
        Ok(value)
    }
}

fn pow(base: f64, exponent: f64) -> Result<f64, CalcError> {
    if base == 0.0 && exponent < 0.0 {
        return Err(CalcError::DivisionByZero);
    }
    finite(base.powf(exponent))
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.pos).copied()
    }

    fn eat_op(&mut self, ops: &[char]) -> Option<char> {
        match self.peek()?.kind {
            Kind::Op(op) if ops.contains(&op) => {
                self.pos += 1;
                Some(op)
            }
            _ => None,
        }
    }

    fn sum(&mut self) -> Result<f64, CalcError> {
        let mut value = self.product()?;
        while let Some(op) = self.eat_op(&['+', '-']) {
            let rhs = self.product()?;
            value = finite(if op == '+' { value + rhs } else { value - rhs })?;
        }
        Ok(value)
    }

    fn product(&mut self) -> Result<f64, CalcError> {
        let mut value = self.signed()?;
        while let Some(op) = self.eat_op(&['*', '/', '%']) {
            let rhs = self.signed()?;
            value = match op {
                '*' => finite(value * rhs)?,
                _ if rhs == 0.0 => return Err(CalcError::DivisionByZero),
                '/' => finite(value / rhs)?,
                _ => finite(value % rhs)?,
            };
        }
        Ok(value)
    }

    /// Leading signs, then a power. Signs bind looser than `^`: -2^2 is -(2^2).
    fn signed(&mut self) -> Result<f64, CalcError> {
        let mut negative = false;
        while let Some(op) = self.eat_op(&['+', '-']) {
            negative ^= op == '-';
        }
        let value = self.power()?;
        Ok(if negative { -value } else { value })
    }

    /// `a ^ -b ^ c`: operands are collected with their signs, then folded from the right,
    /// so right-associativity needs no recursion.
    fn power(&mut self) -> Result<f64, CalcError> {
        let base = self.primary()?;
        let mut exponents = Vec::new();
        while self.eat_op(&['^']).is_some() {
            let mut negative = false;
            while let Some(op) = self.eat_op(&['+', '-']) {
                negative ^= op == '-';
            }
            exponents.push((negative, self.primary()?));
        }
        // Fold from the right: each operand's sign applies to its whole sub-power.
        let mut acc: Option<f64> = None;
        for (negative, operand) in exponents.into_iter().rev() {
            let raised = match acc {
                Some(exponent) => pow(operand, exponent)?,
                None => operand,
            };
            acc = Some(if negative { -raised } else { raised });
        }
        match acc {
            Some(exponent) => pow(base, exponent),
            None => Ok(base),
        }
    }

    fn primary(&mut self) -> Result<f64, CalcError> {
        let Some(token) = self.peek() else {
            return Err(CalcError::UnexpectedEnd {
                expected: "a number or '('",
            });
        };
        self.pos += 1;
        match token.kind {
            Kind::Number(value) => Ok(value),
            Kind::Open => {
                if self.depth >= MAX_DEPTH {
                    return Err(CalcError::TooDeep { max: MAX_DEPTH });
                }
                self.depth += 1;
                let value = self.sum()?;
                self.depth -= 1;
                match self.peek() {
                    Some(Token {
                        kind: Kind::Close, ..
                    }) => {
                        self.pos += 1;
                        Ok(value)
                    }
                    Some(other) => Err(CalcError::Expected {
                        expected: "')'",
                        column: other.column,
                    }),
                    None => Err(CalcError::UnexpectedEnd { expected: "')'" }),
                }
            }
            Kind::Op(_) | Kind::Close => Err(CalcError::Expected {
                expected: "a number or '('",
                column: token.column,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str) -> f64 {
        evaluate(text).unwrap_or_else(|e| panic!("{text:?} failed: {e}"))
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(eval("2+3*4"), 14.0);
        assert_eq!(eval("(2+3)*4"), 20.0);
        assert_eq!(eval("10-4-3"), 3.0, "- is left-associative");
        assert_eq!(eval("64/4/2"), 8.0, "/ is left-associative");
        assert_eq!(eval("2^3^2"), 512.0, "^ is right-associative");
        assert_eq!(eval("2*3^2"), 18.0, "^ binds tighter than *");
        assert_eq!(eval("-2^2"), -4.0, "unary minus binds looser than ^");
        assert_eq!(eval("2^-1"), 0.5);
        assert_eq!(eval("2^-1^2"), 0.5, "2^(-(1^2))");
        assert_eq!(eval("--3"), 3.0);
        assert_eq!(eval("-(1+2)*+3"), -9.0);
        assert_eq!(eval("7 % 4 + 1"), 4.0);
        assert_eq!(eval("-7 % 4"), -3.0, "the remainder follows the dividend");
    }

    #[test]
    fn numbers() {
        assert_eq!(eval("1.5 + .5 + 2."), 4.0);
        assert_eq!(eval("1e3"), 1000.0);
        assert_eq!(eval("2.5E-1*4"), 1.0);
        assert_eq!(eval(" 42 "), 42.0);
    }

    #[test]
    fn errors_are_reported_not_panicked() {
        // The messages are what a client sees, so the table pins them exactly.
        let cases = [
            ("", "no arithmetic expression found"),
            ("   ", "no arithmetic expression found"),
            ("1/0", "division by zero"),
            ("5 % (2-2)", "division by zero"),
            ("0^-1", "division by zero"),
            ("2^0^-1", "division by zero"),
            ("10^400", "the result is too large (overflow)"),
            ("1e308*10", "the result is too large (overflow)"),
            (
                "(-8)^(1/3)",
                "the result is undefined (such as a fractional power of a negative number)",
            ),
            ("2 +", "expected a number or '(' but the expression ended"),
            ("(1+2", "expected ')' but the expression ended"),
            ("1+2)", "expected an operator at column 4"),
            ("2 3", "expected an operator at column 3"),
            ("(1 2)", "expected ')' at column 4"),
            ("*2", "expected a number or '(' at column 1"),
            ("1..2", "expected an operator at column 3"),
            (".", "malformed number at column 1"),
            ("2 x 3", "unexpected character 'x' at column 3"),
            ("1 + é", "unexpected character 'é' at column 5"),
        ];
        for (text, message) in cases {
            let error = evaluate(text).expect_err(text);
            assert_eq!(error.to_string(), message, "for {text:?}");
        }
    }

    #[test]
    fn hostile_inputs_are_bounded() {
        let deep_ok = format!("{}1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(eval(&deep_ok), 1.0);
        let too_deep = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            evaluate(&too_deep),
            Err(CalcError::TooDeep { max: MAX_DEPTH })
        );
        // Under the length limit, signs and ^ chains must not recurse.
        assert_eq!(eval(&format!("{}1", "-".repeat(1000))), 1.0);
        assert_eq!(eval(&format!("1{}", "^1".repeat(500))), 1.0);
        let megabyte = "1+".repeat(512 * 1024);
        assert_eq!(
            evaluate(&megabyte),
            Err(CalcError::TooLong { max: MAX_LEN })
        );
        let long_number = "9".repeat(MAX_LEN);
        assert_eq!(evaluate(&long_number), Err(CalcError::Overflow));
    }
}
