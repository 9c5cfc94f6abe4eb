//! The W3C trace context a job carries (`traceparent`, `tracestate`, `baggage`): where
//! it comes from when a job is enqueued and where a running job finds it.
//!
//! A job stores the context of whatever enqueued it (an HTTP caller, the outbox row, the
//! run that enqueued a follow-up, a schedule tick), and every attempt runs under it, so an
//! integration call and a follow-up continue the caller's trace. Propagation does not
//! depend on span export: with export off, the stored context is passed on unchanged; with
//! export on, the worker installs a [`SpanSource`] and the context names the current span
//! (the attempt, or the integration call) instead.
use serde::{Deserialize, Serialize};
use std::{future::Future, sync::OnceLock};

/// Longest `tracestate` kept (W3C asks vendors to propagate at least 512 characters).
pub const TRACESTATE_MAX: usize = 512;
/// Longest `baggage` kept (the W3C baggage limit).
pub const BAGGAGE_MAX: usize = 8192;

/// A W3C trace context: the `traceparent` header (always `00-<trace id>-<span id>-<flags>`,
/// validated) and the optional `tracestate` and `baggage` headers, passed on as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.
    pub traceparent: String,
    /// Vendor-specific trace state, as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// W3C baggage, as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `traceparent` in its version-00 form, or `None` when the value is not a valid W3C
/// traceparent. Versions above 00 are read as 00, as the W3C recommendation asks
/// (the first four fields at the same positions, anything after a `-`).
pub fn parse_traceparent(value: &str) -> Option<String> {
    let v = value.trim();
    let b = v.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace_id, span_id, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if !(lower_hex(version) && lower_hex(trace_id) && lower_hex(span_id) && lower_hex(flags)) || version == "ff" {
        return None;
    }
    if (version == "00" && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    if trace_id.bytes().all(|c| c == b'0') || span_id.bytes().all(|c| c == b'0') {
        return None;
    }
    Some(format!("00-{trace_id}-{span_id}-{flags}"))
}

impl TraceContext {
    /// The context from the three W3C headers' values. `None` when `traceparent` is
    /// missing or invalid (the W3C rule: an invalid traceparent is ignored, and so are
    /// the other two). A `tracestate` or `baggage` over its limit is dropped.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>, baggage: Option<&str>) -> Option<Self> {
        let traceparent = parse_traceparent(traceparent?)?;
        let keep = |v: Option<&str>, max: usize| {
            v.map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= max)
                .map(str::to_owned)
        };
        Some(Self {
            traceparent,
            tracestate: keep(tracestate, TRACESTATE_MAX),
            baggage: keep(baggage, BAGGAGE_MAX),
        })
    }

    /// A context with only a traceparent (already valid, e.g. from a span).
    pub fn new(traceparent: String) -> Self {
        Self {
            traceparent,
            tracestate: None,
            baggage: None,
        }
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The 16 hex digits of the parent span id.
    pub fn span_id(&self) -> &str {
        self.traceparent.get(36..52).unwrap_or_default()
    }

    /// The caller asked for this trace to be recorded (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.traceparent
            .get(53..55)
            .and_then(|f| u8::from_str_radix(f, 16).ok())
            .is_some_and(|f| f & 1 == 1)
    }
}

/// Reads the context of the current `tracing` span when spans are exported: the
/// `traceparent` (naming that span) and `tracestate`. Installed once by the worker.
pub type SpanSource = fn() -> Option<(String, Option<String>)>;

static SPAN_SOURCE: OnceLock<SpanSource> = OnceLock::new();

tokio::task_local! {
    static RUN: Option<TraceContext>;
}

/// Installs the exporter's [`SpanSource`]; later calls are ignored (one per process).
pub fn set_span_source(source: SpanSource) {
    let _ = SPAN_SOURCE.set(source);
}

/// Runs `f` (one attempt of a job) with `ctx` as its trace context.
pub async fn scope<F: Future>(ctx: Option<TraceContext>, f: F) -> F::Output {
    RUN.scope(ctx, f).await
}

/// The trace context to pass on from here: the current span's when spans are exported
/// (keeping the run's baggage), else the running job's stored context, else `None`.
/// Integration calls send its traceparent and tracestate; jobs enqueued from a handler
/// store all of it.
pub fn current() -> Option<TraceContext> {
    let run = RUN.try_with(Clone::clone).ok().flatten();
    match SPAN_SOURCE.get().and_then(|source| source()) {
        Some((traceparent, tracestate)) => Some(TraceContext {
            traceparent,
            tracestate: tracestate.or_else(|| run.as_ref().and_then(|r| r.tracestate.clone())),
            baggage: run.and_then(|r| r.baggage),
        }),
        None => run,
    }
}

/// Gives `ctx` to each job of `jobs` that has no trace context of its own (follow-ups
/// and fan-outs continue the trace of the run that enqueued them).
pub fn inherit(jobs: &mut [crate::EnqueueRequest], ctx: Option<TraceContext>) {
    let Some(ctx) = ctx else { return };
    for j in jobs.iter_mut().filter(|j| j.trace.is_none()) {
        j.trace = Some(ctx.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_follow_the_w3c_rules() {
        assert_eq!(parse_traceparent(TP).as_deref(), Some(TP));
        assert_eq!(parse_traceparent(&format!(" {TP} ")).as_deref(), Some(TP));
        // A later version is read as 00; anything after the flags must follow a `-`.
        assert_eq!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").as_deref(),
            Some(TP)
        );
        assert_eq!(parse_traceparent(&format!("{TP}-extra")), None);
        assert_eq!(
            parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            None
        );
        assert_eq!(
            parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
            None
        );
        assert_eq!(parse_traceparent("garbage"), None);
    }

    #[test]
    fn a_context_keeps_its_parts_within_their_limits() {
        let c = TraceContext::from_headers(Some(TP), Some("congo=t61rcWkgMzE"), Some("user=42")).expect("valid");
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id(), "00f067aa0ba902b7");
        assert!(c.sampled());
        assert_eq!(c.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(c.baggage.as_deref(), Some("user=42"));
        let long = "a".repeat(TRACESTATE_MAX + 1);
        let c = TraceContext::from_headers(Some(TP), Some(&long), None).expect("valid");
        assert_eq!(c.tracestate, None);
        assert_eq!(TraceContext::from_headers(Some("nope"), Some("a=b"), None), None);
        assert_eq!(TraceContext::from_headers(None, Some("a=b"), None), None);
        assert!(!TraceContext::new(TP.replace("-01", "-00")).sampled());
    }

    #[tokio::test]
    async fn a_run_sees_its_own_context() {
        assert_eq!(current(), None);
        let c = TraceContext::new(TP.to_owned());
        let seen = scope(Some(c.clone()), async { current() }).await;
        assert_eq!(seen, Some(c));
        assert_eq!(current(), None);
    }
}
