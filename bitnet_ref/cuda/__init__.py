"""bitnet_ref on a CUDA GPU through numba's CUDA target: the `bitnet` numerics profile's forward pass (docs/GPU.md).

- arith.py: the f32 operations of the kernels, one rounding each, the same on a GPU and under numba's simulator.
- kernels.py: pure @cuda.jit kernels on device arrays (ternary matmuls on the packed bytes, int8 activation
  quantization, RMSNorm, RoPE, attention, gated FFN, the float head).
- forward.py: CudaModel, bitnet_ref.model.Model's surface (forward, kv, describe) with weights and KV cache on the GPU.

Importing this package does not import numba.cuda (`check_numerics` is plain Python); arith, kernels and forward do,
and model.load_model imports them only when the cuda device is requested.
"""

from __future__ import annotations

from bitnet_ref.errors import DeviceError
from bitnet_ref.formats import I2_S, TQ1_0, TQ2_0
from bitnet_ref.numerics import Numerics

FORMATS = (TQ2_0.NAME, TQ1_0.NAME, I2_S.NAME)  # the BitLinear formats with CUDA kernels (I2_S in the x86 layout)
PROFILE = "bitnet"  # the numerics profile the CUDA kernels compute

# the choices of the `bitnet` profile the CUDA kernels implement; a profile that differs in any of them has no kernels
CUDA_NUMERICS = {
    "bitlinear_input": "i8_token",
    "kv_dtype": "f32",
    "round_q_f16": False,
    "round_softmax_f16": False,
    "rmsnorm_sum": "f32",
    "rope_theta": "direct",
    "expf": "glibc",
    "softmax_sum": "f32",
    "float_dot": "fixed",
    "attention": "blocked",
}


def check_numerics(nm: Numerics) -> None:
    """DeviceError unless the profile's arithmetic is the one the CUDA kernels compute (the `bitnet` profile)."""
    wrong = {k: getattr(nm, k) for k, v in CUDA_NUMERICS.items() if getattr(nm, k) != v}
    if wrong:
        raise DeviceError(f"cuda: numerics {nm.name!r} has no CUDA kernels (only the 'bitnet' profile runs on the GPU; "
                          f"it differs in {wrong})")
