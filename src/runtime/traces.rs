//! The loops' side of tracing: context read from consumed records, a batch's spans started,
//! its phases recorded, and each event's span ended with what became of the event.
//! Everything here is skipped when tracing is off, except reading the incoming context,
//! which is passed on either way.

use std::time::{Instant, SystemTime};

use opentelemetry::KeyValue;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::InputMessage;
use crate::trace::context::valid_tracestate;
use crate::trace::{BatchTraces, EventEnd, EventInfo, TraceParent, TRACEPARENT, TRACESTATE};

/// The trace context a consumed record arrived with. A malformed header is ignored.
pub(crate) fn incoming<'m>(m: &'m BorrowedMessage<'_>) -> (Option<TraceParent>, Option<&'m [u8]>) {
    let Some(headers) = m.headers() else { return (None, None) };
    let (mut parent, mut state) = (None, None);
    for h in headers.iter() {
        if h.key.eq_ignore_ascii_case(TRACEPARENT) {
            parent = h.value.and_then(TraceParent::parse);
        } else if h.key.eq_ignore_ascii_case(TRACESTATE) {
            state = h.value.and_then(valid_tracestate);
        }
    }
    (parent, state)
}

/// One batch's spans, and the batch's context made current for its log lines.
pub(crate) struct BatchTracing {
    traces: BatchTraces,
    /// Where the next phase starts: the end of the last one recorded.
    mark: SystemTime,
    _logs: Option<opentelemetry::ContextGuard>,
}

/// When tracing is on: decide each input's context (written back into `inputs`), start the
/// batch's spans and record its poll phase (from its first message, polled at `started`).
pub(crate) fn begin(stage: &'static str, group: &str, started: Instant, inputs: &mut [InputMessage<'_>]) -> Option<BatchTracing> {
    let tracing = crate::trace::active()?;
    let now = SystemTime::now();
    let first_message = now.checked_sub(started.elapsed()).unwrap_or(now);
    let infos: Vec<EventInfo<'_>> = inputs
        .iter()
        .map(|i| EventInfo { topic: i.topic, partition: i.partition, offset: i.offset, timestamp_ms: i.timestamp_ms, incoming: i.trace })
        .collect();
    let (traces, contexts) = tracing.begin_batch(stage, group, first_message, &infos);
    drop(infos);
    for (input, context) in inputs.iter_mut().zip(contexts) {
        input.trace = Some(context);
    }
    traces.phase("poll", first_message, now, vec![KeyValue::new("messaging.batch.message_count", inputs.len() as i64)]);
    let logs = traces.batch_context().map(|cx| cx.attach());
    Some(BatchTracing { traces, mark: now, _logs: logs })
}

impl BatchTracing {
    /// Inputs with a recording span, ascending.
    pub fn recording(&self) -> Vec<usize> {
        self.traces.recorded_inputs().collect()
    }

    pub fn is_recording(&self, index: usize) -> bool {
        self.traces.recording(index)
    }

    pub fn note(&mut self, index: usize, key: &'static str, value: String) {
        self.traces.note(index, KeyValue::new(key, value));
    }

    /// Record the phase from the end of the previous one to `end`.
    pub fn phase_until(&mut self, name: &'static str, end: SystemTime, attributes: Vec<KeyValue>) {
        let end = end.max(self.mark);
        self.traces.phase(name, self.mark, end, attributes);
        self.mark = end;
    }

    /// End the spans of a committed batch. `fates[i]`: records made from input `i` and, if it
    /// was dead-lettered, the rejection kind.
    pub fn finish(self, fates: &[(usize, Option<&'static str>)], batch_attributes: Vec<KeyValue>) {
        let BatchTracing { traces, _logs, .. } = self;
        traces.finish(SystemTime::now(), batch_attributes, |i| {
            let (outputs, dead_letter) = fates.get(i).copied().unwrap_or((0, None));
            EventEnd { outputs, dead_letter }
        });
    }
}
