"""Measuring a unit on this machine: wall-clock timing, tensor sizes, the memory a unit holds.

Timing: `warmup` untimed runs, then `repeats` timed runs, each on a fresh copy of the request state
(made outside the timed region) so that a decode step always sees the same warm KV cache and a
prefill always starts from an empty one. The median is kept; the spread (p90 - p10) / median says how
much the runs varied. Everything runs under `torch.inference_mode`.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from profiler.hardware import synchronize

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    median_s: float
    spread: float                      # (p90 - p10) / median of the timed runs
    samples: tuple[float, ...]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarise(samples: list[float]) -> Timing:
    if not samples:
        raise ValueError("no timed runs")
    med = statistics.median(samples)
    spread = (percentile(samples, 90) - percentile(samples, 10)) / med if med > 0 else 0.0
    return Timing(median_s=med, spread=spread, samples=tuple(samples))


def time_runs(prepare: Callable[[], T], run: Callable[[T], Any], *, warmup: int = 2, repeats: int = 10,
              device: torch.device | None = None) -> Timing:
    """Time `run(prepare())`: only `run` is inside the timed region (on a GPU, until its kernels end)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    device = device or torch.device("cpu")
    samples: list[float] = []
    with torch.inference_mode():
        for k in range(warmup + repeats):
            arg = prepare()
            synchronize(device)
            t0 = time.perf_counter()
            run(arg)
            synchronize(device)
            elapsed = time.perf_counter() - t0
            if k >= warmup:
                samples.append(elapsed)
    return summarise(samples)


def time_unit_step(run: Callable[[Any], Any], state: Any, *, warmup: int, repeats: int,
                   device: torch.device | None = None) -> Timing:
    """Time a stateful step: every run gets its own deep copy of `state`, made untimed."""
    return time_runs(lambda: copy.deepcopy(state), run, warmup=warmup, repeats=repeats, device=device)


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def tensors_in(obj: Any, _seen: set[int] | None = None, _depth: int = 0) -> Iterable[torch.Tensor]:
    """Every tensor reachable from `obj` through attributes, lists, tuples and dicts (not modules)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen or _depth > 12 or isinstance(obj, nn.Module):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v, seen, _depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from tensors_in(v, seen, _depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for v in vars(obj).values():
            yield from tensors_in(v, seen, _depth + 1)


def held_bytes(obj: Any) -> int:
    """Bytes of the distinct tensors `obj` holds (a KV cache, an output tuple)."""
    total, storages = 0, set()
    for t in tensors_in(obj):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else id(t)
        if key in storages:
            continue
        storages.add(key)
        total += tensor_nbytes(t)
    return total


def param_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the distinct parameters and buffers of `modules` (a tied weight counts once)."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += tensor_nbytes(t)
    return total


def streamed_param_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of weights one pass reads in full: all but embedding tables, of which a pass reads only
    the rows it looks up (those are counted as the unit's output). A weight tied to a linear layer
    (a GPT-2 head) is read in full and counted once."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.Embedding):
                continue
            for t in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += tensor_nbytes(t)
    return total


class LargestOutput:
    """Forward hooks on every submodule: the largest single output any of them produced."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.max_bytes = 0
        self._handles = []
        for m in modules:
            for sub in m.modules():
                self._handles.append(sub.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        for t in tensors_in(output):
            self.max_bytes = max(self.max_bytes, tensor_nbytes(t))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> LargestOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations a pass dispatches: each is a kernel launch on a GPU and a fixed
    dispatch cost everywhere, which is what dominates the time of small units."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))
