"""A vision model whose request input is the image file as captured (PNG or JPEG bytes).

`RawImageAdapter` wraps the adapter of a model with an `encode` phase (a captioner, a ViT) and puts
one unit in front of it: `vision.decode`, which decodes the file's bytes and resizes them into the
encoder's pixels, not yet normalised (`profiler.images.decode_image_bytes`, the same code that loads
an image file from disk, so the encoder's input is the wrapped model's on that file, exactly). It has no parameters, is
profiled like any other unit and placed by the planner, so the bytes that leave the source are the
file's (a few hundred bytes for the tiny captioner's scenes) unless the plan decodes on the source.

The bytes travel as a [1, N] uint8 tensor in an ordinary frame. Unit i + 1 of this adapter is unit i
of the wrapped one. A model name with the suffix `+png` or `+jpeg` (`tiny-captioner+png`) loads
this wrapper (`profiler.models.load_adapter`); the suffix is the format of the example image the
profiler encodes (its size is the model's image size), and requests may carry either format. The
suffix `+camera` profiles with a 12 MP JPEG as a phone camera writes it (`profiler.images.
camera_photo_bytes`): a large JPEG is decoded at a reduced DCT scale, so the decode unit's cost and
the file's bytes are those of a photo as captured.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image

from profiler.adapters.base import InputSpec, ModelAdapter, RequestState
from profiler.adapters.common import model_device
from profiler.adapters.prefixed import PrefixedAdapter
from profiler.images import (
    CAMERA_QUALITY,
    CAMERA_SOURCE,
    IMAGE_FORMATS,
    bytes_tensor,
    camera_photo_bytes,
    decode_image_bytes,
    encode_image,
    example_image,
    normalise_pixels,
)
from profiler.profile import DECODE_UNIT

CAMERA_VARIANT = "camera"     # a JPEG as a phone camera writes it (12 MP), profiled from a real photo
IMAGE_VARIANTS = (*IMAGE_FORMATS, CAMERA_VARIANT)


class RawImageAdapter(PrefixedAdapter):
    source_input = "bytes"
    prefix_unit = DECODE_UNIT
    prefix_phase = "encode"

    def __init__(self, inner: ModelAdapter, variant: str) -> None:
        if not any(p.name == "encode" and p.first == 0 for p in inner.phases(InputSpec())):
            raise ValueError(f"{inner.name}: takes no image (no encode phase at unit 0)")
        if variant not in IMAGE_VARIANTS:
            raise ValueError(f"image variant {variant!r} (known: {', '.join(IMAGE_VARIANTS)})")
        super().__init__(inner.model, f"{inner.name}+{variant}", inner.weights)
        self.inner = inner
        self.family = inner.family
        self.camera = variant == CAMERA_VARIANT
        self.image_format = "jpeg" if self.camera else variant
        self.image_size = int(inner.prepare_image(example_image(8)).shape[-1])   # what the encoder is fed

    def example_file(self, spec: InputSpec) -> bytes:
        """The file the profiler encodes requests from: a 12 MP photo for `+camera`, else the synthetic
        scene at the spec's (or the encoder's) size in this adapter's format."""
        if self.camera:
            return camera_photo_bytes()
        return encode_image(example_image(spec.image_size or self.image_size), self.image_format)

    def captured(self, spec: InputSpec) -> dict[str, object]:
        """The request input as captured, for the profile's `input.captured`."""
        data = self.example_file(spec)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
        out: dict[str, object] = {"format": self.image_format, "width": width, "height": height, "bytes": len(data)}
        if self.camera:
            out.update(quality=CAMERA_QUALITY, source=f"matplotlib sample {CAMERA_SOURCE}, upsampled")
        return out

    # -- execution -------------------------------------------------------------------------------
    def example_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        if phase != "encode":
            return self.inner.example_input(spec, phase)
        return bytes_tensor(self.example_file(spec)).expand(spec.batch, -1).contiguous()

    def probe_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        """The output shapes do not depend on the file: a small synthetic one, so a worker of a
        `+camera` model starts without making (or needing matplotlib for) the 12 MP photo."""
        if phase != "encode":
            return self.inner.probe_input(spec, phase)
        return bytes_tensor(encode_image(example_image(self.image_size), self.image_format))

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
        if first == 1 and phase == "encode" and x is not None and x.dtype == torch.uint8:
            x = normalise_pixels(x)          # the decode unit hands on uint8 pixels: a quarter of the bytes
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
