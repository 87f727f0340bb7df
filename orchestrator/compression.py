"""What activation compression does to a profile's byte counts, so plans can be made for it.

The runtime's per-hop compression (runtime.codec) sends floating-point activations as float16 (half
the bytes) or as int8 with one scale (a quarter). It never touches integer tensors (token ids) or the
raw input the client sends, nor what a plain-CPU first unit hands on (a decode unit's uint8 pixels, a
tokenizer's ids: units marked `host_code`). `compressed_profile` applies the same ratios to the
activations a profile lists (float outputs of units inside a phase and edges such as the encoder
output), so the planner can weigh a plan's transfers as the runtime will really send them. The
profile is marked with `wire`, so the cost model adds the measured (de)quantising time of every
compressed hop (the profile's `overheads.<hw>.codec`, zero where it was not measured).
"""

from __future__ import annotations

from profiler.profile import Profile

# Bytes on the wire per float32 byte.
WIRE_RATIO: dict[str, float] = {"none": 1.0, "fp16": 0.5, "int8": 0.25}


def sends_compressed(profile: Profile, unit: int) -> bool:
    """Whether unit `unit`'s output inside a phase travels compressed on a `wire` profile: not a
    host_code unit's (uint8 pixels, int64 ids: the codec leaves integer tensors alone)."""
    return not profile.units[unit].is_host_code


def compressed_profile(profile: Profile, how: str) -> Profile:
    """The profile with its float activation bytes scaled to what `how` sends."""
    if how not in WIRE_RATIO:
        raise ValueError(f"compression: unknown {how!r} (known: {', '.join(WIRE_RATIO)})")
    ratio = WIRE_RATIO[how]
    if ratio == 1.0:
        return profile
    # The last unit of a phase hands token ids (or the result) on, which are not compressed.
    last_of: dict[str, int] = {p.name: p.last for p in profile.phases}
    units = []
    for i, unit in enumerate(profile.units):
        out = {ph: (b if last_of.get(ph) == i or not sends_compressed(profile, i) else b * ratio)
               for ph, b in unit.out_bytes.items()}
        units.append(unit.model_copy(update={"out_bytes": out}))
    edges = [e.model_copy(update={"bytes": e.bytes * ratio}) for e in profile.edges]
    return profile.model_copy(update={"units": units, "edges": edges, "wire": how})
