"""runtime.backends: the gRPC back-end is the existing workers, and what a back-end cannot serve is refused
in one line, by the library and by `aiflow run`, `aiflow caption` and `aiflow daemon` (no Ray needed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from runtime.backends import BackendError, GrpcBackend, check_backend, exited, open_backend
from runtime.client import Client
from runtime.local import LocalWorkers
from runtime.transport import GrpcTransport
from tests.helpers import aiflow_in_process
from tests.runtime.conftest import stage_plan

ROOT = Path(__file__).resolve().parents[2]
NETWORK = ROOT / "examples" / "three-tier.network.yaml"


def test_grpc_backend_is_the_local_workers(folders: dict[str, Path]) -> None:
    from tests.runtime.conftest import adapter

    b = open_backend("grpc")
    assert isinstance(b, GrpcBackend)
    assert isinstance(b.workers("tiny-captioner", ["a", "b"]), LocalWorkers)
    assert isinstance(b.transport("t"), GrpcTransport)
    ad = adapter(folders, "gpt2")
    sp = stage_plan(ad, ["A"] * len(ad.units()), {"A": "127.0.0.1:1"})
    assert type(b.client(sp, token="t")) is Client
    b.close()


def test_unsupported_combinations_are_one_line() -> None:
    for kw, says in (({"cooperative": True}, "cooperative"), ({"kernel_links": True}, "kernel-shaped"),
                     ({"token": "t"}, "token"), ({"addresses": {"edge": "10.0.0.2:5000"}}, "edge")):
        with pytest.raises(BackendError, match=says) as info:
            check_backend("ray", **kw)
        assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="--ray-address is for --backend ray"):
        check_backend("grpc", ray_address="127.0.0.1:6379")
    with pytest.raises(BackendError, match="'dask' is not one of grpc, ray"):
        check_backend("dask")


def test_cli_refusals_are_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    plan = tmp_path / "p.json"
    for args, says in (
            (("caption", image, "--backend", "ray"), "only with --network and --plan"),
            (("caption", image, "--backend", "dask"), "'dask' is not one of"),
            (("caption", image, "--network", NETWORK, "--plan", plan, "--draft", "captioner-draft", "--backend",
              "ray"), "cooperative"),
            (("run", image, "--model", "tiny-captioner", "--network", NETWORK, "--plan", plan, "--ray-address",
              "127.0.0.1:6379"), "--ray-address is for --backend ray"),
            (("run", image, "--model", "tiny-captioner", "--network", NETWORK, "--plan", plan, "--backend", "ray",
              "--kernel-links"), "kernel-shaped"),
            (("daemon", "--model", "tiny-captioner", "--network", NETWORK, "--ray-address", "x:1"),
             "--ray-address is for --backend ray")):
        code, out, err = aiflow_in_process(capsys, monkeypatch, *args)
        assert code == 2 and out == "", (args, err)
        assert len(err.strip().splitlines()) == 1 and says in err and "Traceback" not in err, (args, err)


class _Exiting:
    """A stage group whose process reports running for `calls` more polls (a killed one tearing down)."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def alive(self, name: str) -> bool:
        self.calls -= 1
        return self.calls >= 0


def test_a_stage_still_exiting_counts_as_exited_and_a_stuck_one_does_not() -> None:
    assert asyncio.run(exited(_Exiting(0), "edge"))               # gone at the first look
    assert asyncio.run(exited(_Exiting(3), "edge", grace_s=2.0))  # gone after 3 polls (0.3 s)
    t0 = time.monotonic()
    assert not asyncio.run(exited(_Exiting(10**6), "edge", grace_s=0.3))   # still running: stuck, not dead
    assert 0.3 <= time.monotonic() - t0 < 2.0
