"""Tracked batches through the sync client against a real `culm run`: create with
callbacks, read the counts and the members, and the refusals (two queues, adding to a
complete batch)."""

from __future__ import annotations

import time

import pytest

import culm
from culm import errors


def _until_complete(client: culm.Client, id: str, timeout: float = 20) -> culm.Batch:
    deadline = time.monotonic() + timeout
    while True:
        b = client.get_batch(id)
        if b.complete and (b.on_complete is None or b.on_complete.id is not None):
            return b
        assert time.monotonic() < deadline, f"batch {id} did not complete: {b}"
        time.sleep(0.05)


def test_a_batch_runs_its_callbacks_once_its_jobs_are_done(client: culm.Client) -> None:
    b = client.create_batch(
        [{"job": "platform.echo", "payload": {"value": i}} for i in range(5)],
        on_complete={"job": "platform.noop"},
        on_success={"job": "platform.noop"},
        description="pytest",
    )
    assert b.queue == "platform" and len(b.jobs) == 5
    done = _until_complete(client, b.id)
    assert (done.total, done.pending, done.succeeded, done.dead) == (5, 0, 5, 0)
    assert done.on_complete is not None and done.on_complete.state == "enqueued"
    assert done.on_success is not None and done.on_success.id is not None
    assert client.wait(done.on_success.id, timeout=10).state == "done"
    members = list(client.batch_jobs(b.id, limit=2))
    assert [m["id"] for m in members] == [j.id for j in b.jobs]
    assert sorted(m["result"] for m in members) == [0, 1, 2, 3, 4]


def test_an_open_batch_takes_jobs_until_closed_and_then_refuses_them(client: culm.Client) -> None:
    b = client.create_batch([], on_complete={"job": "platform.noop"}, open=True, queue="platform")
    assert b.queue == "platform" and b.state == "open"
    added = client.add_to_batch(b.id, [{"job": "platform.noop"}, {"job": "platform.noop"}])
    assert len(added) == 2
    client.close_batch(b.id)
    done = _until_complete(client, b.id)
    assert done.total == 2 and done.succeeded == 2
    with pytest.raises(errors.BatchCompleteError):
        client.add_to_batch(b.id, [{"job": "platform.noop"}])


def test_jobs_for_two_queues_are_refused_naming_the_field(client: culm.Client) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        client.create_batch([{"job": "platform.noop"}, {"job": "platform.noop", "queue": "healthcheck"}])
    assert info.value.field == "jobs[1].queue"
    with pytest.raises(errors.BatchNotFoundError):
        client.get_batch("01NOSUCHBATCH")
