"""Where the forward pass runs: the CPU (numba's CPU target) or a CUDA GPU (numba's CUDA target), chosen explicitly.

`resolve_device(request)` turns "cpu", "cuda" or "auto" into a Device record that says what was chosen and why:
- "cpu": the CPU; numba.cuda is never imported.
- "auto": a usable CUDA GPU (numba.cuda.is_available() and not the simulator) if there is one, else the CPU, saying
  so in `reason`.
- "cuda": a usable CUDA GPU, or numba's CUDA simulator when NUMBA_ENABLE_CUDASIM=1 was set before numba was imported
  (no GPU: the simulator runs the CUDA kernels as Python threads, for tests); otherwise DeviceError.
With BITNET_STRICT_NO_FAKE_GPU=1 nothing may stand in for a GPU: "cuda" on the simulator and "auto" without a GPU
are DeviceErrors too (a GPU CI job that must not pass on a fallback).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from bitnet_ref.errors import DeviceError

DEVICES = ("cpu", "cuda", "auto")
STRICT_ENV = "BITNET_STRICT_NO_FAKE_GPU"
SIMULATOR_ENV = "NUMBA_ENABLE_CUDASIM"


@dataclass(frozen=True)
class Device:
    """The device a model runs on, as chosen by resolve_device; goes into every record."""

    name: str  # "cpu" | "cuda"
    simulator: bool = False  # "cuda" on numba's CUDA simulator (no GPU: the kernels run as Python threads)
    gpu_name: str | None = None  # the GPU's name, when real
    gpu_memory: int | None = None  # the GPU's total memory in bytes, when real
    reason: str = "cpu: requested"  # one line: what was asked for and what was chosen

    def describe(self) -> dict:
        """Every field as plain data, for records."""
        return asdict(self)

    def __str__(self) -> str:
        if self.name == "cpu":
            return "cpu"
        if self.simulator:
            return "cuda (CUDA simulator)"
        return f"cuda ({self.gpu_name}, {self.gpu_memory / 2**30:.0f} GiB)"


CPU_DEVICE = Device("cpu")


def strict() -> bool:
    """Whether BITNET_STRICT_NO_FAKE_GPU forbids a simulator or CPU fallback for a requested GPU."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def _first_line(message: object) -> str:
    """The first non-blank line of a (multi-line) driver message, stripped."""
    return next((line.strip() for line in str(message).splitlines() if line.strip()), "")


def _probe() -> tuple[Device | None, str]:
    """(a Device for a usable CUDA target, real or simulated, or None; why not) from numba.cuda, imported here."""
    try:
        from numba import config, cuda
    except ImportError as e:  # numba without its CUDA target (numba >= 0.61 moves it to numba-cuda)
        return None, f"numba.cuda cannot be imported: {e}"
    if config.ENABLE_CUDASIM:
        return Device("cuda", simulator=True, gpu_name="CUDA simulator"), f"{SIMULATOR_ENV}=1: only the CUDA simulator"
    try:
        if not cuda.is_available():
            return None, f"numba.cuda.is_available() is False: {_first_line(cuda.cuda_error() or 'no driver')}"
        gpu = cuda.get_current_device()
        name = gpu.name.decode() if isinstance(gpu.name, bytes) else str(gpu.name)
        total = int(cuda.current_context().get_memory_info()[1])
    except Exception as e:  # a driver that fails on first use: numba raises several types
        return None, f"the CUDA driver failed: {_first_line(e) or type(e).__name__}"
    return Device("cuda", gpu_name=name, gpu_memory=total), ""


def resolve_device(request: str = "cpu") -> Device:
    """The Device for "cpu", "cuda" or "auto" (module docstring); DeviceError where the request cannot be met."""
    if request not in DEVICES:
        raise DeviceError(f"device = {request!r}; expected one of {DEVICES}")
    if request == "cpu":
        return CPU_DEVICE
    found, why = _probe()
    gpu = found if found is not None and not found.simulator else None
    if request == "auto":
        if gpu is not None:
            return replace(gpu, reason=f"auto: CUDA GPU {gpu.gpu_name}")
        if strict():
            raise DeviceError(f"auto: no CUDA GPU ({why}) and {STRICT_ENV}=1 forbids the CPU fallback")
        return Device("cpu", reason=f"auto: no CUDA GPU ({why}): running on the CPU")
    if gpu is not None:
        return replace(gpu, reason=f"cuda: CUDA GPU {gpu.gpu_name}")
    if found is not None and not strict():
        return replace(found, reason=f"cuda: no GPU, running on numba's CUDA simulator ({SIMULATOR_ENV}=1)")
    if found is not None:
        raise DeviceError(f"cuda: no CUDA GPU ({why}) and {STRICT_ENV}=1 forbids the simulator")
    hint = "" if strict() else f"; {SIMULATOR_ENV}=1 runs the CUDA kernels on numba's simulator"
    raise DeviceError(f"cuda: no usable CUDA GPU ({why}){hint}")
