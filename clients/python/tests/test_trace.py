"""Enqueues carry the caller's W3C trace context: the current OpenTelemetry span's, or an
explicit `traceparent`; culm stores it with the job (read back here from Redis) only when
there is one."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import culm
from conftest import REDIS_URL


def envelope(server: Any, queue: str, job_id: str) -> dict[str, Any]:
    """The job as culm stored it in Redis (the `jobs` hash of its queue)."""
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli is needed to read what culm stored"
    out = subprocess.run(
        [cli, "-u", REDIS_URL, "HGET", f"{{{server.prefix}:{queue}}}:jobs", job_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out, f"job {job_id} has no stored body in {queue}"
    return json.loads(out)


def test_enqueue_continues_the_current_opentelemetry_span(server: Any, client: culm.Client) -> None:
    from opentelemetry import baggage, context
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("culm-tests")
    token = context.attach(baggage.set_baggage("customer", "c42"))
    try:
        with tracer.start_as_current_span("checkout") as span:
            ref = client.enqueue("platform.noop", delay=3600)
            [batched] = client.enqueue_many([{"job": "platform.noop", "delay": 3600}])
            ctx = span.get_span_context()
    finally:
        context.detach(token)
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    for job_id in (ref.id, batched.id):
        trace = envelope(server, "platform", job_id)["trace"]
        assert trace["traceparent"] == expected
        assert trace["baggage"] == "customer=c42"


async def test_the_async_client_sends_an_explicit_traceparent(server: Any) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with culm.AsyncClient(server.url, server.token) as c:
        ref = await c.enqueue("platform.noop", delay=3600, traceparent=traceparent)
    assert envelope(server, "platform", ref.id)["trace"] == {"traceparent": traceparent}


def test_without_a_context_nothing_is_stored(server: Any, client: culm.Client) -> None:
    ref = client.enqueue("platform.noop", delay=3600)
    assert "trace" not in envelope(server, "platform", ref.id)
