"""An adapter that puts one parameter-free unit in front of a wrapped model's units.

The raw-input adapters (`raw_image`, `raw_text`) share this structure: unit 0 turns the request's bytes
into what the wrapped model takes, in the wrapped model's first phase only, and unit i + 1 is the wrapped
model's unit i.
"""

from __future__ import annotations

from torch import nn

from profiler.adapters.base import EdgeInfo, InputSpec, ModelAdapter, PhaseInfo, UnitInfo


class PrefixedAdapter(ModelAdapter):
    prefix_unit: str     # the name of unit 0
    prefix_phase: str    # the wrapped model's phase it runs in (the phase that starts at unit 0)
    inner: ModelAdapter

    def units(self) -> list[UnitInfo]:
        return [UnitInfo(self.prefix_unit, (self.prefix_phase,))] + self.inner.units()

    def phases(self, spec: InputSpec) -> list[PhaseInfo]:
        return [PhaseInfo(p.name, 0 if p.name == self.prefix_phase else p.first + 1, p.last + 1, p.repeat, p.input)
                for p in self.inner.phases(spec)]

    def edges(self) -> list[EdgeInfo]:
        return [EdgeInfo(e.src + 1, tuple(d + 1 for d in e.dst)) for e in self.inner.edges()]

    def unit_modules(self, index: int) -> list[nn.Module]:
        return [] if index == 0 else self.inner.unit_modules(index - 1)

    def host_code_units(self) -> set[int]:
        return {0} | {i + 1 for i in self.inner.host_code_units()}
