"""The Profile: what every unit of a model costs, in the `aiflow.profile/v1` format.

The format is the contract in docs/profile-format.md (from the planning model): latencies are seconds
for ONE pass of a unit in a phase on a hardware class, bytes are bytes, FLOPs count a multiply-add
as two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from profiler.fileio import dump_json, load_document, parse_document

PROFILE_FORMAT = "aiflow.profile/v1"
# The first units of the raw-input adapters (profiler.adapters.raw_image, raw_text): plain CPU code,
# marked host_code by the profiler since the decode unit hands on uint8 pixels.
DECODE_UNIT = "vision.decode"
TOKENIZE_UNIT = "text.tokenize"

PhaseInput = Literal["source", "none", "loop"]
EntrySource = Literal["measured", "estimated", "given"]


class _Frozen(BaseModel):
    # Extra fields are kept: the formats may gain fields, and a round trip must not drop them.
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class Unit(_Frozen):
    name: str = Field(min_length=1)
    param_bytes: NonNegativeInt
    mem_bytes: NonNegativeInt
    flops: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    out_bytes: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    latency_s: dict[str, dict[str, NonNegativeFloat]] = Field(default_factory=dict)
    # Per hardware class: whether its latencies were measured there or estimated (roofline).
    source: dict[str, EntrySource] = Field(default_factory=dict)
    # Per hardware class and phase: relative spread (p90 - p10) / median of the timed runs.
    spread: dict[str, dict[str, NonNegativeFloat]] = Field(default_factory=dict)

    @property
    def is_host_code(self) -> bool:
        """Plain CPU code (the extra field `host_code`: decoding an image file, tokenizing), not tensor
        kernels: estimated by host speed, and its integer output is never compressed."""
        return bool((self.model_extra or {}).get("host_code"))

    @model_validator(mode="after")
    def _mem_covers_params(self) -> Unit:
        if self.mem_bytes < self.param_bytes:
            raise ValueError(f"mem_bytes ({self.mem_bytes}) is smaller than param_bytes ({self.param_bytes})")
        return self


class Phase(_Frozen):
    name: str = Field(min_length=1)
    first: NonNegativeInt
    last: NonNegativeInt
    repeat: NonNegativeInt = 1
    input: PhaseInput = "none"
    in_bytes: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> Phase:
        if self.last < self.first:
            raise ValueError(f"last ({self.last}) is before first ({self.first})")
        return self


class Edge(_Frozen):
    from_: NonNegativeInt = Field(alias="from")
    to: list[NonNegativeInt] = Field(min_length=1)
    bytes: NonNegativeFloat


class CodecCost(_Frozen):
    """What compressing one hop costs, per byte of the uncompressed (float32) activation."""

    enc_s_per_byte: NonNegativeFloat = 0.0     # on the sender
    dec_s_per_byte: NonNegativeFloat = 0.0     # on the receiver


class Overheads(_Frozen):
    """What the runtime itself costs on one hardware class (docs/planning-model.md, runtime overheads)."""

    hop_s: NonNegativeFloat = 0.0              # fixed cost of a transfer between two distinct nodes
    request_s: NonNegativeFloat = 0.0          # fixed cost of one request (open it, return the result)
    pass_s: NonNegativeFloat = 0.0             # fixed cost of every pass a node runs (one segment of a phase)
    codec: dict[str, CodecCost] = Field(default_factory=dict)   # "fp16", "int8"


class SpecStats(_Frozen):
    """Speculative decoding with draft length k, measured on sample inputs (means per request)."""

    acceptance: float = Field(ge=0.0, le=1.0)  # proposals the target kept / proposals made
    rounds: PositiveFloat                      # target verification passes per request
    draft_passes: NonNegativeFloat             # draft passes (proposed tokens) per request
    tokens: NonNegativeFloat                   # tokens per request, EOS included
    verify_ratio: PositiveFloat = 1.0          # a target pass over k+1 new positions / a one-token pass


class Speculative(_Frozen):
    """A draft model's measured agreement with its target (the draft profile's optional section)."""

    target: str = Field(min_length=1)
    samples: PositiveInt
    new_tokens: PositiveInt
    k: dict[str, SpecStats] = Field(min_length=1)     # keyed by k as text ("1", "2", ...)
    # Where r_k was timed; other classes are assumed to scale a pass over k+1 positions the same way.
    verify_ratio_hardware: str | None = None

    @model_validator(mode="after")
    def _ks(self) -> Speculative:
        for key in self.k:
            if not key.isdigit() or int(key) < 1:
                raise ValueError(f"k.{key}: keys are draft lengths, whole numbers >= 1")
        return self


class Profile(_Frozen):
    format: Literal["aiflow.profile/v1"] = PROFILE_FORMAT
    model: str = Field(min_length=1)
    units: list[Unit] = Field(min_length=1)
    phases: list[Phase] = Field(min_length=1)
    edges: list[Edge] = Field(default_factory=list)
    result_bytes: NonNegativeFloat = 0.0
    # Optional provenance: hardware fingerprints, the input spec, whether weights were trained.
    hardware: dict[str, dict[str, object]] = Field(default_factory=dict)
    input: dict[str, object] = Field(default_factory=dict)
    weights: str | None = None
    # Runtime overheads per hardware class; absent classes cost nothing extra (older files).
    overheads: dict[str, Overheads] = Field(default_factory=dict)
    # Set on a profile whose activation bytes were scaled for a compressed wire ("fp16", "int8"):
    # the cost model then adds the codec's compute to every compressed hop.
    wire: Literal["fp16", "int8"] | None = None
    # A draft model's measured acceptance against its target, per draft length k (cooperative mode).
    speculative: Speculative | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        n = len(self.units)
        names = set()
        for i, u in enumerate(self.units):
            if u.name in names:
                raise ValueError(f"units[{i}].name: duplicate unit name {u.name!r}")
            names.add(u.name)
        for k, ph in enumerate(self.phases):
            if ph.last >= n:
                raise ValueError(f"phases[{k}].last: {ph.last} is out of range (the profile has {n} units)")
        for k, e in enumerate(self.edges):
            for idx in [e.from_, *e.to]:
                if idx >= n:
                    raise ValueError(f"edges[{k}]: unit {idx} is out of range (the profile has {n} units)")
        for i, u in enumerate(self.units):
            if u.name in (DECODE_UNIT, TOKENIZE_UNIT) and not u.is_host_code:
                # made before: float32 pixels in its out_bytes and a roofline estimate per device
                raise ValueError(f"units[{i}].host_code: missing, so {u.name} was profiled by an older aiflow; "
                                 "profile the model again")
            for hw, per_phase in u.latency_s.items():
                for ph in self.phases:
                    if ph.repeat > 0 and ph.first <= i <= ph.last and ph.name not in per_phase:
                        raise ValueError(f"units[{i}].latency_s.{hw}: no latency for phase {ph.name!r}")
        return self

    # -- derived views -------------------------------------------------------------------------
    @property
    def active_phases(self) -> list[Phase]:
        return [p for p in self.phases if p.repeat > 0]

    @property
    def hardware_classes(self) -> list[str]:
        seen: dict[str, None] = {}
        for u in self.units:
            for hw in u.latency_s:
                seen.setdefault(hw, None)
        return list(seen)

    def unit_index(self, name: str) -> int:
        for i, u in enumerate(self.units):
            if u.name == name:
                return i
        raise KeyError(name)


def load_profile(path: str | Path) -> Profile:
    return load_document(Profile, path, PROFILE_FORMAT)


def parse_profile(data: dict, source: str = "profile") -> Profile:
    return parse_document(Profile, data, PROFILE_FORMAT, source)


def save_profile(profile: Profile, path: str | Path) -> None:
    dump_json(profile, path)
