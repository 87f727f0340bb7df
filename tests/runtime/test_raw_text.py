"""A language model whose request input is its prompt's UTF-8 bytes: a `text.tokenize` unit makes the
token ids; it is profiled like any unit, and split runs generate exactly the plain model's tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from profiler.adapters.base import InputSpec
from profiler.build import build_profile
from profiler.errors import InputError
from profiler.generate import greedy_generate
from profiler.models import load_adapter, split_variant
from runtime.client import Client
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.session import prepare_input
from runtime.transport import GrpcTransport
from tests.runtime.conftest import TOKEN, running_workers, stage_plan

NEW = 6
PROMPTS = ("the quick brown fox", "héllo wörld, 12 ünits")


def variant(folders: dict[str, Path], name: str) -> tuple[object, object]:
    return load_adapter(str(folders[name])), load_adapter(f"{folders[name]}+text")


def test_the_variant_tokenizes_in_a_first_unit_of_the_prefill_only(folders) -> None:  # noqa: ANN001
    plain, raw = variant(folders, "gpt2")
    assert split_variant("smollm2-135m+text") == ("smollm2-135m", "text")
    assert [u.name for u in raw.units()] == ["text.tokenize"] + [u.name for u in plain.units()]
    phases = {p.name: p for p in raw.phases(InputSpec())}
    assert (phases["prefill"].first, phases["decode"].first) == (0, 1)
    assert raw.source_input == "bytes" and raw.unit_modules(0) == []
    with pytest.raises(InputError, match="not a language model"):
        load_adapter("tiny-captioner+text")
    with pytest.raises(InputError, match="not UTF-8"):
        raw.tokenize(torch.tensor([[0xff, 0xfe]], dtype=torch.uint8))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_from_the_bytes_equals_the_plain_model_from_its_ids(folders, family: str) -> None:  # noqa: ANN001
    plain, raw = variant(folders, family)
    for prompt in PROMPTS:
        x = prepare_input(raw, prompt)
        assert x.dtype == torch.uint8 and bytes(x.numpy().tobytes()) == prompt.encode("utf-8")
        expect = greedy_generate(plain, prepare_input(plain, prompt), new_tokens=NEW).tokens
        assert torch.equal(greedy_generate(raw, x, new_tokens=NEW).tokens, expect)
        assert torch.equal(greedy_generate(raw, x, new_tokens=NEW, cuts=[(0, 0), (1, 2), (3, 4)]).tokens, expect)


@pytest.mark.parametrize("assignment", [
    ["A"] * 5,                             # tokenize and head on one node: positions from the bytes' tokens
    ["A"] + ["B"] * 4,                     # tokenized on the source, ids cross
    ["B", "A", "B", "A", "B"],
])
def test_split_runs_generate_the_plain_models_tokens(folders, assignment: list[str]) -> None:  # noqa: ANN001
    plain, raw = variant(folders, "gpt2")
    sources = [prepare_input(raw, p) for p in PROMPTS]
    expect = [greedy_generate(plain, prepare_input(plain, p), new_tokens=NEW).tokens for p in PROMPTS]

    async def scenario() -> None:
        async with running_workers(raw) as (_, addresses):
            async with Client(stage_plan(raw, assignment, addresses), token=TOKEN) as client:
                for s, e in zip(sources, expect, strict=True):
                    assert torch.equal((await client.generate(s, max_new_tokens=NEW)).tokens, e)

    asyncio.run(scenario())


def test_the_tokenize_unit_is_profiled_and_decode_runs_after_the_prompt(folders) -> None:  # noqa: ANN001
    _, raw = variant(folders, "gpt2")
    seen: list[tuple[str, int, int]] = []
    run = raw.run

    def recording(first: int, last: int, x: object, *, phase: str, position: int, **kw: object) -> torch.Tensor:
        seen.append((phase, first, position))
        return run(first, last, x, phase=phase, position=position, **kw)

    raw.run = recording                                      # type: ignore[method-assign]
    profile = build_profile(raw, InputSpec(prompt_tokens=7, new_tokens=4), repeats=1, warmup=0)
    raw.run = run                                            # type: ignore[method-assign]
    tok = profile.units[0]
    assert tok.name == "text.tokenize" and tok.param_bytes == 0
    assert tok.latency_s[profile.hardware_classes[0]]["prefill"] > 0 and tok.out_bytes["prefill"] == 7 * 8
    prefill = profile.phases[0]
    assert prefill.in_bytes == len(raw.prompt_of(7).encode("utf-8")) and profile.input["prompt_tokens"] == 7
    assert {pos for phase, _, pos in seen if phase == "decode"} == {7}    # after the 7 prompt tokens


def test_a_worker_refuses_ids_where_the_prompt_bytes_belong(folders) -> None:  # noqa: ANN001
    _, raw = variant(folders, "gpt2")

    async def scenario() -> None:
        async with running_workers(raw, ("A",)) as (_, addresses):
            sp = stage_plan(raw, ["A"] * 5, addresses)
            t = GrpcTransport(TOKEN)
            try:
                await t.send(addresses["A"], encode_frame(Frame("plan", meta={"plan": sp.to_dict()})))
                await t.send(addresses["A"], encode_frame(Frame("open", "r", 1, meta={"reply": "127.0.0.1:1"})))
                (reply,) = await t.send(addresses["A"], encode_frame(Frame("data", "r", 1, "prefill", 0, 0, 0,
                                                                            torch.tensor([[1, 2, 3]]))))
                err = decode_frame(reply)
                assert err.kind == "error" and err.meta["code"] == "wrong-shape" and "uint8" in err.meta["error"]
            finally:
                await t.close()

    asyncio.run(scenario())


def test_the_daemon_api_sends_the_prompt_as_its_bytes(folders) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from orchestrator.daemon.api import InferenceRequest, _input
    plain, raw = variant(folders, "gpt2")
    x = asyncio.run(_input(SimpleNamespace(adapter=raw), InferenceRequest(prompt=PROMPTS[1])))
    assert x.dtype == torch.uint8 and bytes(x.numpy().tobytes()) == PROMPTS[1].encode("utf-8")
    ids = asyncio.run(_input(SimpleNamespace(adapter=plain), InferenceRequest(prompt=PROMPTS[1])))
    assert ids.dtype == torch.int64 and torch.equal(raw.tokenize(x), ids)
