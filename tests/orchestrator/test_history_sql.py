"""`aiflow history sql` cannot write, on either database, whatever the statement says: the connection
refuses (a read-only file on SQLite, a read-only transaction and a cursor on PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator.store import Store
from orchestrator.store.readonly import read_only_query
from profiler.errors import InputError
from tests.helpers import aiflow_in_process
from tests.orchestrator.store_fixtures import small_plan, small_profile
from tests.orchestrator.test_store_postgres import pg_url, server  # noqa: F401 - fixtures

CRAFTED = [
    "DELETE FROM runs",
    "UPDATE runs SET output = 'x'",
    "INSERT INTO models (name, created_at) VALUES ('evil', CURRENT_TIMESTAMP)",
    "DROP TABLE runs",
    "SELECT 1; DELETE FROM runs",
    "WITH gone AS (DELETE FROM runs RETURNING id) SELECT * FROM gone",
]
SQLITE_ONLY = ["PRAGMA query_only = OFF", "ATTACH DATABASE 'elsewhere.db' AS other", "VACUUM INTO 'copy.db'",
               "SELECT load_extension('evil')"]
POSTGRES_ONLY = ["SELECT 1; COMMIT; DELETE FROM runs", "SET TRANSACTION READ WRITE",
                 "SELECT set_config('default_transaction_read_only', 'off', false); DELETE FROM runs",
                 "SELECT nextval(pg_get_serial_sequence('runs', 'id'))"]


def filled(url: str) -> Store:
    store = Store.open(url)
    pid = store.save_profile(small_profile())
    plan = store.save_plan(small_plan(), profile_id=pid, network_id=None)
    for i in range(3):
        store.record_run(plan, strategy="daemon", output=f"caption {i}", measured_s=0.1 * (i + 1), predicted_s=0.2,
                         breakdown={})
    return store


def check_cannot_write(store: Store, statements: list[str]) -> None:
    def state() -> tuple:
        with store.engine.connect() as c:
            return (c.execute(text("SELECT COUNT(*), MIN(output) FROM runs")).one(),
                    c.execute(text("SELECT COUNT(*) FROM models")).scalar())

    before = state()
    for statement in statements:
        with pytest.raises(InputError, match="the database refused"):
            read_only_query(store.engine, statement)
        assert state() == before, statement
    columns, rows = read_only_query(store.engine, "SELECT output, measured_s FROM runs ORDER BY id")
    assert columns == ["output", "measured_s"]
    assert rows == [("caption 0", pytest.approx(0.1)), ("caption 1", pytest.approx(0.2)),
                    ("caption 2", pytest.approx(0.3))]
    assert len(read_only_query(store.engine, "SELECT * FROM runs", limit=2)[1]) == 2


def test_sqlite_refuses_every_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = filled(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        check_cannot_write(store, CRAFTED + SQLITE_ONLY)
        assert not (tmp_path / "elsewhere.db").exists() and not (tmp_path / "copy.db").exists()
    finally:
        store.close()


def test_cli_prints_rows_and_refuses_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    filled(url).close()
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "sql", "SELECT strategy, COUNT(*) AS n FROM runs "
                                     "GROUP BY strategy", "--url", url, "-f", "csv")
    assert code == 0 and out == "strategy,n\ndaemon,3\n"
    code, _, err = aiflow_in_process(capsys, monkeypatch, "history", "sql", "DELETE FROM runs", "--url", url)
    assert code == 2 and err.count("\n") == 1 and "refused the statement" in err and "only reads" in err


@pytest.mark.postgres
def test_postgres_refuses_every_write(pg_url: str) -> None:  # noqa: F811 - the fixture
    store = filled(pg_url)
    try:
        check_cannot_write(store, CRAFTED + POSTGRES_ONLY)
    finally:
        store.close()
