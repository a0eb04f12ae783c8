//! Log lines that name their trace: JSON lines written while a span is active carry its
//! `trace_id` and `span_id`, so a log search leads to the trace and back.

use std::fmt::Write as _;

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event format and adds the active span's ids to each line.
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        // The OpenTelemetry context is made current when an OpenTelemetry span is entered
        // (tracing-opentelemetry's context activation) or attached by the stage loop.
        let ids = opentelemetry::Context::map_current(|cx| {
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        insert_ids(&mut line, &trace_id.to_string(), &span_id.to_string());
        writer.write_str(&line)
    }
}

/// Put `"trace_id"` and `"span_id"` into the JSON object `line` holds (before its last `}`).
fn insert_ids(line: &mut String, trace_id: &str, span_id: &str) {
    let Some(end) = line.rfind('}') else { return };
    let mut ids = String::with_capacity(80);
    let _ = write!(ids, ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"");
    line.insert_str(end, &ids);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_name_the_active_trace_and_only_then() {
        use tracing_subscriber::prelude::*;
        let buffer = Buffer::default();
        let out = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(WithTraceIds(tracing_subscriber::fmt::format().json().flatten_event(true)))
            .with_writer(move || out.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let tp = crate::trace::TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
            let _active = crate::trace::remote_context(&tp).attach();
            tracing::info!(stage = "enrich", "inside");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[1]["span_id"], "00f067aa0ba902b7");
        assert_eq!(lines[1]["stage"], "enrich");
    }

    #[test]
    fn ids_go_inside_the_object() {
        let mut line = "{\"level\":\"INFO\",\"message\":\"x\"}\n".to_string();
        insert_ids(&mut line, "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["message"], "x");
        assert!(line.ends_with('\n'));
    }
}
