"""The sync and async clients. Both build the same requests (`_Requests`) and differ only
in how they send them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Union

import httpx

from ._trace import trace_headers
from .errors import JobTimeoutError, TransportError, from_response
from .types import Batch, DeadJob, EnqueueSpec, Job, JobRef, JobType, Queue

Delay = Union[float, int, timedelta]
JobLike = Union[EnqueueSpec, Mapping[str, Any]]

#: The longest single long-poll the server accepts; longer waits poll again.
MAX_POLL_S = 60.0
#: Statuses worth retrying: the store was briefly unavailable.
RETRY_STATUSES = frozenset({502, 503, 504})
#: A job's priority within its queue: the server takes high, then normal, then low.
PRIORITIES = ("high", "normal", "low")


def new_idempotency_key() -> str:
    """A fresh key: every enqueue carries one, so a retried request stores the job once."""
    return f"py:{uuid.uuid4().hex}"


def _delay_ms(delay: Delay | None, name: str = "delay") -> int | None:
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if seconds < 0:
        raise ValueError(f"{name} must not be negative")
    return int(seconds * 1000)


def _rfc3339(at: datetime | None) -> str | None:
    if at is None:
        return None
    if at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return at.astimezone(timezone.utc).isoformat()


def _body(
    job: str,
    payload: Mapping[str, Any] | None,
    queue: str | None,
    delay: Delay | None,
    run_at: datetime | None,
    idempotency_key: str | None,
    *,
    expires_in: Delay | None = None,
    unique_key: str | None = None,
    unique_for: Delay | None = None,
    priority: str | None = None,
) -> dict[str, Any]:
    if delay is not None and run_at is not None:
        raise ValueError("give delay or run_at, not both")
    if priority is not None and priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    body: dict[str, Any] = {"job": job, "payload": dict(payload or {})}
    if queue is not None:
        body["queue"] = queue
    if (ms := _delay_ms(delay)) is not None:
        body["delay_ms"] = ms
    if (at := _rfc3339(run_at)) is not None:
        body["run_at"] = at
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if (ms := _delay_ms(expires_in, "expires_in")) is not None:
        body["expires_in_ms"] = ms
    if unique_key is not None:
        body["unique_key"] = unique_key
    if (ms := _delay_ms(unique_for, "unique_for")) is not None:
        body["unique_for_ms"] = ms
    if priority is not None:
        body["priority"] = priority
    return body


def _spec_body(j: JobLike) -> dict[str, Any]:
    if isinstance(j, EnqueueSpec):
        return _body(
            j.job,
            j.payload,
            j.queue,
            j.delay,
            j.run_at,
            j.idempotency_key,
            expires_in=j.expires_in,
            unique_key=j.unique_key,
            unique_for=j.unique_for,
            priority=j.priority,
        )
    d = dict(j)
    return _body(
        d["job"],
        d.get("payload"),
        d.get("queue"),
        d.get("delay"),
        d.get("run_at"),
        d.get("idempotency_key"),
        expires_in=d.get("expires_in"),
        unique_key=d.get("unique_key"),
        unique_for=d.get("unique_for"),
        priority=d.get("priority"),
    )


def _batch_body(
    jobs: Iterable[JobLike],
    on_complete: JobLike | None,
    on_success: JobLike | None,
    description: str | None,
    open: bool,
    queue: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"jobs": [_spec_body(j) for j in jobs], "open": open}
    if queue is not None:
        body["queue"] = queue
    if on_complete is not None:
        body["on_complete"] = _spec_body(on_complete)
    if on_success is not None:
        body["on_success"] = _spec_body(on_success)
    if description is not None:
        body["description"] = description
    return body


def _decode(resp: httpx.Response) -> Any:
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if resp.status_code >= 400:
        raise from_response(resp.status_code, body)
    return body


class _Base:
    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.2) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": "culm-python/0.1"}

    def _should_retry(self, attempt: int, exc: Exception | None, resp: httpx.Response | None) -> bool:
        if attempt >= self.retries:
            return False
        if exc is not None:
            return True
        return resp is not None and resp.status_code in RETRY_STATUSES

    def _pause(self, attempt: int) -> float:
        return float(self.backoff * 2.0**attempt)

    def _poll(self, deadline: float) -> tuple[dict[str, str], float]:
        """The next long-poll's query and HTTP timeout: at most MAX_POLL_S, never past `deadline`."""
        poll = max(0.0, min(deadline - time.monotonic(), MAX_POLL_S))
        return {"wait": f"{int(poll * 1000)}ms"}, poll + self.timeout

    @staticmethod
    def _settled(id: str, body: Any, deadline: float, timeout: float) -> Job | None:
        """The job if final; None to poll again; raises once `deadline` passed."""
        j = Job.from_json(body)
        if j.final:
            return j
        if time.monotonic() >= deadline:
            raise JobTimeoutError(f"job {id} is still {j.state} after {timeout}s", job=j)
        return None


class Client(_Base):
    """The culm admin API, synchronously.

    >>> client = Client("http://culm:8080", token)          # doctest: +SKIP
    >>> ref = client.enqueue("platform.noop")                # doctest: +SKIP
    >>> client.wait(ref.id, timeout=10).state                # doctest: +SKIP
    'done'

    Every request is retried on transport errors and 502/503/504, `retries` times with
    exponential backoff. That is safe for enqueues because each carries an idempotency
    key (generated when the caller gives none): a retry of a request that was stored
    returns the first job instead of storing another.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, retries=retries, backoff=backoff)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        attempt = 0
        while True:
            exc: Exception | None = None
            resp: httpx.Response | None = None
            try:
                resp = self._http.request(method, path, timeout=timeout or self.timeout, **kw)
            except httpx.TransportError as e:
                exc = e
            if not self._should_retry(attempt, exc, resp):
                if exc is not None:
                    raise TransportError(f"{method} {path}: {exc}") from exc
                assert resp is not None
                return _decode(resp)
            time.sleep(self._pause(attempt))
            attempt += 1

    def enqueue(
        self,
        job: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay: Delay | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
        expires_in: Delay | None = None,
        unique_key: str | None = None,
        unique_for: Delay | None = None,
        priority: str | None = None,
    ) -> JobRef:
        """Enqueues one job. `delay` is seconds (or a timedelta); `run_at` a timezone-aware time.
        `expires_in` (seconds or a timedelta): not started by then, it never runs and ends
        `expired` (Celery's `expires`). `unique_key` / `unique_for`: while a job with the key
        (or, with `unique_for` alone, of this type with an equal payload) is pending or
        running, this returns that job (`created` false) instead of a new one.
        `priority` ("high", "normal", "low"): within its queue, the job is taken after every
        waiting job of a higher priority, in enqueue order within its own.
        The job continues the current OpenTelemetry trace (or `traceparent`, when given)."""
        body = _body(
            job,
            payload,
            queue,
            delay,
            run_at,
            idempotency_key or new_idempotency_key(),
            expires_in=expires_in,
            unique_key=unique_key,
            unique_for=unique_for,
            priority=priority,
        )
        headers = trace_headers(traceparent)
        return JobRef.from_json(self._request("POST", "/v1/jobs", json=body, headers=headers))

    def enqueue_many(
        self, jobs: Iterable[JobLike], *, idempotency_key: str | None = None, traceparent: str | None = None
    ) -> list[JobRef]:
        """Enqueues jobs atomically (all or none, on standalone and Sentinel Redis). The
        batch carries an `Idempotency-Key` (generated when not given), so a retry stores
        only what the first try did not and answers with the same ids. Every job continues
        the current trace (or `traceparent`)."""
        body = {"jobs": [_spec_body(j) for j in jobs]}
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key(), **trace_headers(traceparent)}
        out = self._request("POST", "/v1/jobs/batch", json=body, headers=headers)
        return [JobRef.from_json(j) for j in out["jobs"]]

    def get(self, id: str) -> Job:
        """The job's state, and its result once done."""
        return Job.from_json(self._request("GET", f"/v1/jobs/{id}"))

    def wait(self, id: str, timeout: float) -> Job:
        """Waits until the job is done, dead or cancelled and returns it; raises
        `JobTimeoutError` (a `TimeoutError`) when `timeout` seconds pass first. The server
        answers as soon as the job finishes (a long-poll), so this does not poll."""
        deadline = time.monotonic() + timeout
        while True:
            params, http_timeout = self._poll(deadline)
            body = self._request("GET", f"/v1/jobs/{id}", params=params, timeout=http_timeout)
            if (j := self._settled(id, body, deadline, timeout)) is not None:
                return j

    def cancel(self, id: str) -> Job:
        """Cancels a job: a pending or scheduled one never runs; a running one's handler is
        asked to stop (the job returned is still `running`, and ends `cancelled` if the
        handler stops). `NotCancellableError` once it is done or dead."""
        self._request("POST", f"/v1/jobs/{id}/cancel")
        return self.get(id)

    def create_batch(
        self,
        jobs: Iterable[JobLike],
        *,
        on_complete: JobLike | None = None,
        on_success: JobLike | None = None,
        description: str | None = None,
        open: bool = False,
        queue: str | None = None,
    ) -> Batch:
        """Creates a tracked batch: every job goes to one queue; `on_complete` is enqueued
        once when every job reached a final state, `on_success` once when every job
        succeeded. With `open=True` add jobs with `add_to_batch` and finish with
        `close_batch`; `queue` names the home queue of a batch created without jobs. The
        returned batch's `jobs` are the members, in order."""
        body = _batch_body(jobs, on_complete, on_success, description, open, queue)
        out = self._request("POST", "/v1/batches", json=body)
        return Batch.from_json({**out, "state": "open" if open else "running"})

    def add_to_batch(self, id: str, jobs: Iterable[JobLike]) -> list[JobRef]:
        """Adds jobs to a batch that is not complete (`BatchCompleteError` once it is)."""
        out = self._request("POST", f"/v1/batches/{id}/jobs", json={"jobs": [_spec_body(j) for j in jobs]})
        return [JobRef.from_json(j) for j in out["jobs"]]

    def close_batch(self, id: str) -> Batch:
        """Closes an open batch: it completes once nothing is pending."""
        return Batch.from_json(self._request("POST", f"/v1/batches/{id}/close"))

    def get_batch(self, id: str) -> Batch:
        """A batch's counts, state and callbacks."""
        return Batch.from_json(self._request("GET", f"/v1/batches/{id}"))

    def batch_jobs(self, id: str, *, limit: int = 200) -> Iterator[dict[str, Any]]:
        """Every member of a batch (id, state, result), following the pages."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            page = self._request("GET", f"/v1/batches/{id}/jobs", params=params)
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    def queues(self) -> list[Queue]:
        return [Queue.from_json(q) for q in self._request("GET", "/v1/queues")["queues"]]

    def dead(self, queue: str | None = None, *, limit: int | None = None) -> list[DeadJob]:
        params = {k: v for k, v in {"queue": queue, "limit": limit}.items() if v is not None}
        return [DeadJob.from_json(d) for d in self._request("GET", "/v1/dead", params=params)["jobs"]]

    def job_types(self) -> list[JobType]:
        return [JobType.from_json(t) for t in self._request("GET", "/v1/job-types")["job_types"]]


class AsyncClient(_Base):
    """The culm admin API for asyncio; the same methods as `Client`, awaited."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, retries=retries, backoff=backoff)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        attempt = 0
        while True:
            exc: Exception | None = None
            resp: httpx.Response | None = None
            try:
                resp = await self._http.request(method, path, timeout=timeout or self.timeout, **kw)
            except httpx.TransportError as e:
                exc = e
            if not self._should_retry(attempt, exc, resp):
                if exc is not None:
                    raise TransportError(f"{method} {path}: {exc}") from exc
                assert resp is not None
                return _decode(resp)
            await asyncio.sleep(self._pause(attempt))
            attempt += 1

    async def enqueue(
        self,
        job: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay: Delay | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
        expires_in: Delay | None = None,
        unique_key: str | None = None,
        unique_for: Delay | None = None,
        priority: str | None = None,
    ) -> JobRef:
        body = _body(
            job,
            payload,
            queue,
            delay,
            run_at,
            idempotency_key or new_idempotency_key(),
            expires_in=expires_in,
            unique_key=unique_key,
            unique_for=unique_for,
            priority=priority,
        )
        headers = trace_headers(traceparent)
        return JobRef.from_json(await self._request("POST", "/v1/jobs", json=body, headers=headers))

    async def enqueue_many(
        self, jobs: Iterable[JobLike], *, idempotency_key: str | None = None, traceparent: str | None = None
    ) -> list[JobRef]:
        body = {"jobs": [_spec_body(j) for j in jobs]}
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key(), **trace_headers(traceparent)}
        out = await self._request("POST", "/v1/jobs/batch", json=body, headers=headers)
        return [JobRef.from_json(j) for j in out["jobs"]]

    async def get(self, id: str) -> Job:
        return Job.from_json(await self._request("GET", f"/v1/jobs/{id}"))

    async def wait(self, id: str, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            params, http_timeout = self._poll(deadline)
            body = await self._request("GET", f"/v1/jobs/{id}", params=params, timeout=http_timeout)
            if (j := self._settled(id, body, deadline, timeout)) is not None:
                return j

    async def cancel(self, id: str) -> Job:
        await self._request("POST", f"/v1/jobs/{id}/cancel")
        return await self.get(id)


    async def create_batch(
        self,
        jobs: Iterable[JobLike],
        *,
        on_complete: JobLike | None = None,
        on_success: JobLike | None = None,
        description: str | None = None,
        open: bool = False,
        queue: str | None = None,
    ) -> Batch:
        body = _batch_body(jobs, on_complete, on_success, description, open, queue)
        out = await self._request("POST", "/v1/batches", json=body)
        return Batch.from_json({**out, "state": "open" if open else "running"})

    async def get_batch(self, id: str) -> Batch:
        return Batch.from_json(await self._request("GET", f"/v1/batches/{id}"))

    async def queues(self) -> list[Queue]:
        return [Queue.from_json(q) for q in (await self._request("GET", "/v1/queues"))["queues"]]

    async def dead(self, queue: str | None = None, *, limit: int | None = None) -> list[DeadJob]:
        params = {k: v for k, v in {"queue": queue, "limit": limit}.items() if v is not None}
        return [DeadJob.from_json(d) for d in (await self._request("GET", "/v1/dead", params=params))["jobs"]]

    async def job_types(self) -> list[JobType]:
        return [JobType.from_json(t) for t in (await self._request("GET", "/v1/job-types"))["job_types"]]
