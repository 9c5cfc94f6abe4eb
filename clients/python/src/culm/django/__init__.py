"""Django integration (`pip install culm[django]`, add `"culm.django"` to INSTALLED_APPS).

- `enqueue_on_commit(...)` writes the job to culm's outbox table (`culm_outbox`) on the
  current database connection, inside the caller's transaction: a rolled-back
  transaction enqueues nothing, a committed one is relayed by `culm run` once.
- `client()` is a default `culm.Client` built from `settings.CULM`.
- `manage.py culm_check` checks the job names in `settings.CULM["JOBS"]` (and every name
  `enqueue_on_commit` was called with in this process) against `/v1/job-types`.

No migrations: the outbox table belongs to culm (`culm migrate` creates it). The
database `enqueue_on_commit` writes to must hold it (see culm's docs/outbox.md).

Settings::

    CULM = {
        "URL": "http://culm-admin:8080",
        "TOKEN": os.environ["CULM_TOKEN"],
        "TIMEOUT": 10,           # seconds, optional
        "DATABASE": "default",   # the connection whose database holds culm_outbox
        "JOBS": ["bamboo.place_order", "mail.send_transactional"],
    }
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from .._client import Client, _delay_ms
from .._trace import trace_headers

__all__ = ["client", "enqueue_on_commit", "settings_dict", "used_job_names"]

_used: set[str] = set()

INSERT = (
    "INSERT INTO culm_outbox (job, payload, queue, run_at, idempotency_key) "
    "VALUES (%s, %s::jsonb, %s, %s, %s) RETURNING id"
)
# With a trace context (culm's schema version 4 and later): the relay stores it with the job.
INSERT_TRACED = (
    "INSERT INTO culm_outbox (job, payload, queue, run_at, idempotency_key, traceparent) "
    "VALUES (%s, %s::jsonb, %s, %s, %s, %s) RETURNING id"
)


def settings_dict() -> dict[str, Any]:
    from django.conf import settings

    return dict(getattr(settings, "CULM", {}) or {})


@lru_cache(maxsize=1)
def _client(url: str, token: str, timeout: float) -> Client:
    return Client(url, token, timeout=timeout)


def client() -> Client:
    """The default client, from `settings.CULM` (`URL`, `TOKEN`, optional `TIMEOUT`)."""
    s = settings_dict()
    try:
        return _client(s["URL"], s["TOKEN"], float(s.get("TIMEOUT", 10.0)))
    except KeyError as e:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"settings.CULM needs {e.args[0]!r} to build the culm client") from e


def enqueue_on_commit(
    job: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str | None = None,
    delay: float | timedelta | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    using: str | None = None,
    traceparent: str | None = None,
) -> int:
    """Writes the job to `culm_outbox` in the current transaction of connection `using`
    (default `settings.CULM["DATABASE"]`, else `"default"`) and returns the row id. The
    job exists only if that transaction commits; culm's relay enqueues it once (key
    `idempotency_key`, default `outbox:<row id>`). Outside `transaction.atomic()`, the
    row commits at once (Django's autocommit). The row carries the current OpenTelemetry
    trace context (or `traceparent`), which the job and its partner calls continue."""
    from django.db import connections

    if delay is not None and run_at is not None:
        raise ValueError("give delay or run_at, not both")
    if delay is not None:
        run_at = datetime.now(timezone.utc) + timedelta(milliseconds=_delay_ms(delay) or 0)
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    alias = using or settings_dict().get("DATABASE", "default")
    _used.add(job)
    with connections[alias].cursor() as cur:
        args = [job, json.dumps(dict(payload or {})), queue, run_at, idempotency_key]
        tp = trace_headers(traceparent).get("traceparent")
        if tp is None:
            cur.execute(INSERT, args)
        else:
            cur.execute(INSERT_TRACED, [*args, tp])
        row = cur.fetchone()
    return int(row[0])


def used_job_names() -> set[str]:
    """Job names `enqueue_on_commit` was called with in this process."""
    return set(_used)
