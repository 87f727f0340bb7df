"""FLOP counts include attention and match the analytic count of a GPT-2 block (multiply-add = 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config

from profiler.adapters.base import InputSpec, ModelAdapter
from profiler.flops import count_flops, count_unit
from profiler.models import load_adapter

torch.set_num_threads(1)
D, HEADS, S, VOCAB = 128, 4, 48, 101


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2-flops")
    GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=D, n_layer=2, n_head=HEADS, bos_token_id=None,
               eos_token_id=None).save_pretrained(folder)
    return folder


def block_flops(adapter: ModelAdapter, spec: InputSpec) -> tuple[float, float]:
    """FLOPs of text.block.0 (unit 1) in a prefill of S tokens and in the decode step after it."""
    state = adapter.new_state()
    ids = adapter.example_input(spec, "prefill")
    h = adapter.run(0, 0, ids, phase="prefill", position=0, state=state)
    prefill = count_unit(adapter, 1, h, phase="prefill", position=0, state=state)
    adapter.run(1, 2, h, phase="prefill", position=0, state=state)   # warm the cache of blocks 0 and 1
    tok = adapter.example_input(spec, "decode")
    h1 = adapter.run(0, 0, tok, phase="decode", position=S, state=state)
    decode = count_unit(adapter, 1, h1, phase="decode", position=S, state=state)
    return prefill, decode


@pytest.mark.parametrize("eager", [False, True], ids=["sdpa", "eager"])
def test_gpt2_block_matches_analytic_count(gpt2_folder: Path, eager: bool) -> None:
    adapter = load_adapter(str(gpt2_folder), eager_attention=eager)
    prefill, decode = block_flops(adapter, InputSpec(prompt_tokens=S, new_tokens=4))
    # Projections: 12 d^2 multiply-adds per token; attention: QK^T and AV, S x S x d each.
    analytic_prefill = 2 * S * (12 * D * D) + 4 * S * S * D
    assert prefill == pytest.approx(analytic_prefill, rel=0.02)
    # One decode token attends to the S cached keys and itself.
    analytic_decode = 2 * (12 * D * D) + 4 * (S + 1) * D
    assert decode == pytest.approx(analytic_decode, rel=0.02)
    # Attention really is in there: the count without it would be more than 2% short.
    assert prefill - 2 * S * 12 * D * D > 0.02 * analytic_prefill


def test_sdpa_and_eager_count_the_same(gpt2_folder: Path) -> None:
    spec = InputSpec(prompt_tokens=S, new_tokens=4)
    sdpa = block_flops(load_adapter(str(gpt2_folder)), spec)
    eager = block_flops(load_adapter(str(gpt2_folder), eager_attention=True), spec)
    assert sdpa == pytest.approx(eager, rel=1e-9)


def test_sdpa_handle_counts_both_products() -> None:
    class Attn(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v)

    b, h, lq, sk, e, ev = 2, 3, 5, 7, 16, 8
    q, k, v = torch.randn(b, h, lq, e), torch.randn(b, h, sk, e), torch.randn(b, h, sk, ev)
    assert count_flops(Attn(), (q, k, v)) == 2 * (b * h * lq * sk * e + b * h * lq * sk * ev)


def test_counting_leaves_the_state_alone(gpt2_folder: Path) -> None:
    adapter = load_adapter(str(gpt2_folder))
    spec = InputSpec(prompt_tokens=8)
    state = adapter.new_state()
    h = adapter.run(0, 0, adapter.example_input(spec, "prefill"), phase="prefill", position=0, state=state)
    count_unit(adapter, 1, h, phase="prefill", position=0, state=state)
    # Had the count filled block 0's cache, this prefill at position 0 would be refused.
    out = adapter.run(1, 1, h, phase="prefill", position=0, state=state)
    assert out.shape == h.shape
