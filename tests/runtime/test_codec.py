"""Tensor frames: exact round trips, rejected inconsistencies, measured compression error."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.codec import (
    MAGIC,
    Frame,
    FrameError,
    decode_frame,
    encode_frame,
    pack_frames,
    unpack_frames,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool]


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       seed=st.integers(0, 1000), pos=st.integers(0, 10_000), step=st.integers(0, 100))
def test_round_trip_is_exact(dtype: torch.dtype, shape: list[int], seed: int, pos: int, step: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=gen) * 100).to(dtype)
    f = Frame("data", "r1", 3, "decode", 7, pos, step, t, meta={"x": [1, 2]})
    g = decode_frame(encode_frame(f))
    assert (g.kind, g.request_id, g.plan_version, g.phase, g.unit, g.position, g.step, g.meta) == \
        ("data", "r1", 3, "decode", 7, pos, step, {"x": [1, 2]})
    assert g.tensor.dtype == dtype and g.tensor.shape == t.shape
    assert torch.equal(g.tensor, t)


def test_non_contiguous_and_empty_tensors() -> None:
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()
    assert torch.equal(decode_frame(encode_frame(Frame("data", tensor=t))).tensor, t)
    assert decode_frame(encode_frame(Frame("ack"))).tensor is None


def raw(header: dict, payload: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(h)) + h + payload


@pytest.mark.parametrize("data, message", [
    (raw({"kind": "data", "dtype": "float32", "shape": [2, 3]}, b"\0" * 20), "payload is 20 bytes"),
    (raw({"kind": "data", "dtype": "float32", "shape": [2, 3]}, b"\0" * 28), "payload is 28 bytes"),
    (raw({"kind": "data", "dtype": "none", "shape": []}, b"\0"), "without a tensor"),
    (raw({"kind": "data", "dtype": "complex64", "shape": [1]}, b"\0" * 8), "unknown 'complex64'"),
    (raw({"kind": "data", "dtype": "float32", "shape": [-1]}), "header.shape"),
    (raw({"kind": "data", "dtype": "float32", "shape": [1] * 9}, b"\0" * 4), "header.shape"),
    (raw({"kind": "weird"}), "header.kind"),
    (raw({"kind": "data", "pos": "3"}), "header.pos"),
    (raw({"kind": "data", "pos": -2}), "header.pos"),
    (raw({"kind": "data", "meta": [1]}), "header.meta"),
    (raw({"kind": "data", "dtype": "int8", "shape": [1], "comp": "int8", "orig": "float32", "scale": -1},
         b"\0"), "scale"),
    (raw({"kind": "data", "dtype": "float32", "shape": [1], "comp": "zip", "orig": "float32"}, b"\0" * 4),
     "header.comp"),
    (MAGIC + struct.pack("<I", 1000) + b"{}", "does not fit"),
    (MAGIC + struct.pack("<I", 3) + b"abc", "not UTF-8 JSON"),
    (MAGIC + struct.pack("<I", 2) + b"[]", "JSON object"),
    (b"XXXX" + struct.pack("<I", 2) + b"{}", "bad magic"),
    (b"AF", "bad magic"),
])
def test_inconsistent_frames_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(data)


def test_compression_is_lossy_but_bounded_and_smaller() -> None:
    t = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    plain = encode_frame(Frame("data", tensor=t))
    for how, ratio, bound in (("fp16", 0.5, 1e-3), ("int8", 0.25, 0.02)):
        data = encode_frame(Frame("data", tensor=t), compression=how)
        back = decode_frame(data)
        assert back.compression == how and back.tensor.dtype == torch.float32
        assert len(data) < ratio * len(plain) + 200
        err = (back.tensor - t).abs().max().item()
        assert 0 < err <= bound * t.abs().max().item()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(decode_frame(encode_frame(Frame("data", tensor=ids), compression="int8")).tensor, ids)
    zeros = torch.zeros(3)
    assert torch.equal(decode_frame(encode_frame(Frame("data", tensor=zeros), compression="int8")).tensor, zeros)
    with pytest.raises(FrameError):
        encode_frame(Frame("data", tensor=t), compression="zip")


def test_bundles() -> None:
    frames = [b"", b"abc", encode_frame(Frame("ack", "r"))]
    assert unpack_frames(pack_frames(frames)) == frames
    for bad in (b"", pack_frames(frames)[:-1], pack_frames(frames) + b"x"):
        with pytest.raises(FrameError):
            unpack_frames(bad)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_frame_error(data: bytes) -> None:
    """Whatever arrives, decoding gives a Frame or a FrameError: nothing else escapes."""
    try:
        decode_frame(data)
    except FrameError:
        pass
    try:
        decode_frame(MAGIC + struct.pack("<I", len(data)) + data)
    except FrameError:
        pass


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 400), flip=st.integers(0, 400), value=st.integers(0, 255),
       header=st.dictionaries(st.sampled_from(["kind", "rid", "plan", "phase", "unit", "pos", "step", "dtype",
                                               "shape", "comp", "orig", "scale", "meta"]),
                              st.one_of(st.none(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                                        st.text(max_size=8), st.lists(st.integers(-3, 2**31), max_size=9)),
                              max_size=6))
def test_mutated_frames_decode_or_raise_frame_error(cut: int, flip: int, value: int, header: dict) -> None:
    """Valid frames truncated, with one byte changed, or with hostile header fields (lying lengths, huge
    shapes, wrong dtypes, NaN scales): a Frame or a FrameError, never another exception or a huge allocation."""
    valid = encode_frame(Frame("data", "r", 1, "encode", 0, tensor=torch.randn(2, 3)))
    at = flip % len(valid)
    hostile = raw({"kind": "data", **header}, b"\0" * 24)
    for data in (valid[:cut], valid[:at] + bytes([value]) + valid[at + 1:], hostile):
        try:
            f = decode_frame(data)
        except FrameError:
            continue
        if f.tensor is not None:      # at most the payload, widened by decompression (int8 -> float64: 8x)
            assert f.tensor.numel() * f.tensor.element_size() <= 8 * len(data)


_JSON_ATOMS = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000, b"-0", b"null", b"true",
                               b'"\\ud800"', b'"x"', b"[]", b"{}"])


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(0, 5000), atom=_JSON_ATOMS, key=st.sampled_from(["plan", "unit", "shape", "meta", "scale",
                                                                           "dtype", "kind"]),
       nest=st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
def test_hostile_json_in_headers_is_a_frame_error(depth: int, atom: bytes, key: str, nest: tuple[bytes, bytes]) -> None:
    """Headers that JSON itself makes dangerous: nesting thousands deep (Python's recursion limit),
    integers of thousands of digits (Python refuses to convert them), NaN and Infinity (no JSON value, and a
    header with them cannot be re-encoded): a FrameError naming the header, never another exception."""
    value = nest[0] * depth + atom + nest[1] * depth
    header = b'{"kind":"data","' + key.encode() + b'":' + value + b"}"
    data = MAGIC + struct.pack("<I", len(header)) + header
    try:
        decode_frame(data)
    except FrameError as exc:
        assert str(exc)
    if atom in (b"NaN", b"Infinity", b"-Infinity", b"1e999") or (atom == b"9" * 5000) or depth >= 2000:
        with pytest.raises(FrameError, match="header"):
            decode_frame(data)


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(0, 2**62), min_size=1, max_size=8),
       dtype=st.sampled_from(["float32", "float64", "int64", "bool", "complex64", "object", "float8", ""]),
       payload=st.binary(max_size=64))
def test_huge_shapes_and_wrong_dtypes_allocate_nothing(shape: list[int], dtype: str, payload: bytes) -> None:
    """A header announcing an exabyte tensor, or a dtype that does not exist, is refused from the header and
    the payload length alone: the only tensor ever built is one the payload really holds."""
    data = raw({"kind": "data", "dtype": dtype, "shape": shape}, payload)
    try:
        f = decode_frame(data)
    except FrameError:
        return
    assert f.tensor is not None and f.tensor.numel() * f.tensor.element_size() == len(payload)


def test_the_fuzz_bench_checks_its_seeds_and_catches_a_broken_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench.fuzz_frames' contract check (run by atheris there, not here): every seed passes, truncations
    are FrameErrors, and a decoder that lets another exception out is caught."""
    from bench import fuzz_frames

    for s in fuzz_frames.seeds():
        fuzz_frames.check(s)
        fuzz_frames.check(s[: len(s) // 2])

    def broken(data: object) -> Frame:
        raise KeyError("shape")

    monkeypatch.setattr("runtime.codec.decode_frame", broken)
    with pytest.raises(KeyError):
        fuzz_frames.check(fuzz_frames.seeds()[0])
