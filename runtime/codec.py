"""Tensor frames: what travels between a client and the workers.

A frame is one message: a small typed header and an optional tensor carried as raw bytes.

    magic "AFR1" | u32 little-endian header length | header (UTF-8 JSON object) | payload bytes

The header names the frame's kind, request id, plan version, phase, the unit the receiver starts
at, the token position and step, and the tensor's dtype and shape (`dtype` "none" means no
tensor). JSON and struct only: nothing on the wire is ever unpickled. A frame whose header and
payload disagree (payload length != prod(shape) * itemsize), or whose header is malformed, is
rejected with a FrameError naming the problem.

Optional lossy compression per hop (off by default): "fp16" sends a float tensor as float16,
"int8" as int8 with one per-tensor scale (symmetric, round to nearest). The receiver restores the
original dtype. Integer tensors (token ids) are never compressed.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

MAGIC = b"AFR1"
_LEN = struct.Struct("<I")
MAX_HEADER_BYTES = 4 << 20          # plan frames carry link traces; activations need ~200 bytes
MAX_DIMS = 8

Compression = Literal["none", "fp16", "int8"]
COMPRESSIONS: tuple[str, ...] = ("none", "fp16", "int8")

# Every kind a worker or client understands. data: an activation or token ids for a range of units;
# edge: a value made once per request (the encoder output) for the cross-attention units; open /
# close / cancel: a request's life at one worker; plan: a stage plan to apply; result / error:
# what reaches the client; stats: a worker's measurements of one request; ack: "accepted".
# Control frames of a running system (runtime.worker): forget: drop a plan version; emulate: the
# emulated network under the workers; measure: probe a link to a neighbour and/or time one unit;
# probe: the padding a `measure` sends (acked once it has arrived); report: the link and compute
# samples a worker collected since the last report; profile: measure every unit on this worker's own
# hardware (a node whose hardware class the controller's profile lacks).
KINDS: tuple[str, ...] = ("data", "edge", "open", "close", "cancel", "plan", "result", "error", "stats", "ack",
                          "forget", "emulate", "measure", "probe", "report", "profile")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
FLOAT_NAMES = ("float32", "float16", "bfloat16", "float64")


class FrameError(ValueError):
    """A frame that cannot be decoded or is inconsistent; the message says what is wrong."""


@dataclass
class Frame:
    kind: str
    request_id: str = ""
    plan_version: int = 0
    phase: str = ""
    unit: int = -1                  # the first unit the receiver runs (data frames)
    position: int = 0               # tokens already cached before this pass
    step: int = 0                   # 0 for prefill/encode, k for the k-th decode step
    tensor: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    compression: str = "none"       # how the tensor travelled (set by decode_frame)
    wire_bytes: int = 0             # size of the encoded frame (set by decode_frame)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def compress(t: torch.Tensor, how: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """The tensor to put on the wire and the header fields that undo the compression."""
    if how not in COMPRESSIONS:
        raise FrameError(f"compression: unknown {how!r} (known: {', '.join(COMPRESSIONS)})")
    if how == "none" or not t.is_floating_point():
        return t, {}
    orig = DTYPE_NAMES[t.dtype]
    if how == "fp16":
        return t.to(torch.float16), {"comp": "fp16", "orig": orig}
    amax = float(t.detach().abs().max()) if t.numel() else 0.0
    scale = amax / 127.0 if amax > 0 and math.isfinite(amax) else 1.0
    q = torch.clamp(torch.round(t.detach().float() / scale), -127, 127).to(torch.int8)
    return q, {"comp": "int8", "orig": orig, "scale": scale}


def encode_frame(frame: Frame, compression: str = "none") -> bytes:
    """Frame -> bytes. `compression` applies to a floating-point tensor only."""
    if frame.kind not in KINDS:
        raise FrameError(f"kind: unknown {frame.kind!r}")
    header: dict[str, Any] = {"kind": frame.kind, "rid": frame.request_id, "plan": frame.plan_version,
                              "phase": frame.phase, "unit": frame.unit, "pos": frame.position,
                              "step": frame.step}
    payload = b""
    if frame.tensor is None:
        header["dtype"], header["shape"] = "none", []
    else:
        wire, extra = compress(frame.tensor, compression)
        if wire.dtype not in DTYPE_NAMES:
            raise FrameError(f"dtype: {wire.dtype} cannot travel in a frame")
        header["dtype"], header["shape"] = DTYPE_NAMES[wire.dtype], list(wire.shape)
        header.update(extra)
        payload = _tensor_bytes(wire)
    if frame.meta:
        header["meta"] = frame.meta
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise FrameError(f"header: {len(raw)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    return b"".join((MAGIC, _LEN.pack(len(raw)), raw, payload))


def _int(h: dict[str, Any], key: str, default: int = 0, minimum: int | None = None) -> int:
    v = h.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise FrameError(f"header.{key}: expected an integer, got {type(v).__name__}")
    if minimum is not None and v < minimum:
        raise FrameError(f"header.{key}: {v} is below {minimum}")
    return v


def _str(h: dict[str, Any], key: str, default: str = "") -> str:
    v = h.get(key, default)
    if not isinstance(v, str):
        raise FrameError(f"header.{key}: expected a string, got {type(v).__name__}")
    return v


def _no_constant(name: str) -> Any:
    """JSON has no NaN or Infinity; a header that uses them is refused (and could not be re-encoded)."""
    raise FrameError(f"header: {name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FrameError(f"header: {text[:20]} is out of a float's range")
    return value


def read_header(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
    """The header object and the offset where the payload starts."""
    mv = memoryview(data)
    if len(mv) < len(MAGIC) + _LEN.size or bytes(mv[:4]) != MAGIC:
        raise FrameError("not an aiflow frame (bad magic)")
    (hlen,) = _LEN.unpack_from(mv, 4)
    start = len(MAGIC) + _LEN.size
    if hlen > MAX_HEADER_BYTES or start + hlen > len(mv):
        raise FrameError(f"header length {hlen} does not fit in a frame of {len(mv)} bytes")
    try:
        header = json.loads(bytes(mv[start:start + hlen]).decode("utf-8"), parse_constant=_no_constant,
                            parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"header: not UTF-8 JSON: {exc}") from None
    except FrameError:
        raise
    except RecursionError:
        raise FrameError("header: JSON nested too deeply") from None
    except ValueError as exc:          # an integer of more digits than Python converts (4300)
        raise FrameError(f"header: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header: expected a JSON object")
    return header, start + hlen


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    """bytes -> Frame, checking every header field and that the payload matches dtype and shape."""
    header, offset = read_header(data)
    kind = _str(header, "kind")
    if kind not in KINDS:
        raise FrameError(f"header.kind: unknown {kind!r}")
    dtype_name = _str(header, "dtype", "none")
    shape = header.get("shape", [])
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or any(
            not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise FrameError(f"header.shape: expected at most {MAX_DIMS} non-negative integers, got {shape!r}")
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise FrameError("header.meta: expected an object")
    payload_len = len(data) - offset
    tensor: torch.Tensor | None = None
    comp = _str(header, "comp", "none")
    if dtype_name == "none":
        if shape or payload_len:
            raise FrameError(f"frame without a tensor carries shape {shape} and {payload_len} payload bytes")
    else:
        dtype = DTYPES.get(dtype_name)
        if dtype is None:
            raise FrameError(f"header.dtype: unknown {dtype_name!r} (known: {', '.join(DTYPES)})")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if math.prod(max(d, 1) for d in shape) * itemsize >= 1 << 62:
            # even with a zero dimension (no payload) the strides of such a tensor overflow
            raise FrameError(f"header.shape: {shape} is larger than any tensor can be")
        expect = math.prod(shape) * itemsize
        if expect != payload_len:
            raise FrameError(f"payload is {payload_len} bytes but header says {dtype_name}{shape} = {expect} bytes")
        buf = bytearray(memoryview(data)[offset:])     # a private, writable copy the tensor owns
        flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        tensor = flat.reshape(shape)
        tensor = _decompress(tensor, header, comp)
    return Frame(kind=kind, request_id=_str(header, "rid"), plan_version=_int(header, "plan", 0, 0),
                 phase=_str(header, "phase"), unit=_int(header, "unit", -1, -1), position=_int(header, "pos", 0, 0),
                 step=_int(header, "step", 0, 0), tensor=tensor, meta=meta, compression=comp,
                 wire_bytes=len(data))


def _decompress(t: torch.Tensor, header: dict[str, Any], comp: str) -> torch.Tensor:
    if comp == "none":
        return t
    orig = _str(header, "orig")
    if orig not in FLOAT_NAMES:
        raise FrameError(f"header.orig: {orig!r} is not a floating-point dtype")
    target = DTYPES[orig]
    if comp == "fp16":
        if t.dtype != torch.float16:
            raise FrameError(f"fp16 compression but the payload dtype is {DTYPE_NAMES[t.dtype]}")
        return t.to(target)
    if comp == "int8":
        scale = header.get("scale")
        if t.dtype != torch.int8 or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise FrameError("int8 compression needs an int8 payload and a positive finite scale")
        return (t.float() * float(scale)).to(target)
    raise FrameError(f"header.comp: unknown {comp!r} (known: {', '.join(COMPRESSIONS)})")


def with_meta(data: bytes, **meta: Any) -> bytes:
    """The same frame with `meta` fields added to its header; the payload is not re-encoded."""
    header, offset = read_header(data)
    header["meta"] = {**header.get("meta", {}), **meta}
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"".join((MAGIC, _LEN.pack(len(raw)), raw, memoryview(data)[offset:]))


# -- bundles: several frames in one RPC reply --------------------------------------------------------
def pack_frames(frames: list[bytes]) -> bytes:
    """u32 count, then for each frame u32 length + bytes."""
    parts = [_LEN.pack(len(frames))]
    for f in frames:
        parts.append(_LEN.pack(len(f)))
        parts.append(f)
    return b"".join(parts)


def unpack_frames(data: bytes) -> list[bytes]:
    mv = memoryview(data)
    if len(mv) < _LEN.size:
        raise FrameError("reply bundle: too short")
    (count,) = _LEN.unpack_from(mv, 0)
    off, out = _LEN.size, []
    for _ in range(count):
        if off + _LEN.size > len(mv):
            raise FrameError("reply bundle: truncated")
        (n,) = _LEN.unpack_from(mv, off)
        off += _LEN.size
        if off + n > len(mv):
            raise FrameError("reply bundle: truncated")
        out.append(bytes(mv[off:off + n]))
        off += n
    if off != len(mv):
        raise FrameError("reply bundle: trailing bytes")
    return out


def error_frame(message: str, request_id: str = "", code: str = "bad-request") -> bytes:
    return encode_frame(Frame("error", request_id=request_id, meta={"error": message, "code": code}))


def ack_frame(request_id: str = "", **meta: Any) -> bytes:
    return encode_frame(Frame("ack", request_id=request_id, meta=meta))
