//! Traces: the `[telemetry]` span export over OTLP/HTTP, the W3C context of spans, and
//! the trace and span ids in JSON log lines.
//!
//! Spans are ordinary `tracing` spans; with export on, a `tracing-opentelemetry` layer
//! turns them into OpenTelemetry spans and [`BoundedBatch`] sends them from its own
//! thread. Export never blocks a job: a finished span that finds the queue full is
//! dropped and counted (`culm_trace_spans_dropped_total`), and so are the spans of an
//! export that fails. With export off no layer is installed and spans cost what they
//! cost before; a job's stored trace context is still passed on (`culm_core::trace`).
use crate::config::{TRACE_SAMPLERS as SAMPLERS, TelemetryConfig};
use culm_core::TraceContext;
use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor},
};
use std::{
    str::FromStr,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Whether spans are exported in this process (set once, by [`Export::start`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Spans are exported: attempt and enqueue spans get OpenTelemetry parents and ids.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `[telemetry]` or an `OTEL_*` variable is invalid.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: key `{key}`: {message}")]
pub struct TelemetryError {
    /// Where the value came from: `[telemetry]` or the environment variable.
    pub source_name: String,
    /// The config key it sets.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The export settings once the `OTEL_*` variables are applied over `[telemetry]`.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The full URL spans are POSTed to.
    pub traces_url: String,
    pub service_name: String,
    /// The sampler's name and ratio, as configured.
    pub sampler: (String, f64),
    pub queue_size: usize,
    pub batch_size: usize,
    pub export_interval: Duration,
    pub export_timeout: Duration,
}

impl TraceSettings {
    /// The settings, or `None` when export is off. `env` reads a variable (the process
    /// environment in production, a map in tests).
    pub fn resolve(c: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TelemetryError> {
        let env = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let bad = |source_name: &str, key: &'static str, message: String| TelemetryError {
            source_name: source_name.to_owned(),
            key,
            message,
        };
        let on = match env("OTEL_SDK_DISABLED").as_deref() {
            Some("true") => false,
            _ => match env("OTEL_TRACES_EXPORTER").as_deref() {
                None => c.traces,
                Some("otlp") => true,
                Some("none") => false,
                Some(other) => {
                    return Err(bad(
                        "environment variable OTEL_TRACES_EXPORTER",
                        "telemetry.traces",
                        format!("`{other}` is not supported: use otlp or none"),
                    ));
                }
            },
        };
        if !on {
            return Ok(None);
        }
        if let Some(p) = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            && p != "http/protobuf"
        {
            return Err(bad(
                "environment variable OTEL_EXPORTER_OTLP_PROTOCOL",
                "telemetry.endpoint",
                format!("`{p}` is not supported: culm exports over http/protobuf"),
            ));
        }
        let traces_url = match (
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(full), _) => (full, "environment variable OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            (None, Some(base)) => (traces_url(&base), "environment variable OTEL_EXPORTER_OTLP_ENDPOINT"),
            (None, None) => (traces_url(&c.endpoint), "[telemetry]"),
        };
        let (traces_url, url_source) = traces_url;
        if !(traces_url.starts_with("http://") || traces_url.starts_with("https://")) {
            return Err(bad(
                url_source,
                "telemetry.endpoint",
                "must be an http:// or https:// URL".to_owned(),
            ));
        }
        let (sampler, sampler_source) = match env("OTEL_TRACES_SAMPLER") {
            Some(s) => (s, "environment variable OTEL_TRACES_SAMPLER"),
            None => (c.sampler.clone(), "[telemetry]"),
        };
        if !SAMPLERS.contains(&sampler.as_str()) {
            return Err(bad(
                sampler_source,
                "telemetry.sampler",
                format!("unknown sampler `{sampler}`; one of {}", SAMPLERS.join(", ")),
            ));
        }
        let (ratio, ratio_source) = match env("OTEL_TRACES_SAMPLER_ARG") {
            Some(a) => (
                a.parse::<f64>().map_err(|e| {
                    bad(
                        "environment variable OTEL_TRACES_SAMPLER_ARG",
                        "telemetry.sampler_ratio",
                        e.to_string(),
                    )
                })?,
                "environment variable OTEL_TRACES_SAMPLER_ARG",
            ),
            None => (c.sampler_ratio, "[telemetry]"),
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(bad(
                ratio_source,
                "telemetry.sampler_ratio",
                format!("{ratio} is not between 0.0 and 1.0"),
            ));
        }
        if c.queue_size == 0 || c.batch_size == 0 || c.batch_size > c.queue_size {
            return Err(bad(
                "[telemetry]",
                "telemetry.batch_size",
                format!(
                    "batch_size ({}) must be at least 1 and at most queue_size ({})",
                    c.batch_size, c.queue_size
                ),
            ));
        }
        Ok(Some(Self {
            traces_url,
            service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| c.service_name.clone()),
            sampler: (sampler, ratio),
            queue_size: c.queue_size,
            batch_size: c.batch_size,
            export_interval: c.export_interval.max(Duration::from_millis(10)),
            export_timeout: c.export_timeout,
        }))
    }

    fn sampler(&self) -> Sampler {
        let (name, ratio) = (&self.sampler.0, self.sampler.1);
        let root = match name.trim_start_matches("parentbased_") {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            _ => Sampler::TraceIdRatioBased(ratio),
        };
        if name.starts_with("parentbased_") {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

/// `<base>/v1/traces`, the OTLP/HTTP traces path under a base URL.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// The running export; [`Export::shutdown`] sends what is queued (bounded by a timeout).
pub struct Export {
    provider: SdkTracerProvider,
}

/// The export could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting trace export to {url}: {message}")]
pub struct ExportError {
    url: String,
    message: String,
}

impl Export {
    /// Starts the exporter thread and returns the layer that feeds it.
    pub fn start<S>(settings: &TraceSettings) -> Result<(Export, impl Layer<S> + use<S>), ExportError>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let err = |message: String| ExportError {
            url: settings.traces_url.clone(),
            message,
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&settings.traces_url)
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let processor = BoundedBatch::start(exporter, settings).map_err(|e| err(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("culm");
        ENABLED.store(true, Ordering::Relaxed);
        culm_core::trace::set_span_source(current_span_context);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false);
        Ok((Export { provider }, layer))
    }

    /// Exports what is queued, waiting at most about the export timeout, and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("trace export did not shut down cleanly: {e}");
        }
    }
}

/// Makes `ctx` the parent of `span` (a job's attempt, an enqueue). Does nothing with
/// export off. Call it before the span is first entered.
pub fn set_parent(span: &tracing::Span, ctx: Option<&TraceContext>) {
    if !enabled() {
        return;
    }
    let parent = ctx.and_then(remote_context).unwrap_or_default();
    let _ = span.set_parent(parent);
}

/// The W3C context a caller's or a stored `TraceContext` describes, as a remote parent.
fn remote_context(ctx: &TraceContext) -> Option<Context> {
    let trace_id = TraceId::from_hex(ctx.trace_id()).ok()?;
    let span_id = SpanId::from_hex(ctx.span_id()).ok()?;
    let flags = TraceFlags::new(if ctx.sampled() { 1 } else { 0 });
    let state = ctx
        .tracestate
        .as_deref()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, flags, true, state);
    Some(Context::new().with_remote_span_context(sc))
}

fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8() & 1
    )
}

fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// `culm_core::trace`'s source of the current span's context (installed with export on).
fn current_span_context() -> Option<(String, Option<String>)> {
    let sc = span_context(&tracing::Span::current())?;
    let state = sc.trace_state().header();
    Some((traceparent(&sc), (!state.is_empty()).then_some(state)))
}

/// The context to store with a job enqueued under `span`. With export on it names
/// `span` and is stored when the caller sent one or the span is sampled (an unsampled
/// root costs nothing to leave out); with export off it is the caller's context as sent.
pub fn context_to_store(span: &tracing::Span, caller: Option<TraceContext>) -> Option<TraceContext> {
    if !enabled() {
        return caller;
    }
    let Some(sc) = span_context(span) else {
        return caller;
    };
    if caller.is_none() && !sc.is_sampled() {
        return None;
    }
    let state = sc.trace_state().header();
    Some(TraceContext {
        traceparent: traceparent(&sc),
        tracestate: (!state.is_empty())
            .then_some(state)
            .or_else(|| caller.as_ref().and_then(|c| c.tracestate.clone())),
        baggage: caller.and_then(|c| c.baggage),
    })
}

/// Sends finished spans in batches from its own thread. The queue between the two is
/// bounded: a span that finds it full is dropped at once and counted, so a slow or
/// unreachable collector never slows the threads that run jobs.
#[derive(Debug)]
struct BoundedBatch {
    spans: mpsc::SyncSender<Msg>,
    control: Mutex<mpsc::Sender<Control>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
}

#[derive(Debug)]
enum Msg {
    Span(Box<SpanData>),
    /// A control message is waiting: stop waiting for spans.
    Wake,
}

#[derive(Debug)]
enum Control {
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

impl BoundedBatch {
    fn start<E: SpanExporter + 'static>(exporter: E, s: &TraceSettings) -> std::io::Result<Self> {
        let (spans, rx) = mpsc::sync_channel(s.queue_size);
        let (control, control_rx) = mpsc::channel();
        let (batch_size, interval) = (s.batch_size, s.export_interval);
        let thread = std::thread::Builder::new()
            .name("culm-trace-export".into())
            .spawn(move || export_loop(exporter, &rx, &control_rx, batch_size, interval))?;
        Ok(Self {
            spans,
            control: Mutex::new(control),
            thread: Mutex::new(Some(thread)),
            stopped: AtomicBool::new(false),
        })
    }

    /// Sends `make(reply)` to the export thread and waits up to `timeout` for its reply.
    fn ask(&self, make: impl FnOnce(mpsc::Sender<()>) -> Control, timeout: Duration) -> OTelSdkResult {
        let (tx, rx) = mpsc::channel();
        let sent = self
            .control
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("control channel poisoned".into()))?
            .send(make(tx));
        if sent.is_err() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        // Interrupt the wait for spans; a full queue means the thread is busy anyway.
        let _ = self.spans.try_send(Msg::Wake);
        rx.recv_timeout(timeout).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => crate::telemetry::trace_spans_dropped("queue_full", 1),
            Err(mpsc::TrySendError::Disconnected(_)) => crate::telemetry::trace_spans_dropped("stopped", 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let r = self.ask(Control::Shutdown, timeout);
        if r.is_ok()
            && let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take())
        {
            let _ = t.join();
        }
        r
    }
}

fn export_loop<E: SpanExporter>(
    mut exporter: E,
    spans: &mpsc::Receiver<Msg>,
    control: &mpsc::Receiver<Control>,
    batch_size: usize,
    interval: Duration,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(batch_size);
    let mut failing = false;
    let mut deadline = Instant::now() + interval;
    let mut send = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let next = Vec::with_capacity(batch_size);
        match futures::executor::block_on(exporter.export(std::mem::replace(batch, next))) {
            Ok(()) => {
                crate::telemetry::trace_spans_exported(n);
                if failing {
                    tracing::info!("trace export recovered");
                }
                failing = false;
            }
            Err(e) => {
                crate::telemetry::trace_spans_dropped("export_failed", n);
                // One line per outage, not one per batch.
                if !failing {
                    tracing::warn!("trace export failed, {n} spans dropped (counted until it recovers): {e}");
                }
                failing = true;
            }
        }
    };
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match spans.recv_timeout(wait) {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                if batch.len() >= batch_size {
                    send(&mut batch);
                    deadline = Instant::now() + interval;
                }
            }
            Ok(Msg::Wake) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                send(&mut batch);
                deadline = Instant::now() + interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                send(&mut batch);
                let _ = exporter.shutdown();
                return;
            }
        }
        while let Ok(c) = control.try_recv() {
            // Everything queued before the request goes out before the reply.
            while let Ok(m) = spans.try_recv() {
                if let Msg::Span(s) = m {
                    batch.push(*s);
                    if batch.len() >= batch_size {
                        send(&mut batch);
                    }
                }
            }
            send(&mut batch);
            deadline = Instant::now() + interval;
            match c {
                Control::Flush(done) => {
                    let _ = done.send(());
                }
                Control::Shutdown(done) => {
                    let _ = exporter.shutdown();
                    let _ = done.send(());
                    return;
                }
            }
        }
    }
}

/// The trace and span ids a span carries without export: those of the context stored
/// with its job (the span that enqueued it), recorded as its `trace_id` and `span_id`
/// fields. Kept by [`CarriedIds`] for [`WithTraceIds`].
#[derive(Debug, Clone, Default)]
struct Carried {
    trace_id: String,
    span_id: String,
}

/// Remembers the `trace_id` / `span_id` fields of spans that have them, so log lines
/// inside a job name its stored trace even with export off. Other spans cost one field
/// lookup.
pub struct CarriedIds;

struct IdVisitor<'a>(&'a mut Carried);

impl tracing::field::Visit for IdVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "trace_id" => value.clone_into(&mut self.0.trace_id),
            "span_id" => value.clone_into(&mut self.0.span_id),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "span_id") {
            self.record_str(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

impl<S> Layer<S> for CarriedIds
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().fields().field("trace_id").is_none() {
            return;
        }
        let mut c = Carried::default();
        attrs.record(&mut IdVisitor(&mut c));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(c);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(c) = ext.get_mut::<Carried>() {
            values.record(&mut IdVisitor(c));
        }
    }
}

/// A JSON event formatter that puts `trace_id` and `span_id` first in every line logged
/// inside a traced span, so log lines and traces join on them.
pub struct WithTraceIds<F>(pub F);

/// culm's JSON log lines: one flat object per event, with its span, led by the trace ids.
pub fn json_lines() -> WithTraceIds<tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>> {
    WithTraceIds(
        tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(true),
    )
}

fn ids_in<S>(ctx: &FmtContext<'_, S, impl for<'a> FormatFields<'a> + 'static>) -> Option<(String, String)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let scope = ctx.event_scope()?;
    for span in scope {
        let ext = span.extensions();
        if let Some(d) = ext.get::<tracing_opentelemetry::OtelData>()
            && let (Some(t), Some(s)) = (d.trace_id(), d.span_id())
            && t != TraceId::INVALID
        {
            return Some((t.to_string(), s.to_string()));
        }
        if let Some(c) = ext.get::<Carried>()
            && !c.trace_id.is_empty()
        {
            return Some((c.trace_id.clone(), c.span_id.clone()));
        }
    }
    None
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = ids_in(ctx) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let sep = if rest.starts_with('}') { "" } else { "," };
                write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{sep}{rest}"
                )
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, TelemetryError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        TraceSettings::resolve(&TelemetryConfig::default(), |k| vars.get(k).cloned())
    }

    #[test]
    fn export_is_off_unless_asked_for() {
        assert!(resolve(&[]).expect("valid").is_none());
        assert!(resolve(&[("OTEL_TRACES_EXPORTER", "none")]).expect("valid").is_none());
        let s = resolve(&[("OTEL_TRACES_EXPORTER", "otlp")])
            .expect("valid")
            .expect("on");
        assert_eq!(s.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(s.service_name, "culm");
        assert!(
            resolve(&[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_SDK_DISABLED", "true")])
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn otel_variables_override_the_config() {
        let s = resolve(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_SERVICE_NAME", "culm-eu"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ])
        .expect("valid")
        .expect("on");
        assert_eq!(s.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(s.service_name, "culm-eu");
        assert_eq!(s.sampler, ("parentbased_traceidratio".to_owned(), 0.01));
        let s = resolve(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://tempo:4318/otlp/v1/traces",
            ),
        ])
        .expect("valid")
        .expect("on");
        assert_eq!(s.traces_url, "https://tempo:4318/otlp/v1/traces");
    }

    #[test]
    fn bad_values_name_the_variable_and_the_key() {
        let e = resolve(&[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_TRACES_SAMPLER", "sometimes")])
            .expect_err("unknown sampler");
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER"), "{e}");
        assert!(e.to_string().contains("telemetry.sampler"), "{e}");
        let e = resolve(&[("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_TRACES_SAMPLER_ARG", "2")]).expect_err("ratio");
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
        let e = resolve(&[("OTEL_TRACES_EXPORTER", "jaeger")]).expect_err("exporter");
        assert!(e.to_string().contains("otlp or none"), "{e}");
        let e = resolve(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect_err("grpc");
        assert!(e.to_string().contains("http/protobuf"), "{e}");
    }

    /// Log lines captured in memory.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_inside_a_traced_job_lead_with_its_ids_with_export_off() {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = Lines::default();
        let writer = lines.clone();
        // Composed as `culm --log-format json` composes it with export off.
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .json()
            .event_format(json_lines())
            .finish()
            .with(CarriedIds);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any job");
            let span = tracing::info_span!(
                "job",
                job_id = "01J",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            span.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            span.record("span_id", "00f067aa0ba902b7");
            let _in_job = span.enter();
            tracing::info!("inside the job");
            tracing::info_span!("integration_call").in_scope(|| tracing::warn!("inside a call"));
        });
        let text = String::from_utf8(lines.0.lock().expect("lock").clone()).expect("utf-8");
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(parsed.len(), 3, "{text}");
        assert!(parsed[0].get("trace_id").is_none(), "{text}");
        for line in &text.lines().collect::<Vec<_>>()[1..] {
            assert!(
                line.starts_with(r#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","#),
                "{line}"
            );
        }
        assert_eq!(parsed[1]["message"], "inside the job");
    }

    #[test]
    fn bad_telemetry_keys_name_the_layer_and_the_key() {
        for (var, value, key) in [
            ("CULM__TELEMETRY__SAMPLER", "sometimes", "telemetry.sampler"),
            ("CULM__TELEMETRY__SAMPLER_RATIO", "1.5", "telemetry.sampler_ratio"),
            ("CULM__TELEMETRY__ENDPOINT", "collector:4318", "telemetry.endpoint"),
            ("CULM__TELEMETRY__BATCH_SIZE", "100000", "telemetry.batch_size"),
        ] {
            let e = crate::config::Loader::new(None, None)
                .load_from([(var.to_owned(), value.to_owned())])
                .expect_err("refused");
            assert!(e.to_string().contains(var) && e.to_string().contains(key), "{var}: {e}");
        }
    }

    #[test]
    fn a_stored_context_round_trips_through_opentelemetry() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote_context(&TraceContext::new(tp.to_owned())).expect("valid");
        assert_eq!(traceparent(cx.span().span_context()), tp);
    }
}
