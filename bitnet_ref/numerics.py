"""Numerics profiles: every choice that changes the arithmetic of a forward pass, explicit and recorded.

Two profiles (docs/NUMERICS.md §3, §4):
- "bitnet": the model's own semantics (paper / HF transformers / bitnet.cpp I2_S): per-token absmax int8 activations
  into every BitLinear (the seven projections, whatever the weights' storage), f32 everywhere else (the head
  included), f32 KV cache, direct θ^(−2i/d) RoPE.
- "ggml": what llama.cpp's CPU build computes per weight type, reduction orders included, so that the two engines can
  be compared near bit level. ggml's float reductions depend on what it was compiled for (AVX2: 8 lanes, AVX-512:
  16 lanes, AVX512_BF16: 16 lanes and vdpbf16ps in the BF16 dots); the profile records which build it emulates
  (`simd`: a guess from this host by default; a caller that knows the reference build replaces it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bitnet_ref import formats
from bitnet_ref.constants import GGMLType
from bitnet_ref.errors import ConfigError

ACTIVATION_KINDS = ("q8_k", "i8_token", "i8_lut", "f16", "bf16", "q8_0", "none")
KV_DTYPES = ("f16", "f32")
RMSNORM_SUMS = ("double", "f32")
ROPE_THETAS = ("iterative_f32", "direct")
EXPFS = ("ggml_v_expf", "libm", "glibc")
SOFTMAX_SUMS = ("double_chunks", "f32")
FLOAT_DOTS = ("ggml", "fixed")
SIMDS = ("avx2", "avx512", "avx512bf16")
ATTENTIONS = ("ggml", "blocked")


def host_simd() -> str:
    """The SIMD level ggml-cpu would be compiled for on this host with -march=native: "avx512bf16", "avx512" or "avx2"
    (a guess: the reference build's own system-info line, where known, decides)."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    if features.get("avx512f", False) and features.get("avx512dq", False):
        return "avx512bf16" if features.get("avx512bf16", False) else "avx512"
    return "avx2"


@dataclass(frozen=True)
class Numerics:
    """One explicit set of arithmetic choices; see the module docstring and docs/NUMERICS.md."""

    name: str
    # activation format fed to each weight type's linear: (weight type name, kind) pairs, kind in ACTIVATION_KINDS
    activation: tuple[tuple[str, str], ...]
    kv_dtype: str  # "f16": K/V stored rounded to f16 (ggml default) | "f32"
    round_q_f16: bool  # Q rounded to f16 before q·k (ggml's kq mul_mat converts src1 to the K cache type)
    round_softmax_f16: bool  # softmax probabilities rounded to f16 before P·V
    rmsnorm_sum: str  # "double": Σ f32(x²) in a double (ggml) | "f32"
    rope_theta: str  # "iterative_f32": θ_{i+1} = θ_i·powf(base, −2/n_rot) in f32 (ggml) | "direct": pos·base^(−2i/d)
    # "ggml_v_expf": ggml's SIMD polynomial (tails in libm expf) | "libm": the process's libm expf everywhere |
    # "glibc": glibc's expf algorithm (FMA build) everywhere, in-house (kernels/activation.py: libm's on glibc hosts)
    expf: str
    softmax_sum: str  # "double_chunks": each SIMD chunk reduced in f32, then summed in double (ggml) | "f32"
    float_dot: str  # "ggml": vec_dot order for one column, tinyBLAS order for ≥ 2 | "fixed": vec_dot order always
    simd: str  # "avx2" | "avx512" | "avx512bf16": lane count, reduction trees and BF16 dot of ggml's float kernels
    # the activation kind every BitLinear (the seven projections of a layer) takes whatever its weights' storage
    # ("i8_token": BitNet's per-token int8, also for F32/F16/BF16/Q8_0 weights); None: each weight type's own kind
    bitlinear_input: str | None = None
    # attention's summation order: "ggml" (vec_dot / tinyBLAS per query and head, kernels/attention.py) | "blocked"
    # (plain sequential sums, computed for blocks of queries at once; needs the f32 cache, libm or glibc expf, f32 sums)
    attention: str = "ggml"

    def __post_init__(self) -> None:
        checks = (
            ("kv_dtype", self.kv_dtype, KV_DTYPES),
            ("rmsnorm_sum", self.rmsnorm_sum, RMSNORM_SUMS),
            ("rope_theta", self.rope_theta, ROPE_THETAS),
            ("expf", self.expf, EXPFS),
            ("softmax_sum", self.softmax_sum, SOFTMAX_SUMS),
            ("float_dot", self.float_dot, FLOAT_DOTS),
            ("simd", self.simd, SIMDS),
            ("attention", self.attention, ATTENTIONS),
        )
        for field, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"Numerics {self.name!r}: {field} = {value!r}; expected one of {allowed}")
        plain = (self.kv_dtype, self.round_q_f16, self.round_softmax_f16, self.expf != "ggml_v_expf", self.softmax_sum)
        if self.attention == "blocked" and plain != ("f32", False, False, True, "f32"):
            raise ConfigError(
                f"Numerics {self.name!r}: attention = 'blocked' needs kv_dtype f32, no f16 rounding of Q or P, libm "
                f"or glibc expf and f32 softmax sums; got kv_dtype={self.kv_dtype} round_q_f16={self.round_q_f16} "
                f"round_softmax_f16={self.round_softmax_f16} expf={self.expf} softmax_sum={self.softmax_sum}"
            )
        if self.bitlinear_input not in (None, *ACTIVATION_KINDS):
            raise ConfigError(f"Numerics {self.name!r}: bitlinear_input = {self.bitlinear_input!r}")
        for type_name, kind in self.activation:
            if type_name not in GGMLType.__members__ or kind not in ACTIVATION_KINDS:
                raise ConfigError(f"Numerics {self.name!r}: activation {type_name}={kind!r} is not a known pair")

    @property
    def lanes(self) -> int:
        """f32 lanes of one SIMD register in ggml's kernels: 8 (AVX2) or 16 (AVX-512, with or without AVX512_BF16)."""
        return 16 if self.simd in ("avx512", "avx512bf16") else 8

    def activation_for(self, weight_type: GGMLType, bitlinear: bool = False) -> str | None:
        """The activation kind fed to a linear of this weight type (a BitLinear projection: bitlinear_input where the
        profile sets one), or None when the profile has no kernel for it."""
        if bitlinear and self.bitlinear_input is not None:
            return self.bitlinear_input
        return dict(self.activation).get(GGMLType(weight_type).name)

    def replace(self, **changes: object) -> Numerics:
        """A copy with some choices changed (the name should say so)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """Every choice as plain data, for records."""
        out = dataclasses.asdict(self)
        out["activation"] = dict(self.activation)
        out["lanes"] = self.lanes
        return out

    def __str__(self) -> str:
        acts = " ".join(f"{t}={k}" for t, k in self.activation)
        return (
            f"{self.name}: act[{acts}] kv={self.kv_dtype} q_f16={self.round_q_f16} p_f16={self.round_softmax_f16} "
            f"rmsnorm_sum={self.rmsnorm_sum} rope={self.rope_theta} expf={self.expf} softmax_sum={self.softmax_sum} "
            f"float_dot={self.float_dot}/{self.simd} bitlinear_input={self.bitlinear_input or 'per type'} "
            f"attention={self.attention}"
        )


def _ggml(simd: str) -> Numerics:
    return Numerics(
        name="ggml",
        activation=tuple((t.name, f.VEC_DOT_TYPE) for t, f in formats.REGISTRY.items() if f.VEC_DOT_TYPE),
        kv_dtype="f16",
        round_q_f16=True,
        round_softmax_f16=True,
        rmsnorm_sum="double",
        rope_theta="iterative_f32",
        expf="ggml_v_expf",
        softmax_sum="double_chunks",
        float_dot="ggml",
        simd=simd,
    )


def _bitnet(simd: str) -> Numerics:
    return Numerics(
        name="bitnet",
        # the head and the embedding take f32 as stored; every BitLinear projection takes per-token int8 (below)
        activation=tuple((t.name, "i8_token" if f.TERNARY else "none") for t, f in formats.REGISTRY.items()),
        bitlinear_input="i8_token",  # BitLinear quantizes its input whatever the weights' storage (docs/NUMERICS.md §3)
        kv_dtype="f32",
        round_q_f16=False,
        round_softmax_f16=False,
        rmsnorm_sum="f32",
        rope_theta="direct",
        expf="glibc",
        softmax_sum="f32",
        float_dot="fixed",
        simd=simd,
        attention="blocked",
    )


PROFILES: dict[str, Numerics] = {"bitnet": _bitnet(host_simd()), "ggml": _ggml(host_simd())}


def resolve(numerics: str | Numerics) -> Numerics:
    """A Numerics from a profile name or an instance; ConfigError naming the profiles otherwise."""
    if isinstance(numerics, Numerics):
        return numerics
    try:
        return PROFILES[numerics]
    except (KeyError, TypeError):
        raise ConfigError(f"numerics = {numerics!r}; expected one of {sorted(PROFILES)} or a Numerics") from None
