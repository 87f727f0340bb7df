"""A vision model whose request input is the image file as captured (PNG or JPEG bytes).

`RawImageAdapter` wraps the adapter of a model with an `encode` phase (a captioner, a ViT) and puts
one unit in front of it: `vision.decode`, which decodes the file's bytes and preprocesses them into
the pixels the encoder takes (`profiler.images.decode_image_bytes`, the same code that loads an image
file from disk, so the output is the wrapped model's on that file, exactly). It has no parameters, is
profiled like any other unit and placed by the planner, so the bytes that leave the source are the
file's (a few hundred bytes for the tiny captioner's scenes) unless the plan decodes on the source.

The bytes travel as a [1, N] uint8 tensor in an ordinary frame. Unit i + 1 of this adapter is unit i
of the wrapped one. A model name with the suffix `+png` or `+jpeg` (`tiny-captioner+png`) loads
this wrapper (`profiler.models.load_adapter`); the suffix is the format of the example image the
profiler encodes (its size is the model's image size), and requests may carry either format.
"""

from __future__ import annotations

from typing import Any

import torch

from profiler.adapters.base import InputSpec, ModelAdapter, RequestState
from profiler.adapters.common import model_device
from profiler.adapters.prefixed import PrefixedAdapter
from profiler.images import IMAGE_FORMATS, bytes_tensor, decode_image_bytes, encode_image, example_image

DECODE_UNIT = "vision.decode"


class RawImageAdapter(PrefixedAdapter):
    source_input = "bytes"
    prefix_unit = DECODE_UNIT
    prefix_phase = "encode"

    def __init__(self, inner: ModelAdapter, image_format: str) -> None:
        if not any(p.name == "encode" and p.first == 0 for p in inner.phases(InputSpec())):
            raise ValueError(f"{inner.name}: takes no image (no encode phase at unit 0)")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image format {image_format!r} (known: {', '.join(IMAGE_FORMATS)})")
        super().__init__(inner.model, f"{inner.name}+{image_format}", inner.weights)
        self.inner = inner
        self.family = inner.family
        self.image_format = image_format
        self.image_size = int(inner.prepare_image(example_image(8)).shape[-1])   # what the encoder is fed

    # -- execution -------------------------------------------------------------------------------
    def example_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        if phase != "encode":
            return self.inner.example_input(spec, phase)
        data = encode_image(example_image(spec.image_size or self.image_size), self.image_format)
        return bytes_tensor(data).expand(spec.batch, -1).contiguous()

    def new_state(self) -> RequestState:
        return self.inner.new_state()

    def run(self, first: int, last: int, x: torch.Tensor | None, *, phase: str, position: int,
            state: RequestState, all_logits: bool = False) -> torch.Tensor:
        if first == 0:
            if phase != "encode":
                raise ValueError(f"{DECODE_UNIT} runs in the encode phase, not {phase!r}")
            if x is None:
                raise ValueError(f"{DECODE_UNIT} needs the image file's bytes")
            x = decode_image_bytes(x, self.image_size).to(model_device(self.model))
            if last == 0:
                return x
            first = 1
        return self.inner.run(first - 1, last - 1, x, phase=phase, position=position, state=state,
                              all_logits=all_logits)

    # -- text and images -------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.inner.encode_text(text)

    def decode_tokens(self, ids: list[int]) -> str:
        return self.inner.decode_tokens(ids)

    def prepare_image(self, image: Any) -> torch.Tensor:
        """The request input: an image file's bytes as they are (a path or bytes), or a PIL image
        encoded in this adapter's format; [1, N] uint8."""
        if isinstance(image, bytes):
            return bytes_tensor(image)
        if isinstance(image, str) or hasattr(image, "__fspath__"):
            from pathlib import Path

            from profiler.errors import InputError
            p = Path(image)
            try:
                return bytes_tensor(p.read_bytes())
            except OSError as exc:
                raise InputError(f"{p}: cannot read the image file: {exc.strerror}") from None
        return bytes_tensor(encode_image(image, self.image_format))

    @property
    def eos_token_id(self) -> int | None:
        return self.inner.eos_token_id

    @property
    def start_token_id(self) -> int | None:
        """The decoder's start token (a draft's or verifier's scorer begins with it)."""
        return getattr(self.inner, "start_token_id", None)
