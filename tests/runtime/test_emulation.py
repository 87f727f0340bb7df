"""Emulation: compute stretched to K * slowdown * profiled latency, links held for K * (latency + size/rate),
and per-hop compression whose output difference is measured."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from runtime.client import Client
from tests.runtime.conftest import TOKEN, adapter, network, running_workers, stage_plan

K = 2.0
BW = 8e5                 # 100 kB/s: a 1 kB frame costs 10 ms
LAT = 0.005
UNIT_S = {"prefill": 0.01, "decode": 0.004}


def test_compute_and_links_take_their_emulated_time(folders) -> None:
    ad = adapter(folders, "gpt2")
    net = network(("A", "B"), bandwidth_bps=BW, latency_s=LAT, slowdown={"B": 2.0})
    profile = SimpleNamespace(units=[SimpleNamespace(latency_s={"cpu": dict(UNIT_S)}) for _ in range(4)])
    prompt = torch.tensor([[4, 8, 15, 16, 23]])

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (_, addresses):
            sp = stage_plan(ad, ["A", "A", "B", "B"], addresses, net=net, profile=profile, emulate=True, dilation=K)
            async with Client(sp, token=TOKEN) as client:
                fwd = await client.forward(prompt)
                gen = await client.generate(prompt, max_new_tokens=4)
        # forward: A runs 2 units once, B runs 2 units once at slowdown 2
        assert fwd.dilation == K and fwd.emulated
        for node, slow in (("A", 1.0), ("B", 2.0)):
            target = K * slow * 2 * UNIT_S["prefill"]
            assert target - 1e-4 <= fwd.compute_s[node] <= target + 0.015, (node, fwd.compute_s)
        for hop in ("A->B", "B->A"):
            want = K * (LAT + 8 * fwd.transfer_bytes[hop] / BW)
            assert want - 1e-4 <= fwd.transfer_s[hop] <= want + 0.015, (hop, fwd.transfer_s)
        parts = sum(fwd.compute_s.values()) + sum(fwd.transfer_s.values())
        assert parts <= fwd.measured_s <= parts + 0.05
        assert fwd.scaled_s == pytest.approx(fwd.measured_s / K)
        # generation: 1 prefill + 3 decode passes on each node; the token loops B -> A three times
        for node, slow in (("A", 1.0), ("B", 2.0)):
            target = K * slow * 2 * (UNIT_S["prefill"] + 3 * UNIT_S["decode"])
            assert target - 1e-4 <= gen.compute_s[node] <= target + 0.03, (node, gen.compute_s)
        assert gen.transfer_s["B->A"] >= K * 4 * LAT       # three loop tokens and the result

    asyncio.run(scenario())


def test_compression_changes_bytes_and_output_by_a_measured_amount(folders) -> None:
    ad = adapter(folders, "ved")
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    net = network(("A", "B"), bandwidth_bps=1e9)
    assignment = ["A", "A", "B", "B", "B", "B", "A", "A"]

    async def scenario() -> dict[str, tuple[torch.Tensor, int]]:
        out = {}
        async with running_workers(ad, ("A", "B")) as (_, addresses):
            for version, how in enumerate(("none", "fp16", "int8"), start=1):
                sp = stage_plan(ad, assignment, addresses, net=net, emulate=True, compression=how, version=version)
                async with Client(sp, token=TOKEN) as client:
                    r = await client.forward(px)
                out[how] = (r.output, r.transfer_bytes["A->B"])
        return out

    got = asyncio.run(scenario())
    exact, bytes_none = got["none"]
    for how, max_ratio in (("fp16", 0.6), ("int8", 0.35)):
        logits, nbytes = got[how]
        assert nbytes < max_ratio * bytes_none
        diff = (logits - exact).abs().max().item()
        assert 0 < diff < 0.1 * exact.abs().max().item(), (how, diff)
