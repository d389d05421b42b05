"""The f32 operations of the CUDA kernels, each rounded once, the same on a GPU and under numba's CUDA simulator.

On a GPU, NVVM contracts `a*b + c` into one FMA by default; the CPU engine's `bitnet` profile rounds the product and
the sum separately. So the kernels spell every float operation whose rounding matters through these helpers:
libdevice's `__nv_f{add,sub,mul,div}_rn` (never contracted), `fmaf_rn` where the CPU fuses, `fsqrt_rn`. Under the
simulator (NUMBA_ENABLE_CUDASIM=1, no libdevice) the same operations are numpy float32 scalar operations, which
round once each; the simulator's own cuda.fma rounds twice, so `fma` here computes in double (the product is exact,
one rounding of the sum to double, one to f32: differs from a true FMA only where the double sum lands exactly on
an f32 rounding midpoint). `expf` is computed in double and rounded to f32 on both: glibc's expf (the CPU engine's) is
correctly rounded in all but rare cases, and so is this. (glibc's cosf/sinf are not: RoPE reads a table of them
computed on the host.)
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)


def device(fn):
    """A device function: @device on a GPU; under the simulator the plain Python function (the
    simulator's device functions swap module globals on every call, which costs more than the arithmetic; the helpers
    decorated here use no cuda API, so they need no swap)."""
    return fn if SIMULATOR else cuda.jit(device=True)(fn)


_EXP_OVERFLOW = np.float32(89.0)  # expf(x) is +inf for every f32 x > 88.73
_INF = np.float32(np.inf)

if SIMULATOR:

    @device
    def add(a, b):
        return np.float32(a) + np.float32(b)

    @device
    def sub(a, b):
        return np.float32(a) - np.float32(b)

    @device
    def mul(a, b):
        return np.float32(a) * np.float32(b)

    @device
    def div(a, b):
        return np.float32(a) / np.float32(b)

    @device
    def fma(a, b, c):
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))

    @device
    def sqrt(a):
        return np.sqrt(np.float32(a))

    @device
    def rint(a):
        return np.rint(np.float32(a))

else:
    from numba.cuda import libdevice

    @device
    def add(a, b):
        return libdevice.fadd_rn(np.float32(a), np.float32(b))

    @device
    def sub(a, b):
        return libdevice.fsub_rn(np.float32(a), np.float32(b))

    @device
    def mul(a, b):
        return libdevice.fmul_rn(np.float32(a), np.float32(b))

    @device
    def div(a, b):
        return libdevice.fdiv_rn(np.float32(a), np.float32(b))

    @device
    def fma(a, b, c):
        return libdevice.fmaf_rn(np.float32(a), np.float32(b), np.float32(c))

    @device
    def sqrt(a):
        return libdevice.fsqrt_rn(np.float32(a))

    @device
    def rint(a):
        return libdevice.rintf(np.float32(a))


@device
def expf(x):
    """e^x of an f32, computed in double and rounded to f32 (+inf past f32's range, as expf)."""
    if x > _EXP_OVERFLOW:
        return _INF
    return np.float32(math.exp(np.float64(x)))

