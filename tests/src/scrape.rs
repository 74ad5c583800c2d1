//! A service's `/metrics` page, parsed: the text exposition format (OpenMetrics, as
//! `prometheus-client` writes it) read just far enough for a test to compare counters before and
//! after a scenario and to check each family's type, unit and histogram buckets the way a
//! Prometheus server would see them.
//!
//! A sample line is `name{label="value",…} value` (label values escaped with `\\`, `\"`,
//! `\n`); metadata lines are `# TYPE family type`, `# UNIT family unit`, `# HELP …`, `# EOF`.
//! Anything after the value (a timestamp, an exemplar) is ignored.

use std::collections::{BTreeMap, HashMap};

use crate::process::Service;

/// The value of one series, `name{labels}` written exactly as the page has it; 0 when absent.
pub fn series_value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether the sample has every one of `labels`.
    fn matches(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(key, value)| self.labels.get(*key).is_some_and(|have| have == value))
    }
}

/// A parsed `/metrics` page.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// `# TYPE`, by family.
    types: HashMap<String, String>,
    /// `# UNIT`, by family.
    units: HashMap<String, String>,
}

impl Scrape {
    /// Parses a page; panics, quoting the line, on a sample it cannot read.
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
            if let Some(meta) = line.strip_prefix('#') {
                let mut words = meta.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(family), Some(kind)) => {
                        scrape.types.insert(family.into(), kind.into());
                    }
                    (Some("UNIT"), Some(family), Some(unit)) => {
                        scrape.units.insert(family.into(), unit.into());
                    }
                    _ => {}
                }
                continue;
            }
            let sample =
                parse_sample(line).unwrap_or_else(|| panic!("an unreadable sample: {line}"));
            scrape.samples.push(sample);
        }
        scrape
    }

    /// The sum of every sample `name` that has all of `labels` (0 when there is none): a
    /// counter's value, or a family's total over the labels not given.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample.name == name && sample.matches(labels))
            .map(|sample| sample.value)
            .sum()
    }

    /// Whether any sample `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|sample| sample.name == name)
    }

    /// The `# TYPE` of a family (`counter`, `gauge`, `histogram`, …).
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// The `# UNIT` of a family.
    pub fn unit(&self, family: &str) -> Option<&str> {
        self.units.get(family).map(String::as_str)
    }

    /// The label sets of a histogram family's series (its `_count` samples).
    pub fn series(&self, family: &str) -> Vec<BTreeMap<String, String>> {
        let count = format!("{family}_count");
        self.samples
            .iter()
            .filter(|sample| sample.name == count)
            .map(|sample| sample.labels.clone())
            .collect()
    }

    /// One histogram series' buckets, `(le, cumulative count)` in the order exposed, `+Inf`
    /// as infinity.
    pub fn buckets(&self, family: &str, labels: &BTreeMap<String, String>) -> Vec<(f64, f64)> {
        let bucket = format!("{family}_bucket");
        self.samples
            .iter()
            .filter(|sample| sample.name == bucket)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(value))
            })
            .map(|sample| {
                let le = sample.labels.get("le").map_or("", String::as_str);
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse()
                        .unwrap_or_else(|_| panic!("a bucket bound that is not a number: {le}"))
                };
                (bound, sample.value)
            })
            .collect()
    }
}

/// `name{labels} value [anything]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, mut rest) = line.split_at(line.find(['{', ' '])?);
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        (labels, rest) = parse_labels(after)?;
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `key="value",…}` (after the opening brace): the labels, and what follows the closing one.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(tail) = text.strip_prefix('}') {
            return Some((labels, tail));
        }
        let (key, quoted) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next()? {
                (at, '"') => break at + 1,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        text = &quoted[end..];
    }
}

impl Service {
    /// The `/metrics` page, parsed; panics when the service does not serve one.
    pub async fn scrape(&self) -> Scrape {
        let text = self.metrics().await;
        assert!(
            !text.is_empty(),
            "{} served no metrics",
            self.binary().name()
        );
        Scrape::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_and_metadata_are_read() {
        let page = "# HELP x_total Things.\n# TYPE x counter\nx_total{kind=\"a\",why=\"say \\\"hi\\\", ok\"} 3\nx_total{kind=\"b\"} 4.5\n# TYPE h_seconds histogram\n# UNIT h_seconds seconds\nh_seconds_bucket{le=\"0.001\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_count 2\nup 1\n# EOF\n";
        let scrape = Scrape::parse(page);
        assert_eq!(scrape.sum("x_total", &[]), 7.5);
        assert_eq!(scrape.sum("x_total", &[("why", "say \"hi\", ok")]), 3.0);
        assert_eq!(scrape.sum("x_total", &[("kind", "c")]), 0.0);
        assert_eq!(scrape.kind("x"), Some("counter"));
        assert_eq!(scrape.unit("h_seconds"), Some("seconds"));
        assert_eq!(
            scrape.buckets("h_seconds", &BTreeMap::new()),
            [(0.001, 1.0), (f64::INFINITY, 2.0)]
        );
        assert_eq!(scrape.sum("up", &[]), 1.0);
    }
}
