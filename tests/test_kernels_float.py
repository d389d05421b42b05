"""Float kernels (norm, rope, activation, attention) against plain numpy twins of the same documented order
(tests/float_twins.py; the dots and matmuls are in tests/test_kernels_dense.py).

Every ggml-order kernel is compared bit for bit: the twins follow docs/NUMERICS.md §4 step by step in numpy float32,
with FMA emulated as f32(f64·f64 + f64) (exact product; a double-rounding case would show up as a failure of a seeded
case, not as flakiness). The "bitnet"-profile kernels (f32 sums, direct RoPE, libm expf) are compared the same way.
The tests marked `llama` also compare against ggml's own exported vec functions (libggml-cpu of llama-cpp-python),
bit for bit where the profile emulates what that build was compiled for (crossval.build.ReferenceBuild), by closeness
otherwise.
"""

from __future__ import annotations

import ctypes
import os
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from float_twins import (  # the numpy twins and helpers these tests compare with
    F32,
    F64,
    LANES,
    assert_same_bits,
    bits_values,
    twin_attention,
    twin_attention_blocked,
    twin_rmsnorm,
    twin_rope_direct,
    twin_rope_iterative,
    twin_swiglu,
    twin_v_expf,
    twin_vec_dot,
    twin_vec_dot_dpbf16,
)
from numba import njit

from bitnet_ref.formats import BF16
from bitnet_ref.kernels import activation, attention, dense, norm, rope
from bitnet_ref.kernels.scalar import powf
from bitnet_ref.numerics import PROFILES

# ----------------------------------------------------------------------------------------------------------------------
# tests: elementwise and norm


@pytest.mark.parametrize("T", [5, 37])  # one thread; the rows spread over the thread pool (T > SERIAL_ROWS)
@pytest.mark.parametrize("double_sum", [True, False])
def test_rmsnorm_matches_twin(double_sum, T):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((T, 384)) * rng.uniform(0.01, 30, (T, 1))).astype(F32)
    x[3] = 0  # all-zero row: scale = 1/sqrt(eps)
    w = (1 + 0.1 * rng.standard_normal(384)).astype(F32)
    out = np.empty_like(x)
    norm.rmsnorm(x, w, 1e-5, double_sum, out)
    assert_same_bits(out, twin_rmsnorm(x, w, 1e-5, double_sum), f"rmsnorm double_sum={double_sum}")
    assert np.all(out[3] == 0)


@pytest.mark.parametrize("T", [3, 20])
def test_rmsnorm_in_place(T):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, 100)).astype(F32)
    w = rng.standard_normal(100).astype(F32)
    want = np.empty_like(x)
    norm.rmsnorm(x, w, 1e-6, True, want)
    norm.rmsnorm(x, w, 1e-6, True, x)
    assert_same_bits(x, want, "rmsnorm in place")


@pytest.mark.parametrize("lanes", LANES)
def test_v_expf_matches_twin_and_edges(lanes):
    xs = np.concatenate(
        [
            np.linspace(-110, 95, 20001, dtype=F32),
            np.array([0, -0.0, np.inf, -np.inf, np.nan, -87.3, 88.72, -103.9, 1e-30], F32),
        ]
    )
    got = np.empty((1, xs.size), F32)
    _expf_all(xs, lanes, got)
    want = twin_v_expf(xs, lanes)
    assert_same_bits(got[0], want, f"v_expf lanes={lanes}")
    ok = (xs > -80) & (xs < 80)
    rel = np.abs(got[0][ok].astype(F64) / np.exp(xs[ok].astype(F64)) - 1)
    assert rel.max() < 3e-7, rel.max()
    assert got[0][-7] == np.inf and got[0][-6] == 0 and np.isnan(got[0][-5])


@njit(cache=True)
def _expf_all(xs, lanes, out):
    """out[0, i] = v_expf(xs[i]) (the lane function on its own)."""
    for i in range(xs.shape[0]):
        out[0, i] = activation.v_expf(xs[i], lanes)


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("n", [8, 53, 512])
@pytest.mark.parametrize("T", [3, 11])  # serial, and over the thread pool beyond actquant.SERIAL_ROWS
def test_swiglu_matches_twin(lanes, n, T):
    rng = np.random.default_rng(n)
    gate = (rng.standard_normal((T, n)) * 8).astype(F32)
    gate[0, :4] = [-200, 200, 0, -0.0]
    up = rng.standard_normal((T, n)).astype(F32)
    for kind in (activation.EXP_GGML, activation.EXP_LIBM, activation.EXP_GLIBC):  # glibc's: libm's on glibc hosts
        out = np.empty_like(gate)
        activation.swiglu(gate, up, lanes, kind, out)
        want = twin_swiglu(gate, up, lanes, kind == activation.EXP_GGML)
        assert_same_bits(out, want, f"swiglu n={n} lanes={lanes} exp={kind}")


@njit(cache=True)
def _exp_kind_all(x, kind):
    """activation.exp_of of kind EXP_GLIBC or EXP_LIBM (the process's libm) over an array."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = activation.exp_of(x[i], kind, 8)
    return out


def _expf_glibc_twin(x: float) -> np.float32:
    """glibc's expf algorithm in Python doubles, each fused a·b + c as one exact rational rounded once."""

    def fma_d(a, b, c):
        return float(Fraction(a) * Fraction(b) + Fraction(c))

    b = int(np.float32(x).view(np.uint32))
    top = (b >> 20) & 0x7FF
    if top > 0x42A:
        if b == 0xFF800000:
            return F32(0)
        if top > 0x7F7:
            return F32(x) + F32(x)
        if x > float.fromhex("0x1.62e42ep6"):
            return F32(np.inf)
        if x < -float.fromhex("0x1.9fe368p6"):
            return F32(0)
        if x < -float.fromhex("0x1.9d1d9ep6"):
            return F32(2.0**-149)
    inv_ln2_n = float.fromhex("0x1.71547652b82fep+0") * 32
    shift = float.fromhex("0x1.8p52")
    kd = fma_d(inv_ln2_n, x, shift)
    ki = int(np.float64(kd).view(np.uint64))
    kd -= shift
    r = fma_d(inv_ln2_n, x, -kd)
    k = ki & 31
    with localcontext() as ctx:
        ctx.prec = 40
        two_k = float(Decimal(2) ** (Decimal(k) / 32))  # the nearest double to 2^(k/32)
    s = float(np.uint64((int(np.float64(two_k).view(np.uint64)) - (k << 47) + (ki << 47)) % 2**64).view(np.float64))
    z = fma_d(r, float.fromhex("0x1.c6af84b912394p-5") / 32**3, float.fromhex("0x1.ebfce50fac4f3p-3") / 32**2)
    y = fma_d(z, r * r, fma_d(r, float.fromhex("0x1.62e42ff0c52d6p-1") / 32, 1.0))
    return F32(y * s)


def _expf_inputs(rng: np.random.Generator, n_random: int) -> np.ndarray:
    """Every region of expf's input: zeros, infinities, a NaN, subnormals, the special-case bounds and their
    neighbours, ±88, a grid over [-104, 89], and random bit patterns."""
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, -1e-40, 88.0, -88.0, 88.72, -103.28, -103.97]
    for hx in ("0x1.62e42ep6", "-0x1.9fe368p6", "-0x1.9d1d9ep6"):
        v = F32(float.fromhex(hx))
        edges += [np.nextafter(v, F32(-np.inf)), v, np.nextafter(v, F32(np.inf))]
    grid = np.linspace(-104, 89, 20001, dtype=F32)
    bits = rng.integers(0, 2**32, n_random, dtype=np.uint64).astype(np.uint32).view(F32)
    return np.concatenate([np.array(edges, F32), grid, bits])


def test_expf_glibc_matches_libm_and_its_twin():
    """expf_glibc is the C library's expf bit for bit (every test host runs glibc), and on a smaller sample the same
    algorithm computed with exact rational FMAs, which holds whatever the host's libm."""
    x = _expf_inputs(np.random.default_rng(5), 1 << 22)
    glibc, libm = activation.EXP_GLIBC, activation.EXP_LIBM
    assert_same_bits(_exp_kind_all(x, glibc), _exp_kind_all(x, libm), "expf_glibc vs libm expf")
    small = _expf_inputs(np.random.default_rng(6), 2000)[::7]
    want = np.array([_expf_glibc_twin(float(v)) for v in small], F32)
    assert_same_bits(_exp_kind_all(small, glibc), want, "expf_glibc vs its rational twin")


@njit(cache=True)
def _expf_glibc_inplace_of(x, n0):
    """activation.expf_glibc_inplace over a copy of x[n0:] (n0 shifts the chunks of 8 against the data)."""
    out = x[n0:].copy()
    activation.expf_glibc_inplace(out, out.shape[0])
    return out


def test_expf_glibc_vector_path_matches_libm_and_its_twin():
    """expf_glibc_inplace takes chunks of 8 in the main path's range through the vector form and the rest element by
    element: every element is libm's expf bit for bit, at two chunk offsets, over inputs where special values fall
    among ordinary ones and over sorted in-range runs (whole chunks vectorized); a sample matches the rational twin."""
    x = _expf_inputs(np.random.default_rng(7), 1 << 21)
    x = np.concatenate([x, np.sort(x[np.abs(x) < 88])])
    for n0 in (0, 3):
        assert_same_bits(_expf_glibc_inplace_of(x, n0), _exp_kind_all(x[n0:], activation.EXP_LIBM),
                         f"expf_glibc_inplace vs libm expf, offset {n0}")
    small = np.sort(_expf_inputs(np.random.default_rng(8), 2000)[::7])
    want = np.array([_expf_glibc_twin(float(v)) for v in small], F32)
    assert_same_bits(_expf_glibc_inplace_of(small, 0), want, "expf_glibc_inplace vs the rational twin")


def test_relu2_add_scale():
    rng = np.random.default_rng(3)
    g, u = rng.standard_normal((2, 4, 33)).astype(F32)
    out = np.empty_like(g)
    activation.relu2_glu(g, u, out)
    r = np.maximum(g, F32(0))
    assert_same_bits(out, (r * r) * u, "relu2_glu")
    activation.add(g, u, out)
    assert_same_bits(out, g + u, "add")
    activation.scale(out, F32(0.75))
    assert_same_bits(out, (g + u) * F32(0.75), "scale")


def test_rope_iterative_matches_twin():
    rng = np.random.default_rng(4)
    n_head, hd, n_rot = 3, 64, 48
    x = rng.standard_normal((4, n_head * hd)).astype(F32)
    pos = np.array([0, 1, 77, 4095], np.int32)
    ts = powf(500000.0, F32(-2.0) / F32(n_rot))
    out = np.empty_like(x)
    rope.neox(x, pos, n_head, hd, n_rot, ts, out)
    assert_same_bits(out, twin_rope_iterative(x, pos, n_head, hd, n_rot, ts), "rope neox iterative")
    assert_same_bits(out[:, n_rot:hd], x[:, n_rot:hd], "rope pass-through dims")
    assert_same_bits(out[0], x[0], "rope at position 0 is the identity")


def test_rope_direct_matches_twin():
    rng = np.random.default_rng(5)
    n_head, hd = 2, 32
    x = rng.standard_normal((3, n_head * hd)).astype(F32)
    pos = np.array([3, 100, 2000], np.int32)
    inv = rope.inv_freq(10000.0, hd)
    assert inv.dtype == F32 and inv[0] == 1
    out = np.empty_like(x)
    rope.neox_direct(x, pos, n_head, hd, hd, inv, out)
    assert_same_bits(out, twin_rope_direct(x, pos, n_head, hd, hd, inv), "rope neox direct")


# ----------------------------------------------------------------------------------------------------------------------
# tests: attention


@pytest.mark.parametrize("profile", ["ggml", "bitnet"])
@pytest.mark.parametrize(
    "T,start_pos,n_head,hd",
    [(1, 0, 4, 32), (1, 40, 4, 32), (5, 0, 4, 32), (4, 37, 4, 20), (12, 300, 24, 32), (40, 270, 8, 32), (3, 5, 6, 12)],
)
def test_attention_matches_twin(profile, T, start_pos, n_head, hd):
    """ggml's orders (ggml profile) and the blocked sequential order (bitnet profile: several query blocks, serial and
    parallel; rows 4 at a time with 8-wide registers and their leftover rows, keys and dims; K read in place from
    tiles whose last one runs past the keys) against their twins, bit for bit, with NaN in every cell not written."""
    nm = PROFILES[profile]
    rng = np.random.default_rng(T * 100 + start_pos)
    n_head_kv, n_ctx = 2, 320
    assert (T * (start_pos + T) * n_head * hd >= attention.PARALLEL_WORK) == (T >= 12)  # both paths covered
    n = start_pos + T
    k_new = (rng.standard_normal((n, n_head_kv * hd)) * 2).astype(F32)
    v_new = rng.standard_normal((n, n_head_kv * hd)).astype(F32)
    q = (rng.standard_normal((T, n_head * hd)) * 2).astype(F32)
    dtype = np.uint16 if nm.kv_dtype == "f16" else F32
    blocked = nm.attention == "blocked"
    k_shape, v_shape = attention.kv_layout(n_ctx, n_head_kv * hd, blocked)
    stale = F32(np.nan) if dtype == F32 else np.uint16(0x7E00)  # cells past the keys hold NaN: never read into sums
    k_cache, v_cache = np.full(k_shape, stale, dtype), np.full(v_shape, stale, dtype)
    attention.store_kv(k_new, v_new, 0, k_cache, v_cache, blocked)
    batched = nm.float_dot == "ggml" and T >= 2
    args = (
        start_pos,
        n_head,
        n_head_kv,
        hd,
        F32(1 / np.sqrt(F32(hd))),
        batched and hd % nm.lanes == 0,
        batched and hd % 4 == 0,
        nm.lanes,
        nm.round_q_f16,
        nm.round_softmax_f16,
        nm.expf == "ggml_v_expf",
        nm.softmax_sum == "double_chunks",
    )
    kernel_args = (*args[1:10], activation.EXP_KINDS[nm.expf], *args[11:])
    out = np.full((T, n_head * hd), np.nan, F32)
    attention.attend(q, k_cache, v_cache, start_pos, attention.AttentionSettings(*kernel_args, blocked), out)
    kf = k_new.astype(np.float16).astype(F32) if dtype == np.uint16 else k_new
    vf = v_new.astype(np.float16).astype(F32) if dtype == np.uint16 else v_new
    want = twin_attention_blocked(q, kf, vf, *args[:5]) if blocked else twin_attention(q, kf, vf, *args)
    assert_same_bits(out, want, f"attention {profile} T={T} start={start_pos}")


@njit(cache=True)
def _work_items(nqb, n_kv):
    return [attention._work_item(i, nqb, n_kv) for i in range(nqb * n_kv)]


@pytest.mark.parametrize("nqb", [1, 2, 3, 32, 33])
@pytest.mark.parametrize("n_kv", [1, 5])
def test_blocked_work_items_cover_every_block_once_and_balance(nqb, n_kv):
    """The blocked order's work items are each (KV head, query block) exactly once, and the first half of them (one
    thread's share of two) holds half the work, a block costing its index + 1, to within one block per head (query
    blocks in order would split 32 blocks of one head 136 : 392)."""
    items = _work_items(nqb, n_kv)
    assert sorted(items) == [(g, qb) for g in range(n_kv) for qb in range(nqb)]
    cost = [qb + 1 for _, qb in items]
    half = len(items) // 2
    assert abs(sum(cost[:half]) - sum(cost[half:])) <= n_kv * (nqb + 1)


def test_attention_single_cell_is_v():
    k = np.ones((1, 8), F32)
    v = np.arange(8, dtype=F32)[None]
    out = np.empty((1, 8), F32)
    for blocked in (False, True):
        k_shape, v_shape = attention.kv_layout(4, 8, blocked)
        kc, vc = np.zeros(k_shape, F32), np.zeros(v_shape, F32)
        attention.store_kv(k, v, 0, kc, vc, blocked)
        settings = attention.AttentionSettings(1, 1, 8, F32(0.5), False, False, 8, False, False, not blocked,
                                               not blocked, blocked)
        attention.attend(np.ones((1, 8), F32), kc, vc, 0, settings, out)
        assert_same_bits(out, v, f"softmax over one cell is 1 (blocked {blocked})")


# ----------------------------------------------------------------------------------------------------------------------
# against ggml's own exported vec functions (this host's llama-cpp-python build)


def _ggml_cpu():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cpu.so.0"))
    lib.ggml_cpu_init()  # fills the f16 table the scalar leftovers use
    P = ctypes.c_void_p
    for name in ("ggml_vec_dot_f16", "ggml_vec_dot_f32", "ggml_vec_dot_bf16"):
        getattr(lib, name).argtypes = [
            ctypes.c_int,
            P,
            ctypes.c_size_t,
            P,
            ctypes.c_size_t,
            P,
            ctypes.c_size_t,
            ctypes.c_int,
        ]
    lib.ggml_vec_soft_max_f32.argtypes = [ctypes.c_int, P, P, ctypes.c_float]
    lib.ggml_vec_soft_max_f32.restype = ctypes.c_double
    lib.ggml_vec_swiglu_f32.argtypes = [ctypes.c_int, P, P, P]
    return lib


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def reference_build():
    """What this llama-cpp-python build was compiled for, and the emulation the ggml profile picks for it."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from crossval.build import ReferenceBuild

    return ReferenceBuild.from_system_info(llama_cpp.llama_print_system_info().decode())


BF16_VARIANTS = {"avx2": dense.VEC_BF16_AVX2, "avx512": dense.VEC_BF16_AVX512, "avx512bf16": dense.VEC_BF16_DPBF16}


@pytest.mark.llama
def test_dots_softmax_swiglu_match_ggml_exports():
    """Bit for bit where the ggml profile emulates this build (simd from its system info, not from the host); for a
    build it does not emulate, only close (|Δ| ≤ 1e-5 of the magnitudes summed): exactness is not claimed there."""
    lib = _ggml_cpu()
    build = reference_build()
    nm = PROFILES["ggml"].replace(**build.numerics_changes())  # the host's guess where the build is not emulated
    lanes = nm.lanes

    def check(got, want, scale, what):
        if build.simd is not None:
            assert_same_bits(got, want, f"{what} ({build.simd})")
        else:
            err = np.abs(got.astype(F64) - want)
            assert np.all(err <= 1e-5 * scale), f"{what}: max |Δ| {err.max()} ({build.why_not})"

    rng = np.random.default_rng(8)
    for n in (64, 77, 128, 2560, 2563):
        a = (rng.standard_normal((20, n)) * 3).astype(F32)
        b = rng.standard_normal(n).astype(F32)
        a16, b16 = a.astype(np.float16), b.astype(np.float16)
        ab, bb = BF16.encode(a).view(np.uint16).reshape(20, n), BF16.encode(b).view(np.uint16)
        for name, x, y, xf, yf, variant in (
            ("f16", a16, b16, a16.astype(F32), b16.astype(F32), dense.VEC_F16),
            ("f32", a, b, a, b, dense.VEC_F32),
            ("bf16", ab, bb, bits_values(ab), bits_values(bb), BF16_VARIANTS[nm.simd]),
        ):
            s = np.zeros(1, F32)
            want = np.empty(20, F32)
            for m in range(20):
                row = np.ascontiguousarray(x[m])
                getattr(lib, f"ggml_vec_dot_{name}")(n, _ptr(s), 0, _ptr(row), 0, _ptr(y), 0, 1)
                want[m] = s[0]
            if variant == dense.VEC_BF16_DPBF16:
                ours = twin_vec_dot_dpbf16(xf, yf)
            else:
                ours = twin_vec_dot(xf, yf, lanes, variant)
            check(ours, want, np.abs(xf.astype(F64) * yf).sum(axis=1), f"ggml_vec_dot_{name} n={n}")
    for n in (256, 768):
        w = (rng.standard_normal(n) * 20).astype(F32)
        k = int(rng.integers(1, n))
        w[k:] = -np.inf
        y = np.zeros(n, F32)
        total = lib.ggml_vec_soft_max_f32(n, _ptr(y), _ptr(w), ctypes.c_float(w[:k].max()))
        ours = w[:k].copy()
        chunk = np.empty(16, F32)
        _softmax_run(ours, k, lanes, chunk)
        want = y[:k] * F32(1.0 / total)
        check(ours, want, np.abs(want), f"softmax n={n}")
    gate = (rng.standard_normal(1003) * 10).astype(F32)
    up = rng.standard_normal(1003).astype(F32)
    y = np.zeros(1003, F32)
    lib.ggml_vec_swiglu_f32(1003, _ptr(y), _ptr(gate), _ptr(up))
    out = np.empty((1, 1003), F32)
    activation.swiglu(gate[None], up[None], lanes, True, out)
    check(out[0], y, np.abs(y), "ggml_vec_swiglu_f32")


@njit(cache=True)
def _softmax_run(w, n, lanes, chunk):
    """attention's ggml softmax on one row, in place."""
    attention._softmax(w, n, lanes, True, True, chunk)
