"""The history store on SQLite: migrations, round trips, history queries and the `db`/`history` CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from orchestrator.store import Store, default_sqlite_path, resolve_url
from orchestrator.store import engine as db
from orchestrator.store.queries import COLUMNS, Filters, history, placement_summary
from orchestrator.store.tables import Base, ProfileUnit
from profiler.errors import InputError
from tests.orchestrator.store_fixtures import small_network, small_plan, small_profile

TABLES_0001 = {"hardware_classes", "models", "profiles", "profile_hardware", "profile_units"}
TABLES_0002 = {"networks", "plans", "runs", "probes", "plan_applications"}
TABLES_0003 = {"decisions", "node_samples"}
TABLES_0004 = {"probe_hours", "node_sample_hours", "run_hours"}
TABLES_0005 = {"daemon_states"}
TABLES_0006 = {"summary_marks"}
ALL_TABLES = TABLES_0001 | TABLES_0002 | TABLES_0003 | TABLES_0004 | TABLES_0005 | TABLES_0006
HEAD = "0009"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sub' / 'history.db'}"


@pytest.fixture
def store(url: str):
    with Store.open(url) as s:
        yield s


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


# -- URL resolution and connecting ----------------------------------------------------------------


def test_default_url_is_a_per_user_sqlite_file(monkeypatch, tmp_path):
    monkeypatch.delenv("AIFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_sqlite_path() == tmp_path / "xdg" / "aiflow" / "history.db"
    assert resolve_url() == f"sqlite:///{tmp_path / 'xdg' / 'aiflow' / 'history.db'}"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_sqlite_path() == tmp_path / "home" / ".local" / "share" / "aiflow" / "history.db"
    monkeypatch.setenv("AIFLOW_DATABASE_URL", "sqlite:///elsewhere.db")
    assert resolve_url() == "sqlite:///elsewhere.db"
    assert resolve_url("sqlite:///given.db") == "sqlite:///given.db"


def test_open_with_defaults_creates_the_folder_and_the_schema(monkeypatch, tmp_path):
    monkeypatch.delenv("AIFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with Store.open() as s:
        assert (tmp_path / "xdg" / "aiflow" / "history.db").is_file()
        assert db.current_revision(s.engine) == db.head_revision()


def test_sqlite_pragmas_foreign_keys_busy_timeout_wal(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    # Foreign keys are enforced: a unit row of a profile that does not exist is refused.
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(ProfileUnit.__table__.insert().values(
            profile_id=999, unit_index=0, name="x", param_bytes=1, mem_bytes=1, flops={}, out_bytes={}, latency_s={}))


def test_unreachable_and_bad_urls_are_one_line_input_errors():
    with pytest.raises(InputError, match=r"cannot connect") as exc:
        Store.open("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="not a valid SQLAlchemy URL"):
        Store.open("not a url")
    with pytest.raises(InputError, match="nosuchdb"):
        Store.open("nosuchdb://x/y")


def test_a_file_that_is_not_a_database_is_an_input_error(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(InputError, match=r"notes.txt: cannot (connect|read): file is not a database"):
        Store.open(f"sqlite:///{junk}")


def test_a_database_newer_than_the_code_is_refused(url):
    with Store.open(url) as s, s.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(InputError, match=r"revision '9999' is newer than this aiflow") as exc:
        Store.open(url)
    assert "\n" not in str(exc.value)


# -- migrations -----------------------------------------------------------------------------------


def test_migrations_up_down_up(url):
    engine = db.make_engine(url)
    try:
        assert db.current_revision(engine) is None
        db.upgrade(engine, "0001")
        assert db.current_revision(engine) == "0001"
        assert _tables(engine) == TABLES_0001
        db.upgrade(engine, "0002")
        assert _tables(engine) == TABLES_0001 | TABLES_0002
        db.upgrade(engine)
        assert db.current_revision(engine) == HEAD == db.head_revision()
        assert _tables(engine) == ALL_TABLES
        db.downgrade(engine, "0001")
        assert _tables(engine) == TABLES_0001
        db.downgrade(engine, "base")
        assert db.current_revision(engine) is None
        assert _tables(engine) == set()
        db.upgrade(engine, "head")
        assert _tables(engine) == ALL_TABLES
    finally:
        engine.dispose()


def test_downgrade_keeps_older_tables_data(url):
    with Store.open(url) as s:
        pid = s.save_profile(small_profile())
        s.save_plan(small_plan(), profile_id=pid, network_id=None)
        db.downgrade(s.engine, "0001")
    with Store.open(url) as s:  # upgrades back to head on first use
        assert s.get_profile(pid) == small_profile()
        assert history_rows(s, "plans") == []


def test_the_migrations_build_exactly_the_models_schema(store):
    # Autogenerate would have nothing to add: tables, columns, types, indexes and constraints agree.
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_unknown_revision_is_an_input_error(url):
    engine = db.make_engine(url)
    try:
        with pytest.raises(InputError, match="revision 'nope'"):
            db.upgrade(engine, "nope")
    finally:
        engine.dispose()


# -- round trips ----------------------------------------------------------------------------------


def test_profile_round_trip_and_unit_rows(store):
    profile = small_profile()
    pid = store.save_profile(profile)
    back = store.get_profile(pid)
    assert back == profile
    assert back.model_extra == {"family": "encoder-decoder"}
    assert back.edges[0].from_ == 1
    with store.engine.connect() as conn:
        units = conn.execute(select(ProfileUnit).where(ProfileUnit.profile_id == pid)
                             .order_by(ProfileUnit.unit_index)).all()
        assert [u.name for u in units] == [u.name for u in profile.units]
        assert [u.param_bytes for u in units] == [u.param_bytes for u in profile.units]
        assert units[3].latency_s == {"cpu-2c": {"prefill": 0.004, "decode": 0.004},
                                      "h200": {"prefill": 4e-5, "decode": 4e-5}}
        # SQL over the unit rows: the heaviest unit by parameters.
        heaviest = conn.execute(text("SELECT name FROM profile_units WHERE profile_id = :p "
                                     "ORDER BY param_bytes DESC LIMIT 1"), {"p": pid}).scalar()
        assert heaviest == "dec.head"
        fingerprint, family = conn.execute(text(
            "SELECT h.fingerprint, m.family FROM hardware_classes h, models m WHERE h.name = 'cpu-2c'")).one()
        assert json.loads(fingerprint)["cpu"] == "Test CPU @ 2GHz"
        assert family == "encoder-decoder"


def test_same_profile_twice_is_one_row_and_a_different_one_is_new(store):
    a = store.save_profile(small_profile())
    assert store.save_profile(small_profile()) == a
    b = store.save_profile(small_profile(scale=2.0))
    c = store.save_profile(small_profile(model="other"))
    assert len({a, b, c}) == 3
    summaries = store.list_profiles()
    assert [p.id for p in summaries] == [c, b, a]
    assert summaries[1].model == "tiny-test" and summaries[1].units == 4
    assert summaries[1].hardware == ("cpu-2c", "h200")
    assert summaries[1].created_at.tzinfo is not None
    assert abs(summaries[1].created_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert [p.id for p in store.list_profiles(model="tiny-test")] == [b, a]
    assert store.latest_profile_id("tiny-test") == b
    assert store.latest_profile_id("tiny-test", hardware="h200") == b
    assert store.latest_profile_id("tiny-test", hardware="tpu") is None
    assert store.latest_profile_id("unknown") is None
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM models")).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM hardware_classes")).scalar() == 2


def test_missing_rows_are_input_errors(store):
    with pytest.raises(InputError, match="profile 42: no such profile"):
        store.get_profile(42)
    with pytest.raises(InputError, match="plan 7: no such plan"):
        store.get_plan(7)
    with pytest.raises(InputError, match="network 3: no such network"):
        store.get_network(3)
    with pytest.raises(InputError, match="profile 5: no such profile"):
        store.save_plan(small_plan(), profile_id=5, network_id=None)
    with pytest.raises(InputError, match="plan 9: no such plan"):
        store.record_run(9, strategy="optimal", output="x", measured_s=1.0, predicted_s=None, breakdown={})


def test_non_finite_numbers_are_refused(store):
    with pytest.raises(InputError, match=r"plan.predicted_latency_s: inf"):
        store.save_plan(small_plan(latency=float("inf")), profile_id=None, network_id=None)
    with pytest.raises(InputError, match=r"run.breakdown.compute_s.edge: nan"):
        store.record_run(None, strategy="x", output="", measured_s=0.1, predicted_s=None,
                         breakdown={"compute_s": {"edge": float("nan")}})


def test_network_plan_run_round_trips(store):
    pid = store.save_profile(small_profile())
    net = small_network()
    nid = store.save_network(net, origin="examples/three-tier.yaml")
    assert store.save_network(small_network()) == nid
    assert store.save_network(small_network(bandwidth_bps=5e6)) != nid
    back = store.get_network(nid)
    assert back == net
    assert back.transfer_time("phone", "cloud", 1000) == net.transfer_time("phone", "cloud", 1000)

    plan = small_plan(status="feasible")
    plan_id = store.save_plan(plan, profile_id=pid, network_id=nid)
    assert store.get_plan(plan_id) == plan
    assert store.get_plan(plan_id).gap == 0.0125
    assert store.plan_inputs(plan_id) == (pid, nid)
    # Each solve is its own row, even of an identical plan.
    assert store.save_plan(plan, profile_id=pid, network_id=nid) != plan_id

    run_id = store.record_run(plan_id, strategy="optimal", output="a red circle", measured_s=0.45,
                              predicted_s=0.4213, breakdown={"compute_s": {"phone": 0.01}, "transfer_s": {}})
    rows = history_rows(store, "runs")
    assert rows[0]["id"] == run_id and rows[0]["model"] == "tiny-test"
    assert rows[0]["ratio"] == pytest.approx(0.45 / 0.4213)
    with store.engine.connect() as conn:
        assert json.loads(conn.execute(text("SELECT breakdown FROM runs")).scalar()) == {
            "compute_s": {"phone": 0.01}, "transfer_s": {}}


def test_probes_and_plan_applications(store):
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    store.record_probe("phone->edge", bandwidth_bps=2.0e7, latency_s=0.01, measured_at=t0)
    store.record_probe("phone->edge", bandwidth_bps=1.5e7, measured_at=t0 + timedelta(seconds=30))
    store.record_probe("edge->cloud", latency_s=0.02, measured_at=t0 + timedelta(seconds=10))
    with pytest.raises(InputError, match="neither"):
        store.record_probe("phone->edge")
    rows = history_rows(store, "probes")
    assert [(r["link"], r["bandwidth_bps"]) for r in rows] == [
        ("phone->edge", 1.5e7), ("edge->cloud", None), ("phone->edge", 2.0e7)]
    assert rows[-1]["measured_at"] == t0  # timezone-aware UTC back from SQLite

    assert store.current_plan_id() is None
    p1 = store.save_plan(small_plan(), profile_id=None, network_id=None)
    p2 = store.save_plan(small_plan(latency=0.3), profile_id=None, network_id=None)
    store.record_plan_application(p1, applied_at=t0)
    store.record_plan_application(p2, previous_plan_id=p1, applied_at=t0 + timedelta(minutes=5))
    assert store.current_plan_id() == p2
    plans = {r["plan_id"]: r for r in history_rows(store, "plans")}
    assert plans[p2]["applied_at"] == t0 + timedelta(minutes=5) and plans[p2]["until"] is None
    assert plans[p1]["until"] == t0 + timedelta(minutes=5) and plans[p1]["lasted_s"] == 300.0
    assert plans[p1]["placement"] == "phone[0-1] edge[2] cloud[3]" == plans[p2]["replaced"]
    # The plan in force over [t0, t0+5m) and not after it.
    only_first = history_rows(store, "plans", filters=Filters(until=t0 + timedelta(minutes=1)))
    assert [r["plan_id"] for r in only_first] == [p1]
    assert [r["plan_id"] for r in history_rows(store, "plans", filters=Filters(since=t0 + timedelta(minutes=6)))] \
        == [p2]


def test_history_queries_filter_limit_and_order(store):
    pa = store.save_profile(small_profile("model-a"))
    pb = store.save_profile(small_profile("model-b"))
    for i in range(3):
        store.save_plan(small_plan("model-a", latency=0.1 * (i + 1)), profile_id=pa, network_id=None)
    store.save_plan(small_plan("model-b"), profile_id=pb, network_id=None)
    solves = history_rows(store, "solves", model="model-a")
    assert [r["predicted_latency_s"] for r in solves] == pytest.approx([0.3, 0.2, 0.1])
    assert all(r["profile_id"] == pa for r in solves)
    assert len(history_rows(store, "solves", limit=2)) == 2
    assert history_rows(store, "solves", limit=1)[0]["model"] == "model-b"
    profiles = history_rows(store, "profiles")
    assert profiles[0]["param_bytes"] == sum(u.param_bytes for u in small_profile().units)
    assert profiles[0]["hardware"] == "cpu-2c,h200"
    for kind in COLUMNS:
        assert all(tuple(r) == COLUMNS[kind] for r in history_rows(store, kind))
    with pytest.raises(InputError, match="--limit"):
        history_rows(store, "runs", limit=0)
    with pytest.raises(InputError, match="history kind"):
        history_rows(store, "lunch")


def test_decisions_and_migrations_read_the_daemons_rows(store):
    """Two switches written as the daemon writes them; the named queries give back what went in."""
    t0 = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)
    pid = store.save_profile(small_profile())
    first = store.save_plan(small_plan(), profile_id=pid, network_id=None)
    moved = small_plan().model_copy(update={"assignment": ["phone"] * len(small_plan().assignment)})
    second = store.save_plan(moved, profile_id=pid, network_id=None)
    d1 = store.record_decision(candidate_plan_id=first, current_plan_id=None, network_id=None, trigger="start",
                               applied=True, reason="first plan", current_s=None, candidate_s=0.4, gain_s=None,
                               migration_s=0.05)
    store.record_decision(candidate_plan_id=second, current_plan_id=first, network_id=None, trigger="scheduled",
                          applied=False, reason="gain 2.0% is below the threshold 10%", current_s=0.4,
                          candidate_s=0.392, gain_s=0.008, migration_s=0.1)
    d3 = store.record_decision(candidate_plan_id=second, current_plan_id=first, network_id=None,
                               trigger="link-change", applied=True, reason="faster", current_s=0.9,
                               candidate_s=0.3, gain_s=0.6, migration_s=0.1)
    a1 = store.record_plan_application(first, applied_at=t0, version=1, decision_id=d1)
    store.finish_plan_application(a1, outcome="applied (first plan)", finished_at=t0)
    a2 = store.record_plan_application(second, previous_plan_id=first, applied_at=t0 + timedelta(minutes=5),
                                       version=2, decision_id=d3)
    store.finish_plan_application(a2, outcome="switched", finished_at=t0 + timedelta(minutes=5, seconds=2))
    for _ in range(3):          # requests recorded during the second switch, and one after it
        store.record_run(second, strategy="daemon", output="x", measured_s=0.3, predicted_s=0.3, breakdown={},
                         plan_version=2)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET created_at = :t WHERE id <= 2"), {"t": t0 + timedelta(minutes=5, seconds=1)})
        conn.execute(text("UPDATE runs SET created_at = :t WHERE id = 3"), {"t": t0 + timedelta(minutes=9)})
    decisions = history_rows(store, "decisions")
    assert [d["trigger"] for d in decisions] == ["link-change", "scheduled", "start"]
    assert [d["applied"] for d in decisions] == [True, False, True]
    assert decisions[1]["gain_s"] == pytest.approx(0.008) and "threshold" in decisions[1]["reason"]
    assert decisions[0]["placement"] == placement_summary(moved.assignment)
    switches = history_rows(store, "migrations")
    assert [m["version"] for m in switches] == [2, 1]
    assert switches[0]["previous"] == placement_summary(small_plan().assignment) and switches[1]["previous"] is None
    assert switches[0]["duration_s"] == pytest.approx(2.0) and switches[0]["outcome"] == "switched"
    assert switches[0]["runs_during"] == 2


def test_placement_summary():
    assert placement_summary(["a", "a", "b", "a"]) == "a[0-1] b[2] a[3]"
    assert placement_summary([]) == ""


def history_rows(store: Store, kind: str, **kw) -> list[dict]:
    with store.engine.connect() as conn:
        return history(conn, kind, **kw)


# -- several processes --------------------------------------------------------------------------


WRITER = textwrap.dedent("""
    import sys
    from orchestrator.store import Store
    with Store.open(sys.argv[1]) as s:
        for i in range(int(sys.argv[2])):
            s.record_run(None, strategy=sys.argv[3], output=str(i), measured_s=0.001 * i, predicted_s=None,
                         breakdown={})
""")


def test_concurrent_processes_migrate_once_and_all_writes_land(url):
    # Three processes open a fresh database at once (each runs the first-use migration) and write.
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, "25", f"w{k}"], stderr=subprocess.PIPE, text=True)
             for k in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    with Store.open(url) as s, s.engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT strategy, count(*) FROM runs GROUP BY strategy")).all())
        assert counts == {"w0": 25, "w1": 25, "w2": 25}
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [db.head_revision()]


# -- the CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_app():
    from orchestrator.cli import _register, app

    _register()
    return app


def _invoke(cli_app, url: str, *args: str):
    result = CliRunner().invoke(cli_app, list(args), env={"AIFLOW_DATABASE_URL": url, "COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_cli_history_json_csv_and_table(cli_app, url):
    with Store.open(url) as s:
        pid = s.save_profile(small_profile())
        plan_id = s.save_plan(small_plan(), profile_id=pid, network_id=None)
        s.record_run(plan_id, strategy="optimal", output="two blue squares, left", measured_s=0.5,
                     predicted_s=0.4, breakdown={})
        s.record_run(None, strategy="device-only", output="two blue squares", measured_s=0.9,
                     predicted_s=None, breakdown={}, model="other-model")
    rows = json.loads(_invoke(cli_app, url, "history", "runs", "--format", "json"))
    assert [r["strategy"] for r in rows] == ["device-only", "optimal"]
    assert rows[1]["ratio"] == pytest.approx(1.25) and rows[1]["plan_id"] == plan_id
    assert datetime.fromisoformat(rows[1]["created_at"]).tzinfo is not None
    rows = json.loads(_invoke(cli_app, url, "history", "runs", "--model", "tiny-test", "--format", "json"))
    assert [r["output"] for r in rows] == ["two blue squares, left"]

    out = _invoke(cli_app, url, "history", "solves", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert len(parsed) == 1 and parsed[0]["solver"] == "pulp-cbc" and parsed[0]["profile_id"] == str(pid)
    assert list(parsed[0]) == list(COLUMNS["solves"])
    assert _invoke(cli_app, url, "history", "probes", "--format", "csv").strip() == ",".join(COLUMNS["probes"])

    table = _invoke(cli_app, url, "history", "profiles")
    assert "tiny-test" in table and "cpu-2c,h200" in table
    table = _invoke(cli_app, url, "history", "solves", "--limit", "1")
    assert "phone[0-1] edge[2] cloud[3]" in table and "1 row" in table
    assert "plans (0 rows)" in _invoke(cli_app, url, "history", "plans")  # solved, never applied
    assert json.loads(_invoke(cli_app, url, "history", "solves", "--json"))[0]["applied"] is False
    assert _invoke(cli_app, url, "history", "solves", "--csv").splitlines()[0] == ",".join(COLUMNS["solves"])


def test_upgrade_to_0003_keeps_rows_written_at_0002(url):
    """The daemon's revision adds columns to tables earlier code filled: their rows stay, new columns empty."""
    engine = db.make_engine(url)
    try:
        db.upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO probes (link, bandwidth_bps, latency_s, measured_at) "
                              "VALUES ('a->b', 1e6, 0.01, '2026-12-01 10:00:00+00:00')"))
            conn.execute(text("INSERT INTO models (name, created_at) VALUES ('m', '2026-12-01 10:00:00+00:00')"))
            conn.execute(text("INSERT INTO runs (model_id, strategy, output, measured_s, breakdown, created_at) "
                              "VALUES (1, 'plan', 'a caption', 0.5, '{}', '2026-12-01 10:00:00+00:00')"))
        db.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT link, bandwidth_bps, kind FROM probes")).one() == ("a->b", 1e6, None)
            assert conn.execute(text("SELECT output, plan_version FROM runs")).one() == ("a caption", None)
    finally:
        engine.dispose()


def test_upgrade_to_0007_takes_mode_and_k_from_the_plan_documents(url):
    """Plans stored before 0007 get the columns from their documents: a cooperative plan its k, others split."""
    engine = db.make_engine(url)
    coop = {"format": "aiflow.plan/v1", "model": "m", "assignment": ["a", "b"], "mode": "cooperative", "k": 6,
            "draft_assignment": ["a"], "predicted_latency_s": 0.1, "status": "optimal", "solver": "cooperative-dp"}
    split = {**coop, "mode": None, "k": None, "draft_assignment": None, "solver": "pulp-cbc"}
    try:
        db.upgrade(engine, "0006")
        at = datetime(2026, 12, 1, 10, tzinfo=UTC)
        models = sa.table("models", sa.column("id", sa.Integer), sa.column("name", sa.String),
                          sa.column("created_at", sa.DateTime(timezone=True)))
        plans = sa.table("plans", *(sa.column(c) for c in ("model_id", "objective", "solver", "status",
                                                           "predicted_latency_s", "solve_time_s")),
                         sa.column("document", sa.JSON), sa.column("created_at", sa.DateTime(timezone=True)))
        with engine.begin() as conn:
            model_id = conn.execute(models.insert().values(name="m", created_at=at).returning(models.c.id)).scalar()
            for doc in (coop, split):
                conn.execute(plans.insert().values(model_id=model_id, objective="latency", solver=doc["solver"],
                                                   status="optimal", predicted_latency_s=0.1, solve_time_s=0.0,
                                                   document=doc, created_at=at))
        db.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT mode, k FROM plans ORDER BY id")).all() == [("cooperative", 6),
                                                                                        ("split", None)]
        db.downgrade(engine, "0006")
        db.upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT mode, k FROM plans ORDER BY id")).all() == [("cooperative", 6),
                                                                                        ("split", None)]
    finally:
        engine.dispose()


def test_upgrade_to_0004_keeps_every_row_the_code_wrote(url):
    """Rows written through the Store by today's code (every table of 0001-0003) survive a downgrade to 0003
    and the upgrade back to head unchanged, value for value."""
    with Store.open(url) as store:
        fill_every_table(store)
    engine = db.make_engine(url)
    try:
        newer = TABLES_0004 | TABLES_0005 | TABLES_0006
        before = _dump(engine, ALL_TABLES - newer)
        assert all(before[t] for t in ALL_TABLES - newer), "the fill left a table empty"
        db.downgrade(engine, "0003")
        assert _tables(engine) == ALL_TABLES - newer
        db.upgrade(engine)
        assert db.current_revision(engine) == HEAD
        assert _dump(engine, ALL_TABLES - newer) == before
    finally:
        engine.dispose()


def fill_every_table(store: Store) -> None:
    """One or more rows in every table of revisions 0001-0003, through the Store's own methods."""
    pid = store.save_profile(small_profile())
    nid = store.save_network(small_network(), origin="test")
    first = store.save_plan(small_plan(), profile_id=pid, network_id=nid)
    second = store.save_plan(small_plan(), profile_id=pid, network_id=nid)
    decision = store.record_decision(candidate_plan_id=second, current_plan_id=first, network_id=nid,
                                     trigger="scheduled", applied=True, reason="faster", current_s=0.5,
                                     candidate_s=0.4, gain_s=0.1, migration_s=0.01)
    app = store.record_plan_application(second, previous_plan_id=first, version=2, decision_id=decision)
    store.finish_plan_application(app, outcome="ok")
    store.record_run(second, strategy="daemon", output="a caption", measured_s=0.42, predicted_s=0.4,
                     breakdown={"compute_s": {"edge": 0.3}}, plan_version=2)
    store.record_probe("edge~phone", bandwidth_bps=2e7, latency_s=0.01, kind="estimate:fit", samples=3)
    store.record_node_sample("phone", state="up", slowdown=1.2)


def _dump(engine, tables) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {t: sorted(tuple(r) for r in conn.execute(text(f"SELECT * FROM {t}"))) for t in sorted(tables)}


def test_cli_db_commands(cli_app, url):
    assert "none (empty" in _invoke(cli_app, url, "db", "current")
    assert "empty -> 0001" in _invoke(cli_app, url, "db", "upgrade", "0001")
    assert f"0001 (behind head {HEAD})" in _invoke(cli_app, url, "db", "current")
    assert f"0001 -> {HEAD}" in _invoke(cli_app, url, "db", "upgrade")
    assert f"{HEAD} (up to date)" in _invoke(cli_app, url, "db", "current")
    assert f"{HEAD} -> empty" in _invoke(cli_app, url, "db", "downgrade", "base")
    out = _invoke(cli_app, url, "db", "url")
    assert url in out and "AIFLOW_DATABASE_URL" in out
    out = CliRunner().invoke(cli_app, ["db", "url", "--url", "postgresql+psycopg://u:secret@h/db"]).output
    assert "secret" not in out and "***" in out


def test_cli_errors_are_one_line_exit_2(tmp_path):
    # Through main(), as a user runs it: InputErrors become one line on stderr and exit code 2.
    bad = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
    env_url = f"sqlite:///{tmp_path / 'h.db'}"
    cases = [
        (["history", "runs", "--url", "postgresql+psycopg://x@127.0.0.1:1/db?connect_timeout=2"], "cannot connect"),
        (["db", "upgrade", "nope", "--url", env_url], "revision 'nope'"),
        (["history", "runs", "--limit", "0", "--url", env_url], "--limit"),
        (["history", "runs", "--format", "xml", "--url", env_url], "xml"),
    ]
    for args, needle in cases:
        proc = subprocess.run(bad + args, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr
        assert "Traceback" not in proc.stderr
