"""Token reduction at the split point (runtime.edge_reduction): a plan that reduces the encoder output
runs through workers exactly as the unsplit model with the same reduction (torch.equal), wherever
the cut is; the edge frame carries k tokens and their log sizes."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from profiler.errors import InputError
from profiler.generate import greedy_generate
from profiler.token_merge import Reduction
from runtime.client import Client
from runtime.edge_reduction import plan_reduction, reduce_edge, stage_extra
from runtime.session import make_stage_plan
from tests.runtime.conftest import TOKEN, adapter, network, running_workers, stage_plan

NEW_TOKENS = 6


def test_split_runs_equal_the_unsplit_model_with_the_same_reduction(folders) -> None:
    ad = adapter(folders, "ved")
    n, n_enc = len(ad.units()), ad.n_vision                 # units 0..n_enc-1 encode; edge from n_enc-1
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    red = Reduction("dpc", 4)
    want = greedy_generate(ad, x, new_tokens=NEW_TOKENS, reduction=red).tokens
    plain = greedy_generate(ad, x, new_tokens=NEW_TOKENS).tokens
    assert not torch.equal(want, plain)                      # the reduction changes the output: a real check
    assert torch.equal(greedy_generate(ad, x, new_tokens=NEW_TOKENS, reduction=red,
                                       cuts=[(0, n_enc - 1), (n_enc, n - 1)]).tokens, want)
    plans = [["A"] * n,                                          # no link crossed, reduced all the same
             ["A"] * n_enc + ["B"] * (n - n_enc),                 # the encoder output crosses once
             ["A"] * n_enc + ["B", "C"] + ["B"] * (n - n_enc - 2),  # to two readers, B and C
             ["A"] * (n_enc + 1) + ["B"] * (n - n_enc - 1)]       # the reducing node also reads it

    async def scenario() -> None:
        async with running_workers(ad) as (workers, addresses):
            for version, assignment in enumerate(plans, start=1):
                sp = stage_plan(ad, assignment, addresses, version=version)
                sp = dataclasses.replace(sp, extra={"reduction": {"edge": n_enc - 1, "method": "dpc", "keep": 4}})
                async with Client(sp, token=TOKEN) as client:
                    gen = await client.generate(x, max_new_tokens=NEW_TOKENS)
                    assert torch.equal(gen.tokens, want), assignment
            assert all(not w.requests for w in workers.values())

    asyncio.run(scenario())


def test_edge_value_and_plan_plumbing(folders) -> None:
    ad = adapter(folders, "ved")
    n, n_enc = len(ad.units()), ad.n_vision
    sp = stage_plan(ad, ["A"] * n, {})
    enc = torch.randn(1, 17, 32)
    assert plan_reduction(sp, n_enc - 1) is None and reduce_edge(sp, n_enc - 1, enc) is enc
    sp = dataclasses.replace(sp, extra={"reduction": {"edge": n_enc - 1, "method": "tome", "keep": 5}})
    assert plan_reduction(sp, n_enc - 1) == Reduction("tome", 5) and plan_reduction(sp, 0) is None
    assert reduce_edge(sp, n_enc - 1, enc).shape == (1, 5, 33)            # 5 tokens + log size channel
    plan = SimpleNamespace(assignment=["A"] * n, reductions=[{"edge": n_enc - 1, "method": "dpc", "keep": 3}])
    made = make_stage_plan(ad, network(("A",)), plan, addresses={})
    assert made.extra["reduction"] == {"edge": n_enc - 1, "method": "dpc", "keep": 3}
    assert stage_extra(SimpleNamespace(reductions=[])) == {}
    bad = SimpleNamespace(assignment=["A"] * n, reductions=[{"edge": n_enc - 1, "method": "blur", "keep": 3}])
    with pytest.raises(InputError, match="unknown method") as info:
        make_stage_plan(ad, network(("A",)), bad, addresses={})
    assert "\n" not in str(info.value)
    elsewhere = SimpleNamespace(assignment=["A"] * n, reductions=[{"edge": 0, "method": "dpc", "keep": 3}])
    with pytest.raises(InputError, match="no edge from unit 0"):
        make_stage_plan(ad, network(("A",)), elsewhere, addresses={})
