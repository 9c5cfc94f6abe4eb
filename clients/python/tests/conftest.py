"""Starts a real `culm run` for the suite: on a free port, with its own Redis key prefix
and its own PostgreSQL database (created here, dropped at the end), so the outbox relay
and the ledger run as in production. Django is configured on that same database, which
therefore holds `culm_outbox` (created by culm's migrations at start-up).

Environment: CULM_BIN (default: <repo>/target/debug/culm), CULM_TEST_REDIS_URL,
CULM_TEST_PG (a libpq URL of a server where databases may be created)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[3]
REDIS_URL = os.environ.get("CULM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
PG = os.environ.get("CULM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TOKEN = "pytest-" + uuid.uuid4().hex


@dataclass
class Culm:
    url: str
    token: str
    prefix: str
    database: str
    db_url: str
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def _drop_redis_prefix(prefix: str) -> None:
    cli = shutil.which("redis-cli")
    if not cli:
        return
    keys = subprocess.run(
        [cli, "-u", REDIS_URL, "--scan", "--pattern", f"*{prefix}*"], capture_output=True, text=True, check=False
    ).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run([cli, "-u", REDIS_URL, "DEL", *keys[i : i + 500]], capture_output=True, check=False)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Culm]:
    binary = Path(os.environ.get("CULM_BIN", REPO / "target" / "debug" / "culm"))
    if not binary.exists():
        pytest.fail(f"{binary} not found: build it with `cargo build -p culm-worker --bin culm` or set CULM_BIN")
    suffix = uuid.uuid4().hex[:12]
    database = f"culm_py_{suffix}"
    prefix = f"culm-py-{suffix}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{database}"')
    db_url = _with_db(PG, database)
    port = _free_port()
    log = tmp_path_factory.mktemp("culm") / "culm.log"
    env = {
        **os.environ,
        "CULM_REDIS_URL": REDIS_URL,
        "CULM__REDIS__KEY_PREFIX": prefix,
        "CULM_DATABASE_URL": db_url,
        "CULM__ADMIN__LISTEN": f"127.0.0.1:{port}",
        "CULM_ADMIN_TOKEN": TOKEN,
        "CULM__WORKER__IDLE_POLL_INTERVAL": "100ms",
        "CULM__DATABASE__OUTBOX__POLL_INTERVAL": "200ms",
    }
    env.pop("CULM_CONFIG_DIR", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "run", "--queues", "platform", "--no-scheduler"],
            env=env,
            cwd=tmp_path_factory.mktemp("cwd"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"culm run exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"culm run not ready after 60s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Culm(url=url, token=TOKEN, prefix=prefix, database=database, db_url=db_url, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _drop_redis_prefix(prefix)
        # Django keeps connections to the database open until the interpreter ends.
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def client(server: Culm) -> Iterator["culm_client.Client"]:
    import culm as culm_client

    with culm_client.Client(server.url, server.token) as c:
        yield c
