"""The outbox SQL that docs/outbox.md and docs/clients.md show (plain SQL and the .NET
Npgsql statements) runs against the real `culm_outbox` table that culm's migrations
created, inside a transaction that is rolled back."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest

DOCS = Path(__file__).resolve().parents[3] / "docs"


def sql_blocks(text: str) -> list[str]:
    """`INSERT INTO culm_outbox …;` statements of the ```sql blocks."""
    out = []
    for block in re.findall(r"```sql\n(.*?)```", text, re.S):
        out += [s.strip() for s in re.findall(r"(INSERT INTO culm_outbox.*?;)", block, re.S)]
    return out


def csharp_statements(text: str) -> list[str]:
    """The SQL strings given to `new NpgsqlCommand(` in ```csharp blocks."""
    out = []
    for block in re.findall(r"```csharp\n(.*?)```", text, re.S):
        out += re.findall(r'new NpgsqlCommand\(\s*"(INSERT INTO culm_outbox[^"]*)"', block, re.S)
    return out


def test_the_docs_show_outbox_sql() -> None:
    outbox = (DOCS / "outbox.md").read_text()
    clients = (DOCS / "clients.md").read_text()
    assert sql_blocks(outbox), "docs/outbox.md has no INSERT INTO culm_outbox in a sql block"
    assert csharp_statements(outbox) and csharp_statements(clients), "no Npgsql statement found"


@pytest.mark.parametrize("doc", ["outbox.md", "clients.md"])
def test_the_documented_outbox_sql_runs_against_the_real_table(server, doc: str) -> None:
    text = (DOCS / doc).read_text()
    with psycopg.connect(server.db_url) as conn:
        for stmt in sql_blocks(text):
            cur = conn.execute(stmt.rstrip(";"))
            assert cur.rowcount == 1, stmt
        for stmt in csharp_statements(text):
            params = set(re.findall(r"@(\w+)", stmt))
            values = {p: None for p in params}
            values.update(
                {"job": "galileo.transfer", "payload": '{"transfer_id": "tr_1"}', "key": f"doc:{uuid.uuid4().hex}"}
            )
            cur = conn.execute(re.sub(r"@(\w+)", r"%(\1)s", stmt), {p: values[p] for p in params})
            assert cur.rowcount == 1, stmt
            row = conn.execute(
                "SELECT job, payload->>'transfer_id', rejected_at FROM culm_outbox WHERE idempotency_key = %s",
                [values["key"]],
            ).fetchone()
            assert row == ("galileo.transfer", "tr_1", None)
        conn.rollback()
