"""The profile's `reductions` section: token-reduction options of the encoder-output edge, each with its
bytes on the wire, its measured caption quality and its compute cost (docs/profile-format.md,
"reductions").

    "reductions": {"edge": 4, "tokens": 65, "dim": 128, "bytes": 33280, "model": "tiny-captioner",
                   "scenes": 500, "base_accuracy": 98.2,
                   "options": [{"method": "dpc", "keep": 24, "bytes": 12384, "quality_loss": 0.4,
                                "scene_accuracy": 97.8, "agreement": 95.2,
                                "reduce_s": {"cpu-...-1t": 0.0004, "h200": 0.00001},
                                "source": {"cpu-...-1t": "measured", "h200": "estimated"}}]}

`quality_loss` is points of scene accuracy lost on the held-out test scenes (profiler.captioner.
reduction_eval); `reduce_s[hw]` is one reduction of one request's encoder output on class hw, run by
the node of the edge's source unit. Measured on this machine's class; other classes are scaled by how
much faster or slower the edge's source unit is there (an estimate, marked so).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from profiler.profile import Profile
from profiler.token_merge import METHODS, Reduction, packed_bytes, reduce_packed


class ReductionOption(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    method: str
    keep: PositiveInt
    bytes: NonNegativeFloat
    quality_loss: float                                   # points of scene accuracy; may be negative
    scene_accuracy: float | None = None
    agreement: float | None = None
    bleu4: float | None = None
    reduce_s: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    source: dict[str, Literal["measured", "estimated"]] = Field(default_factory=dict)

    @property
    def reduction(self) -> Reduction:
        return Reduction(self.method, self.keep)

    @property
    def label(self) -> str:
        return f"{self.method}-{self.keep}"


class Reductions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    edge: int = Field(ge=0)                               # the `from` unit of the reduced edge
    tokens: PositiveInt
    dim: PositiveInt
    bytes: NonNegativeFloat
    model: str | None = None                              # whose captions measured the quality
    scenes: int | None = None
    base_accuracy: float | None = None
    base_bleu4: float | None = None
    options: list[ReductionOption] = Field(default_factory=list)


def reductions_of(profile: Profile) -> Reductions | None:
    """The profile's `reductions` section, checked against its edges; None when it has none."""
    raw = (profile.model_extra or {}).get("reductions")
    if raw is None:
        return None
    try:
        sec = Reductions.model_validate(raw)
    except ValueError as exc:
        first = str(exc).splitlines()
        raise ValueError(f"profile: reductions: {first[1] if len(first) > 1 else first[0]}") from None
    if not any(e.from_ == sec.edge for e in profile.edges):
        raise ValueError(f"profile: reductions: no edge from unit {sec.edge}")
    for o in sec.options:
        if o.method not in METHODS:
            raise ValueError(f"profile: reductions: unknown method {o.method!r} (known: {', '.join(METHODS)})")
    return sec


def with_reductions(profile: Profile, section: Reductions) -> Profile:
    return profile.model_copy(update={"reductions": section.model_dump(exclude_none=True)})


def time_reduction(reduction: Reduction, tokens: int, dim: int, repeats: int = 30) -> float:
    """Median seconds of one reduction of a [1, tokens, dim] encoder output on this machine."""
    x = torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(0))
    reduce_packed(x, reduction)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reduce_packed(x, reduction)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def scaled_reduce_s(profile: Profile, edge: int, local_hw: str,
                    local_s: float) -> tuple[dict[str, float], dict[str, str]]:
    """reduce_s per hardware class of the profile: measured on `local_hw`, scaled to the others by the
    edge source unit's encode latency there over here (the local class, or if the profile lacks it, the
    first class that has that latency, stands for this machine)."""
    phase = next((p.name for p in profile.active_phases if p.first <= edge <= p.last), None)
    lat = profile.units[edge].latency_s
    ref_hw = local_hw if local_hw in lat else next(iter(lat), None)
    ref = lat.get(ref_hw, {}).get(phase) if ref_hw is not None and phase else None
    out: dict[str, float] = {}
    src: dict[str, str] = {}
    for hw, per in lat.items():
        there = per.get(phase) if phase else None
        if hw == local_hw:
            out[hw], src[hw] = local_s, "measured"
        elif ref and there is not None:
            out[hw], src[hw] = local_s * there / ref, "estimated"
        else:
            out[hw], src[hw] = local_s, "estimated"
    if local_hw not in out:
        out[local_hw], src[local_hw] = local_s, "measured"
    return out, src


def build_reductions(profile: Profile, model: str, reductions: Sequence[Reduction], *, scenes: int,
                     local_hw: str, tokens: int | None = None, dim: int | None = None) -> Reductions:
    """Measure every reduction (quality on `scenes` test scenes with `model`, cost on this machine)."""
    from profiler.captioner.reduction_eval import evaluate_reductions

    if len(profile.edges) != 1:
        raise ValueError("profile: token reduction needs one encoder-output edge, "
                         f"the profile has {len(profile.edges)}")
    edge = profile.edges[0]
    rows = evaluate_reductions(model, reductions, scenes)
    tokens = tokens or rows[0].keep
    dim = dim or int(round(edge.bytes / 4 / tokens))
    if tokens * dim * 4 != int(edge.bytes):
        raise ValueError(f"profile: the edge carries {edge.bytes:.0f} bytes, not {tokens} float32 tokens of {dim}")
    options = []
    for r, q in zip(reductions, rows[1:], strict=True):
        local_s = time_reduction(r, tokens, dim)
        reduce_s, src = scaled_reduce_s(profile, edge.from_, local_hw, local_s)
        options.append(ReductionOption(method=r.method, keep=r.keep, bytes=packed_bytes(tokens, dim, r),
                                       quality_loss=round(q.quality_loss, 4), scene_accuracy=round(q.scene_accuracy, 4),
                                       agreement=round(q.agreement, 4), bleu4=round(q.bleu4, 4),
                                       reduce_s=reduce_s, source=src))  # type: ignore[arg-type]
    return Reductions(edge=edge.from_, tokens=tokens, dim=dim, bytes=edge.bytes, model=model, scenes=scenes,
                      base_accuracy=round(rows[0].scene_accuracy, 4), base_bleu4=round(rows[0].bleu4, 4),
                      options=options)
