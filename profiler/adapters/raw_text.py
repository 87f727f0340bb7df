"""A language model whose request input is its prompt's bytes (UTF-8), tokenized by a first unit.

`RawTextAdapter` wraps a causal LM's adapter and puts one unit in front of it: `text.tokenize`,
which turns the prompt's UTF-8 bytes into the token ids the embedding takes, with the model's own
tokenizer (so the ids, and everything after them, are the plain model's on that text). It runs in
the prefill only; the decode loop feeds the sampled token to the embedding (unit 1) as before. It
has no parameters, is profiled like any unit and placed by the planner, and the bytes that leave
the source are the prompt's (`in_bytes` is the UTF-8 size of a prompt of `prompt_tokens` tokens).

A model name with the suffix `+text` (`smollm2-135m+text`) loads this wrapper
(`profiler.models.load_adapter`). Unit i + 1 of this adapter is unit i of the wrapped one.
"""

from __future__ import annotations

from typing import Any

import torch

from profiler.adapters.base import InputSpec, ModelAdapter, RequestState
from profiler.adapters.common import model_device
from profiler.adapters.prefixed import PrefixedAdapter
from profiler.errors import InputError
from profiler.profile import TOKENIZE_UNIT

# Profiling prompts are cut from this text to the spec's token count.
PASSAGE = ("The quick brown fox jumps over the lazy dog and runs far away into the green hills beyond the "
           "river, where the old mill stands by the water and the children play until the evening bells ring "
           "across the valley and the farmers walk home along the narrow road under the first stars. ") * 8


def utf8_tensor(text: str) -> torch.Tensor:
    """A prompt's UTF-8 bytes as a [1, N] uint8 tensor: how it travels in a frame (never pickled)."""
    data = text.encode("utf-8")
    if not data:
        raise InputError("prompt: empty")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(1, -1)


class RawTextAdapter(PrefixedAdapter):
    source_input = "bytes"
    prefix_unit = TOKENIZE_UNIT
    prefix_phase = "prefill"

    def __init__(self, inner: ModelAdapter) -> None:
        phases = {p.name: p for p in inner.phases(InputSpec())}
        pre = phases.get("prefill")
        if pre is None or pre.input != "source" or pre.first != 0 or "encode" in phases:
            raise ValueError(f"{inner.name}: not a language model that starts from a prompt")
        super().__init__(inner.model, f"{inner.name}+text", inner.weights)
        self.inner = inner
        self.family = inner.family

    # -- execution -------------------------------------------------------------------------------
    def example_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        if phase != "prefill":
            return self.inner.example_input(spec, phase)
        return utf8_tensor(self.prompt_of(spec.prompt_tokens)).expand(spec.batch, -1).contiguous()

    def prompt_of(self, tokens: int) -> str:
        """A prompt that tokenizes to exactly `tokens` ids (the profiled request shape)."""
        for k in range(1, len(PASSAGE) + 1):           # the shortest prefix of the passage that has them
            n = len(self.inner.encode_text(PASSAGE[:k]))
            if n == tokens:
                return PASSAGE[:k]
            if n > tokens + 2:
                break
        raise ValueError(f"{self.name}: no prompt of {tokens} tokens from the profiling passage")

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] uint8 rows of UTF-8 -> token ids [B, S] (every row the same number of tokens)."""
        if x.dtype != torch.uint8 or x.dim() != 2 or x.shape[1] == 0:
            raise InputError(f"prompt bytes: expected uint8 [batch, bytes], got {str(x.dtype)[6:]}{list(x.shape)}")
        rows = []
        for row in x.cpu():
            try:
                text = row.numpy().tobytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"prompt bytes: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            rows.append(self.inner.encode_text(text))
        if not rows[0] or any(len(r) != len(rows[0]) for r in rows):
            raise InputError("prompt bytes: every row must tokenize to the same, non-zero number of tokens")
        return torch.tensor(rows, dtype=torch.long, device=model_device(self.model))

    def positions(self, x: torch.Tensor) -> int:
        return int(self.tokenize(x).shape[1]) if x.dtype == torch.uint8 else int(x.shape[1])

    def new_state(self) -> RequestState:
        return self.inner.new_state()

    def run(self, first: int, last: int, x: torch.Tensor | None, *, phase: str, position: int,
            state: RequestState, all_logits: bool = False) -> torch.Tensor:
        if first == 0:
            if phase != "prefill":
                raise ValueError(f"{TOKENIZE_UNIT} runs in the prefill phase, not {phase!r}")
            if x is None:
                raise ValueError(f"{TOKENIZE_UNIT} needs the prompt's bytes")
            x = self.tokenize(x)
            if last == 0:
                return x
            first = 1
        return self.inner.run(first - 1, last - 1, x, phase=phase, position=position, state=state,
                              all_logits=all_logits)

    # -- text ------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.inner.encode_text(text)

    def decode_tokens(self, ids: list[int]) -> str:
        return self.inner.decode_tokens(ids)

    def prepare_text(self, text: str) -> torch.Tensor:
        """The request input: the prompt's bytes, [1, N] uint8."""
        return utf8_tensor(text)

    def prepare_image(self, image: Any) -> torch.Tensor:
        return self.inner.prepare_image(image)

    @property
    def eos_token_id(self) -> int | None:
        return self.inner.eos_token_id
