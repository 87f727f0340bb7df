"""Hardware classes: the one this process runs on (name + fingerprint), and described ones (YAML).

A hardware class is the key of `latency_s` in a profile. This machine's class is named after its
CPU cores ("cpu-2c"); its fingerprint records what the latencies depend on (CPU model, cores,
torch threads and version, the CUDA device if any) plus this machine's measured peak matmul FLOP/s
and copy bandwidth, which the roofline estimator calibrates against.

Described classes (profiler/devices/*.yaml, or any file in that shape) are devices not at hand:
datasheet peak FLOP/s, memory bandwidth and memory, from which `profiler.estimate` derives latencies.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
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


def hardware_class(fp: dict[str, object] | None = None, device: str = "cpu") -> str:
    """The class name of this machine, e.g. "cpu-2c": profiles measured here key latencies by it.
    With device "cuda" it is the GPU's name as a slug ("nvidia-h200")."""
    fp = fp if fp is not None else fingerprint()
    if device == "cuda" and fp.get("cuda_device"):
        return re.sub(r"[^a-z0-9]+", "-", str(fp["cuda_device"]).lower()).strip("-")
    return f"cpu-{fp['cores']}c"


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
