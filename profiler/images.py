"""Turning an image file or array into a vision model's input. Training and inference share it, so a
caption never depends on which path loaded the picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from profiler.errors import InputError

# Pixels are scaled to [-1, 1]: mean 0.5 and std 0.5 per channel, as ViT configs default to.
MEAN = 0.5
STD = 0.5


def load_image(path: str | Path) -> Image.Image:
    """Open a PNG/JPEG (any size, any mode) as RGB; a bad file is an InputError naming it."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{p}: no such image file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{p}: not a readable image: {exc}") from None


def image_to_pixel_values(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """A [1, 3, size, size] float32 tensor: resized (bilinear), RGB, normalised to [-1, 1]."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8)).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
    return ((x - MEAN) / STD).contiguous()
