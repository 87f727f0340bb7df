"""Distributed execution equals the unsplit model, for every adapter family and plans that cut anywhere.

In-process workers (one asyncio loop, real gRPC on loopback) run each plan; the reference is the
same adapter run unsplit on one RequestState.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from profiler.adapters.base import InputSpec, ModelAdapter
from profiler.generate import greedy_generate
from runtime.client import Client, RequestFailed
from tests.runtime.conftest import TOKEN, adapter, running_workers, stage_plan

NEW_TOKENS = 6


def plans_for(n_units: int) -> list[list[str]]:
    """All on one node, every single cut A|B, A/B alternating, three nodes round-robin, and A,A,B,B,A,A,..."""
    plans = [["A"] * n_units]
    plans += [["A"] * k + ["B"] * (n_units - k) for k in range(1, n_units)]
    plans.append(["AB"[u % 2] for u in range(n_units)])
    plans.append(["ABC"[u % 3] for u in range(n_units)])
    plans.append(["AB"[(u // 2) % 2] for u in range(n_units)])
    plans.append(["C"] + ["B"] * (n_units - 2) + ["A"])
    unique = []
    for p in plans:
        if p not in unique:
            unique.append(p)
    return unique


def source_for(ad: ModelAdapter, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if any(p.name == "encode" for p in ad.phases(InputSpec())):
        return torch.randn(batch, 3, 32, 32, generator=gen)
    return torch.randint(0, 97, (batch, 5), generator=gen)


def reference_forward(ad: ModelAdapter, x: torch.Tensor) -> torch.Tensor:
    """One pass of every phase but decode, unsplit, the encoder output handed to the decoder."""
    phases = {p.name: p for p in ad.phases(InputSpec())}
    state = ad.new_state()
    state.extra["batch"] = x.shape[0]
    out = x
    if "encode" in phases:
        p = phases["encode"]
        out = ad.run(p.first, p.last, x, phase="encode", position=0, state=state)
        if "prefill" not in phases:
            return out
        state.encoder_out = out
        out = None
    p = phases["prefill"]
    return ad.run(p.first, p.last, out, phase="prefill", position=0, state=state)


@pytest.mark.parametrize("family", ["gpt2", "llama", "vit", "ved"])
def test_every_cut_gives_the_unsplit_output(folders, family: str) -> None:
    ad = adapter(folders, family)
    n = len(ad.units())
    x = source_for(ad)
    generative = family != "vit"
    expect_tokens = greedy_generate(ad, x, new_tokens=NEW_TOKENS).tokens if generative else None
    expect_out = reference_forward(ad, x)
    assert expect_tokens is None or len(set(expect_tokens[0].tolist())) > 1   # varied tokens: a real check

    async def scenario() -> None:
        async with running_workers(ad) as (workers, addresses):
            for version, assignment in enumerate(plans_for(n), start=1):
                sp = stage_plan(ad, assignment, addresses, version=version)
                async with Client(sp, token=TOKEN) as client:
                    fwd = await client.forward(x)
                    assert torch.equal(fwd.output, expect_out), assignment
                    if generative:
                        gen = await client.generate(x, max_new_tokens=NEW_TOKENS)
                        assert torch.equal(gen.tokens, expect_tokens), assignment
                        assert gen.steps == NEW_TOKENS
            assert all(not w.requests for w in workers.values())      # every state freed on completion

    asyncio.run(scenario())


def test_all_logits_and_batches(folders) -> None:
    ad = adapter(folders, "gpt2")
    x = source_for(ad, batch=2, seed=5)
    state = ad.new_state()
    state.extra["batch"] = 2
    expect = ad.run(0, 3, x, phase="prefill", position=0, state=state, all_logits=True)
    expect_tokens = greedy_generate(ad, x, new_tokens=NEW_TOKENS).tokens

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (_, addresses):
            async with Client(stage_plan(ad, ["A", "B", "B", "A"], addresses), token=TOKEN) as client:
                fwd = await client.forward(x, all_logits=True)
                assert fwd.output.shape == (2, 5, 97)
                assert torch.equal(fwd.output, expect)
                gen = await client.generate(x, max_new_tokens=NEW_TOKENS)
                assert torch.equal(gen.tokens, expect_tokens)

    asyncio.run(scenario())


def test_generation_stops_at_eos(folders) -> None:
    ad = adapter(folders, "llama")
    x = source_for(ad, seed=2)
    full = greedy_generate(ad, x, new_tokens=NEW_TOKENS).tokens[0].tolist()
    eos = full[2]
    stop = full.index(eos) + 1
    assert stop < NEW_TOKENS

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (_, addresses):
            async with Client(stage_plan(ad, ["B", "A", "B", "A"], addresses), token=TOKEN) as client:
                gen = await client.generate(x, max_new_tokens=NEW_TOKENS, eos=eos)
                assert gen.tokens[0].tolist() == full[:stop]
                assert gen.steps == stop

    asyncio.run(scenario())


def test_concurrent_requests_each_get_their_own_answer(folders) -> None:
    ad = adapter(folders, "ved")
    sources = [source_for(ad, seed=s) for s in range(4)]
    expected = [greedy_generate(ad, s, new_tokens=NEW_TOKENS).tokens for s in sources]
    assert len({tuple(e[0].tolist()) for e in expected}) > 1

    async def scenario() -> None:
        async with running_workers(ad) as (workers, addresses):
            assignment = ["A", "A", "B", "B", "C", "A", "B", "C"]
            async with Client(stage_plan(ad, assignment, addresses), token=TOKEN) as client:
                results = await asyncio.gather(*(client.generate(s, max_new_tokens=NEW_TOKENS) for s in sources))
            for got, want in zip(results, expected, strict=True):
                assert torch.equal(got.tokens, want)
            assert len({r.request_id for r in results}) == len(sources)
            assert all(not w.requests for w in workers.values())

    asyncio.run(scenario())


def test_a_failing_request_is_reported_and_freed(folders) -> None:
    ad = adapter(folders, "gpt2")
    good = source_for(ad)
    bad = torch.tensor([[1, 2, 5000]])        # id outside the vocabulary: the embedding fails on node A

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B")) as (workers, addresses):
            async with Client(stage_plan(ad, ["A", "B", "B", "B"], addresses), token=TOKEN) as client:
                with pytest.raises(RequestFailed, match="IndexError|index"):
                    await client.generate(bad, max_new_tokens=3)
                ok = await client.generate(good, max_new_tokens=3)
                assert ok.tokens.shape == (1, 3)
            assert all(not w.requests for w in workers.values())

    asyncio.run(scenario())


def test_workers_release_weights_they_do_not_run(folders) -> None:
    ad = adapter(folders, "gpt2")
    x = source_for(ad)
    expect = greedy_generate(ad, x, new_tokens=NEW_TOKENS).tokens

    async def scenario() -> None:
        from runtime.worker import Worker
        full = Worker("A", str(folders["gpt2"]), token=TOKEN)
        lean = Worker("A", str(folders["gpt2"]), token=TOKEN, release_unused=True)
        other = Worker("B", adapter=ad, token=TOKEN)
        addresses = {"A": await lean.start(), "B": await other.start()}
        try:
            async with Client(stage_plan(ad, ["A", "A", "B", "B"], addresses), token=TOKEN) as client:
                gen = await client.generate(x, max_new_tokens=NEW_TOKENS)
            assert torch.equal(gen.tokens, expect)
            # GPT-2 ties lm_head to wte, so only block 1 (and ln_f) can go; they must be gone
            assert lean.released == {2, 3}
            assert lean.held_param_bytes() < full.held_param_bytes()
        finally:
            await lean.stop()
            await other.stop()
            await full.stop()

    asyncio.run(scenario())
