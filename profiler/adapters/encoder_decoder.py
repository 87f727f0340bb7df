"""VisionEncoderDecoder (ViT encoder + GPT-2 decoder with cross-attention).

Units: the encoder's (vision.embed, vision.layer.{i}, vision.norm, the last including
enc_to_dec_proj when the model has one), then the decoder's (text.embed, text.block.{i},
text.head). Phases: encode (vision units, once, the image from the source), prefill (decoder
units, once, input none: text.embed makes the decoder start token itself), decode (decoder
units, new_tokens - 1 times, the sampled token looped back). One edge: vision.norm's output is
read by every decoder block with cross-attention, from `state.encoder_out`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import VisionEncoderDecoderModel

from profiler.adapters.base import EdgeInfo, InputSpec, ModelAdapter, PhaseInfo, RequestState, UnitInfo
from profiler.adapters.common import TextCodec, example_ids, model_device, run_text_stack
from profiler.adapters.gpt2 import GPT2Stack
from profiler.adapters.vit import ViTStack


def projects_encoder_output(model: VisionEncoderDecoderModel) -> bool:
    """The condition VisionEncoderDecoderModel.forward uses to apply enc_to_dec_proj."""
    return (model.encoder.config.hidden_size != model.decoder.config.hidden_size
            and getattr(model.decoder.config, "cross_attention_hidden_size", None) is None)


class EncoderDecoderAdapter(ModelAdapter):
    family = "vision-encoder-decoder"

    def __init__(self, model: VisionEncoderDecoderModel, name: str, weights: str, codec: TextCodec,
                 eos_token_id: int | None, decoder_start_token_id: int) -> None:
        super().__init__(model, name, weights)
        # ViTModel's pooler is computed by the HF forward but never read by the decoder: drop it so
        # the model's parameters are exactly those of its units.
        model.encoder.pooler = None
        proj = model.enc_to_dec_proj if projects_encoder_output(model) else None
        self.vision = ViTStack(model.encoder, extra_norm=proj)
        self.text = GPT2Stack(model.decoder)
        self.codec = codec
        self._eos = eos_token_id
        self.start_token_id = decoder_start_token_id
        self.n_vision = self.vision.n_layers + 2        # units 0..n_vision-1 are the encoder's
        self.n_units = self.n_vision + self.text.n_blocks + 2

    # -- structure -----------------------------------------------------------------------------
    def units(self) -> list[UnitInfo]:
        ph = ("prefill", "decode")
        n = self.text.n_blocks
        return (self.vision.unit_infos()
                + [UnitInfo("text.embed", ph)]
                + [UnitInfo(f"text.block.{i}", ph, reads_edge=self.text.has_cross_attention(i)) for i in range(n)]
                + [UnitInfo("text.head", ph)])

    def phases(self, spec: InputSpec) -> list[PhaseInfo]:
        enc_last, last = self.n_vision - 1, self.n_units - 1
        return [PhaseInfo("encode", 0, enc_last, 1, "source"),
                PhaseInfo("prefill", self.n_vision, last, 1, "none"),
                PhaseInfo("decode", self.n_vision, last, max(spec.new_tokens - 1, 0), "loop")]

    def edges(self) -> list[EdgeInfo]:
        readers = tuple(i for i, u in enumerate(self.units()) if u.reads_edge)
        return [EdgeInfo(src=self.n_vision - 1, dst=readers)] if readers else []

    def unit_modules(self, index: int) -> list[nn.Module]:
        if 0 <= index < self.n_vision:
            return self.vision.modules_of(index)
        return self.text.modules_of(index - self.n_vision)

    # -- execution -----------------------------------------------------------------------------
    def example_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        if phase == "encode":
            return self.vision.example_pixels(spec)
        if phase == "prefill":
            return None
        if phase == "decode":
            return example_ids(spec, 1, self.text.vocab_size, model_device(self.model))
        raise ValueError(f"{self.name}: no phase {phase!r} (phases: encode, prefill, decode)")

    def start_tokens(self, state: RequestState) -> torch.Tensor:
        """[B, 1] decoder start tokens; B from state.extra["batch"], else the encoder output, else 1."""
        batch = state.extra.get("batch")
        if batch is None:
            batch = state.encoder_out.shape[0] if state.encoder_out is not None else 1
        return torch.full((int(batch), 1), self.start_token_id, dtype=torch.long, device=model_device(self.model))

    @torch.no_grad()
    def run(self, first: int, last: int, x: torch.Tensor | None, *, phase: str, position: int,
            state: RequestState, all_logits: bool = False) -> torch.Tensor:
        if not 0 <= first <= last < self.n_units:
            raise ValueError(f"unit range {first}..{last} outside 0..{self.n_units - 1}")
        if phase == "encode":
            if last >= self.n_vision:
                raise ValueError(f"encode covers units 0..{self.n_vision - 1}, not {first}..{last}")
            return self.vision.run(first, last, x)
        if phase not in ("prefill", "decode"):
            raise ValueError(f"{self.name}: no phase {phase!r} (phases: encode, prefill, decode)")
        if first < self.n_vision:
            raise ValueError(f"{phase} covers units {self.n_vision}..{self.n_units - 1}, not {first}..{last}")
        local_first = first - self.n_vision
        if local_first == 0 and x is None:
            x = self.start_tokens(state)    # input "none": the start token is made here
        return run_text_stack(self.text, local_first, last - self.n_vision, x, position=position,
                              state=state, all_logits=all_logits)

    # -- text and images -----------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.codec.encode(text)

    def decode_tokens(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    def prepare_image(self, image: Any) -> torch.Tensor:
        return self.vision.prepare_image(image)

    @property
    def eos_token_id(self) -> int | None:
        return self._eos
