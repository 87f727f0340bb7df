"""The captioner family: a draft and a target that share tiny-captioner's tokenizer, scene space and
(trained, frozen) encoder, and differ in their decoders.

Both start from tiny-captioner's encoder so the family reads images the same way and training is
spent on the decoders only; the draft's decoder is a fraction of tiny-captioner's compute per token,
the target's a multiple. "Compute per token" is counted, not estimated: the floating-point
operations of one decoder pass for one new token with the encoder output given
(`decoder_flops_per_token`, torch's FLOP counter), the cost that repeats for every token generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedTokenizerBase, VisionEncoderDecoderModel

from profiler.captioner.model import build_model

BASE_MODEL = "tiny-captioner"


@dataclass(frozen=True)
class Member:
    name: str
    decoder_width: int
    decoder_layers: int
    decoder_heads: int


MEMBERS: dict[str, Member] = {
    "captioner-draft": Member("captioner-draft", decoder_width=64, decoder_layers=2, decoder_heads=2),
    "captioner-target": Member("captioner-target", decoder_width=256, decoder_layers=4, decoder_heads=8),
}


def build_member(member: Member, tokenizer: PreTrainedTokenizerBase,
                 base: VisionEncoderDecoderModel | None) -> VisionEncoderDecoderModel:
    """A member with a fresh decoder and, when `base` is given, a copy of base's encoder weights."""
    model = build_model(tokenizer, decoder_width=member.decoder_width, decoder_layers=member.decoder_layers,
                        decoder_heads=member.decoder_heads)
    if base is not None:
        missing = model.encoder.load_state_dict(base.encoder.state_dict(), strict=False)
        if missing.missing_keys:
            raise ValueError(f"base encoder lacks {missing.missing_keys[:3]}")
    return model


@torch.no_grad()
def decoder_flops_per_token(model: VisionEncoderDecoderModel, position: int = 12) -> int:
    """FLOPs of one decoder pass producing one token at `position` (self-attention over the cached
    prefix, cross-attention over the 65 encoder states, the vocabulary head). Counted with the
    encoder output given and the prefix recomputed, minus the same pass one token shorter: the
    difference is what one more token costs a decoder with a key/value cache."""
    model.eval()
    enc = model.encoder(pixel_values=torch.zeros(1, 3, 64, 64))

    def flops(length: int) -> int:
        ids = torch.ones(1, length, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(encoder_outputs=enc, decoder_input_ids=ids, use_cache=False)
        return int(counter.get_total_flops())

    return flops(position + 1) - flops(position)


def load_base(folder: Path) -> VisionEncoderDecoderModel:
    return VisionEncoderDecoderModel.from_pretrained(folder, dtype=torch.float32).eval()
