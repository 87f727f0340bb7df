"""What every model adapter offers: the units of a model, its phases, and running a range of units.

The contract that the profiler and the runtime both rely on:
- Units are numbered 0..U-1 in execution order. Running units a..b, then b+1..c on the output
  (possibly on another machine, after a byte-exact copy of the tensor), equals running a..c, and
  running all units of every phase reproduces the unsplit model exactly (`torch.equal`).
- `run` is told the phase and the absolute token `position` of the pass explicitly (0 for a
  prefill, the number of tokens already cached for a decode step), so a worker that owns several
  disjoint ranges of units needs no position bookkeeping of its own.
- Per-request mutable state (KV caches, the encoder output read by cross-attention) lives in a
  `RequestState` made by `new_state()`; a worker keeps one per request id and drops it at the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

PhaseInput = Literal["source", "none", "loop"]


@dataclass(frozen=True)
class InputSpec:
    """The request shape a model is profiled and run for."""

    image_size: int | None = None      # vision models: square input side in pixels (None: the config's)
    prompt_tokens: int = 16            # causal LMs: prompt length
    new_tokens: int = 16               # tokens generated per request (decode repeats new_tokens - 1)
    batch: int = 1


@dataclass(frozen=True)
class UnitInfo:
    name: str                          # e.g. "vision.embed", "text.block.3", "text.head"
    phases: tuple[str, ...]            # the phases this unit takes part in
    reads_edge: bool = False           # needs the encoder output (cross-attention)


@dataclass(frozen=True)
class PhaseInfo:
    name: str                          # "encode" | "prefill" | "decode"
    first: int
    last: int
    repeat: int
    input: PhaseInput


@dataclass(frozen=True)
class EdgeInfo:
    src: int                           # unit that makes the value once per request
    dst: tuple[int, ...]               # units that read it


@dataclass
class RequestState:
    """Per-request state for the units one worker owns."""

    cache: Any = None                  # KV cache object (family-specific), created lazily
    encoder_out: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ModelAdapter(ABC):
    """A loaded model, cut into units. Subclasses: one per family."""

    family: str = "base"
    # What the first unit of a phase fed from the source takes: "tensor" (pixels, token ids), or
    # "bytes": the input as captured (an image file, a prompt's UTF-8), turned into one by that unit.
    source_input: str = "tensor"

    def __init__(self, model: nn.Module, name: str, weights: str) -> None:
        self.model = model.eval()
        self.name = name
        self.weights = weights         # "trained" or "random-init"

    # -- structure -----------------------------------------------------------------------------
    @abstractmethod
    def units(self) -> list[UnitInfo]: ...

    @abstractmethod
    def phases(self, spec: InputSpec) -> list[PhaseInfo]: ...

    def edges(self) -> list[EdgeInfo]:
        return []

    @abstractmethod
    def unit_modules(self, index: int) -> list[nn.Module]:
        """The modules whose parameters belong to unit `index` (for param bytes and FLOPs)."""

    def captured(self, spec: InputSpec) -> dict[str, object] | None:
        """The request input as captured (an image file's format, size and bytes) for a model that takes
        it so (profiler.adapters.raw_image); None for one that takes tensors."""
        return None

    def host_code_units(self) -> set[int]:
        """Units whose work is plain CPU code, not tensor kernels (decoding a JPEG, tokenizing): the
        roofline does not describe them, so an estimate scales their measured time by the device's
        host speed instead (profiler.estimate)."""
        return set()

    # -- execution -----------------------------------------------------------------------------
    @abstractmethod
    def example_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        """The phase's input for a profiling run: pixel values, prompt ids, one token id, or None."""

    def probe_input(self, spec: InputSpec, phase: str) -> torch.Tensor | None:
        """An input of the phase's shape to learn the units' output shapes with (runtime.validate): the
        profiling example unless that is costly to make."""
        return self.example_input(spec, phase)

    def new_state(self) -> RequestState:
        return RequestState()

    @abstractmethod
    def run(self, first: int, last: int, x: torch.Tensor | None, *, phase: str, position: int,
            state: RequestState, all_logits: bool = False) -> torch.Tensor:
        """Run units first..last of `phase` on `x` and return what the last one hands on.

        `x` is the phase input when `first` is the phase's first unit (pixel values for `encode`,
        token ids [B, S] for `prefill`/`decode`, None for an `input: none` phase), else the hidden
        state from unit first-1. A head unit returns logits of the last position [B, V] (all
        positions [B, S, V] with `all_logits`); the last encoder unit returns the encoder output,
        which the caller stores in `state.encoder_out` of the workers that own cross-attention units.
        """

    # -- text and images -----------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        raise NotImplementedError(f"{self.family} models take no text")

    def decode_tokens(self, ids: list[int]) -> str:
        raise NotImplementedError(f"{self.family} models make no text")

    def prepare_image(self, image: Any) -> torch.Tensor:
        raise NotImplementedError(f"{self.family} models take no images")

    def positions(self, x: torch.Tensor) -> int:
        """Token positions a phase input `x` of shape [B, S, ...] covers (how far the next pass starts)."""
        return int(x.shape[1])

    @property
    def eos_token_id(self) -> int | None:
        return None
