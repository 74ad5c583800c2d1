//! The `search` tool: Okapi BM25 keyword ranking over the embedded corpus.
//!
//! Why BM25: it is the standard bag-of-words ranking (term frequency with saturation, rare
//! terms weigh more, long documents are not favoured), it needs no model or network, and its
//! results are deterministic, which the demo agent promises. Text is lowercased, split on
//! anything that is not a letter or digit, stripped of English stop words and of a plural
//! "s"; titles count twice. Ties are broken by document id so the order never depends on
//! floating-point noise or hash order.
//!
//! Tool output: a JSON array of at most [`TOP_K`] hits, best first, each
//! `{"id", "title", "snippet", "score"}` (score rounded to 4 decimals); `[]` when no
//! document shares a term with the query.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use serde::Serialize;
use serde_json::json;

use super::ToolOutput;
use super::corpus::{self, CorpusError, Document};

/// Hits returned per query.
pub(crate) const TOP_K: usize = 3;
/// Longest snippet, in characters.
const SNIPPET_CHARS: usize = 200;
/// BM25 term-frequency saturation.
const K1: f64 = 1.2;
/// BM25 length normalisation.
const B: f64 = 0.75;

const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "but", "by", "can", "could", "did", "do", "does", "each", "for", "from", "had",
    "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "more", "my", "no",
    "not", "of", "on", "one", "only", "or", "other", "our", "out", "over", "should", "so", "some",
    "such", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to",
    "up", "us", "was", "we", "were", "what", "when", "where", "which", "while", "who", "why",
    "will", "with", "would", "you", "your",
];

/// One ranked document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Hit {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) snippet: String,
    pub(crate) score: f64,
}

/// The corpus, tokenised once.
#[derive(Debug)]
pub(crate) struct Index {
    documents: Vec<Document>,
    /// Per document: term -> frequency (title terms counted twice).
    term_counts: Vec<HashMap<String, usize>>,
    /// Per document: number of terms.
    lengths: Vec<usize>,
    average_length: f64,
    /// Term -> number of documents containing it.
    document_frequency: HashMap<String, usize>,
}

static EMBEDDED: LazyLock<Result<Index, CorpusError>> =
    LazyLock::new(|| corpus::embedded().map(Index::new));

/// Runs the tool: the query is the whole run input.
pub(crate) fn run(query: &str) -> ToolOutput {
    match &*EMBEDDED {
        Ok(index) => {
            let hits = index.search(query, TOP_K);
            let summary = match hits.first() {
                Some(best) => format!("{} result(s), best: {:?}", hits.len(), best.title),
                None => "no results".to_owned(),
            };
            ToolOutput {
                json: serde_json::to_value(&hits).unwrap_or_else(|_| json!([])),
                summary,
            }
        }
        // Unreachable with the shipped corpus (a test parses it), but never a panic.
        Err(error) => ToolOutput {
            json: json!({ "error": format!("search corpus unavailable: {error}") }),
            summary: "search corpus unavailable".to_owned(),
        },
    }
}

impl Index {
    pub(crate) fn new(documents: Vec<Document>) -> Self {
        let mut term_counts = Vec::with_capacity(documents.len());
        let mut lengths = Vec::with_capacity(documents.len());
        let mut document_frequency: HashMap<String, usize> = HashMap::new();
        for document in &documents {
            let mut counts: HashMap<String, usize> = HashMap::new();
            let title_terms: Vec<String> = tokenize(&document.title).collect();
            let terms = title_terms
                .iter()
                .chain(&title_terms)
                .cloned()
                .chain(tokenize(&document.body));
            let mut length = 0;
            for term in terms {
                *counts.entry(term).or_default() += 1;
                length += 1;
            }
            for term in counts.keys() {
                *document_frequency.entry(term.clone()).or_default() += 1;
            }
            term_counts.push(counts);
            lengths.push(length);
        }
        let total: usize = lengths.iter().sum();
        // Guarded so an all-stop-word corpus gives zero scores rather than NaN.
        let average_length = (total as f64 / documents.len().max(1) as f64).max(1.0);
        Self {
            documents,
            term_counts,
            lengths,
            average_length,
            document_frequency,
        }
    }

    /// The `limit` best documents for `query`, best first; documents with no query term are
    /// never returned.
    pub(crate) fn search(&self, query: &str, limit: usize) -> Vec<Hit> {
        // A set: repeating a word in the query does not change the ranking.
        let terms: Vec<String> = tokenize(query)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let n = self.documents.len() as f64;
        let mut scored: Vec<(f64, &Document)> = Vec::new();
        let documents = self
            .documents
            .iter()
            .zip(&self.term_counts)
            .zip(&self.lengths);
        for ((document, counts), &length) in documents {
            let norm = 1.0 - B + B * length as f64 / self.average_length;
            let mut score = 0.0;
            for term in &terms {
                let Some(&tf) = counts.get(term) else {
                    continue;
                };
                let df = self.document_frequency.get(term).copied().unwrap_or(0) as f64;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                let tf = tf as f64;
                score += idf * tf * (K1 + 1.0) / (tf + K1 * norm);
            }
            if score > 0.0 {
                scored.push((score, document));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        scored
            .into_iter()
            .take(limit)
            .map(|(score, document)| Hit {
                id: document.id.clone(),
                title: document.title.clone(),
                snippet: snippet(&document.body, &terms),
                score: (score * 10_000.0).round() / 10_000.0,
            })
            .collect()
    }
}

/// Lowercased terms of `text`, stop words and one-letter words removed, plurals folded.
fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.chars().nth(1).is_some())
        .map(str::to_lowercase)
        .filter(|word| !STOP_WORDS.contains(&word.as_str()))
        .map(|mut word| {
            // A light stemmer: "tokens" and "token" are one term, "class" and "status" stay.
            if word.len() > 3
                && word.ends_with('s')
                && !word.ends_with("ss")
                && !word.ends_with("us")
            {
                word.pop();
            }
            word
        })
}

/// The body sentence sharing the most terms with the query (the first on a tie),
/// cut to [`SNIPPET_CHARS`] characters.
fn snippet(body: &str, terms: &[String]) -> String {
    let mut best = ("", 0);
    for sentence in body.split_inclusive(". ") {
        let hits = tokenize(sentence)
            .collect::<BTreeSet<_>>()
            .iter()
            .filter(|term| terms.contains(term))
            .count();
        if hits > best.1 || best.0.is_empty() {
            best = (sentence, hits);
        }
    }
    let sentence = best.0.trim();
    match sentence.char_indices().nth(SNIPPET_CHARS) {
        Some((cut, _)) => {
            // Cut at the last space before the limit, unless the text has none.
            let head = &sentence[..cut];
            let head = head.rfind(' ').map_or(head, |space| &head[..space]);
            format!("{}…", head.trim_end_matches([',', ';', ':']))
        }
        None => sentence.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> &'static Index {
        EMBEDDED.as_ref().expect("the embedded corpus parses")
    }

    fn ids(query: &str) -> Vec<String> {
        index()
            .search(query, TOP_K)
            .into_iter()
            .map(|hit| hit.id)
            .collect()
    }

    #[test]
    fn ranks_the_obvious_document_first() {
        assert_eq!(
            ids("How do WebSocket close codes work?")[0],
            "websocket-close"
        );
        assert_eq!(
            ids("validate a JWT signature with JWKS")[0],
            "jwt-validation"
        );
        assert_eq!(ids("token bucket burst")[0], "rate-limiting-token-bucket");
        assert_eq!(ids("borrow checker ownership")[0], "rust-ownership");
        assert_eq!(ids("grpc health check status codes")[0], "grpc-status");
        assert_eq!(ids("circuit breaker half-open")[0], "circuit-breaker");
    }

    #[test]
    fn returns_at_most_three_sorted_hits() {
        let hits = index().search("websocket frames close handshake", TOP_K);
        assert_eq!(hits.len(), 3);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(hits.iter().all(|hit| hit.id.starts_with("websocket-")));
    }

    #[test]
    fn no_match_gives_an_empty_list() {
        assert!(ids("the and of").is_empty(), "stop words only");
        assert!(ids("zebra xylophone").is_empty());
        assert!(ids("").is_empty());
        assert_eq!(run("zebra").json, json!([]));
        assert_eq!(run("zebra").summary, "no results");
    }

    #[test]
    fn repeated_words_and_case_do_not_change_the_ranking() {
        assert_eq!(index().search("JWT", 3), index().search("jwt jwt JWT", 3));
    }

    #[test]
    fn rare_terms_outweigh_common_ones() {
        // "token" appears in many documents, "pkce" in one.
        assert_eq!(ids("token pkce")[0], "oauth2");
    }

    #[test]
    fn tokenizer_folds_case_plurals_and_stop_words() {
        let terms: Vec<String> = tokenize("The Tokens, a JWT's status; class-based I/O").collect();
        assert_eq!(terms, ["token", "jwt", "status", "class", "based"]);
    }

    #[test]
    fn snippet_is_the_best_sentence_and_bounded() {
        let hit = &index().search("pkce mobile", 1)[0];
        assert!(hit.snippet.contains("PKCE"), "{}", hit.snippet);
        assert!(hit.snippet.chars().count() <= SNIPPET_CHARS + 1);
        let long = snippet(&format!("{}.", "word, ".repeat(100)), &[]);
        assert!(long.ends_with("word…"), "{long}");
        assert!(long.chars().count() <= SNIPPET_CHARS + 1);
        let unbroken = snippet(&"x".repeat(1000), &[]);
        assert_eq!(unbroken.chars().count(), SNIPPET_CHARS + 1);
    }

    #[test]
    fn output_shape() {
        let output = run("rate limit redis lua");
        let hits = output.json.as_array().expect("an array");
        assert!(!hits.is_empty() && hits.len() <= TOP_K);
        for hit in hits {
            for field in ["id", "title", "snippet", "score"] {
                assert!(hit.get(field).is_some(), "{field} missing in {hit}");
            }
        }
    }

    #[test]
    fn a_huge_query_is_fine() {
        let query = "websocket ".repeat(100_000);
        assert_eq!(ids(&query).len(), 3);
    }
}
