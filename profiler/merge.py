"""Merging profiles of one model taken on several hardware classes into one profile.

Profiles merge only when they describe the same request on the same model: the same model name,
units (names and parameter bytes), phases (ranges, repeats, inputs), edges and input spec. What differs
between them is per hardware class (latencies, their source and spread, fingerprints), and that is
what is combined. When two profiles both hold a class, the later one's entries win and the caller
is told which classes were replaced.
"""

from __future__ import annotations

from profiler.errors import InputError
from profiler.profile import Profile, parse_profile


def _phase_key(profile: Profile) -> list[tuple[object, ...]]:
    return [(p.name, p.first, p.last, p.repeat, p.input, p.in_bytes) for p in profile.phases]


def check_compatible(a: Profile, b: Profile, where_a: str = "first profile", where_b: str = "second profile") -> None:
    """Raise InputError naming the first difference that makes `a` and `b` unmergeable."""
    if a.model != b.model:
        raise InputError(f"{where_b}: model: {b.model!r} differs from {a.model!r} in {where_a}")
    if [u.name for u in a.units] != [u.name for u in b.units]:
        raise InputError(f"{where_b}: units: names differ from {where_a} "
                         f"({len(b.units)} units vs {len(a.units)})")
    for i, (ua, ub) in enumerate(zip(a.units, b.units, strict=True)):
        if ua.param_bytes != ub.param_bytes:
            raise InputError(f"{where_b}: units[{i}].param_bytes: {ub.param_bytes} differs from {ua.param_bytes} "
                             f"in {where_a} (a different model?)")
    if _phase_key(a) != _phase_key(b):
        raise InputError(f"{where_b}: phases: differ from {where_a} (another input spec? "
                         f"{[p.name for p in b.phases]} vs {[p.name for p in a.phases]})")
    edges_a = [(e.from_, tuple(e.to), e.bytes) for e in a.edges]
    edges_b = [(e.from_, tuple(e.to), e.bytes) for e in b.edges]
    if edges_a != edges_b:
        raise InputError(f"{where_b}: edges: differ from {where_a}")
    if a.input and b.input and a.input != b.input:
        raise InputError(f"{where_b}: input: {b.input} differs from {a.input} in {where_a}")


def merge_profiles(profiles: list[Profile], names: list[str] | None = None) -> tuple[Profile, list[str]]:
    """One profile with every hardware class of `profiles`; also the classes a later profile replaced."""
    if not profiles:
        raise InputError("merge: no profiles given")
    names = names or [f"profile {k + 1}" for k in range(len(profiles))]
    base = profiles[0]
    replaced: list[str] = []
    units = list(base.units)
    hardware = dict(base.hardware)
    for other, where in zip(profiles[1:], names[1:], strict=True):
        check_compatible(base, other, names[0], where)
        present = {hw for u in units for hw in u.latency_s}
        for hw in other.hardware_classes:
            if hw in present and hw not in replaced:
                replaced.append(hw)
        merged = []
        for u, v in zip(units, other.units, strict=True):
            merged.append(u.model_copy(update={
                "latency_s": {**u.latency_s, **v.latency_s},
                "source": {**u.source, **v.source},
                "spread": {**u.spread, **v.spread},
                "mem_bytes": max(u.mem_bytes, v.mem_bytes),
            }))
        units = merged
        hardware.update(other.hardware)
    result = base.model_copy(update={"units": units, "hardware": hardware})
    # Re-validate the whole: a merged profile must be as valid as its parts.
    return parse_profile(result.model_dump(by_alias=True), "merged profile"), replaced
