"""A captioner whose request input is the image file: a `vision.decode` unit turns PNG or JPEG bytes
into pixels; it is profiled like any unit, and split runs caption exactly as the unsplit model does on
the same bytes."""

from __future__ import annotations

import asyncio
import io

import pytest
import torch
from PIL import Image

from profiler.adapters.base import InputSpec
from profiler.build import build_profile
from profiler.captioner.data import fixed_examples
from profiler.captioner.scenes import render
from profiler.errors import InputError
from profiler.generate import greedy_generate
from profiler.images import bytes_tensor, decode_image_bytes, encode_image, image_to_pixel_values, normalise_pixels
from profiler.models import load_adapter, split_variant
from runtime.client import Client
from runtime.codec import Frame, decode_frame, encode_frame
from runtime.transport import GrpcTransport
from tests.runtime.conftest import TOKEN, running_workers, stage_plan

NEW = 8


@pytest.fixture(scope="module")
def raw() -> object:
    return load_adapter("tiny-captioner+png")


def scene_bytes(i: int, fmt: str = "png") -> bytes:
    return encode_image(render(fixed_examples("test", i + 1)[i].scene), fmt)


def test_the_variant_name_wraps_the_model_with_a_decode_unit(raw) -> None:  # noqa: ANN001
    plain = load_adapter("tiny-captioner")
    assert split_variant("tiny-captioner+png") == ("tiny-captioner", "png")
    assert split_variant("a+b") == ("a+b", None) and split_variant("tiny-captioner") == ("tiny-captioner", None)
    assert [u.name for u in raw.units()] == ["vision.decode"] + [u.name for u in plain.units()]
    assert raw.unit_modules(0) == [] and raw.source_input == "bytes" and raw.name == "tiny-captioner+png"
    enc = {p.name: p for p in raw.phases(InputSpec())}["encode"]
    assert (enc.first, enc.last, enc.input) == (0, 5, "source")
    assert [e.src for e in raw.edges()] == [e.src + 1 for e in plain.edges()]
    with pytest.raises(InputError, match="takes no image"):
        load_adapter("tiny-gpt2+png")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_decoding_the_bytes_equals_loading_the_file(raw, fmt: str, tmp_path) -> None:  # noqa: ANN001
    data = scene_bytes(0, fmt)
    path = tmp_path / f"scene.{fmt}"
    path.write_bytes(data)
    from_file = load_adapter("tiny-captioner").prepare_image(str(path))
    x = raw.prepare_image(str(path))
    assert x.dtype == torch.uint8 and x.shape == (1, len(data))
    pixels = raw.run(0, 0, x, phase="encode", position=0, state=raw.new_state())
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 3, 64, 64)   # a quarter of float32's bytes
    assert torch.equal(normalise_pixels(pixels), from_file)
    with Image.open(io.BytesIO(data)) as im:
        assert torch.equal(normalise_pixels(decode_image_bytes(x, 64)), image_to_pixel_values(im.convert("RGB"), 64))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_the_same_way_from_bytes_or_file(tmp_path) -> None:  # noqa: ANN001
    """A 12 MP-class JPEG: the decode unit and loading the file both decode it at 1/8 scale (not in
    full), and agree exactly; the unit after the decode normalises what it hands on."""
    big = render(fixed_examples("test", 1)[0].scene).resize((1600, 1200))
    data = encode_image(big, "jpeg")
    path = tmp_path / "big.jpeg"
    path.write_bytes(data)
    with Image.open(path) as im:
        full = image_to_pixel_values(im.convert("RGB"), 64)
    reduced = load_adapter("tiny-captioner").prepare_image(str(path))
    assert not torch.equal(reduced, full)            # the scaled decode is not the full decode ...
    assert float((reduced - full).abs().mean()) < 0.05   # ... but the same picture
    x = bytes_tensor(data)
    assert torch.equal(normalise_pixels(decode_image_bytes(x, 64)), reduced)
    raw = load_adapter("tiny-captioner+jpeg")
    state = raw.new_state()
    whole = raw.run(0, 1, x, phase="encode", position=0, state=state)
    pixels = raw.run(0, 0, x, phase="encode", position=0, state=raw.new_state())
    assert torch.equal(raw.run(1, 1, pixels, phase="encode", position=0, state=raw.new_state()), whole)


def test_bad_bytes_are_one_line_errors(raw) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match="not a readable PNG or JPEG"):
        decode_image_bytes(torch.tensor([[1, 2, 3]], dtype=torch.uint8), 64)
    with pytest.raises(InputError, match="expected uint8"):
        decode_image_bytes(torch.zeros(1, 3, 8, 8), 64)
    with pytest.raises(InputError, match="empty"):
        raw.prepare_image(b"")


def test_the_decode_unit_is_profiled_and_in_bytes_is_the_encoded_size(raw) -> None:  # noqa: ANN001
    profile = build_profile(raw, InputSpec(new_tokens=4), repeats=2, warmup=1)
    example = raw.example_input(InputSpec(), "encode")
    decode = profile.units[0]
    assert decode.name == "vision.decode" and decode.param_bytes == 0
    hw = profile.hardware_classes[0]
    assert decode.latency_s[hw]["encode"] > 0
    assert decode.out_bytes["encode"] == 3 * 64 * 64                  # uint8 pixels handed on
    assert decode.model_extra["host_code"] is True and "host_code" not in profile.units[1].model_extra
    encode = profile.phases[0]
    assert encode.in_bytes == example.numel() < 2000                   # the PNG, not 48 KiB of pixels
    assert profile.input["image_format"] == "png" and profile.input["image_size"] == 64
    assert profile.input["captured"] == {"format": "png", "width": 64, "height": 64, "bytes": example.numel()}
    # a profile file from before host_code (float32 pixels, a roofline estimate) is refused, by field
    from profiler.profile import parse_profile
    old = profile.model_dump(by_alias=True, exclude_none=True)
    del old["units"][0]["host_code"]
    with pytest.raises(InputError, match=r"old.json.*units\[0\]\.host_code: missing.*profile the model again"):
        parse_profile(old, "old.json")
    assert "prompt_tokens" not in profile.input


@pytest.mark.parametrize("assignment", [
    ["A"] + ["B"] * 10,                   # decoded on the source, pixels cross
    ["B"] + ["A"] * 10,                   # the bytes cross, decoded on arrival
    ["A", "B", "B", "C", "C", "C", "A", "B", "C", "A", "B"],
])
def test_split_runs_caption_exactly_as_the_unsplit_model_on_the_same_bytes(raw, assignment: list[str]) -> None:  # noqa: ANN001
    sources = [raw.prepare_image(scene_bytes(i)) for i in range(2)]
    expect = [greedy_generate(raw, s, new_tokens=NEW).tokens for s in sources]

    async def scenario() -> None:
        async with running_workers(raw) as (_, addresses):
            async with Client(stage_plan(raw, assignment, addresses), token=TOKEN) as client:
                for s, e in zip(sources, expect, strict=True):
                    got = await client.generate(s, max_new_tokens=NEW, eos=raw.eos_token_id)
                    assert torch.equal(got.tokens, e)

    asyncio.run(scenario())


def test_a_worker_refuses_pixels_where_the_file_belongs(raw) -> None:  # noqa: ANN001
    async def scenario() -> None:
        async with running_workers(raw, ("A",)) as (_, addresses):
            sp = stage_plan(raw, ["A"] * 11, addresses)
            t = GrpcTransport(TOKEN)
            try:
                await t.send(addresses["A"], encode_frame(Frame("plan", meta={"plan": sp.to_dict()})))
                await t.send(addresses["A"], encode_frame(Frame("open", "r", 1, meta={"reply": "127.0.0.1:1"})))
                (reply,) = await t.send(addresses["A"], encode_frame(Frame("data", "r", 1, "encode", 0, 0, 0,
                                                                            torch.zeros(1, 3, 64, 64))))
                err = decode_frame(reply)
                assert err.kind == "error" and err.meta["code"] == "wrong-shape"
                assert "uint8 bytes as captured" in err.meta["error"] and "image file" in err.meta["error"]
                # where the decode unit's uint8 pixels go, float pixels are refused too
                sp = stage_plan(raw, ["B"] + ["A"] * 10, {**addresses, "B": "127.0.0.1:1"}, version=2)
                await t.send(addresses["A"], encode_frame(Frame("plan", meta={"plan": sp.to_dict()})))
                await t.send(addresses["A"], encode_frame(Frame("open", "s", sp.version,
                                                                meta={"reply": "127.0.0.1:1"})))
                (reply,) = await t.send(addresses["A"], encode_frame(Frame("data", "s", sp.version, "encode", 1, 0, 0,
                                                                            torch.zeros(1, 3, 64, 64))))
                err = decode_frame(reply)
                assert err.kind == "error" and err.meta["code"] == "wrong-shape", err.meta
                assert "expected uint8 pixels [3, 64, 64]" in err.meta["error"]
            finally:
                await t.close()

    asyncio.run(scenario())


def test_the_daemon_api_passes_the_file_as_sent(raw) -> None:  # noqa: ANN001
    from fastapi import HTTPException

    from orchestrator.daemon.api import _pixels
    data = scene_bytes(1)
    x = _pixels(raw, data)
    assert x.dtype == torch.uint8 and x.shape == (1, len(data)) and bytes(x.numpy().tobytes()) == data
    assert _pixels(load_adapter("tiny-captioner"), data).shape == (1, 3, 64, 64)
    with pytest.raises(HTTPException):
        _pixels(raw, b"not an image")


def test_a_large_jpeg_gives_the_same_pixels_by_every_path(tmp_path) -> None:  # noqa: ANN001
    """The daemon's upload, `aiflow caption FILE` (a path) and the decode unit (the bytes) all decode a
    large JPEG at the same reduced scale, so the model sees the same pixels whichever way it came."""
    from orchestrator.daemon.api import _pixels

    big = render(fixed_examples("test", 2)[1].scene).resize((1200, 900))
    data = encode_image(big, "jpeg")
    path = tmp_path / "big.jpeg"
    path.write_bytes(data)
    plain = load_adapter("tiny-captioner")
    from_path = plain.prepare_image(str(path))
    assert torch.equal(_pixels(plain, data), from_path)
    assert torch.equal(normalise_pixels(decode_image_bytes(bytes_tensor(data), 64)), from_path)


def test_orientation_and_oversized_files(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A photo tagged 'rotated' is turned upright by every path; a file over Pillow's pixel limit is a
    one-line InputError, not a traceback."""
    im = render(fixed_examples("test", 1)[0].scene).resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6                          # stored sideways: turn 90 degrees clockwise to view
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, exif=exif)
    tagged = buf.getvalue()
    with Image.open(io.BytesIO(tagged)) as stored:
        upright = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert upright.size == (64, 96)
    plain = load_adapter("tiny-captioner")
    assert torch.equal(plain.prepare_image(tagged), image_to_pixel_values(upright, 64))
    assert torch.equal(normalise_pixels(decode_image_bytes(bytes_tensor(tagged), 64)),
                       image_to_pixel_values(upright, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)    # 96 x 64 is over twice that: refused
    with pytest.raises(InputError, match="not a readable"):
        decode_image_bytes(bytes_tensor(tagged), 64)
    path = tmp_path / "tagged.jpeg"
    path.write_bytes(tagged)
    with pytest.raises(InputError, match="tagged.jpeg: not a readable image"):
        plain.prepare_image(str(path))


def test_the_camera_variant_profiles_a_12_mp_jpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    """`+camera`: the profiled input is a 3024 x 4032 JPEG from a real photograph; the profile's encode
    in_bytes is that file, larger than the uint8 pixels the decode unit hands on."""
    from profiler.images import camera_photo_bytes

    cam = load_adapter("tiny-captioner+camera")
    assert cam.name == "tiny-captioner+camera" and cam.image_format == "jpeg"
    assert split_variant("tiny-captioner+camera") == ("tiny-captioner", "camera")
    data = camera_photo_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.size) == ("JPEG", (3024, 4032))
    profile = build_profile(cam, InputSpec(new_tokens=2), repeats=1, warmup=1)
    assert profile.phases[0].in_bytes == len(data) > 500_000 > 3 * 64 * 64 == profile.units[0].out_bytes["encode"]
    assert profile.input["captured"] | {"source": ""} == {"format": "jpeg", "width": 3024, "height": 4032,
                                                        "bytes": len(data), "quality": 90, "source": ""}
    # a worker learns the output shapes without the photo (or matplotlib, which makes it)
    from profiler.adapters import raw_image
    from runtime.validate import probe_shapes

    def no_photo() -> bytes:
        raise InputError("the camera example photo needs matplotlib")

    monkeypatch.setattr(raw_image, "camera_photo_bytes", no_photo)
    assert probe_shapes(cam)["encode"][0] == ((1, 3, 64, 64), True)
