"""The sync client against a real `culm run`: enqueue, wait, results, errors, idempotent
retries, cancel, queues, dead letters, job types."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

import culm
from culm import errors


def test_enqueue_and_wait_returns_a_done_job(client: culm.Client) -> None:
    ref = client.enqueue("platform.noop")
    assert ref.queue == "platform" and ref.created
    job = client.wait(ref.id, timeout=10)
    assert job.state == "done" and job.done and job.final
    assert job.job == "platform.noop"
    assert job.attempts == 1
    assert job.enqueued_at is not None and job.finished_at is not None


def test_a_result_comes_back_with_the_job(client: culm.Client) -> None:
    ref = client.enqueue("platform.echo", {"value": {"total": 3, "items": ["a", "b"]}})
    job = client.wait(ref.id, timeout=10)
    assert job.result == {"total": 3, "items": ["a", "b"]}
    assert client.get(ref.id).result == job.result


def test_wait_raises_timeout_error_while_the_job_is_not_final(client: culm.Client) -> None:
    ref = client.enqueue("platform.noop", delay=timedelta(seconds=30))
    with pytest.raises(TimeoutError) as info:
        client.wait(ref.id, timeout=0.5)
    assert isinstance(info.value, culm.JobTimeoutError)
    assert info.value.job.state == "scheduled"
    assert client.cancel(ref.id).state == "cancelled"


def test_errors_are_named_after_the_api_codes_and_carry_the_field(client: culm.Client) -> None:
    with pytest.raises(errors.UnknownJobError) as unknown:
        client.enqueue("galileo.post_transfer")
    assert unknown.value.field == "job" and unknown.value.status == 404
    with pytest.raises(errors.InvalidPayloadError) as bad:
        client.enqueue("platform.sleep", {"ms": "soon"})
    assert bad.value.field == "payload.ms" and bad.value.status == 422
    with pytest.raises(errors.JobNotFoundError):
        client.get("01JNOSUCHJOB000000000000000")
    with pytest.raises(errors.UnauthorizedError):
        culm.Client(client.base_url, "wrong").queues()
    with pytest.raises(errors.CulmError):  # every API error is a CulmError
        client.enqueue("platform.noop", queue="no_such_queue")


def test_an_idempotency_key_returns_the_first_job(client: culm.Client) -> None:
    key = culm.new_idempotency_key()
    first = client.enqueue("platform.noop", idempotency_key=key)
    again = client.enqueue("platform.noop", idempotency_key=key)
    assert (again.id, again.created) == (first.id, False)


class FlakyTransport(httpx.BaseTransport):
    """Sends each request, then drops the answer of the first one: the server stored the
    job, the caller saw a transport error, and the client retries."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.sent.append(request.content)
        if len(self.sent) == 1:
            response.read()
            raise httpx.ReadError("connection reset after the request was sent")
        return response


def test_a_transport_failure_is_retried_without_storing_the_job_twice(server, client: culm.Client) -> None:
    flaky = FlakyTransport()
    with culm.Client(server.url, server.token, transport=flaky, backoff=0.01) as c:
        ref = c.enqueue("platform.noop")
    assert len(flaky.sent) == 2 and flaky.sent[0] == flaky.sent[1], "the retry resends the same key"
    assert not ref.created, "the retry found the job the first try stored"
    assert client.wait(ref.id, timeout=10).state == "done"

    flaky = FlakyTransport()
    with culm.Client(server.url, server.token, transport=flaky, backoff=0.01) as c:
        refs = c.enqueue_many([culm.EnqueueSpec("platform.noop"), {"job": "platform.echo", "payload": {"value": 2}}])
    assert [r.created for r in refs] == [False, False]
    assert client.wait(refs[1].id, timeout=10).result == 2


def test_enqueue_many_is_all_or_nothing(client: culm.Client) -> None:
    before = {q.name: q for q in client.queues()}["platform"]
    with pytest.raises(errors.InvalidPayloadError) as bad:
        client.enqueue_many([{"job": "platform.noop"}, {"job": "platform.sleep", "payload": {"ms": "x"}}])
    assert bad.value.field == "jobs[1].payload.ms"
    refs = client.enqueue_many([{"job": "platform.echo", "payload": {"value": i}} for i in range(3)])
    assert [client.wait(r.id, timeout=10).result for r in refs] == [0, 1, 2]
    assert {q.name for q in client.queues()} >= {before.name}


def test_run_at_and_cancel(client: culm.Client) -> None:
    ref = client.enqueue("platform.noop", run_at=datetime.now(timezone.utc) + timedelta(minutes=5))
    assert client.get(ref.id).state == "scheduled"
    assert client.cancel(ref.id).state == "cancelled"
    done = client.enqueue("platform.noop")
    client.wait(done.id, timeout=10)
    with pytest.raises(errors.NotCancellableError) as info:
        client.cancel(done.id)
    assert info.value.field == "state"
    with pytest.raises(ValueError):
        client.enqueue("platform.noop", run_at=datetime.now())


def test_dead_jobs_are_listed(client: culm.Client) -> None:
    ref = client.enqueue("platform.fail_permanently", {"reason": "pytest says no"})
    job = client.wait(ref.id, timeout=10)
    assert job.state == "dead" and "pytest says no" in (job.last_error or "")
    dead = client.dead("platform")
    assert ref.id in {d.id for d in dead}


def test_job_types_carry_payload_schemas(client: culm.Client) -> None:
    types = {t.name: t for t in client.job_types()}
    assert "platform.noop" in types and "bamboo.place_order" in types
    sleep = types["platform.sleep"]
    assert sleep.payload_schema and sleep.payload_schema["properties"]["ms"]["type"] == "integer"
    assert sleep.max_attempts > 0 and sleep.timeout_ms > 0


def test_a_priority_is_sent_kept_and_checked(client: culm.Client) -> None:
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    ref = client.enqueue("platform.noop", run_at=later, priority="high")
    assert client.get(ref.id).priority == "high"
    low = client.enqueue_many([culm.EnqueueSpec("platform.noop", run_at=later, priority="low")])[0]
    assert client.get(low.id).priority == "low"
    assert client.get(client.enqueue("platform.noop", run_at=later).id).priority == "normal"
    with pytest.raises(ValueError):
        client.enqueue("platform.noop", priority="urgent")
    # The server names the field when a raw body carries a bad level.
    resp = client._http.post("/v1/jobs", json={"job": "platform.noop", "priority": "urgent"})
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "priority"
    for r in (ref, low):
        client.cancel(r.id)


def test_unique_jobs_are_returned_while_live_and_expiry_is_checked(client: culm.Client) -> None:
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    first = client.enqueue("platform.noop", run_at=later, unique_key="acct-7")
    again = client.enqueue("platform.noop", run_at=later, unique_key="acct-7")
    assert again.id == first.id and not again.created
    # By payload, inside one batch too.
    refs = client.enqueue_many(
        [culm.EnqueueSpec("platform.echo", {"value": 7}, run_at=later, unique_for=timedelta(minutes=10))] * 2
    )
    assert refs[0].id == refs[1].id and refs[0].created and not refs[1].created
    # Once the holder is final (cancelled here), the key takes a new job.
    client.cancel(first.id)
    assert client.enqueue("platform.noop", run_at=later, unique_key="acct-7").created

    fresh = client.enqueue("platform.noop", expires_in=timedelta(minutes=10))
    assert client.wait(fresh.id, timeout=10).state == "done"
    with pytest.raises(errors.CulmError) as info:
        client.enqueue("platform.noop", run_at=later, expires_in=1)
    assert info.value.field == "expires_at"
    with pytest.raises(ValueError):
        client.enqueue("platform.noop", expires_in=-1)
