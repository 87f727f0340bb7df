"""`aiflow history requests|links|nodes`: percentiles per plan version and per time window, on SQLite and on
PostgreSQL, checked against values computed here with numpy from the rows written."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from orchestrator.cli.history_cmd import parse_seconds, parse_time
from orchestrator.store import Store
from orchestrator.store.coverage import Mark, Reads, hour_floor, plan_reads
from orchestrator.store.queries import links_summary, nodes_summary, requests_summary
from orchestrator.store.rollup import roll_up
from profiler.errors import InputError
from tests.helpers import aiflow_in_process
from tests.orchestrator.store_fixtures import small_plan, small_profile
from tests.orchestrator.test_store_postgres import pg_url, server  # noqa: F401 - fixtures

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def fill(store: Store) -> dict:
    """Two plan versions of requests, probes of two links over three hours, node samples; what was written."""
    rng = random.Random(3)
    pid = store.save_profile(small_profile())
    plan = store.save_plan(small_plan(), profile_id=pid, network_id=None)
    written: dict = {"runs": {1: [], 2: []}, "probes": {}, "nodes": {}}
    for version, n in ((1, 25), (2, 40)):
        for i in range(n):  # version 1 in the first hour, version 2 in the second
            measured, predicted = rng.uniform(0.05, 0.5), rng.uniform(0.1, 0.3)
            store.record_run(plan, strategy="daemon", output="", measured_s=measured, predicted_s=predicted,
                             breakdown={}, plan_version=version,
                             created_at=T0 + timedelta(hours=version - 1, minutes=i))
            written["runs"][version].append((measured, predicted))
    for minute in range(0, 180, 3):
        at = T0 + timedelta(minutes=minute)
        for link in ("edge~phone", "cloud~edge"):
            bw, lat = rng.uniform(1e6, 2e7), rng.uniform(0.001, 0.05)
            store.record_probe(link, bandwidth_bps=bw, latency_s=lat, measured_at=at, kind="estimate:fit", samples=4)
            written["probes"].setdefault((link, minute // 60), []).append((bw, lat))
        state = "down" if minute % 30 == 0 else "up"
        slow = rng.uniform(1, 4)
        store.record_node_sample("phone", state=state, slowdown=slow, measured_at=at)
        written["nodes"].setdefault(minute // 60, []).append((state, slow))
    return written


def check(store: Store, written: dict, rolled_up: bool = False) -> None:
    with store.engine.connect() as conn:
        reqs = requests_summary(conn)
        links = links_summary(conn, window_s=3600)
        nodes = nodes_summary(conn, window_s=3600, node="phone")
        only_v2 = requests_summary(conn, plan=2)
        late = links_summary(conn, window_s=3600, since=T0 + timedelta(hours=2), link="cloud~edge")
        # bounds inside windows: each window keeps only its rows in [since, until)
        halves = links_summary(conn, window_s=3600, since=T0 + timedelta(minutes=30),
                               until=T0 + timedelta(minutes=90), link="edge~phone")
    assert [r["plan_version"] for r in reqs] == [1, 2] and [r["plan_version"] for r in only_v2] == [2]
    for r in reqs:
        m = np.array([x for x, _ in written["runs"][r["plan_version"]]])
        ratio = np.array([x / p for x, p in written["runs"][r["plan_version"]]])
        assert r["requests"] == len(m)
        assert r["p50_s"] == pytest.approx(np.percentile(m, 50))
        assert r["p90_s"] == pytest.approx(np.percentile(m, 90))
        assert r["p99_s"] == pytest.approx(np.percentile(m, 99))
        assert r["mean_s"] == pytest.approx(m.mean())
        assert r["ratio_median"] == pytest.approx(np.median(ratio))
    assert len(links) == 6
    for r in links:
        hour = (r["window_start"] - T0) // timedelta(hours=1)
        bw = np.array([b for b, _ in written["probes"][(r["link"], hour)]])
        lat = np.array([x for _, x in written["probes"][(r["link"], hour)]])
        assert r["samples"] == len(bw) == 20
        assert r["bandwidth_p10_bps"] == pytest.approx(np.percentile(bw, 10))
        assert r["bandwidth_p50_bps"] == pytest.approx(np.percentile(bw, 50))
        assert r["latency_p90_s"] == pytest.approx(np.percentile(lat, 90))
    assert [(r["link"], r["window_start"]) for r in late] == [("cloud~edge", T0 + timedelta(hours=2))]
    assert [r["window_start"] for r in halves] == [T0, T0 + timedelta(hours=1)]
    edge = written["probes"][("edge~phone", 0)][10:], written["probes"][("edge~phone", 1)][:10]
    for r, rows in [] if rolled_up else zip(halves, edge, strict=True):
        assert r["samples"] == len(rows) == 10
        assert r["bandwidth_p50_bps"] == pytest.approx(np.percentile([b for b, _ in rows], 50))
    for r in nodes:
        rows = written["nodes"][(r["window_start"] - T0) // timedelta(hours=1)]
        assert r["down_share"] == pytest.approx(sum(s == "down" for s, _ in rows) / len(rows))
        assert r["slowdown_p50"] == pytest.approx(np.percentile([x for _, x in rows], 50))


def test_aggregates_on_sqlite(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'h.db'}") as store:
        check(store, fill(store))


@pytest.mark.postgres
def test_aggregates_on_postgres(pg_url: str) -> None:  # noqa: F811 - the fixture
    with Store.open(pg_url) as store:
        check(store, fill(store))


def roll_up_and_check(store: Store, written: dict) -> None:
    """Every finished hour is summarised and the raw rows before the cutoff deleted; every query answers as
    before (1 h windows exactly, nothing counted twice where a summary and its raw rows both exist), longer
    windows combine hours, shorter ones read the raw rows that are left, and rows that arrive late (for a
    deleted hour, and for a summarised one) count at once and are merged by the next run."""
    result = roll_up(store.engine, T0 + timedelta(hours=2, minutes=30))
    assert result.cutoff == T0 + timedelta(hours=2)
    assert result.raw_deleted == {"probes": 80, "node_samples": 40, "runs": 65}
    assert result.hours_written == {"probe_hours": 6, "node_sample_hours": 3, "run_hours": 2}
    assert set(result.summarised_before.values()) == {hour_floor(datetime.now(UTC))}
    check(store, written, rolled_up=True)     # (a deleted hour cannot be cut by --since: it counts whole)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM probes")).scalar() == 40  # hour 2 stays raw
        wide = links_summary(conn, window_s=3 * 3600, link="edge~phone")
        assert sum(r["samples"] for r in wide) == 60
        hourly = links_summary(conn, window_s=3600, link="edge~phone")
        p50s = [r["bandwidth_p50_bps"] for r in hourly]
        assert all(min(p50s) <= r["bandwidth_p50_bps"] <= max(p50s) for r in wide)
        nodes = nodes_summary(conn, window_s=86400, node="phone")
        down = sum(s == "down" for rows in written["nodes"].values() for s, _ in rows)
        assert sum(r["down_share"] * r["samples"] for r in nodes) == pytest.approx(down)
        # 15 min windows cannot be cut from hourly summaries: hour 2 (raw kept) is read raw, exactly
        quarter = [r for r in links_summary(conn, window_s=900, link="edge~phone")
                   if r["window_start"] >= T0 + timedelta(hours=2)]
        rows = written["probes"][("edge~phone", 2)]
        assert [r["samples"] for r in quarter] == [5, 5, 5, 5]
        assert quarter[0]["bandwidth_p50_bps"] == pytest.approx(np.percentile([b for b, _ in rows[:5]], 50))
    for at in (T0 + timedelta(minutes=10), T0 + timedelta(hours=2, minutes=10)):   # deleted hour, kept hour
        store.record_probe("edge~phone", bandwidth_bps=1e6, latency_s=0.01, measured_at=at)

    def samples_per_hour() -> list[int]:
        with store.engine.connect() as conn:
            return [r["samples"] for r in links_summary(conn, window_s=3600, link="edge~phone")]

    assert samples_per_hour() == [21, 20, 21]
    again = roll_up(store.engine, T0 + timedelta(hours=2))
    assert again.raw_deleted["probes"] == 1 and again.hours_written["probe_hours"] == 2
    assert samples_per_hour() == [21, 20, 21]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM probes")).scalar() == 41
        assert conn.execute(text("SELECT count(*) FROM probe_hours")).scalar() == 6
        assert requests_summary(conn)[0]["requests"] == 25


def test_reads_planned_from_the_mark() -> None:
    h = [T0 + timedelta(hours=i) for i in range(6)]
    mark = Mark(summarised_before=h[4], last_id=99, raw_deleted_before=h[2])
    # whole hours inside the summarised span come from summaries; the unsummarised tail and late rows raw
    assert plan_reads(mark, h[1], None, whole_hours=True) == Reads((h[1], h[4]), ((h[4], None),), (99, (h[1], h[4])))
    # an hour cut by since: raw while its rows exist, the whole summary where they are gone
    cut = h[2] + timedelta(minutes=30)
    assert plan_reads(mark, cut, h[5], whole_hours=True) == Reads((h[3], h[4]), ((cut, h[3]), (h[4], h[5])),
                                                                   (99, (h[3], h[4])))
    early = h[1] + timedelta(minutes=30)
    assert plan_reads(mark, early, h[3], whole_hours=True).summaries == (h[1], h[3])
    # windows shorter than an hour: raw rows, and summaries only of deleted hours
    assert plan_reads(mark, None, None, whole_hours=False) == Reads((None, h[2]), ((None, None),))
    # no mark (rolled up before revision 0005): every raw row, and the summaries in range
    assert plan_reads(Mark(), h[1], h[3], whole_hours=True) == Reads((h[1], h[3]), ((h[1], h[3]),))
    # a range entirely after the summarised span reads raw rows only
    assert plan_reads(mark, h[4], h[5], whole_hours=True) == Reads(None, ((h[4], h[5]),))


def test_roll_up_on_sqlite(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'h.db'}") as store:
        roll_up_and_check(store, fill(store))


@pytest.mark.postgres
def test_roll_up_on_postgres(pg_url: str) -> None:  # noqa: F811 - the fixture
    with Store.open(pg_url) as store:
        roll_up_and_check(store, fill(store))


def test_cli_filters_and_formats(tmp_path: Path, capsys, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    with Store.open(url) as store:
        fill(store)
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "links", "--url", url, "--window", "2h",
                                     "--since", "2026-12-04T10:00:00", "--until", "2026-12-04T12:00:00", "-f", "csv")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("link,window_start,samples") and len(lines) == 3
    assert all(line.split(",")[2] == "40" for line in lines[1:])
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "requests", "--url", url, "--since",
                                     "2026-12-04T11:00:00Z", "--json")
    assert code == 0 and [(r["plan_version"], r["requests"]) for r in json.loads(out)] == [(2, 40)]
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "requests", "--url", url, "--since",
                                     "2026-12-04T12:00:00Z")
    assert code == 0 and "0 rows" in out
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "probes", "--url", url, "--node", "cloud",
                                     "--csv", "--limit", "100")
    assert code == 0 and len(out.splitlines()) == 61 and "edge~phone" not in out
    code, _, err = aiflow_in_process(capsys, monkeypatch, "history", "runs", "--url", url, "--json", "--csv")
    assert code == 2 and "choose one" in err
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "db", "rollup", "--url", url, "--older-than",
                                     "2026-12-04T11:30:00Z")
    assert code == 0 and "40 probes" in out and "20 node_samples" in out and "25 runs" in out
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "nodes", "--url", url, "--node", "phone")
    assert code == 0 and "phone" in out
    code, _, err = aiflow_in_process(capsys, monkeypatch, "history", "links", "--url", url, "--since", "yesterday")
    assert code == 2 and "--since" in err and err.count("\n") == 1


def test_time_options() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert parse_time("2h", "--since", now) == now - timedelta(hours=2)
    assert parse_time("2026-12-04T08:00:00", "--since", now) == datetime(2026, 12, 4, 8, tzinfo=UTC)
    assert parse_time("2026-12-04T08:00:00+01:00", "--since", now) == datetime(2026, 12, 4, 7, tzinfo=UTC)
    assert parse_seconds("15m", "--window") == 900 and parse_seconds("90", "--window") == 90
    with pytest.raises(InputError, match="--window"):
        parse_seconds("0s", "--window")
    with pytest.raises(InputError, match="--window"):
        parse_seconds("soon", "--window")


def test_state_at_a_moment_and_plots(tmp_path: Path, capsys, monkeypatch) -> None:
    from orchestrator.store.queries import state_at
    from tests.orchestrator.store_fixtures import small_network

    url = f"sqlite:///{tmp_path / 'h.db'}"
    with Store.open(url) as store:
        fill(store)
        net_a = store.save_network(small_network(2e7), origin="daemon")
        net_b = store.save_network(small_network(1e6), origin="daemon")
        plan = store.save_plan(small_plan(), profile_id=None, network_id=net_a)
        store.record_plan_application(plan, applied_at=T0 + timedelta(minutes=30), version=1)
        store.record_plan_application(plan, applied_at=T0 + timedelta(minutes=70), version=2)
        with store.engine.begin() as c:
            c.execute(text("UPDATE networks SET created_at = :t WHERE id = :i"),
                      {"t": T0 + timedelta(minutes=20), "i": net_a})
            c.execute(text("UPDATE networks SET created_at = :t WHERE id = :i"),
                      {"t": T0 + timedelta(minutes=80), "i": net_b})
            c.execute(text("UPDATE runs SET created_at = :t"), {"t": T0 - timedelta(days=1)})
            c.execute(text("UPDATE runs SET created_at = :t WHERE id <= 5"), {"t": T0 + timedelta(minutes=74)})
        with store.engine.connect() as conn:
            at = state_at(conn, T0 + timedelta(minutes=75))
            before = state_at(conn, T0 + timedelta(minutes=10))
    assert at["plan"]["version"] == 2 and at["network"]["id"] == net_a and at["requests"]["count"] == 5
    assert at["network"]["links"][0]["bandwidth_bps"] == 2e7
    assert before["plan"] is None and before["network"] is None and before["requests"]["count"] == 0
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "at", "2026-12-04T11:15:00", "--url", url)
    assert code == 0 and "plan in force: v2" in out and "requests in the 5m before: 5" in out
    png = tmp_path / "links.png"
    code, out, _ = aiflow_in_process(capsys, monkeypatch, "history", "plot", "links", "--out", png, "--url", url)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "120 points" in out
    code, _, err = aiflow_in_process(capsys, monkeypatch, "history", "plot", "cats", "--out", png, "--url", url)
    assert code == 2 and "METRIC" in err
