"""Captioning image files with a trained captioner, unsplit and greedy.

The model is run through the project's adapter (profiler.models.load_adapter + profiler.generate) when
that layer is installed, so the CLI exercises the same unit-by-unit path the workers use; otherwise it
falls back to the Hugging Face model with this package's greedy loop. Both decode greedily and give the
same tokens (tests/profiler/test_captioner.py checks it when the adapter is present).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, VisionEncoderDecoderModel

from profiler.captioner.model import MAX_NEW_TOKENS, caption_pixels
from profiler.captioner.scenes import IMAGE_SIZE
from profiler.errors import InputError
from profiler.images import image_to_pixel_values, load_image

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
DEFAULT_MODEL = "tiny-captioner"


def model_folder(name_or_folder: str) -> Path:
    """A built-in captioner name or a folder holding config.json, model.safetensors and tokenizer files
    (a "+png" / "+jpeg" variant captions with its model: decoding the file is the same either way)."""
    from profiler.models import split_variant

    name_or_folder, _ = split_variant(name_or_folder)
    builtin = BUILTIN_DIR / name_or_folder
    folder = builtin if "/" not in name_or_folder and builtin.is_dir() else Path(name_or_folder).expanduser()
    if not (folder / "config.json").is_file():
        raise InputError(f"{name_or_folder}: not a captioner (no config.json in {folder})")
    if not (folder / "model.safetensors").is_file():
        raise InputError(f"{name_or_folder}: no trained weights (model.safetensors missing in {folder})")
    return folder


def load_pixels(paths: Sequence[str | Path]) -> torch.Tensor:
    """The images as one [N, 3, 64, 64] batch, with the shared preprocessing training used."""
    if not paths:
        raise InputError("IMAGE: give at least one image file")
    return torch.cat([image_to_pixel_values(load_image(p, IMAGE_SIZE), IMAGE_SIZE) for p in paths])


def _adapter_captions(name_or_folder: str, pixels: torch.Tensor) -> list[str] | None:
    try:
        from profiler.generate import greedy_generate
        from profiler.models import load_adapter
    except ImportError:
        return None
    adapter = load_adapter(name_or_folder)
    tokens = greedy_generate(adapter, pixels, new_tokens=MAX_NEW_TOKENS).tokens.tolist()
    eos = adapter.eos_token_id
    return [adapter.decode_tokens(row[: row.index(eos)] if eos in row else row) for row in tokens]


def hf_captions(folder: Path, pixels: torch.Tensor) -> list[str]:
    """Greedy captions straight from the Hugging Face model (no adapter)."""
    model = VisionEncoderDecoderModel.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return caption_pixels(model, tokenizer, pixels)


def caption_files(paths: Sequence[str | Path], model: str = DEFAULT_MODEL, *, use_adapter: bool = True) -> list[str]:
    """One greedy caption per image file (PNG/JPEG of any size), from the unsplit model."""
    pixels = load_pixels(paths)  # images first: a bad path is reported before any model is loaded
    folder = model_folder(model)
    with torch.no_grad():
        captions = _adapter_captions(str(folder), pixels) if use_adapter else None
        return captions if captions is not None else hf_captions(folder, pixels)
