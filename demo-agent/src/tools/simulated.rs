//! The `code_interpreter` and `web_browse` tools, simulated.
//!
//! Why simulations: a gateway must never execute client code or fetch client-chosen URLs
//! (that is a sandbox escape and an SSRF waiting to happen), yet the demo agent should show
//! realistic, plan-gated tool traffic. Both tools are pure functions of their argument, so
//! the same request always yields the same events, and both mark their output
//! `"simulated": true` so no client mistakes it for the real thing.
//!
//! `code_interpreter` takes the first fenced block of the input (the whole input if there is
//! none), counts its lines and characters, and evaluates each arithmetic line (optionally
//! written `print(...)`) with the calculator; `#` and `//` lines are comments. Output:
//!
//! ```json
//! {"simulated": true, "lines": 3, "chars": 17, "skipped": 1, "truncated": false,
//!  "evaluated": [{"line": 1, "expression": "2+2", "value": 4},
//!                {"line": 3, "expression": "1/0", "error": "division by zero"}],
//!  "stdout": "4\nerror: division by zero\n"}
//! ```
//!
//! `web_browse` visits the first `http(s)://` URL in the input, or else a search URL on
//! `example.com` built from the input's first words, and answers a page from a small table of
//! well-known hosts, or one made up from a hash of the URL:
//! `{"simulated": true, "url": "…", "status": 200, "title": "…", "summary": "…"}`.

use serde_json::{Value, json};

use super::ToolOutput;
use super::{arithmetic, calculator};

/// Most arithmetic lines evaluated per program; the rest is reported as truncated.
pub(crate) const MAX_EVALUATED: usize = 32;
/// Longest URL visited, in bytes; longer ones are cut.
pub(crate) const MAX_URL_LEN: usize = 2048;

/// The program to run: the first fenced code block of the input, or the whole input.
pub(crate) fn program(input: &str) -> &str {
    let Some((_, after_fence)) = input.split_once("```") else {
        return input;
    };
    // The rest of the opening fence's line is a language tag, not code.
    let Some((_, code)) = after_fence.split_once('\n') else {
        return input;
    };
    match code.split_once("```") {
        Some((code, _)) => code,
        None => input,
    }
}

/// Runs a program as described in the module docs.
pub(crate) fn run_code(program: &str) -> ToolOutput {
    let mut evaluated = Vec::new();
    let mut stdout = String::new();
    let mut skipped = 0;
    let mut truncated = false;
    for (index, line) in program.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let expression = line
            .strip_prefix("print(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or(line);
        if !is_arithmetic(expression) {
            skipped += 1;
            continue;
        }
        if evaluated.len() == MAX_EVALUATED {
            truncated = true;
            break;
        }
        let mut entry = json!({ "line": index + 1, "expression": expression });
        match arithmetic::evaluate(expression) {
            Ok(value) => {
                let value = calculator::number_json(value);
                stdout.push_str(&format!("{value}\n"));
                entry["value"] = value;
            }
            Err(error) => {
                stdout.push_str(&format!("error: {error}\n"));
                entry["error"] = Value::from(error.to_string());
            }
        }
        evaluated.push(entry);
    }
    let lines = program.lines().count();
    ToolOutput {
        summary: format!(
            "ran {lines} line(s): {} evaluated, {skipped} skipped{}",
            evaluated.len(),
            if truncated { ", truncated" } else { "" }
        ),
        json: json!({
            "simulated": true,
            "lines": lines,
            "chars": program.chars().count(),
            "skipped": skipped,
            "truncated": truncated,
            "evaluated": evaluated,
            "stdout": stdout,
        }),
    }
}

/// A line made only of characters an expression can hold, with at least one digit.
fn is_arithmetic(line: &str) -> bool {
    line.bytes().any(|b| b.is_ascii_digit())
        && line
            .bytes()
            .all(|b| b.is_ascii_digit() || b" \t.+-*/%^()eE".contains(&b))
}

/// The URL to visit: the first `http(s)://` URL in the input, else a search on example.com.
pub(crate) fn url(input: &str) -> String {
    let found = input.split_whitespace().find_map(|word| {
        let start = word.find("https://").or_else(|| word.find("http://"))?;
        let url = word[start..]
            .trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}', '\'', '"', '>']);
        (!host(url).is_empty()).then_some(url)
    });
    let url = match found {
        Some(url) => url.to_owned(),
        None => {
            let words: Vec<String> = input
                .split(|c: char| !c.is_alphanumeric())
                .filter(|word| !word.is_empty())
                .take(8)
                .map(str::to_lowercase)
                .collect();
            format!("https://example.com/search?q={}", words.join("+"))
        }
    };
    truncate(&url, MAX_URL_LEN).to_owned()
}

/// Well-known hosts: (host, site title, summary).
const SITES: &[(&str, &str, &str)] = &[
    (
        "docs.rs",
        "Docs.rs",
        "API documentation for every crate published on crates.io.",
    ),
    (
        "crates.io",
        "crates.io",
        "The Rust community's package registry.",
    ),
    (
        "www.rust-lang.org",
        "Rust Programming Language",
        "A language empowering everyone to build reliable and efficient software.",
    ),
    (
        "github.com",
        "GitHub",
        "A code hosting platform for version control and collaboration.",
    ),
    (
        "datatracker.ietf.org",
        "IETF Datatracker",
        "Internet-Drafts and RFCs of the Internet Engineering Task Force.",
    ),
    (
        "www.rfc-editor.org",
        "RFC Editor",
        "The published RFCs, the Internet's standards documents.",
    ),
    (
        "en.wikipedia.org",
        "Wikipedia",
        "The free encyclopedia that anyone can edit.",
    ),
    (
        "example.com",
        "Example Domain",
        "This domain is for use in documentation examples.",
    ),
];

/// Summaries for unknown hosts; one is picked by a hash of the URL.
const TEMPLATES: &[&str] = &[
    "An article about {topic}, with code samples and a short FAQ.",
    "A reference page on {topic}, last updated some time ago.",
    "A blog post explaining {topic} step by step.",
    "A discussion thread about {topic} with several answers.",
];

/// "Visits" a URL as described in the module docs.
pub(crate) fn browse(url: &str) -> ToolOutput {
    let host = host(url);
    let topic = topic(url);
    let (title, summary) = match SITES.iter().find(|(name, _, _)| *name == host) {
        Some((_, site, summary)) => (
            match &topic {
                Some(topic) => format!("{topic} - {site}"),
                None => (*site).to_owned(),
            },
            (*summary).to_owned(),
        ),
        None => {
            let topic = topic.unwrap_or_else(|| host.to_owned());
            // The remainder is below TEMPLATES.len(), so the cast and the index are in range.
            let template = TEMPLATES[(fnv1a(url.as_bytes()) % TEMPLATES.len() as u64) as usize];
            (
                format!("{topic} | {host}"),
                template.replace("{topic}", &topic),
            )
        }
    };
    ToolOutput {
        summary: format!("visited {url} ({title:?})"),
        json: json!({
            "simulated": true,
            "url": url,
            "status": 200,
            "title": title,
            "summary": summary,
        }),
    }
}

/// The host of a URL, without user info or port ("" when there is none).
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Drop user info and port.
    let host = authority.rsplit('@').next().unwrap_or(authority);
    host.split(':').next().unwrap_or(host)
}

/// A readable topic from the URL's last path segment or search query.
fn topic(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = path.split('#').next().unwrap_or(path);
    let query_words = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("q="))
        .map(|q| q.replace('+', " "));
    let segment = path
        .split('/')
        .skip(1)
        .filter(|segment| !segment.is_empty())
        .last()
        .map(|segment| {
            segment
                .split('.')
                .next()
                .unwrap_or(segment)
                .replace(['-', '_'], " ")
        });
    let words = query_words.or(segment)?;
    let words = truncate(words.trim(), 80);
    let mut chars = words.chars();
    let first = chars.next()?;
    Some(first.to_uppercase().chain(chars).collect())
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// 64-bit FNV-1a: tiny, and stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_interpreter_counts_and_evaluates() {
        let output = run_code("2+2\nlet x = 1\n1/0\n# comment\nprint(3*(1+1))");
        assert_eq!(
            output.json,
            json!({
                "simulated": true, "lines": 5, "chars": 42, "skipped": 1, "truncated": false,
                "evaluated": [
                    {"line": 1, "expression": "2+2", "value": 4},
                    {"line": 3, "expression": "1/0", "error": "division by zero"},
                    {"line": 5, "expression": "3*(1+1)", "value": 6},
                ],
                "stdout": "4\nerror: division by zero\n6\n",
            })
        );
        assert_eq!(output.summary, "ran 5 line(s): 3 evaluated, 1 skipped");
    }

    #[test]
    fn code_interpreter_takes_the_fenced_block() {
        assert_eq!(program("run this:\n```python\n1+1\n```\nthanks"), "1+1\n");
        assert_eq!(program("no fence"), "no fence");
        assert_eq!(program("unclosed ```\n1+1"), "unclosed ```\n1+1");
    }

    #[test]
    fn code_interpreter_is_bounded() {
        let output = run_code(&"1+1\n".repeat(250_000));
        assert_eq!(
            output.json["evaluated"].as_array().map(Vec::len),
            Some(MAX_EVALUATED)
        );
        assert_eq!(output.json["truncated"], true);
        assert_eq!(output.json["lines"], 250_000);
        let output = run_code("");
        assert_eq!(output.json["lines"], 0);
    }

    #[test]
    fn web_browse_finds_or_derives_a_url() {
        assert_eq!(
            url("read https://docs.rs/tokio/latest/tokio/, please."),
            "https://docs.rs/tokio/latest/tokio/"
        );
        assert_eq!(url("see (http://example.org/a)"), "http://example.org/a");
        assert_eq!(
            url("Rust async, explained!"),
            "https://example.com/search?q=rust+async+explained"
        );
        assert_eq!(
            url("https:// nothing"),
            "https://example.com/search?q=https+nothing"
        );
        let long = url(&format!("https://a.io/{}", "é".repeat(5000)));
        assert!(
            (MAX_URL_LEN - 1..=MAX_URL_LEN).contains(&long.len()),
            "cut on a char boundary"
        );
    }

    #[test]
    fn web_browse_pages_are_deterministic() {
        let page = browse("https://docs.rs/tokio-util").json;
        assert_eq!(page["title"], "Tokio util - Docs.rs");
        assert_eq!(page["status"], 200);
        let page = browse("https://example.com/search?q=rust+async").json;
        assert_eq!(page["title"], "Rust async - Example Domain");
        let unknown = browse("https://blog.example.net:8443/posts/rate-limits.html?x=1");
        assert_eq!(unknown.json["title"], "Rate limits | blog.example.net");
        assert!(
            unknown.json["summary"]
                .as_str()
                .is_some_and(|s| s.contains("Rate limits"))
        );
        assert_eq!(
            unknown.json,
            browse("https://blog.example.net:8443/posts/rate-limits.html?x=1").json
        );
        assert_eq!(
            browse("http://user@host.test").json["title"],
            "host.test | host.test"
        );
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
