"""Speculative decoding in one process: the accept rule against brute force, the round loop on
synthetic models, and real model pairs (a captioner pair and a config-built LLM pair sharing
embeddings) whose output must equal the target's own greedy output with torch.equal."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from profiler.captioner.model import build_model, greedy_decode
from profiler.captioner.tokenizer import build_tokenizer
from profiler.speculative import (
    CausalScorer,
    EncoderDecoderScorer,
    accept,
    greedy_propose,
    local_speculative,
    speculative_decode,
)

torch.set_num_threads(1)


def _brute_accept(proposed: Sequence[int], target_next: Sequence[int]) -> list[int]:
    """What the target alone would emit, one token at a time, while the draft keeps agreeing."""
    kept: list[int] = []
    for i in range(len(proposed) + 1):
        kept.append(target_next[i])
        if i == len(proposed) or proposed[i] != target_next[i]:
            break
    return kept


def test_accept_equals_brute_force_on_every_small_case() -> None:
    for k in range(0, 4):
        for proposed in itertools.product(range(3), repeat=k):
            for target_next in itertools.product(range(3), repeat=k + 1):
                n, kept = accept(proposed, target_next)
                assert kept == _brute_accept(proposed, target_next)
                assert n == len(kept) - 1


def test_accept_rejects_a_wrong_length() -> None:
    with pytest.raises(ValueError, match="target_next"):
        accept([1, 2], [1, 2])


class _TableModel:
    """A synthetic greedy model: the next token is a fixed random function of the whole prefix."""

    def __init__(self, seed: int, vocab: int, eos: int, eos_after: int) -> None:
        self.seed, self.vocab, self.eos, self.eos_after = seed, vocab, eos, eos_after

    def next_token(self, tokens: Sequence[int]) -> int:
        if len(tokens) >= self.eos_after:
            return self.eos
        return random.Random(f"{self.seed}:{tuple(tokens)}").randrange(self.vocab)

    def predict(self, tokens: Sequence[int], count: int) -> list[int]:
        return [self.next_token(tokens[:j]) for j in range(len(tokens) - count + 1, len(tokens) + 1)]


class _NoisyDraft(_TableModel):
    """Agrees with the target except where a second hash says otherwise (about `miss` of the time)."""

    def __init__(self, target: _TableModel, miss: float, seed: int) -> None:
        super().__init__(target.seed, target.vocab, target.eos, target.eos_after)
        self.target, self.miss, self.noise = target, miss, seed

    def next_token(self, tokens: Sequence[int]) -> int:
        if random.Random(f"n{self.noise}:{tuple(tokens)}").random() < self.miss:
            return random.Random(f"x{self.noise}:{tuple(tokens)}").randrange(self.vocab)
        return self.target.next_token(tokens)


def _greedy(model: _TableModel, max_new: int) -> list[int]:
    out: list[int] = []
    while len(out) < max_new:
        out.append(model.next_token(out))
        if out[-1] == model.eos:
            return out[:-1]
    return out


@pytest.mark.parametrize("miss", [0.0, 0.3, 1.0])
def test_round_loop_gives_the_target_greedy_output(miss: float) -> None:
    for seed in range(6):
        target = _TableModel(seed, vocab=5, eos=0, eos_after=3 + 2 * seed)
        draft = _NoisyDraft(target, miss, seed)
        for max_new in (1, 2, 7, 20):
            want = _greedy(target, max_new)
            for k in (1, 2, 3, 5, 8):
                got = local_speculative(draft, target, k, max_new, target.eos)
                assert got.tokens == want, (seed, max_new, k)
                assert got.draft_passes <= k * got.rounds
                if miss == 0.0 and max_new > 1:           # a perfect draft: every proposal is kept
                    assert got.accepted == got.draft_passes


def test_round_loop_without_eos_stops_at_max_new_tokens() -> None:
    target = _TableModel(1, vocab=4, eos=99, eos_after=10**6)
    got = speculative_decode(lambda t, k: greedy_propose(target, t, k, None),
                             lambda t, p: accept(p, target.predict([*t, *p], len(p) + 1)), 4, 9, None)
    assert got.tokens == _greedy(target, 9) and len(got.tokens) == 9


def test_k_must_be_positive() -> None:
    t = _TableModel(0, 3, 0, 2)
    with pytest.raises(ValueError, match="k"):
        local_speculative(t, t, 0, 5, 0)


# ---- real model pairs ----------------------------------------------------------------------------

def _captioner_pair() -> tuple:
    tok = build_tokenizer()
    torch.manual_seed(3)
    target = build_model(tok, width=32, layers=2, heads=2, decoder_width=48, decoder_layers=2).eval()
    torch.manual_seed(4)
    draft = build_model(tok, width=32, layers=2, heads=2, decoder_width=16, decoder_layers=1).eval()
    draft.encoder.load_state_dict(target.encoder.state_dict())
    return tok, target, draft


def _encoder_out(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        hidden = model.encoder(pixel_values=pixels).last_hidden_state
        return model.enc_to_dec_proj(hidden) if hasattr(model, "enc_to_dec_proj") else hidden


def test_captioner_pair_equals_target_greedy_for_several_k() -> None:
    tok, target, draft = _captioner_pair()
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want = greedy_decode(target, pixels, max_new_tokens=12)
    start, eos = target.config.decoder_start_token_id, target.config.eos_token_id
    for i in range(3):
        t_scorer = EncoderDecoderScorer(target.decoder, _encoder_out(target, pixels[i:i + 1]), start)
        d_scorer = EncoderDecoderScorer(draft.decoder, _encoder_out(draft, pixels[i:i + 1]), start)
        for k in (1, 3, 6):
            got = local_speculative(d_scorer, t_scorer, k, 12, eos)
            assert torch.equal(torch.tensor(got.tokens, dtype=torch.long), torch.tensor(want[i], dtype=torch.long))
            assert got.rounds <= len(want[i]) + 1


def _llm_pair() -> tuple[GPT2LMHeadModel, GPT2LMHeadModel]:
    """A 4-block GPT-2 target and a draft made of its embeddings, first block, final norm and head
    (shared weights, random init): the draft is a cheap early exit of the target."""
    cfg = GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=4, n_head=2, n_inner=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(11)
    target = GPT2LMHeadModel(cfg).eval()
    draft = GPT2LMHeadModel(GPT2Config(**{**cfg.to_dict(), "n_layer": 1})).eval()
    missing = draft.load_state_dict(target.state_dict(), strict=False)
    assert not missing.missing_keys
    assert draft.transformer.wte.weight.data_ptr() != target.transformer.wte.weight.data_ptr()
    assert torch.equal(draft.transformer.wte.weight, target.transformer.wte.weight)
    return target, draft


def test_llm_pair_with_shared_embeddings_equals_target_greedy() -> None:
    target, draft = _llm_pair()
    accepted = 0
    for prompt in ([5, 17, 3], [40, 2, 2, 9, 60], [1]):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            want = target.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0,
                                   eos_token_id=None)[0, len(prompt):]
        for k in (1, 2, 4, 7):
            got = local_speculative(CausalScorer(draft, prompt), CausalScorer(target, prompt), k, 16, None)
            assert torch.equal(torch.tensor(got.tokens, dtype=torch.long), want)
            accepted += got.accepted
    assert accepted > 0   # the early-exit draft agrees with the target some of the time


class _Counting(torch.nn.Module):
    """A causal LM that records how many positions each call runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.runs = model, []

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> object:
        self.runs.append(int(input_ids.shape[1]))
        return self.model(input_ids=input_ids, **kwargs)


def test_cached_scorer_runs_only_new_positions_and_matches_a_full_recompute() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    counting = _Counting(model)
    scorer = CausalScorer(counting, [5, 6, 7])
    rng = random.Random(1)
    tokens: list[int] = []
    for _ in range(12):                        # rounds: k proposals, some kept, the rest cropped off
        k = rng.randint(0, 4)
        proposed = [rng.randrange(50) for _ in range(k)]
        got = scorer.predict([*tokens, *proposed], k + 1)
        with torch.no_grad():                  # the oracle: the whole sequence run without a cache
            full = model(input_ids=torch.tensor([[5, 6, 7, *tokens, *proposed]]), use_cache=False).logits
        assert got == full[0, -(k + 1):].argmax(-1).tolist()
        assert counting.runs[-1] == (k + 1 if tokens or len(counting.runs) > 1 else 3 + k)
        tokens += proposed[: rng.randint(0, k)] + [got[0]]
