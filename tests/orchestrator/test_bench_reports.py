"""The experiment's reports, on hand-made rows (no workers, no measuring). The split map: test_bench_split_map.py."""

from __future__ import annotations

import json
from pathlib import Path

from bench import aiflow_experiment as exp


def _row(strategy: str, pe_mbit: float, measured: float, **extra: object) -> dict[str, object]:
    return {"model": "tiny-captioner", "variant": "base latencies", "compression": "none",
            "edge_cloud": "100 Mbit/s", "edge_cloud_bps": 1e8, "phone_edge": f"{pe_mbit:g} Mbit/s",
            "phone_edge_bps": pe_mbit * 1e6, "trace": False, "dilation": 7.0, "strategy": strategy,
            "placement": "phone x10", "predicted_ms": measured * 0.95, "measured_median_ms": measured,
            "measured_p90_ms": measured * 1.1, "ratio": 1 / 0.95, "bytes_per_request": 2000.0,
            "scene_accuracy": 1.0, "same_as_unsplit": 1.0} | extra


def test_experiment_tables_and_plot(tmp_path: Path) -> None:
    rows = [_row(s, mbit, 10.0 * (i + 1) * (2 if mbit == 1 else 1))
            for i, s in enumerate(exp.STRATEGIES) for mbit in (1.0, 20.0)]
    rows.append(_row("optimal", 2.9, 33.0, trace=True, phone_edge="3G trace"))
    keep = ("model", "variant", "compression", "edge_cloud", "phone_edge", "strategy", "dilation")
    rows.append({k: v for k, v in _row("edge-only", 5.0, 0.0).items() if k in keep} | {"why_not": "no edge"})
    meta = {"command": "python -m bench.aiflow_experiment", "machine": "test", "date": "2026-12-01", "wall_s": 60.0}
    rows.append(_row("best-cut", 20.0, 30.0, placement="phone x1 | cloud x9"))
    md = exp.markdown(rows, meta)
    assert "phone x1 \\| cloud x9" in md          # pipes in a placement would split the table's cells
    assert "(K = 7.00)" in md and "no plan: no edge" in md and "| 3G trace | optimal |" in md
    assert md.count("| 1 Mbit/s |") == len(exp.STRATEGIES)
    exp.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "run.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    assert exp.main(["--from-json", str(tmp_path / "run.json")]) == 0       # re-render without measuring
    assert (tmp_path / "run.md").read_text() == md and (tmp_path / "run.png").is_file()
    (tmp_path / "bad.json").write_text("[]")
    assert exp.main(["--from-json", str(tmp_path / "bad.json")]) == 2
