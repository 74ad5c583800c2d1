//! The documents the `search` tool searches, parsed from `corpus.md`.
//!
//! Why a Markdown file embedded with `include_str!`: the corpus is content, not code, so it
//! is easier to read and edit as prose, it renders on any code host, and embedding it keeps
//! the binary self-contained (no path to configure, nothing to fail at start-up). The format
//! is described at the top of `corpus.md`; a test checks that the embedded file parses.

use std::collections::HashSet;

/// The embedded corpus text.
const CORPUS: &str = include_str!("corpus.md");

/// One searchable document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Document {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) body: String,
}

/// Why corpus text could not be parsed (line numbers are 1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CorpusError {
    #[error("line {line}: a heading must be `## id | Title`")]
    BadHeading { line: usize },
    #[error("line {line}: document id {id:?} is used twice")]
    DuplicateId { line: usize, id: String },
    #[error("document {id:?} has no body")]
    EmptyBody { id: String },
    #[error("the corpus has no documents")]
    NoDocuments,
}

/// Parses the embedded corpus.
pub(crate) fn embedded() -> Result<Vec<Document>, CorpusError> {
    parse(CORPUS)
}

/// Parses corpus text: `## id | Title` headings, each followed by its body lines.
pub(crate) fn parse(text: &str) -> Result<Vec<Document>, CorpusError> {
    let mut documents: Vec<Document> = Vec::new();
    let mut seen = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if let Some(heading) = line.strip_prefix("## ") {
            let (id, title) = heading
                .split_once('|')
                .map(|(id, title)| (id.trim(), title.trim()))
                .filter(|(id, title)| !id.is_empty() && !title.is_empty())
                .ok_or(CorpusError::BadHeading { line: line_no })?;
            if !seen.insert(id.to_owned()) {
                return Err(CorpusError::DuplicateId {
                    line: line_no,
                    id: id.to_owned(),
                });
            }
            finish(documents.last())?;
            documents.push(Document {
                id: id.to_owned(),
                title: title.to_owned(),
                body: String::new(),
            });
        } else if let Some(document) = documents.last_mut() {
            let line = line.trim();
            if !line.is_empty() {
                if !document.body.is_empty() {
                    document.body.push(' ');
                }
                document.body.push_str(line);
            }
        }
    }
    finish(documents.last())?;
    if documents.is_empty() {
        return Err(CorpusError::NoDocuments);
    }
    Ok(documents)
}

/// Checks the document just completed.
fn finish(document: Option<&Document>) -> Result<(), CorpusError> {
    match document {
        Some(document) if document.body.is_empty() => Err(CorpusError::EmptyBody {
            id: document.id.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_corpus_parses() {
        let documents = embedded().expect("corpus.md is valid");
        assert!(
            (10..=20).contains(&documents.len()),
            "{} documents",
            documents.len()
        );
        for document in &documents {
            assert!(
                document
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "id {:?}",
                document.id
            );
            assert!(document.body.len() > 100, "{} is too short", document.id);
        }
    }

    #[test]
    fn parses_headings_and_joins_body_lines() {
        let text = "intro, ignored\n## a | First\nline one\n\nline two\n## b | Second\nbody\n";
        let documents = parse(text).expect("valid");
        assert_eq!(
            documents,
            vec![
                Document {
                    id: "a".into(),
                    title: "First".into(),
                    body: "line one line two".into(),
                },
                Document {
                    id: "b".into(),
                    title: "Second".into(),
                    body: "body".into(),
                },
            ]
        );
    }

    #[test]
    fn rejects_malformed_corpora() {
        assert_eq!(parse("just text"), Err(CorpusError::NoDocuments));
        assert_eq!(
            parse("## no-title\nbody"),
            Err(CorpusError::BadHeading { line: 1 })
        );
        assert_eq!(
            parse("## | Title\nbody"),
            Err(CorpusError::BadHeading { line: 1 })
        );
        assert_eq!(
            parse("## a | A\nbody\n## a | Again\nbody"),
            Err(CorpusError::DuplicateId {
                line: 3,
                id: "a".into()
            })
        );
        assert_eq!(
            parse("## a | A\n## b | B\nbody"),
            Err(CorpusError::EmptyBody { id: "a".into() })
        );
        assert_eq!(
            parse("## a | A\nbody\n## b | B\n"),
            Err(CorpusError::EmptyBody { id: "b".into() })
        );
    }
}
