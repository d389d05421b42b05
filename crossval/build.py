"""What the reference was built for, and what of it the ggml profile emulates.

llama.cpp reports its compile-time CPU features as one line (`llama_print_system_info()`, e.g.
`CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | ... | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |`). Its
float kernels follow those flags, not the host's: a wheel built elsewhere, or with other CMAKE_ARGS, computes what it
was compiled for. The ggml profile picks its lane widths, reduction trees and BF16 dot from this line
(docs/NUMERICS.md §4, docs/NUMERICS-AVX2.md, docs/NUMERICS-AVX512.md §0); a build it does not emulate is named, never
guessed.

Weights that llama.cpp moved to an extra buffer type (CPU_REPACK's interleaved layouts, AMX tiles) run other kernels
than the plain CPU path the profile emulates; `weight_paths` names them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

PLAIN_BUFFERS = ("CPU", "CPU_Mapped")  # the plain CPU path: host memory (mmapped or allocated) read by ggml-cpu


def parse_system_info(text: str) -> dict[str, str]:
    """`NAME = value | ...` pairs of every backend in llama.cpp's system-info line (the backend names dropped)."""
    out: dict[str, str] = {}
    for part in text.split("|"):
        name, sep, value = part.rpartition("=")
        if sep:
            out[name.split(":")[-1].strip()] = value.strip()
    return out


@dataclass(frozen=True)
class ReferenceBuild:
    """llama.cpp's CPU build as it reports it, and the ggml profile's emulation of it (simd None: not emulated)."""

    system_info: str
    features: dict[str, str]
    simd: str | None  # "avx2" | "avx512" | "avx512bf16": the Numerics.simd that reproduces this build
    float_dot: str  # "ggml": tinyBLAS for >= 2 columns (LLAMAFILE = 1) | "fixed": vec_dot for every column
    why_not: str  # empty when emulated; else one line saying what the build is and what the profile emulates

    @classmethod
    def from_system_info(cls, text: str) -> ReferenceBuild:
        """Decide the emulation from the system-info line: x86 with AVX2+FMA+F16C (8 lanes) or AVX-512F (16 lanes,
        with AVX512_BF16's vdpbf16ps in the BF16 dots); anything else is not emulated."""
        feats = parse_system_info(text)

        def on(name: str) -> bool:
            return feats.get(name) == "1"

        simd, why = None, ""
        if on("AVX512") and on("FMA") and on("F16C"):
            simd = "avx512bf16" if on("AVX512_BF16") else "avx512"
        elif on("AVX2") and on("FMA") and on("F16C"):
            simd = "avx2"
        else:
            flags = " ".join(k for k, v in feats.items() if v == "1") or "no SIMD flags"
            why = f"llama.cpp built for [{flags}]; the ggml profile emulates x86 AVX2+FMA+F16C and AVX-512 builds"
        return cls(text.strip(), feats, simd, "ggml" if on("LLAMAFILE") else "fixed", why)

    def numerics_changes(self) -> dict[str, str]:
        """The Numerics fields (simd, float_dot) that make a profile follow this build; empty when not emulated."""
        return {"simd": self.simd, "float_dot": self.float_dot} if self.simd else {}

    def ggml_numerics(self):
        """The ggml numerics profile following this build (bitnet_ref.numerics.Numerics)."""
        from bitnet_ref.numerics import resolve

        return resolve("ggml").replace(**self.numerics_changes())

    def describe(self) -> dict:
        """For records: the line, the features and the emulation chosen."""
        return {"system_info": self.system_info, "features": self.features, "emulated_simd": self.simd,
                "float_dot": self.float_dot,
                "not_emulated": self.why_not or None}


def weight_paths(buffers: dict[str, str]) -> str:
    """One line naming the weights that sit in extra buffer types (empty when all are plain CPU buffers), e.g.
    `llama.cpp used AMX for 14 weights (blk.0.attn_q.weight, ...)`."""
    extra: dict[str, list[str]] = {}
    for weight, buf in buffers.items():
        if buf not in PLAIN_BUFFERS:
            extra.setdefault(buf, []).append(weight)
    parts = []
    for buf, names in sorted(extra.items()):
        shown = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
        parts.append(f"{buf} for {len(names)} weight{'s' if len(names) > 1 else ''} ({shown})")
    return ("llama.cpp used " + "; ".join(parts)) if parts else ""


TILED_MM_ENV = "GGML_CPU_TILED_MM"  # llama.cpp reads it once; "0" (or non-numeric) disables the tiled kernels


def tiled_mm_enabled() -> bool:
    """Whether llama.cpp (which inherits this environment) runs its tiled IQ2_S kernel for ≥ 8 tokens: unless
    GGML_CPU_TILED_MM is set to a value C's atoi reads as 0."""
    value = os.environ.get(TILED_MM_ENV)
    if value is None:
        return True
    digits = re.match(r"\s*[+-]?\d+", value)
    return digits is not None and int(digits.group()) != 0
