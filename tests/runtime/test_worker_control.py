"""Control frames of a running system: the emulated network under the workers, active probes, samples of
what real transfers showed, and live migration between plan versions with requests in flight."""

from __future__ import annotations

import asyncio

import pytest
import torch

from profiler.generate import greedy_generate
from runtime.client import Client
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.links import Emulation
from runtime.stages import LinkSpec, NodeSpec
from runtime.transport import GrpcTransport
from tests.runtime.conftest import TOKEN, adapter, network, running_workers, stage_plan

PROMPT = torch.tensor([[3, 1, 4, 1, 5]])


def emulation(bw: float, lat: float, k: float = 1.0, slowdown: dict[str, float] | None = None) -> Emulation:
    slowdown = slowdown or {}
    nodes = tuple(NodeSpec(n, "cpu", slowdown.get(n, 1.0)) for n in ("A", "B"))
    return Emulation(nodes, (LinkSpec("A", "B", bw, lat),), k)


async def control(address: str, frame: Frame) -> Frame:
    t = GrpcTransport(TOKEN)
    try:
        (reply,) = [decode_frame(r) for r in await t.send(address, encode_frame(frame))]
    finally:
        await t.close()
    return reply


def test_probe_times_the_emulated_link_and_report_drains_samples(folders) -> None:
    ad = adapter(folders, "gpt2")

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (workers, addresses):
            emu = emulation(2e6, 0.02)
            for a in addresses.values():
                assert (await control(a, Frame("emulate", meta=emu.to_meta()))).kind == "ack"
            sizes = [64, 20_000]
            got = await control(addresses["A"], Frame("measure", meta={"to": "B", "address": addresses["B"],
                                                                       "sizes": sizes}))
            assert got.kind == "stats"
            assert len(got.meta["probes"]) == 2
            for size, p in zip(sizes, got.meta["probes"], strict=True):
                assert size < p["bytes"] < size + 400          # the padding plus the frame's header
                want = 0.02 + 8 * p["bytes"] / 2e6         # the planning model's time for the frame
                assert want <= p["seconds"] < want + 0.02
            rep = await control(addresses["A"], Frame("report"))
            assert [s["kind"] for s in rep.meta["links"]] == ["active", "active"]
            assert (await control(addresses["A"], Frame("report"))).meta["links"] == []     # drained

    asyncio.run(scenario())


def test_activations_are_link_samples_and_compute_is_stretched_by_the_emulated_slowdown(folders) -> None:
    ad = adapter(folders, "gpt2")
    assignment = ["A", "B", "B", "A"]

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (workers, addresses):
            emu = emulation(1e6, 0.01, slowdown={"B": 3.0})
            net = network(("A", "B"))
            sp = stage_plan(ad, assignment, addresses, net=net, emulate=True,
                            profile=None)
            for a in addresses.values():
                await control(a, Frame("emulate", meta=emu.to_meta()))
            async with Client(sp, token=TOKEN) as client:
                client.set_emulation(emu)
                res = await client.generate(PROMPT, max_new_tokens=3)
            rep_b = await control(addresses["B"], Frame("report"))
            passive = [s for s in rep_b.meta["links"] if s["kind"] == "passive"]
            assert passive and all(s["src"] == "A" for s in passive)
            for s in passive:       # time in flight = the emulated link's time for those bytes
                assert s["seconds"] == pytest.approx(0.01 + 8 * s["nbytes"] / 1e6, abs=0.004)
            # no profile latencies in the plan: B's compute is stretched to 3x its real time
            for c in rep_b.meta["compute"]:
                assert c["busy_s"] >= 3.0 * c["real_s"] * 0.98
            assert res.tokens is not None

    asyncio.run(scenario())


def test_bad_control_frames_are_refused_and_the_worker_keeps_serving(folders) -> None:
    ad = adapter(folders, "gpt2")

    async def scenario() -> None:
        async with running_workers(ad, ("A",)) as (workers, addresses):
            a = addresses["A"]
            bad = [Frame("emulate", meta={"nodes": "x"}),
                   Frame("emulate", meta={"nodes": [{"name": "A", "slowdown": 0.5}], "links": []}),
                   Frame("emulate", meta={"nodes": [{"name": "Z"}], "links": []}),
                   Frame("measure", meta={"to": "B", "address": "nowhere", "sizes": [1]}),
                   Frame("measure", meta={"to": "B", "address": "127.0.0.1:1", "sizes": [10 ** 9]}),
                   Frame("measure", meta={"compute": {"phase": "nope", "target_s": 0.1}}),
                   Frame("measure", meta={"compute": {"phase": "prefill", "target_s": float("1e9")}})]
            for f in bad:
                got = await control(a, f)
                assert got.kind == "error", f.meta
            assert (await control(a, Frame("report"))).kind == "stats"
            timed = await control(a, Frame("measure", meta={"compute": {"phase": "prefill", "target_s": 0.0}}))
            assert timed.meta["compute"]["first"] == 0 and timed.meta["compute"]["busy_s"] > 0

    asyncio.run(scenario())


def test_live_switch_keeps_requests_in_flight_on_their_version(folders) -> None:
    """Phase one gives the workers v2 beside v1, phase two moves new requests to v2; requests started on v1
    (their KV caches live on v1's nodes) finish there, and every result equals the unsplit model's."""
    ad = adapter(folders, "gpt2")
    want = greedy_generate(ad, PROMPT, new_tokens=12).tokens

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B", "C")) as (workers, addresses):
            net = network(("A", "B", "C"), bandwidth_bps=2e6, latency_s=0.003)
            v1 = stage_plan(ad, ["A", "B", "B", "A"], addresses, net=net, emulate=True)
            v2 = stage_plan(ad, ["A", "C", "C", "C"], addresses, net=net, emulate=True, version=2)
            async with Client(v1, token=TOKEN) as client:
                early = [asyncio.create_task(client.generate(PROMPT, max_new_tokens=12)) for _ in range(3)]
                await asyncio.sleep(0.05)
                assert client.in_flight[1] == 3
                await client.prepare(v2)
                assert 2 in workers["C"].plans and 1 in workers["B"].plans
                client.commit(2)
                late = [asyncio.create_task(client.generate(PROMPT, max_new_tokens=12)) for _ in range(2)]
                results = await asyncio.gather(*early, *late)
                assert [r.plan_version for r in results] == [1, 1, 1, 2, 2]
                for r in results:
                    assert torch.equal(r.tokens, want)
                assert client.in_flight[1] == 0
                await client.forget(1)
                assert 1 not in workers["B"].plans and 2 in workers["C"].plans
                # v1's requests are gone from every worker: nothing holds their caches
                assert all(not w.requests for w in workers.values())

    asyncio.run(scenario())


def test_open_refuses_unbounded_requests(folders) -> None:
    """No request may hold a worker's memory forever or ask for more than it bounds."""
    ad = adapter(folders, "gpt2")

    async def scenario() -> None:
        async with running_workers(ad, ("A",)) as (workers, addresses):
            sp = stage_plan(ad, ["A"] * 4, addresses)
            async with Client(sp, token=TOKEN) as client:
                base = {"reply": client.reply_address, "batch": 1, "max_new_tokens": 4}
                for extra, words in (({"timeout_s": 1e9}, "timeout_s"), ({"timeout_s": 0}, "timeout_s"),
                                     ({"timeout_s": "forever"}, "timeout_s"), ({"batch": 10_000}, "at most batch"),
                                     ({"max_new_tokens": 10**6}, "new tokens")):
                    got = await control(addresses["A"], Frame("open", "r-" + words, 1, meta={**base, **extra}))
                    assert got.kind == "error" and words in got.meta["error"], (extra, got.meta)
                assert not workers["A"].requests
                assert (await client.generate(PROMPT, max_new_tokens=2)).tokens is not None   # still serving

    asyncio.run(scenario())
