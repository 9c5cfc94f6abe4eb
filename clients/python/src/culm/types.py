"""What the API answers with, as typed values. Every type keeps the whole answer in `raw`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINAL_STATES = frozenset({"done", "dead", "cancelled", "expired"})


def _time(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    return datetime.fromisoformat(v.replace("Z", "+00:00"))


@dataclass(frozen=True)
class JobRef:
    """An enqueued job. `created` is False when an idempotency key matched an earlier job."""

    id: str
    queue: str
    created: bool = True

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobRef:
        return cls(id=d["id"], queue=d["queue"], created=bool(d.get("created", True)))


@dataclass(frozen=True)
class JobError:
    attempt: int
    at: Any
    error: str


@dataclass(frozen=True)
class Job:
    """A job's state (`GET /v1/jobs/{id}`): pending, scheduled, running, done, dead, cancelled
    or expired."""

    id: str
    queue: str
    state: str
    job: str | None
    attempts: int
    enqueued_at: datetime | None
    finished_at: datetime | None
    run_at: datetime | None
    result: Any
    last_error: str | None
    errors: list[JobError] = field(default_factory=list)
    #: "high", "normal" or "low" while the job's body is stored; None once it is done.
    priority: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def final(self) -> bool:
        """Done, dead, cancelled or expired: the job will not change any more."""
        return self.state in FINAL_STATES

    @property
    def done(self) -> bool:
        return self.state == "done"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        return cls(
            id=d["id"],
            queue=d["queue"],
            state=d["state"],
            job=d.get("job"),
            attempts=int(d.get("attempts") or 0),
            enqueued_at=_time(d.get("enqueued_at")),
            finished_at=_time(d.get("finished_at")),
            run_at=_time(d.get("run_at")),
            result=d.get("result"),
            last_error=d.get("last_error"),
            errors=[JobError(e.get("attempt", 0), e.get("at"), e.get("error", "")) for e in d.get("errors") or []],
            priority=d.get("priority"),
            raw=d,
        )


@dataclass(frozen=True)
class Queue:
    name: str
    tier: str
    pending: int
    scheduled: int
    running: int
    dead: int
    paused: bool
    description: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Queue:
        return cls(
            name=d["name"],
            tier=d.get("tier", ""),
            pending=int(d.get("pending", 0)),
            scheduled=int(d.get("scheduled", 0)),
            running=int(d.get("running", 0)),
            dead=int(d.get("dead", 0)),
            paused=bool(d.get("paused", False)),
            description=d.get("description", ""),
            raw=d,
        )


@dataclass(frozen=True)
class DeadJob:
    id: str
    queue: str
    job: str
    payload: Any
    attempts: int
    last_error: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeadJob:
        return cls(
            id=d["id"],
            queue=d["queue"],
            job=d.get("job", ""),
            payload=d.get("payload"),
            attempts=int(d.get("attempts", 0)),
            last_error=d.get("last_error"),
            raw=d,
        )


@dataclass(frozen=True)
class JobType:
    """A job type (`GET /v1/job-types`), with the JSON Schema of its payload."""

    name: str
    queue: str
    tiers: list[str]
    description: str
    timeout_ms: int
    max_attempts: int
    payload_schema: dict[str, Any] | None
    example: Any
    # A batch job type's batch size: up to this many jobs per handler call (None: one).
    max_batch: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobType:
        return cls(
            name=d["name"],
            queue=d["queue"],
            tiers=list(d.get("tiers", [])),
            description=d.get("description", ""),
            timeout_ms=int(d.get("timeout_ms", 0)),
            max_attempts=int((d.get("retry") or {}).get("max_attempts", 0)),
            payload_schema=d.get("payload_schema"),
            example=d.get("example"),
            max_batch=d.get("max_batch"),
            raw=d,
        )


@dataclass(frozen=True)
class EnqueueSpec:
    """One job for `enqueue_many`."""

    job: str
    payload: dict[str, Any] | None = None
    queue: str | None = None
    delay: Any = None
    run_at: datetime | None = None
    idempotency_key: str | None = None
    expires_in: Any = None
    unique_key: str | None = None
    unique_for: Any = None
    priority: str | None = None


@dataclass(frozen=True)
class BatchCallback:
    """A batch's callback: its job type, its job id once enqueued, and `waiting`,
    `enqueued` or `skipped` (on_success of a batch where not every job succeeded)."""

    job: str
    id: str | None
    state: str

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> BatchCallback | None:
        if not d:
            return None
        return cls(job=d["job"], id=d.get("id"), state=d["state"])


@dataclass(frozen=True)
class Batch:
    """A tracked batch (`GET /v1/batches/{id}`): its counts, state (open, running or
    complete) and callbacks. `jobs` holds the members a create answered with."""

    id: str
    queue: str
    state: str = "running"
    total: int = 0
    pending: int = 0
    succeeded: int = 0
    dead: int = 0
    cancelled: int = 0
    expired: int = 0
    completed_at: datetime | None = None
    on_complete: BatchCallback | None = None
    on_success: BatchCallback | None = None
    jobs: list[JobRef] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Batch:
        cb = d.get("callbacks") or {}
        return cls(
            id=d["id"],
            queue=d["queue"],
            state=d.get("state", "running"),
            total=int(d.get("total", 0)),
            pending=int(d.get("pending", 0)),
            succeeded=int(d.get("succeeded", 0)),
            dead=int(d.get("dead", 0)),
            cancelled=int(d.get("cancelled", 0)),
            expired=int(d.get("expired", 0)),
            completed_at=_time(d.get("completed_at")),
            on_complete=BatchCallback.from_json(cb.get("on_complete")),
            on_success=BatchCallback.from_json(cb.get("on_success")),
            jobs=[JobRef.from_json(j) for j in d.get("jobs", [])],
            raw=d,
        )
