"""Turning an image file or array into a vision model's input. Training and inference share it, so a
caption never depends on which path loaded the picture."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from profiler.errors import InputError

# Pixels are scaled to [-1, 1]: mean 0.5 and std 0.5 per channel, as ViT configs default to.
MEAN = 0.5
STD = 0.5


# What Pillow raises for a file it cannot or will not decode: not an image, truncated or corrupt
# (OSError), an oversized text chunk (ValueError), more pixels than Image.MAX_IMAGE_PIXELS allows.
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def load_image(path: str | Path | bytes, size: int | None = None) -> Image.Image:
    """Open a PNG/JPEG (a path or the file's bytes; any size, any mode) as RGB, upright as its EXIF
    orientation says; a bad file is an InputError naming it. With `size`, a large JPEG is decoded at
    a reduced scale for an input of that size (`open_for_size`), as a decode unit does with the same
    file's bytes."""
    where = "image bytes" if isinstance(path, bytes) else str(path)
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else Path(path)) as im:
            return open_for_size(im, size) if size else upright(im).convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{where}: no such image file") from None
    except UNREADABLE as exc:
        raise InputError(f"{where}: not a readable image: {exc}") from None


def image_to_pixels_u8(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """A [1, 3, size, size] uint8 tensor: resized (bilinear), RGB; a quarter of the float pixels' bytes,
    so it is what a decode unit hands on."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8)).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()


def normalise_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [B, 3, H, W] -> float32 in [-1, 1], the encoder's input."""
    return ((x.float() / 255.0 - MEAN) / STD).contiguous()


def image_to_pixel_values(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """A [1, 3, size, size] float32 tensor: resized (bilinear), RGB, normalised to [-1, 1]."""
    return normalise_pixels(image_to_pixels_u8(image, size))


def open_for_size(im: Image.Image, size: int) -> Image.Image:
    """An opened image as RGB and upright, a JPEG decoded at the smallest DCT scale (1/2, 1/4, 1/8)
    that still covers `size` on both sides: a 12 MP camera file decodes about 9x faster, as a phone's
    or any fast image loader's scaled decode does. Lossless formats and small files decode in full."""
    if isinstance(im, JpegImagePlugin.JpegImageFile):      # MPO, a phone's multi-picture JPEG, too
        im.draft("RGB", (size, size))
    return upright(im).convert("RGB")


def upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (phones store photos sideways and tag them);
    the image itself when it has no such tag."""
    return ImageOps.exif_transpose(im) if im.getexif().get(ExifTags.Base.Orientation, 1) != 1 else im


# -- image files as bytes (a request's input as captured) --------------------------------------------
IMAGE_FORMATS = ("png", "jpeg")


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """The image as a PNG or JPEG file's bytes (JPEG at quality 90, as a camera would write it)."""
    if fmt not in IMAGE_FORMATS:
        raise InputError(f"image format: {fmt!r} (known: {', '.join(IMAGE_FORMATS)})")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
    return buf.getvalue()


def bytes_tensor(data: bytes) -> torch.Tensor:
    """A file's bytes as a [1, N] uint8 tensor: how an encoded image travels in a frame (never pickled)."""
    if not data:
        raise InputError("image bytes: empty")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(1, -1)


def decode_image_bytes(data: torch.Tensor, size: int) -> torch.Tensor:
    """[B, N] uint8 rows, each a PNG or JPEG file -> [B, 3, size, size] uint8 pixels; normalised
    (`normalise_pixels`) they equal what image_to_pixel_values(load_image(file, size)) makes from the
    same file on disk, so a caption is the same either way."""
    if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] == 0:
        raise InputError(f"image bytes: expected uint8 [batch, bytes], got {str(data.dtype)[6:]}{list(data.shape)}")
    rows = []
    for row in data.cpu():
        try:
            with Image.open(io.BytesIO(row.numpy().tobytes())) as im:
                rows.append(image_to_pixels_u8(open_for_size(im, size), size))
        except UNREADABLE as exc:
            raise InputError(f"image bytes: not a readable PNG or JPEG file: {exc}") from None
    return torch.cat(rows)


def example_image(size: int) -> Image.Image:
    """A deterministic picture to profile with: a gradient sky, a ground and two shapes (compresses like
    a simple photograph, not like noise)."""
    from PIL import ImageDraw

    y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    sky = (np.array([90, 140, 220], np.float32) * (1 - y) + np.array([200, 220, 250], np.float32) * y)
    arr = np.broadcast_to(sky, (size, size, 3)).astype(np.uint8).copy()
    arr[size * 2 // 3:] = (70, 130, 60)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    s = size
    draw.ellipse((s // 8, s // 2, s // 8 + s // 4, s // 2 + s // 4), fill=(220, 40, 40))
    draw.rectangle((s // 2, s // 3, s // 2 + s // 3, s * 5 // 6), fill=(240, 200, 30))
    return im


# -- a camera's file ---------------------------------------------------------------------------------
CAMERA_SIZE = (3024, 4032)        # width x height of a 12 MP phone photo, held upright (3:4)
CAMERA_QUALITY = 90
CAMERA_SOURCE = "grace_hopper.jpg"  # a real photograph (512 x 600) that matplotlib ships as sample data


@lru_cache(maxsize=1)
def camera_photo_bytes() -> bytes:
    """A 12 MP JPEG as a phone camera writes one: a real photograph (matplotlib's sample photo, cropped
    to 3:4) resized to 3024 x 4032 and saved at quality 90. Upsampling adds no detail, so this file is
    SMALLER than a camera's own file of such a scene (phones write 2-5 MB at 12 MP): an input that
    makes shipping the file look cheaper than it is. Needs matplotlib (the `bench` or `dev` extra)."""
    try:
        from matplotlib.cbook import get_sample_data
    except ImportError:
        raise InputError("the camera example photo needs matplotlib: pip install 'aiflow[bench]'") from None
    with Image.open(get_sample_data(CAMERA_SOURCE, asfileobj=False)) as im:
        photo = im.convert("RGB")
    w, h = photo.size
    crop_w = min(w, h * CAMERA_SIZE[0] // CAMERA_SIZE[1])
    left = (w - crop_w) // 2
    photo = photo.crop((left, 0, left + crop_w, h)).resize(CAMERA_SIZE, Image.LANCZOS)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=CAMERA_QUALITY)
    return buf.getvalue()
