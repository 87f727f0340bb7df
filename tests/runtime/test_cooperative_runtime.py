"""Cooperative decoding across the network: a verifier serving the target over gRPC on loopback, the
draft on the source. The output must equal the target's own greedy output (torch.equal) for several
k and placements of the target's encoder, with and without emulated links."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from profiler.captioner.model import build_model, greedy_decode
from profiler.captioner.tokenizer import build_tokenizer
from profiler.models import load_adapter
from profiler.speculative import encoder_range
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.cooperative import CoopClient, Pacing, Verifier, coop_route
from runtime.links import EmulatedNetwork
from runtime.stages import LinkSpec, NodeSpec
from runtime.transport import GrpcTransport

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def captioner_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tok = build_tokenizer()
    root = tmp_path_factory.mktemp("pair")
    torch.manual_seed(3)
    target = build_model(tok, width=32, layers=2, heads=2, decoder_width=48, decoder_layers=2)
    torch.manual_seed(4)
    draft = build_model(tok, width=32, layers=2, heads=2, decoder_width=16, decoder_layers=1)
    draft.encoder.load_state_dict(target.encoder.state_dict())
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "target", root / "draft"


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(coro)


async def _serve_and_generate(target_dir: Path, draft_dir: Path, cases: list[tuple[list[str], int]],
                              pixels: torch.Tensor, max_new: int, network: EmulatedNetwork | None = None,
                              pacing: Pacing | None = None) -> list[list[list[int]]]:
    target, draft = load_adapter(str(target_dir)), load_adapter(str(draft_dir))
    verifier = Verifier("edge", load_adapter(str(target_dir)))
    address = await verifier.start("127.0.0.1:0")
    transport = GrpcTransport()
    out = []
    try:
        for assignment, k in cases:
            route = coop_route(target, "dev", assignment, ["dev"] * len(draft.units()), k)
            client = CoopClient(draft, target, route, address, transport, network=network, pacing=pacing)
            rows = []
            for i in range(pixels.shape[0]):
                res = await client.generate(pixels[i:i + 1], max_new_tokens=max_new, eos=target.eos_token_id)
                assert res.rounds >= 1 and res.draft_passes <= k * res.rounds
                rows.append(res.tokens)
            out.append(rows)
        assert verifier.requests == {}          # every request closed
    finally:
        await transport.close()
        await verifier.stop()
    return out


def test_equals_target_greedy_for_several_k_and_placements(captioner_pair: tuple[Path, Path]) -> None:
    target_dir, draft_dir = captioner_pair
    target = load_adapter(str(target_dir))
    n_units, n_enc = len(target.units()), len(encoder_range(target))
    placements = [["edge"] * n_units,                                  # the image crosses
                  ["dev"] * 2 + ["edge"] * (n_units - 2),              # cut inside the encoder
                  ["dev"] * n_enc + ["edge"] * (n_units - n_enc)]      # the encoder output crosses
    cases = [(a, k) for a in placements for k in (1, 3, 5)]
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = _run(_serve_and_generate(target_dir, draft_dir, cases, pixels, 12))
    want = greedy_decode(target.model, pixels, max_new_tokens=12)
    for rows in got:
        for i, tokens in enumerate(rows):
            assert torch.equal(torch.tensor(tokens, dtype=torch.long), torch.tensor(want[i], dtype=torch.long))


def test_emulated_links_and_pacing_keep_the_output(captioner_pair: tuple[Path, Path]) -> None:
    target_dir, draft_dir = captioner_pair
    target = load_adapter(str(target_dir))
    n = len(target.units())
    net = EmulatedNetwork([NodeSpec("dev"), NodeSpec("edge")], [LinkSpec("dev", "edge", 2e7, 0.002)])
    pacing = Pacing(draft_encode_s=0.001, draft_pass_s=0.0005, target_rest_s=0.002, verify_s={2: 0.001, 4: 0.002})
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    got = _run(_serve_and_generate(target_dir, draft_dir, [(["edge"] * n, 3)], pixels, 10, net, pacing))
    want = greedy_decode(target.model, pixels, max_new_tokens=10)
    assert [list(r) for r in got[0]] == want


def test_route_rules(captioner_pair: tuple[Path, Path]) -> None:
    target = load_adapter(str(captioner_pair[0]))
    n = len(target.units())
    with pytest.raises(ValueError, match="draft on the source"):
        coop_route(target, "dev", ["edge"] * n, ["edge"], 2)
    with pytest.raises(ValueError, match="one verifier"):
        coop_route(target, "dev", ["edge"] * (n - 1) + ["cloud"], ["dev"], 2)
    with pytest.raises(ValueError, match="decoder must run on the verifier"):
        coop_route(target, "dev", ["dev"] * (n - 1) + ["edge"], ["dev"], 2)
    with pytest.raises(ValueError, match="must come first"):
        coop_route(target, "dev", ["edge", "dev"] + ["edge"] * (n - 2), ["dev"], 2)
    assert coop_route(target, "dev", ["dev"] + ["edge"] * (n - 1), ["dev"], 2).cut == 1


def test_verifier_refuses_bad_frames(captioner_pair: tuple[Path, Path]) -> None:
    v = Verifier("edge", load_adapter(str(captioner_pair[0])))

    async def go() -> list[Frame]:
        frames = [encode_frame(Frame(kind="data", request_id="r1", tensor=torch.tensor([1, 2]))),
                  encode_frame(Frame(kind="open", request_id="r2")),
                  encode_frame(Frame(kind="plan", request_id="r3")),
                  b"garbage"]
        return [decode_frame((await v.handle(f))[0]) for f in frames]

    codes = [f.meta.get("code") for f in _run(go())]
    assert codes == ["unknown-request", "bad-request", "bad-kind", "bad-frame"]


def test_llm_pair_with_shared_embeddings_across_the_network(tmp_path: Path) -> None:
    cfg = GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=4, n_head=2, n_inner=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(11)
    target = GPT2LMHeadModel(cfg).eval()
    draft = GPT2LMHeadModel(GPT2Config(**{**cfg.to_dict(), "n_layer": 1})).eval()
    draft.load_state_dict(target.state_dict(), strict=False)      # embeddings, first block, norm, head
    target.save_pretrained(tmp_path / "t")
    draft.save_pretrained(tmp_path / "d")
    prompt = torch.tensor([[5, 17, 3, 40]])
    with torch.no_grad():
        want = target.generate(prompt, max_new_tokens=14, do_sample=False, pad_token_id=0,
                               eos_token_id=None)[0, 4:]

    async def go() -> list[list[int]]:
        t, d = load_adapter(str(tmp_path / "t")), load_adapter(str(tmp_path / "d"))
        verifier = Verifier("cloud", load_adapter(str(tmp_path / "t")))
        address = await verifier.start("127.0.0.1:0")
        transport = GrpcTransport()
        try:
            out = []
            for k in (1, 2, 4):
                route = coop_route(t, "dev", ["cloud"] * len(t.units()), ["dev"] * len(d.units()), k)
                res = await CoopClient(d, t, route, address, transport).generate(prompt, max_new_tokens=14, eos=None)
                out.append(res.tokens)
            return out
        finally:
            await transport.close()
            await verifier.stop()

    for tokens in _run(go()):
        assert torch.equal(torch.tensor(tokens, dtype=torch.long), want)
