"""The reference's build decides the ggml profile's emulation: the system-info lines of the hosts this project runs on
(docs/NUMERICS.md §12.1, docs/NUMERICS-AVX512.md §0), builds it does not emulate, and weights in extra buffer types."""

import pytest

from bitnet_ref.numerics import PROFILES
from crossval import cases as C
from crossval import run as R
from crossval.build import ReferenceBuild, parse_system_info, weight_paths

AVX2_HOST = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | "
             "OPENMP = 1 | REPACK = 1 | ")
ZEN4_HOST = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
             "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
AMX_HOST = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
            "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | "
            "OPENMP = 1 | REPACK = 1 | ")
AVX512F_ONLY = "CPU : AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | LLAMAFILE = 1 | "
NO_LLAMAFILE = "CPU : AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | "
AVX_ONLY = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
ARM = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "


def test_parse_system_info():
    feats = parse_system_info("CPU : AVX = 1 | SVE_CNT = 16 | Metal : EMBED_LIBRARY = 1 | ")
    assert feats == {"AVX": "1", "SVE_CNT": "16", "EMBED_LIBRARY": "1"}
    assert parse_system_info("") == {}


@pytest.mark.parametrize(("line", "simd", "float_dot"), [
    (AVX2_HOST, "avx2", "ggml"), (ZEN4_HOST, "avx512bf16", "ggml"), (AMX_HOST, "avx512bf16", "ggml"),
    (AVX512F_ONLY, "avx512", "ggml"), (NO_LLAMAFILE, "avx2", "fixed"),
])
def test_emulated_builds(line, simd, float_dot):
    build = ReferenceBuild.from_system_info(line)
    assert (build.simd, build.float_dot, build.why_not) == (simd, float_dot, "")
    nm = PROFILES["ggml"].replace(**build.numerics_changes())
    assert nm.simd == simd and nm.float_dot == float_dot and nm.lanes == (8 if simd == "avx2" else 16)
    assert build.describe()["emulated_simd"] == simd


@pytest.mark.parametrize("line", [AVX_ONLY, ARM, ""])
def test_unemulated_builds_say_so(line):
    build = ReferenceBuild.from_system_info(line)
    assert build.simd is None and build.numerics_changes() == {}
    assert build.why_not.startswith("llama.cpp built for [") and "emulates x86 AVX2+FMA+F16C" in build.why_not
    case = C.Case("tiny", "tq2_0", "hello", "ggml", 2)
    assert R.approx_reason(case, build, {}) == build.why_not
    assert R.approx_reason(C.Case("tiny", "tq2_0", "hello", "bitnet", 2), build, {}) == ""
    assert R.engine_numerics(case, build) == PROFILES["ggml"]


def test_weights_in_extra_buffers_are_named():
    plain = {"blk.0.attn_q.weight": "CPU_Mapped", "token_embd.weight": "CPU"}
    assert weight_paths(plain) == ""
    mixed = {**plain, "blk.0.ffn_up.weight": "AMX", "blk.1.ffn_up.weight": "AMX", "blk.2.ffn_up.weight": "AMX",
             "blk.0.ffn_down.weight": "CPU_REPACK"}
    line = weight_paths(mixed)
    assert line == ("llama.cpp used AMX for 3 weights (blk.0.ffn_up.weight, blk.1.ffn_up.weight, ...); "
                    "CPU_REPACK for 1 weight (blk.0.ffn_down.weight)")
    build = ReferenceBuild.from_system_info(AMX_HOST)
    case = C.Case("tiny", "q8_0", "hello", "ggml", 2)
    want = line + "; ggml profile emulates the plain CPU path"
    assert R.approx_reason(case, build, {"weight_buffers": mixed}) == want
    assert R.approx_reason(case, build, {"weight_buffers": plain}) == ""
