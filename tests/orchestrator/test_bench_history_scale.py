"""bench.history_scale, small: it fills, times every named query before and after a roll-up and writes its
table; the counts it reports add up (rows filled = rows rolled up + rows left raw) and the roll-up changes
no 1 h answer's row count."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from bench import history_scale
from tests.orchestrator.test_store_postgres import server  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
DAYS = 0.1           # 2.4 h, 20 links: both finished hours summarised, the first one's raw rows deleted


def check(result: dict, links: int) -> None:
    sizes, rolled = result["sizes"], result["rollup"]
    filled = sizes["raw_filled"]
    assert filled["probes"] == round(DAYS * 86400) * links
    # every finished hour summarised (2 of 2.4), the first one's raw rows deleted
    assert rolled["raw_deleted"]["probes"] == 3600 * links and rolled["hours_written"]["probe_hours"] == 2 * links
    for table, n in filled.items():
        assert rolled["raw_deleted"][table] + sizes["after_rollup"]["raw_left"][table] == n, table
    before = {q["query"]: q for q in result["queries_raw"]}
    after = {q["query"]: q for q in result["queries_rolled_up"]}
    assert before.keys() == after.keys() and len(before) >= 15
    for name, q in before.items():
        assert q["seconds"] > 0 and q["rows"] >= 0
        if "1 h windows" in name:
            assert q["rows"] == after[name]["rows"] > 0, name


def test_history_scale_on_sqlite(tmp_path: Path) -> None:
    assert history_scale.main(["--quick", "--no-postgres", "--sqlite-days", str(DAYS), "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "history_scale.json").read_text())
    assert "--no-postgres" in data["backends"]["postgresql"]["error"]
    check(data["backends"]["sqlite"], data["params"]["links"])
    assert "## sqlite" in (tmp_path / "history_scale.md").read_text()


@pytest.mark.postgres
def test_history_scale_on_postgres(tmp_path: Path, server: str) -> None:  # noqa: F811 - the fixture
    schema = f"aiflow_bench_{uuid.uuid4().hex[:8]}"
    assert history_scale.main(["--quick", "--no-sqlite", "--days", str(DAYS), "--url", server, "--schema", schema,
                               "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "history_scale.json").read_text())
    check(data["backends"]["postgresql"], data["params"]["links"])
