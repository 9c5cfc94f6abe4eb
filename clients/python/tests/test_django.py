"""`culm.django` on a real PostgreSQL database (the one `culm run` relays from):
`enqueue_on_commit` inside committed and rolled-back transactions, the settings-based
client and the `culm_check` management command."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlparse

import psycopg
import pytest

import culm


@pytest.fixture(scope="module")
def django_db(server) -> Iterator[str]:
    import django
    from django.conf import settings

    u = urlparse(server.db_url)
    if not settings.configured:
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": server.database,
                    "USER": u.username or "postgres",
                    "HOST": u.hostname or "127.0.0.1",
                    "PORT": str(u.port or 5432),
                }
            },
            INSTALLED_APPS=["culm.django"],
            CULM={"URL": server.url, "TOKEN": server.token, "JOBS": ["platform.noop", "platform.echo"]},
            USE_TZ=True,
        )
        django.setup()
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS gift_orders (id text PRIMARY KEY, amount int NOT NULL)")
    yield server.db_url


def outbox_rows(db_url: str, key: str) -> int:
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT count(*) FROM culm_outbox WHERE idempotency_key = %s", [key]).fetchone()
    assert row is not None
    return int(row[0])


def relayed(db_url: str, key: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while outbox_rows(db_url, key):
        assert time.monotonic() < deadline, "the relay did not take the committed row"
        time.sleep(0.05)


def test_a_committed_transaction_enqueues_its_job_once(django_db: str, client: culm.Client) -> None:
    from django.db import connection, transaction

    from culm.django import enqueue_on_commit

    key = culm.new_idempotency_key()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("INSERT INTO gift_orders VALUES (%s, 25)", [key])
        row = enqueue_on_commit("platform.echo", {"value": {"order": key}}, idempotency_key=key)
        assert row > 0
        # Not committed yet: other connections (the relay among them) do not see it.
        assert outbox_rows(django_db, key) == 0
    relayed(django_db, key)
    # The relay enqueued it under the key: the same key now names that one job.
    ref = client.enqueue("platform.echo", {"value": "not this"}, idempotency_key=key)
    assert not ref.created
    assert client.wait(ref.id, timeout=10).result == {"order": key}


def test_a_rolled_back_transaction_enqueues_nothing(django_db: str, client: culm.Client) -> None:
    from django.db import connection, transaction

    from culm.django import enqueue_on_commit

    key = culm.new_idempotency_key()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("INSERT INTO gift_orders VALUES (%s, 25)", [key])
            enqueue_on_commit("platform.echo", {"value": "never"}, idempotency_key=key)
            raise RuntimeError("payment declined")
    assert outbox_rows(django_db, key) == 0
    # Give a relay time to (wrongly) act, then check no job holds the key.
    marker = client.enqueue("platform.noop")
    client.wait(marker.id, timeout=10)
    ref = client.enqueue("platform.noop", idempotency_key=key)
    assert ref.created, "a job was enqueued for a rolled-back transaction"


def test_delay_and_default_key(django_db: str, client: culm.Client) -> None:
    from django.db import transaction

    from culm.django import enqueue_on_commit

    with transaction.atomic():
        row = enqueue_on_commit("platform.noop", delay=60)
    deadline = time.monotonic() + 15
    while True:
        with psycopg.connect(django_db) as c:
            left = c.execute("SELECT count(*) FROM culm_outbox WHERE id = %s", [row]).fetchone()
        if left and left[0] == 0:
            break
        assert time.monotonic() < deadline, "the relay did not take the committed row"
        time.sleep(0.05)
    # The relay enqueued the row under its default key, outbox:<row id>, a prefix culm
    # keeps for itself: a caller cannot take it first (or look the job up with it).
    with pytest.raises(culm.errors.InvalidRequestError) as refused:
        client.enqueue("platform.noop", idempotency_key=f"outbox:{row}")
    assert refused.value.field == "idempotency_key"
    platform = next(q for q in client.queues() if q.name == "platform")
    assert platform.scheduled >= 1, "the delayed job waits for its time"


def test_settings_client_and_culm_check(django_db: str) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from culm.django import client as default_client

    assert default_client().job_types()
    call_command("culm_check")
    with pytest.raises(CommandError, match="galileo.card_load"):
        call_command("culm_check", "galileo.card_load")


def test_the_outbox_row_carries_the_trace_context_to_the_job(django_db: str, server, client: culm.Client) -> None:
    from django.db import transaction

    from culm.django import enqueue_on_commit
    from test_trace import envelope

    key = culm.new_idempotency_key()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with transaction.atomic():
        enqueue_on_commit("platform.noop", delay=3600, idempotency_key=key, traceparent=traceparent)
    relayed(django_db, key)
    # The relay stored the job under the key; the same key names it.
    ref = client.enqueue("platform.noop", idempotency_key=key)
    assert not ref.created
    assert envelope(server, "platform", ref.id)["trace"] == {"traceparent": traceparent}
