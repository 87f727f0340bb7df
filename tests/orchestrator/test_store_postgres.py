"""The history store on PostgreSQL (the server at 127.0.0.1:5432, or $AIFLOW_TEST_POSTGRES_URL).

Each test gets its own freshly created schema (dropped afterwards), reached through the URL's
search_path, so concurrent CI runs and leftovers never collide. Skipped, with the reason, when no
server answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url

from orchestrator.store import Store
from orchestrator.store import engine as db
from orchestrator.store.queries import history
from orchestrator.store.tables import Base, ProfileUnit
from tests.orchestrator.store_fixtures import small_network, small_plan, small_profile
from tests.orchestrator.test_store import (
    ALL_TABLES,
    TABLES_0001,
    WRITER,
)
from tests.orchestrator.test_store import (
    test_upgrade_to_0007_takes_mode_and_k_from_the_plan_documents as upgrade_to_0007_case,
)

pytestmark = pytest.mark.postgres

BASE_URL = os.environ.get("AIFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def server() -> str:
    try:
        psycopg.connect(_libpq(BASE_URL), connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        pytest.skip(f"no PostgreSQL server at {make_url(BASE_URL).render_as_string()}: {reason}")
    return BASE_URL


@pytest.fixture
def pg_url(server: str):
    """A URL whose search_path is a new, empty schema of its own."""
    schema = f"aiflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(server), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_url(server).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with psycopg.connect(_libpq(server), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_the_schema_is_isolated(pg_url):
    engine = db.make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar().startswith("aiflow_test_")
        assert _tables(engine) == set()
    finally:
        engine.dispose()


def test_migrations_up_down_up(pg_url):
    engine = db.make_engine(pg_url)
    try:
        assert db.current_revision(engine) is None
        db.upgrade(engine, "0001")
        assert db.current_revision(engine) == "0001"
        assert _tables(engine) == TABLES_0001
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision()
        assert _tables(engine) == ALL_TABLES
        db.downgrade(engine, "0001")
        assert _tables(engine) == TABLES_0001
        db.downgrade(engine, "base")
        assert db.current_revision(engine) is None and _tables(engine) == set()
        db.upgrade(engine)
        assert _tables(engine) == ALL_TABLES
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_profile_round_trip(pg_url):
    profile = small_profile()
    with Store.open(pg_url) as s:
        pid = s.save_profile(profile)
        assert s.save_profile(small_profile()) == pid
        assert s.get_profile(pid) == profile
        with s.engine.connect() as conn:
            units = conn.execute(select(ProfileUnit.name, ProfileUnit.param_bytes, ProfileUnit.flops)
                                 .where(ProfileUnit.profile_id == pid).order_by(ProfileUnit.unit_index)).all()
        assert [(u.name, u.param_bytes) for u in units] == [(u.name, u.param_bytes) for u in profile.units]
        assert units[0].flops == {"encode": 1.25e6}
        [summary] = s.list_profiles()
        assert summary.hardware == ("cpu-2c", "h200") and summary.created_at.tzinfo is not None
    with Store.open(pg_url) as s:  # a second process's view: already at head, same data
        assert s.get_profile(pid) == profile


def test_network_plan_run_probe_round_trips(pg_url):
    t0 = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
    with Store.open(pg_url) as s:
        pid = s.save_profile(small_profile())
        nid = s.save_network(small_network(), origin="test")
        plan_id = s.save_plan(small_plan(status="feasible"), profile_id=pid, network_id=nid)
        s.record_run(plan_id, strategy="optimal", output="a green triangle", measured_s=0.5, predicted_s=0.4,
                     breakdown={"transfer_s": {"phone->edge": 0.2}})
        s.record_probe("phone->edge", bandwidth_bps=2e7, latency_s=0.01, measured_at=t0)
        s.record_plan_application(plan_id, applied_at=t0 + timedelta(seconds=1))
        assert s.get_network(nid) == small_network()
        assert s.get_plan(plan_id) == small_plan(status="feasible")
        assert s.current_plan_id() == plan_id
        with s.engine.connect() as conn:
            [run] = history(conn, "runs")
            [probe] = history(conn, "probes")
            [solve] = history(conn, "solves", model="tiny-test")
            [plan_row] = history(conn, "plans")
            breakdown = conn.execute(text("SELECT breakdown FROM runs")).scalar()
        assert run["ratio"] == pytest.approx(1.25) and run["model"] == "tiny-test"
        assert probe["measured_at"] == t0
        assert solve["gap"] == 0.0125 and (solve["profile_id"], solve["network_id"]) == (pid, nid)
        assert plan_row["applied_at"] == t0 + timedelta(seconds=1) and plan_row["requests"] == 1
        assert solve["applied"] is True
        assert json.loads(json.dumps(breakdown)) == {"transfer_s": {"phone->edge": 0.2}}


def test_concurrent_first_use_migrates_once(pg_url):
    # Two processes open the empty schema at once; the advisory lock lets one migrate, the other wait.
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url, "10", f"w{k}"], stderr=subprocess.PIPE,
                              text=True) for k in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    with Store.open(pg_url) as s, s.engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT strategy, count(*) FROM runs GROUP BY strategy")).all())
    assert counts == {"w0": 10, "w1": 10}


def test_upgrade_to_0007_on_postgres(pg_url):
    """Migration 0007's backfill reads the JSON documents on PostgreSQL too."""
    upgrade_to_0007_case(pg_url)
