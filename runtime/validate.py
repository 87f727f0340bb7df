"""Checks on the tensors a worker is sent, made before the frame is acknowledged.

A `data` frame must be for the request's plan version and start a segment of the receiving node,
and carry what that segment's first unit takes: token ids or pixels at a phase's first unit, else
a hidden state shaped like the previous unit's output (measured once per model by `probe_shapes`), or
uint8 pixels where a decode unit's output goes.
An `edge` frame (the encoder output) must be a float tensor of the request's batch for a node that
hosts a unit reading it. A refusal is a RequestRejected, which the worker answers with an `error`
frame carrying its code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from profiler.adapters.base import InputSpec, ModelAdapter, PhaseInfo
from runtime.codec import Frame
from runtime.stages import PhaseRoute, Segment, StagePlan

# phase -> (output shape, whether it is uint8 pixels) of each of its units, batch 1; a decode unit
# (profiler.adapters.raw_image) hands on uint8 pixels, every other unit a float or int64 tensor
Shapes = dict[str, list[tuple[tuple[int, ...], bool]]]


class RequestRejected(ValueError):
    """A frame that is well-formed but cannot be accepted (unknown request, wrong unit, wrong shape)."""

    def __init__(self, message: str, code: str = "bad-request") -> None:
        super().__init__(message)
        self.code = code


def probe_shapes(adapter: ModelAdapter) -> Shapes:
    """Output shape of every unit in the encode/prefill phases for a batch-1 example (to validate inputs).
    The decode phase has prefill's shapes with one token."""
    spec = InputSpec(prompt_tokens=3, new_tokens=2, batch=1)
    phases = {p.name: p for p in adapter.phases(spec)}
    state = adapter.new_state()
    state.extra["batch"] = 1
    shapes: Shapes = {}
    with torch.no_grad():
        for name in ("encode", "prefill"):
            if name not in phases:
                continue
            p = phases[name]
            x = adapter.probe_input(spec, name)
            out: list[tuple[tuple[int, ...], bool]] = []
            for u in range(p.first, p.last + 1):
                x = adapter.run(u, u, x, phase=name, position=0, state=state)
                out.append((tuple(x.shape), x.dtype == torch.uint8))
            shapes[name] = out
            if name == "encode" and any(e.src == p.last for e in adapter.edges()):
                state.encoder_out = x
    return shapes


def data_segment(plan: StagePlan, frame: Frame, node: str) -> tuple[PhaseRoute, Segment]:
    """The phase and the segment of `node` a data frame is the input of, under the request's `plan`."""
    if frame.plan_version != plan.version:
        raise RequestRejected(f"request {frame.request_id} runs plan v{plan.version}, frame says "
                              f"v{frame.plan_version}", "wrong-plan")
    try:
        phase = plan.phase(frame.phase)
        seg = plan.segment_at(frame.phase, frame.unit)
    except KeyError:
        raise RequestRejected(f"plan v{plan.version} has no unit {frame.unit} in phase {frame.phase!r}",
                              "wrong-unit") from None
    if seg.node != node or seg.first != frame.unit:
        raise RequestRejected(f"unit {frame.unit} of {frame.phase} does not start a segment of node {node}",
                              "wrong-unit")
    return phase, seg


def check_input(frame: Frame, phase: PhaseRoute, batch: int, shapes: Shapes,
                phase_infos: Mapping[str, PhaseInfo], source_input: str = "tensor") -> None:
    """The data frame's tensor is what unit `frame.unit` of `phase` takes, for a request of `batch` rows;
    `source_input` "bytes": a phase fed from the source starts from the input's bytes as captured (an
    image file, a prompt's UTF-8), which its first unit turns into pixels or token ids."""
    x, u = frame.tensor, frame.unit
    where = f"{phase.name} unit {u}"
    if u == phase.first:
        if phase.input == "none":
            if x is not None:
                raise RequestRejected(f"{where}: takes no input, got a tensor", "wrong-shape")
            return
        if x is None:
            raise RequestRejected(f"{where}: input tensor missing", "wrong-shape")
        if phase.input == "source" and source_input == "bytes":
            ok = x.dtype == torch.uint8 and x.dim() == 2 and x.shape[1] >= 1
            want = "uint8 bytes as captured [batch, bytes]" + (" (an image file)" if phase.name == "encode" else "")
        elif phase.name == "encode":
            ok = x.is_floating_point() and x.dim() == 4
            want = "float pixels [batch, channels, height, width]"
        else:
            ok = x.dtype == torch.int64 and x.dim() == 2 and x.shape[1] >= 1 and (phase.name != "decode"
                                                                                  or x.shape[1] == 1)
            want = "int64 token ids [batch, 1]" if phase.name == "decode" else "int64 token ids [batch, tokens]"
        if not ok:
            raise RequestRejected(f"{where}: expected {want}, got {describe(x)}", "wrong-shape")
    else:
        if x is None:
            raise RequestRejected(f"{where}: hidden state missing", "wrong-shape")
        # a decode pass is prefill's units on one token
        ref_phase = "prefill" if phase.name == "decode" else phase.name
        ref, ref_pixels = shapes[ref_phase][u - 1 - phase_infos[ref_phase].first]
        if ref_pixels:          # the unit before decoded an image file into uint8 pixels
            if not (x.dtype == torch.uint8 and tuple(x.shape[1:]) == ref[1:]):
                raise RequestRejected(f"{where}: expected uint8 pixels {list(ref[1:])}, got {describe(x)}",
                                      "wrong-shape")
            ok = True
        elif len(ref) == 2 and phase.name == "prefill":
            # the unit before made token ids (a first unit that tokenizes the prompt's bytes)
            ok = x.dtype == torch.int64 and x.dim() == 2 and x.shape[1] >= 1
            if not ok:
                raise RequestRejected(f"{where}: expected int64 token ids [batch, tokens], got {describe(x)}",
                                      "wrong-shape")
        else:
            ok = x.is_floating_point() and x.dim() == len(ref) and x.shape[-1] == ref[-1]
        if ok and phase.name == "encode":
            ok = tuple(x.shape[1:]) == ref[1:]
        if ok and phase.name == "decode":
            ok = x.shape[1] == 1
        if not ok:
            want = (f"float [batch, {'1' if phase.name == 'decode' else '...'}, {ref[-1]}]" if len(ref) == 3
                    else str(ref))
            raise RequestRejected(f"{where}: expected {want}, got {describe(x)}", "wrong-shape")
    if x.shape[0] != batch:
        raise RequestRejected(f"{where}: batch {x.shape[0]} but the request was opened with batch {batch}",
                              "wrong-shape")
    check_finite(x, where)


def check_finite(x: torch.Tensor, where: str) -> None:
    """A float tensor with NaN or infinite values would only spread garbage down the pipeline."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        raise RequestRejected(f"{where}: the tensor holds NaN or infinite values", "not-finite")


def frame_budget(plan: StagePlan, node: str, max_new_tokens: int) -> int:
    """The most data and edge frames one request can send to `node` under `plan`: each pass of a phase
    enters each of the node's segments once (decode runs at most max_new_tokens passes), plus one edge.
    A peer that sends more is replaying or looping frames; the worker refuses them."""
    passes = {"decode": max_new_tokens}
    return sum(passes.get(phase, 1) for phase, _ in plan.segments_of(node)) + 1


def check_edge(frame: Frame, plan: StagePlan, node: str, batch: int) -> None:
    """The edge frame carries the encoder output of a request of `batch` rows for a node that reads it."""
    if frame.tensor is None or not frame.tensor.is_floating_point():
        raise RequestRejected("edge: expected a float tensor", "wrong-shape")
    if frame.tensor.shape[0] != batch:
        raise RequestRejected(f"edge: batch {frame.tensor.shape[0]} but the request has {batch}", "wrong-shape")
    check_finite(frame.tensor, "edge")
    if not any(plan.assignment[u] == node for u in plan.reads_edge):
        raise RequestRejected(f"edge: node {node} hosts no unit that reads it", "wrong-unit")


def describe(x: torch.Tensor | None) -> str:
    return "nothing" if x is None else f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}"
