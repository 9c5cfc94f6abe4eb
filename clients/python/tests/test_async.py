"""The asyncio client: the same calls, awaited."""

from __future__ import annotations

import asyncio

import pytest

import culm
from culm import errors


async def test_async_enqueue_wait_and_errors(server) -> None:
    async with culm.AsyncClient(server.url, server.token) as c:
        refs = await asyncio.gather(*(c.enqueue("platform.echo", {"value": i}) for i in range(5)))
        jobs = await asyncio.gather(*(c.wait(r.id, timeout=10) for r in refs))
        assert [j.result for j in jobs] == list(range(5))
        with pytest.raises(errors.UnknownJobError):
            await c.enqueue("no.such_job")
        many = await c.enqueue_many([{"job": "platform.noop"}])
        assert (await c.wait(many[0].id, timeout=10)).done
        assert any(q.name == "platform" for q in await c.queues())
        assert any(t.name == "platform.noop" for t in await c.job_types())
        later = await c.enqueue("platform.noop", delay=60)
        with pytest.raises(TimeoutError):
            await c.wait(later.id, timeout=0.3)
        assert (await c.cancel(later.id)).state == "cancelled"
