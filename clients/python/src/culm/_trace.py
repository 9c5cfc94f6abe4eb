"""The W3C trace context an enqueue carries, so the job's attempts, follow-ups and partner
calls join the caller's trace.

An explicit `traceparent` wins; otherwise, when the OpenTelemetry API is installed
(`pip install culm[otel]`), the current context is injected by its global propagator
(W3C `traceparent`, `tracestate` and `baggage` by default). Without either, nothing is sent."""

from __future__ import annotations

W3C_HEADERS = ("traceparent", "tracestate", "baggage")


def trace_headers(traceparent: str | None = None) -> dict[str, str]:
    """The trace headers to send with an enqueue (empty when there is no context)."""
    if traceparent is not None:
        return {"traceparent": traceparent}
    try:
        from opentelemetry import propagate
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in W3C_HEADERS}
