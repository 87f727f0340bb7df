"""Coverage-guided fuzzing of the worker's frame decoder with atheris (libFuzzer), for a while.

    python -m bench.fuzz_frames [--seconds 180] [--out bench/results]

What a worker does with the bytes of a call before anything else: `unpack_frames` (a bundle) and
`decode_frame` (header, tensor, compression). Contract checked on every input: a Frame or a FrameError,
never another exception; a decoded tensor holds at most 8 times the input's bytes (int8 widened to
float64 is the most decompression may grow it); and a frame that decodes encodes again to one that
decodes to the same kind and tensor. The hypothesis tests in tests/runtime/test_codec.py cover the same
contract on generated inputs in CI; this runs it under coverage guidance, starting from valid frames of
every kind the worker takes (data, compressed data, result, plan, edge, a bundle).

atheris is not a dependency of the project (`pip install atheris` to run this). The fuzzer runs in a
child process (libFuzzer ends the process it runs in); this process reads its statistics and writes
bench/results/fuzz_frames.json and .md. A failing input is kept in the results folder as crash-*.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.results_io import write_results

ROOT = Path(__file__).resolve().parents[1]
EXPANSION = 8        # int8 -> float64 (runtime.codec): the most a payload may grow when decoded


def seeds() -> list[bytes]:
    """Valid frames of every kind a worker takes: the corpus the fuzzer starts from."""
    import torch

    from runtime.codec import Frame, encode_frame, pack_frames

    x = torch.randn(2, 3, 4)
    frames = [encode_frame(Frame("data", "r1", 1, "encode", 0, 0, 0, x)),
              encode_frame(Frame("data", "r1", 1, "decode", 3, 5, 2, x), "int8"),
              encode_frame(Frame("data", "r1", 1, "decode", 3, 5, 2, x), "fp16"),
              encode_frame(Frame("edge", "r1", 1, "encode", 2, tensor=x.to(torch.bfloat16))),
              encode_frame(Frame("result", "r1", 1, meta={"steps": 4, "node": "edge"},
                                 tensor=torch.tensor([[1, 2, 3]]))),
              encode_frame(Frame("plan", plan_version=2, meta={"plan": {"version": 2, "assignment": ["a", "b"]}})),
              encode_frame(Frame("open", "r2", 1, meta={"reply": "127.0.0.1:1", "max_new_tokens": 8}))]
    return [*frames, pack_frames(frames[:3])]


def check(data: bytes) -> None:
    """One input against the decoder's contract (raises AssertionError or lets a stray exception out)."""
    from runtime.codec import Frame, FrameError, decode_frame, encode_frame, unpack_frames

    def one(raw: bytes | memoryview) -> None:
        try:
            f = decode_frame(raw)
        except FrameError:
            return
        if f.tensor is not None:
            assert f.tensor.numel() * f.tensor.element_size() <= EXPANSION * len(raw), "tensor larger than input"
        again = decode_frame(encode_frame(Frame(f.kind, f.request_id, f.plan_version, f.phase, f.unit, f.position,
                                                f.step, f.tensor, f.meta)))
        assert again.kind == f.kind, "re-encoded frame changed kind"
        if f.tensor is not None:
            assert again.tensor is not None and again.tensor.shape == f.tensor.shape, "re-encoded tensor changed"

    one(data)
    try:
        parts = unpack_frames(data)
    except FrameError:
        return
    for p in parts:
        one(p)


def child(seconds: int, corpus: Path, artifacts: Path) -> None:
    """Run libFuzzer on `check` (never returns: libFuzzer exits the process)."""
    import atheris
    import torch  # noqa: F401 - imported before instrumenting, so only the project's code is instrumented

    with atheris.instrument_imports(include=["runtime"]):
        import runtime.codec  # noqa: F401

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-max_len=65536",
                   f"-artifact_prefix={artifacts}/crash-", "-print_final_stats=1", str(corpus)], check)
    atheris.Fuzz()


def run(seconds: int, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, s in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(s)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "bench.fuzz_frames", "--child", str(seconds), str(corpus), str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
        wall = time.monotonic() - t0
        corpus_size = len(list(corpus.iterdir()))
    log = proc.stderr
    stats = {k: int(v) for k, v in re.findall(r"^stat::(\w+):\s+(\d+)", log, re.M)}
    last = [ln for ln in log.splitlines() if re.match(r"#\d+\s", ln)]
    cov = re.search(r"cov: (\d+) ft: (\d+)", last[-1]) if last else None
    crashes = sorted(p.name for p in out.glob("crash-*"))
    return {"at": datetime.now(UTC).isoformat(), "host": platform.node(), "python": platform.python_version(),
            "seconds": seconds, "wall_s": round(wall, 1), "exit_code": proc.returncode,
            "runs": stats.get("number_of_executed_units"), "runs_per_s": stats.get("average_exec_per_sec"),
            "peak_rss_mb": stats.get("peak_rss_mb"), "coverage_edges": int(cov.group(1)) if cov else None,
            "features": int(cov.group(2)) if cov else None, "corpus_files": corpus_size, "crashes": crashes,
            "finding": next((ln for ln in log.splitlines() if "Uncaught Python exception" in ln or
                             "AssertionError" in ln or "ERROR: libFuzzer" in ln), None),
            "log_tail": log.splitlines()[-15:]}


def markdown(r: dict[str, Any]) -> str:
    verdict = "no failing input" if r["exit_code"] == 0 and not r["crashes"] else \
        f"FAILING INPUT: {r['finding']} ({', '.join(r['crashes'])})"
    return (f"# Coverage-guided fuzzing of the frame decoder\n\n`python -m bench.fuzz_frames --seconds {r['seconds']}`"
            f" on {r['host']}, Python {r['python']}, {r['at'][:16]} UTC (atheris, libFuzzer; decode_frame and"
            " unpack_frames, instrumented: runtime.*).\n\n"
            "| seconds | inputs run | per second | coverage (edges) | features | corpus | peak RSS | result |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---|\n"
            f"| {r['seconds']} | {r['runs']} | {r['runs_per_s']} | {r['coverage_edges']} | {r['features']} | "
            f"{r['corpus_files']} | {r['peak_rss_mb']} MB | {verdict} |\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz_frames", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=180, help="how long the fuzzer runs (default 180)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("python -m bench.fuzz_frames: error: atheris is not installed (pip install atheris)", file=sys.stderr)
        raise SystemExit(2) from None
    r = run(args.seconds, args.out)
    md = markdown(r)
    write_results(args.out, "fuzz_frames", r, md)
    print(md)
    raise SystemExit(0 if r["exit_code"] == 0 and not r["crashes"] else 1)


if __name__ == "__main__":
    main()
