"""Hardware classes: the one this process runs on (name + fingerprint), and described ones (YAML).

A hardware class is the key of `latency_s` in a profile. This machine's class is named after what
decides its speed: the CPU model and the torch threads ("cpu-epyc-7b13-2t"), or the GPU's name
("nvidia-h200"). Two hosts with the same core count but different CPUs are different classes. Its
fingerprint records what the latencies depend on (CPU model, cores, torch threads and version, the
CUDA device if any) plus this machine's measured peak matmul FLOP/s and copy bandwidth, which the
roofline estimator calibrates against.

Profiles written before this scheme key a CPU host by its core count ("cpu-2c"). Such a legacy key
is read unchanged (a class name is opaque to the planner); `current_class_name` says which class it
is today from the fingerprint recorded beside it, and `local_key` finds this machine's class in a
profile under either name.

Described classes (profiler/devices/*.yaml, or any file in that shape) are devices not at hand:
datasheet peak FLOP/s, memory bandwidth and memory, from which `profiler.estimate` derives latencies.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

from profiler.errors import InputError
from profiler.fileio import read_mapping, validation_message

DEVICES_DIR = Path(__file__).parent / "devices"
Tier = Literal["device", "edge", "cloud"]


# -- this machine ------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask, which containers narrow), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cuda_device_name() -> str | None:
    try:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except RuntimeError:
        pass
    return None


def fingerprint() -> dict[str, object]:
    """What this machine's measured latencies depend on."""
    fp: dict[str, object] = {
        "cpu_model": cpu_model(),
        "cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "machine": platform.machine(),
        "system": platform.system(),
    }
    cuda = cuda_device_name()
    if cuda is not None:
        fp["cuda_device"] = cuda
    return fp


# Words of a CPU's marketing name that say nothing about its speed class.
_CPU_NOISE = re.compile(r"\((?:r|tm|c)\)|@.*$|\b\d+-core\b|\bwith\b.*$|\b(?:processor|cpu|intel|amd|genuine)\b")
_LEGACY_CPU_CLASS = re.compile(r"cpu-\d+c")
_SLUG_MAX = 32


def slug(text: str) -> str:
    """Lower-case letters and digits joined by single hyphens ("NVIDIA H200" -> "nvidia-h200")."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_slug(model: str) -> str:
    """A short name for a CPU model: vendor words, trademarks, core counts and the clock dropped
    ("AMD EPYC 7B13 64-Core Processor" -> "epyc-7b13", "Intel(R) Xeon(R) Processor" -> "xeon")."""
    s = slug(_CPU_NOISE.sub(" ", model.lower()))
    return s[:_SLUG_MAX].rstrip("-") or "unknown"


def hardware_class(fp: dict[str, object] | None = None, device: str = "cpu", threads: int | None = None) -> str:
    """The class name of this machine (or of fingerprint `fp`): profiles measured here key latencies
    by it. On a CPU: "cpu-<model>-<threads>t", the torch threads being `threads` if given (what the
    workers will run with), else the fingerprint's. With device "cuda": the GPU's name ("nvidia-h200")."""
    fp = fp if fp is not None else fingerprint()
    if device == "cuda" and fp.get("cuda_device"):
        return slug(str(fp["cuda_device"]))
    n = threads if threads is not None else fp.get("torch_threads", 1)
    return f"cpu-{cpu_slug(str(fp.get('cpu_model', 'unknown')))}-{n}t"


def local_threads(name: str, fp: dict[str, object] | None = None) -> int | None:
    """The torch threads of `name` when it is this machine's CPU class at some thread count that this
    machine's cores can give ("cpu-xeon-1t" on a 2-core Xeon -> 1); None for any other class. A native
    run of such a class gives each worker that many threads, so its compute matches the profile's."""
    fp = fp if fp is not None else fingerprint()
    return next((n for n in range(1, (os.cpu_count() or 1) + 1) if hardware_class(fp, "cpu", threads=n) == name),
                None)


def native_class(node_classes: Iterable[str], local: str,
                 fp: dict[str, object] | None = None) -> tuple[str | None, int | None]:
    """(class, threads) when every node is of one class this machine runs natively: `local` itself
    (threads None: the workers keep torch's default), or this CPU at a thread count it can give
    (threads: what each worker must use to match the profile). (None, None) otherwise."""
    names = set(node_classes)
    if len(names) != 1:
        return None, None
    name = names.pop()
    if name == local:
        return name, None
    threads = local_threads(name, fp)
    return (name, threads) if threads is not None else (None, None)


def is_legacy_class(name: str) -> bool:
    """A key of the old scheme, by core count only ("cpu-2c")."""
    return _LEGACY_CPU_CLASS.fullmatch(name) is not None


def current_class_name(name: str, info: Mapping[str, object] | None) -> str:
    """The class a profile's key names under today's scheme. A legacy "cpu-<N>c" key whose recorded
    fingerprint (`info`: the profile's `hardware[name]`) has the CPU model and torch threads maps to
    "cpu-<model>-<threads>t"; any other key, or a legacy key without them, is itself."""
    if is_legacy_class(name) and info and info.get("cpu_model") and info.get("torch_threads"):
        return hardware_class(dict(info), "cpu")
    return name


def measured_cpu_classes(hardware: Mapping[str, Mapping[str, object]]) -> list[str]:
    """The keys of a profile's `hardware` that were measured on a CPU (a fingerprint with a CPU model,
    neither estimated nor run on a GPU), in the profile's order."""
    return [k for k, info in hardware.items()
            if info.get("cpu_model") and not info.get("estimated") and info.get("device", "cpu") == "cpu"]


def local_key(hardware: Mapping[str, Mapping[str, object]], classes: Iterable[str], local: str) -> str:
    """The key under which a profile holds the class `local`: `local` itself when it is one of
    `classes` (the profile's keys), else a legacy key whose recorded fingerprint (`hardware`, the
    profile's `hardware` field) maps to `local`, else `local` (the profile lacks this class)."""
    keys = list(classes)
    if local in keys:
        return local
    for key in keys:
        if is_legacy_class(key) and current_class_name(key, hardware.get(key)) == local:
            return key
    return local


def check_device(device: str) -> torch.device:
    """"cpu" or "cuda" as a torch device; an InputError when torch cannot use it here."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device: {device!r}: expected cpu or cuda")
    if device == "cuda" and cuda_device_name() is None:
        raise InputError("--device: cuda: torch sees no CUDA device on this machine")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels: GPU work is asynchronous, so a timer must stop after it finishes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(op: Callable[[], object], device: torch.device, seconds: float) -> float:
    """The fastest run of `op` (GPU work finished) over `seconds` of repeats, after one warm-up run."""
    best = float("inf")
    with torch.inference_mode():
        op()  # warm-up: thread pool, caches, kernels
        synchronize(device)
        deadline = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            op()
            synchronize(device)
            best = min(best, time.perf_counter() - t0)
            if time.perf_counter() > deadline:
                return best


def measure_peak_flops(n: int = 512, seconds: float = 0.3, device: torch.device | None = None) -> float:
    """FLOP/s of fp32 n x n matrix products on this machine with the current torch threads (best run)."""
    device = device or torch.device("cpu")
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2.0 * n**3 / best_time(lambda: torch.mm(a, b), device, seconds)


def measure_mem_bandwidth(nbytes: int = 64 * 2**20, seconds: float = 0.3, device: torch.device | None = None) -> float:
    """Bytes per second a large fp32 copy moves (read + write counted), best run."""
    device = device or torch.device("cpu")
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2.0 * nbytes / best_time(lambda: dst.copy_(src), device, seconds)


# -- described devices -------------------------------------------------------------------------
class DeviceClass(BaseModel):
    """A hardware class described by its datasheet, for roofline estimates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    peak_flops: PositiveFloat                  # FLOP/s (multiply-add = 2) at the precision profiled (fp32)
    mem_bandwidth_bps: PositiveFloat           # memory bandwidth in BITS per second (as links are in
                                               # network files): 4.8 TB/s is 3.84e13
    mem_bytes: PositiveFloat                   # memory a node of this class has
    efficiency: float = Field(default=1.0, gt=0, le=1)  # sustained fraction of peak_flops (datasheet vs real)
    op_overhead_s: float | None = Field(default=None, ge=0)  # cost of one dispatched op; None: this machine's
    op_overhead_scale: float = Field(default=1.0, gt=0)      # ... times this factor (a slower host CPU)
    # How many times longer the device's host CPU takes than the profiling machine's core for plain CPU
    # code (decoding an image file, tokenizing: units marked host_code); 1.0 when not described
    host_factor: float = Field(default=1.0, gt=0)
    tier: Tier | None = None
    description: str = ""

    @property
    def mem_bandwidth_bytes_per_s(self) -> float:
        return self.mem_bandwidth_bps / 8.0


def load_device(path_or_name: str | Path) -> DeviceClass:
    """A device description from a YAML/JSON file, or the name of a shipped one (e.g. "h200")."""
    p = Path(path_or_name)
    if not p.exists() and isinstance(path_or_name, str) and (DEVICES_DIR / f"{path_or_name}.yaml").is_file():
        p = DEVICES_DIR / f"{path_or_name}.yaml"
    elif not p.exists():
        names = ", ".join(shipped_device_names())
        raise InputError(f"{path_or_name}: no such device file (nor a shipped device: {names})")
    data = read_mapping(p)
    try:
        return DeviceClass.model_validate(data)
    except ValidationError as exc:
        raise InputError(validation_message(str(p), exc)) from None


def shipped_device_names() -> list[str]:
    return sorted(f.stem for f in DEVICES_DIR.glob("*.yaml"))


def shipped_devices() -> list[DeviceClass]:
    return [load_device(DEVICES_DIR / f"{n}.yaml") for n in shipped_device_names()]
