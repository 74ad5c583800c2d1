//! Span fields for the JSON log layer, kept as a JSON object that a later `span.record(…)`
//! appends to.
//!
//! tracing-subscriber's `JsonFields` writes a span's fields as a JSON object when the span is
//! made, and on every later `record` parses that object back into a map, adds the new field and
//! writes the whole object again. Services record onto hot spans all the time (a gRPC call's
//! status code, a connection's user once it has authenticated), so that round trip was a
//! visible share of a WebSocket connect. Here a recorded field is appended to the object
//! instead. A field recorded twice appears twice; the JSON formatter reads the object into a
//! map when it logs an event, so the later value wins, as with `JsonFields`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FormatFields, FormattedFields, format::Writer},
};

/// A `FormatFields` for the JSON layer whose `add_fields` appends (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendJsonFields;

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        append(&mut writer, true, fields)?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if fields.is_empty() {
            return Ok(());
        }
        let object = &mut current.fields;
        if object.pop() != Some('}') {
            object.clear();
            object.push('{');
        }
        let first = object.ends_with('{');
        append(object, first, fields)?;
        object.push('}');
        Ok(())
    }
}

/// Writes `fields` as `"name":value` members, the first of them preceded by a comma unless
/// `first`.
fn append(out: &mut impl fmt::Write, first: bool, fields: impl RecordFields) -> fmt::Result {
    let mut members = Members {
        out,
        first,
        result: Ok(()),
    };
    fields.record(&mut members);
    members.result
}

struct Members<'a, W> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> Members<'_, W> {
    /// Runs `write` unless an earlier write failed, keeping the first failure.
    fn write(&mut self, write: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = write(self.out);
        }
    }

    fn name(&mut self, field: &Field) {
        let comma = !std::mem::take(&mut self.first);
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.write(|out| {
            if comma {
                out.write_char(',')?;
            }
            write_string(out, name)?;
            out.write_char(':')
        });
    }

    fn raw(&mut self, field: &Field, value: impl fmt::Display) {
        self.name(field);
        self.write(|out| write!(out, "{value}"));
    }

    fn string(&mut self, field: &Field, value: &str) {
        self.name(field);
        self.write(|out| write_string(out, value));
    }
}

impl<W: fmt::Write> Visit for Members<'_, W> {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, value);
        } else {
            // JSON has no NaN or infinity; `JsonFields` writes them as null too.
            self.raw(field, "null");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.string(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.string(field, &format!("{value:?}"));
    }
}

/// `value` as a JSON string literal.
fn write_string(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    if !value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.write_str(value)?;
        return out.write_char('"');
    }
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if u32::from(c) < 0x20 => write!(out, "\\u{:04x}", u32::from(c))?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};
    use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt as _};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// Logs one event inside a span that had fields recorded after it was made, through the
    /// same layer settings as the services, and returns the event's `span` object.
    fn logged_span(make: impl FnOnce() -> tracing::Span) -> Value {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(AppendJsonFields)
            .with_writer(lines.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = make();
            span.in_scope(|| tracing::info!("inside"));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        line["span"].clone()
    }

    #[test]
    fn recorded_fields_join_those_given_at_creation() {
        let span = logged_span(|| {
            let span = tracing::info_span!(
                "ws.connection",
                connection_id = "c1",
                client.address = %"127.0.0.1",
                user_id = tracing::field::Empty,
                attempts = tracing::field::Empty,
                ratio = tracing::field::Empty,
                ok = tracing::field::Empty,
            );
            span.record("user_id", tracing::field::display("u-1"));
            span.record("attempts", 3_u64);
            span.record("ratio", -0.5_f64);
            span.record("ok", true);
            span
        });
        assert_eq!(
            span,
            json!({
                "name": "ws.connection",
                "connection_id": "c1",
                "client.address": "127.0.0.1",
                "user_id": "u-1",
                "attempts": 3,
                "ratio": -0.5,
                "ok": true,
            })
        );
    }

    #[test]
    fn a_field_recorded_again_takes_its_last_value() {
        let span = logged_span(|| {
            let span = tracing::info_span!("call", code = tracing::field::Empty);
            span.record("code", 14_i64);
            span.record("code", 0_i64);
            span
        });
        assert_eq!(span, json!({"name": "call", "code": 0}));
    }

    #[test]
    fn strings_are_escaped_and_non_finite_numbers_are_null() {
        let span = logged_span(|| {
            let span = tracing::info_span!("odd", text = "a \"quoted\"\n\\ \u{1} é", x = f64::NAN);
            span.record("x", f64::INFINITY);
            span
        });
        assert_eq!(
            span,
            json!({"name": "odd", "text": "a \"quoted\"\n\\ \u{1} é", "x": null})
        );
    }

    #[test]
    fn a_span_without_fields_gets_its_first_by_record() {
        let span = logged_span(|| {
            let span = tracing::info_span!("validate", outcome = tracing::field::Empty);
            span.record("outcome", "cached");
            span
        });
        assert_eq!(span, json!({"name": "validate", "outcome": "cached"}));
    }
}
