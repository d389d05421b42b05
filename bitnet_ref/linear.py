"""How a linear computes: out (T, M) = x (T, K) · Wᵀ, for W in its file format and x prepared for the profile.

Two tables own it. ACTIVATIONS: per activation kind of the numerics profile (numerics.ACTIVATION_KINDS), the scratch
arrays it needs and the kernel that fills them from x (rounded to f16/bf16, or quantized to Q8_K / Q8_0 / per-token
int8). KERNELS: per (weight format class, activation kind, device), the function that runs the product on the
weight's bytes in place (the format class, not the type id: I2_S has two layouts, formats.I2_S and formats.I2_S_ARM).
An input is prepared once per kind and shared by every linear that reads it (Q, K and V; gate and up): llama.cpp
converts it again for each matmul, with identical results. Adding a format, a kernel variant or a device is
one row in KERNELS (and one kernel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bitnet_ref import formats
from bitnet_ref.constants import GGMLType
from bitnet_ref.formats import Format
from bitnet_ref.kernels import actquant, dense, iq2s, lut, ternary
from bitnet_ref.numerics import Numerics

CPU = "cpu"


@dataclass(frozen=True)
class Activation:
    """One activation kind: the scratch arrays for B rows of K values, and the kernel that fills them from x."""

    buffers: Callable[[int, int], tuple[np.ndarray, ...]]
    fill: Callable[..., None] | None  # fill(x, *arrays); None: the kernel reads x itself


ACTIVATIONS: dict[str, Activation] = {
    # (qs i8 (B, K), d f32 (B, K/256), bsums i16 (B, K/16))
    "q8_k": Activation(lambda B, K: (np.zeros((B, K), np.int8), np.zeros((B, K // actquant.QK), np.float32),
                                     np.zeros((B, K // actquant.GROUP), np.int16)), actquant.quantize_q8_k),
    # (q i8 (B, K), s f32 (B,), act_sum i32 (B,))
    "i8_token": Activation(lambda B, K: (np.zeros((B, K), np.int8), np.zeros(B, np.float32), np.zeros(B, np.int32)),
                           actquant.quantize_i8_rows),
    # the same arrays, by bitnet.cpp's TL1/TL2 preprocessing (f32 127/max, no floor)
    "i8_lut": Activation(lambda B, K: (np.zeros((B, K), np.int8), np.zeros(B, np.float32), np.zeros(B, np.int32)),
                         actquant.quantize_lut_rows),
    # (qs i8 (B, K), d f32 (B, K/32))
    "q8_0": Activation(lambda B, K: (np.zeros((B, K), np.int8), np.zeros((B, K // dense.Q8_0_BLOCK), np.float32)),
                       dense.quantize_q8_0),
    "f16": Activation(lambda B, K: (np.zeros((B, K), np.float32),), dense.round_rows_f16),  # x rounded to f16
    "bf16": Activation(lambda B, K: (np.zeros((B, K), np.float32),), dense.round_rows_bf16),  # x rounded to bf16
    "none": Activation(lambda B, K: (), None),  # x as it is
}


@dataclass(frozen=True)
class Linear:
    """One weight matrix W (rows × cols = M × K) as a view into the file, its input's kind and its kernel."""

    name: str
    fmt: type[Format]  # the format class its bytes are read with (the layout chosen for I2_S)
    rows: int
    cols: int
    data: np.ndarray  # F16/BF16: uint16 bits (M·K); F32: f32 (M·K); block formats: the raw uint8 bytes
    activation: str  # the profile's activation kind for this weight type (numerics.ACTIVATION_KINDS)
    kernel: Callable  # KERNELS[(fmt, activation, device)]
    scale: float | None  # llama.cpp's optional 1-element `<proj>.scale`, multiplied onto the output
    params: tuple = ()  # what the kernel needs beyond the bytes: TL1/TL2 (BM, BK, bm, value of `<name>_scale`);
    # TQ1_0/TQ2_0 under int8 tokens (the one-run flags of its rows)

    @property
    def type(self) -> GGMLType:
        return self.fmt.TYPE


class Scratch:
    """Prepared-input arrays for up to n_rows rows, one set per (activation kind, K), allocated on first use."""

    def __init__(self, n_rows: int) -> None:
        self.n_rows = n_rows
        self._arrays: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}

    def arrays(self, kind: str, K: int, T: int) -> tuple[np.ndarray, ...]:
        """The first T rows of the arrays of one kind and width."""
        key = (kind, K)
        if key not in self._arrays:
            self._arrays[key] = ACTIVATIONS[kind].buffers(self.n_rows, K)
        return tuple(a[:T] for a in self._arrays[key])


@dataclass
class Input:
    """One linear input x (T, K) and its prepared forms, by activation kind."""

    x: np.ndarray  # (T, K)
    scratch: Scratch
    prepared: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

    def as_kind(self, kind: str) -> tuple[np.ndarray, ...]:
        """The arrays a kernel of this activation kind reads (prepared on first request)."""
        if kind not in self.prepared:
            fill = ACTIVATIONS[kind].fill
            if fill is None:
                self.prepared[kind] = (self.x,)
            else:
                T, K = self.x.shape
                arrays = self.scratch.arrays(kind, K, T)
                fill(self.x, *arrays)
                self.prepared[kind] = arrays
        return self.prepared[kind]


def apply(lin: Linear, inp: Input, numerics: Numerics, out: np.ndarray) -> None:
    """out (T, M) = x · Wᵀ by the linear's kernel on its prepared input (the `.scale` is the caller's step)."""
    lin.kernel(lin, inp.as_kind(lin.activation), numerics, out)


# -- kernels --------------------------------------------------------------------------------------------------------


def _float(matmul: Callable) -> Callable:
    """F32/F16 weights: vec_dot order for one column, tinyBLAS order for more (as the profile says)."""

    def run(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
        x = act[0]
        tiled = dense.use_tiled(nm.float_dot, x.shape[0], lin.rows, lin.cols, nm.lanes)
        matmul(lin.data, lin.rows, lin.cols, x, tiled, nm.lanes, out)

    return run


def _bf16(dpbf16: bool) -> Callable:
    """BF16 weights; dpbf16: bf16 activations on a build with AVX512_BF16 (vdpbf16ps in ggml_vec_dot_bf16 and
    tinyBLAS, whose K step is then DPBF16_KN), used only where the profile emulates such a build."""

    def run(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
        x = act[0]
        dp = dpbf16 and nm.simd == "avx512bf16"
        tiled = dense.use_tiled(nm.float_dot, x.shape[0], lin.rows, lin.cols, dense.DPBF16_KN if dp else nm.lanes)
        dense.matmul_bf16(lin.data, lin.rows, lin.cols, x, tiled, nm.lanes, dp, out)

    return run


def _q8_0(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
    """Q8_0 weights with Q8_0 activations (ggml's x86 quantizer and 8-lane dot)."""
    dense.matmul_q8_0(lin.data, lin.rows, lin.cols, *act, out)


def _q8_0_f32(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
    """Q8_0 weights with f32 activations (the "bitnet" profile: no activation quantization for float weights)."""
    dense.matmul_q8_0_f32(lin.data, lin.rows, lin.cols, act[0], nm.lanes, out)


def _bitlinear_float(bf16: bool) -> Callable:
    """F32/F16 (bf16 False) or BF16 weights under BitLinear's per-token int8 input (the bitnet profile)."""

    def run(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
        q, s, _ = act
        dense.matmul_float_i8(lin.data, lin.rows, lin.cols, bf16, q, s, out)

    return run


def _bitlinear_q8_0(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
    """Q8_0 weights under BitLinear's per-token int8 input (the bitnet profile)."""
    q, s, _ = act
    dense.matmul_q8_0_i8(lin.data, lin.rows, lin.cols, q, s, out)


def _packed(matmul: Callable) -> Callable:
    """Packed ternary or IQ2_S weights: an integer kernel on Q8_K blocks or per-token int8 activations."""

    def run(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
        matmul(lin.data, lin.rows, lin.cols, *act, out)

    return run


def _tq_bitlinear(matmul: Callable) -> Callable:
    """TQ1_0/TQ2_0 weights under BitLinear's per-token int8 input: the kernel reads which rows are one run of equal
    block d from `params` (ternary.one_run_rows, once at load time)."""

    def run(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
        matmul(lin.data, lin.rows, lin.cols, *act, out, ternary.DEFAULT_ISA, lin.params[0])

    return run


def _tl(matmul: Callable) -> Callable:
    """TL1/TL2 weights: bitnet.cpp's lookup-table product on the tiles, int8 rows (either TL or BitLinear quantizer)."""

    def run(lin: Linear, act: tuple[np.ndarray, ...], nm: Numerics, out: np.ndarray) -> None:
        q, s, _ = act
        bm_tile, bk, bm, scale = lin.params
        matmul(lin.data, lin.rows, lin.cols, bm_tile, bk, bm, q, s, np.float32(scale), out)

    return run


F = formats
KERNELS: dict[tuple[type[Format], str, str], Callable] = {
    (F.F32, "none", CPU): _float(dense.matmul_f32),
    (F.F16, "f16", CPU): _float(dense.matmul_f16),
    (F.F16, "none", CPU): _float(dense.matmul_f16),
    (F.BF16, "bf16", CPU): _bf16(dpbf16=True),
    (F.BF16, "none", CPU): _bf16(dpbf16=False),  # f32 activations: vdpbf16ps would need them in bf16
    (F.Q8_0, "q8_0", CPU): _q8_0,
    (F.Q8_0, "none", CPU): _q8_0_f32,
    (F.F32, "i8_token", CPU): _bitlinear_float(bf16=False),
    (F.F16, "i8_token", CPU): _bitlinear_float(bf16=False),
    (F.BF16, "i8_token", CPU): _bitlinear_float(bf16=True),
    (F.Q8_0, "i8_token", CPU): _bitlinear_q8_0,
    (F.IQ2_S, "q8_k", CPU): _packed(iq2s.matmul_iq2s_q8k),
    (F.IQ2_S, "i8_token", CPU): _packed(iq2s.matmul_iq2s_i8),
    (F.TQ1_0, "q8_k", CPU): _packed(ternary.matmul_tq1_0_q8k),
    (F.TQ1_0, "i8_token", CPU): _tq_bitlinear(ternary.matmul_tq1_0_i8),
    (F.TQ2_0, "q8_k", CPU): _packed(ternary.matmul_tq2_0_q8k),
    (F.TQ2_0, "i8_token", CPU): _tq_bitlinear(ternary.matmul_tq2_0_i8),
    (F.I2_S, "q8_k", CPU): _packed(ternary.matmul_i2s_q8k),
    (F.I2_S, "i8_token", CPU): _packed(ternary.matmul_i2s_i8),
    (F.I2_S_ARM, "q8_k", CPU): _packed(ternary.matmul_i2s_arm_q8k),
    (F.I2_S_ARM, "i8_token", CPU): _packed(ternary.matmul_i2s_arm_i8),
    (F.TL1, "i8_lut", CPU): _tl(lut.matmul_tl1),
    (F.TL1, "i8_token", CPU): _tl(lut.matmul_tl1),
    (F.TL2, "i8_lut", CPU): _tl(lut.matmul_tl2),
    (F.TL2, "i8_token", CPU): _tl(lut.matmul_tl2),
}


def check_weight(fmt: type[Format], raw: np.ndarray, M: int, K: int, kind: str, params: tuple = ()) -> None:
    """FormatError unless the bytes of an M x K weight in `fmt` fit its kernel for activation kind `kind`."""
    if fmt in (formats.TL1, formats.TL2):
        lut.check_tl(fmt.NAME, raw, M, K, fmt.Tiling(*params[:3]))
    elif fmt is formats.IQ2_S:
        iq2s.check_weight(raw, M, K)
    elif fmt.TERNARY:
        ternary.check_weight(fmt.NAME, raw, M, K, "q8k" if kind == "q8_k" else "i8")


def kernel_for(fmt: type[Format], kind: str | None, device: str = CPU) -> Callable | None:
    """The kernel for a weight format class, activation kind and device, or None when there is none."""
    return KERNELS.get((fmt, kind, device))
