"""profiler.token_merge: merged tokens keep their mass and size, k out, identity at k = n, and the
decoder's proportional attention makes a merged duplicate equal to its copies."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from profiler.adapters.gpt2 import GPT2Stack
from profiler.token_merge import Reduction, merge_tokens, pack, packed_bytes, reduce_packed, unpack

torch.set_num_threads(1)


def _tokens(b: int = 2, n: int = 17, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("method", ["tome", "dpc"])
@pytest.mark.parametrize("keep", [2, 5, 9, 16])
def test_merge_keeps_mass_and_size(method: str, keep: int) -> None:
    x = _tokens()
    sizes = torch.rand(2, 17, dtype=torch.float64) + 0.5
    t, s = merge_tokens(x, keep, method, sizes=sizes)
    assert t.shape == (2, keep, 8) and s.shape == (2, keep)
    assert torch.allclose(s.sum(1), sizes.sum(1))
    assert torch.allclose((t * s[..., None]).sum(1), (x * sizes[..., None]).sum(1))
    assert torch.equal(t[:, 0], x[:, 0]) and torch.equal(s[:, 0], sizes[:, 0])      # CLS untouched
    assert bool((s > 0).all())


@pytest.mark.parametrize("method", ["tome", "dpc"])
def test_identity_when_nothing_is_removed(method: str) -> None:
    x = _tokens()
    t, s = merge_tokens(x, 17, method)
    assert torch.equal(t, x) and torch.equal(s, torch.ones(2, 17, dtype=x.dtype))


def test_dpc_merges_duplicates() -> None:
    """Three distinct tokens, each copied: DPC to 1 + 3 tokens recovers them, each of size 2. (ToMe need
    not: its alternating split can leave both copies on one side.)"""
    method = "dpc"
    base = _tokens(1, 4, 8, seed=3)
    x = torch.cat([base[:, :1], base[:, 1:], base[:, 1:]], dim=1)          # CLS + 3 tokens twice
    t, s = merge_tokens(x, 4, method)
    got = sorted(t[0, 1:].tolist())
    assert torch.allclose(torch.tensor(got, dtype=x.dtype), torch.tensor(sorted(base[0, 1:].tolist()), dtype=x.dtype))
    assert s[0, 1:].tolist() == [2.0, 2.0, 2.0]


def test_bad_input_is_one_line() -> None:
    x = _tokens()
    for call, msg in [(lambda: merge_tokens(x, 0, "dpc"), "keep"), (lambda: merge_tokens(x, 18, "dpc"), "keep"),
                      (lambda: merge_tokens(x, 5, "prune"), "unknown method"),
                      (lambda: merge_tokens(x[0], 5, "dpc"), "expected float tokens"),
                      (lambda: Reduction.parse("dpc24"), "METHOD-KEEP")]:
        with pytest.raises(ValueError, match=msg) as info:
            call()
        assert "\n" not in str(info.value)


def test_pack_round_trip_and_bytes() -> None:
    x = _tokens().float()
    packed = reduce_packed(x, Reduction("dpc", 6))
    assert packed.shape == (2, 6, 9)
    assert packed_bytes(17, 8, Reduction("dpc", 6)) == 6 * 9 * 4 == packed[0].numel() * 4
    t, log_s = unpack(pack(*merge_tokens(x, 6, "dpc")))
    assert torch.allclose(log_s.exp().sum(1), torch.full((2,), 17.0))
    assert t.shape == (2, 6, 8)
    assert Reduction.parse("tome-12") == Reduction("tome", 12)


def test_proportional_attention_equals_the_copies() -> None:
    """A GPT-2 block reading [a, b, b, b] equals one reading [a, b] with log-size bias [0, log 3]."""
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=2, add_cross_attention=True)
    stack = GPT2Stack(GPT2LMHeadModel(cfg).eval())
    enc = torch.randn(1, 2, 16)
    full = torch.cat([enc[:, :1], enc[:, 1:].expand(1, 3, 16)], dim=1)
    h = torch.randn(1, 3, 16)
    pos = torch.arange(3).unsqueeze(0)
    with torch.no_grad():
        want = stack.block(0, h, pos, stack.new_cache(), full)
        got = stack.block(0, h, pos, stack.new_cache(), enc, encoder_bias=torch.tensor([[0.0, math.log(3)]]))
        plain = stack.block(0, h, pos, stack.new_cache(), enc)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-3)          # without the bias it differs
