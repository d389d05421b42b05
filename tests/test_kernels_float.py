"""Float kernels (norm, rope, attention, activation, dense) against plain numpy twins of the same documented order.

Every ggml-order kernel is compared bit for bit: the twins follow docs/NUMERICS.md §4 step by step in numpy float32,
with FMA emulated as f32(f64·f64 + f64) (exact product; a double-rounding case would show up as a failure of a seeded
case, not as flakiness). The "bitnet"-profile kernels (f32 sums, direct RoPE, libm expf) are compared the same way.
The tests marked `llama` also compare against ggml's own exported vec functions (libggml-cpu of llama-cpp-python),
bit for bit where the profile emulates what that build was compiled for (crossval.build.ReferenceBuild), by closeness
otherwise.

vdpbf16ps (BF16 dots on AVX512_BF16 builds) rounds after each of its two additions per lane and flushes denormals;
its twins round exactly on their own: a float64 sum checked exact by TwoSum, else Python fractions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from fractions import Fraction

import numpy as np
import pytest
from numba import njit

from bitnet_ref.formats import BF16, F16, Q8_0
from bitnet_ref.kernels import activation, attention, dense, norm, rope
from bitnet_ref.kernels.scalar import powf
from bitnet_ref.numerics import PROFILES

F32, F64 = np.float32, np.float64
LANES = (8, 16)
_LIBM = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
for _name in ("cosf", "sinf", "expf"):
    getattr(_LIBM, _name).argtypes = [ctypes.c_float]
    getattr(_LIBM, _name).restype = ctypes.c_float


def libm(name: str, x: np.ndarray) -> np.ndarray:
    """glibc f32 function applied elementwise (slow, for small twins)."""
    fn = getattr(_LIBM, name)
    return np.array([fn(float(v)) for v in np.asarray(x, F32).ravel()], F32).reshape(np.shape(x))


def fma(a, b, c) -> np.ndarray:
    """f32 fused multiply-add emulated in double: the product is exact, one rounding to f64, one to f32."""
    return (np.asarray(a, F32).astype(F64) * np.asarray(b, F32).astype(F64) + np.asarray(c, F32).astype(F64)).astype(
        F32
    )


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view, like the engine's memory-mapped weights (same numba specialization, one compile)."""
    v = a.view()
    v.setflags(write=False)
    return v


def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bit equality (NaN == NaN), failing with the worst element."""
    got, want = np.asarray(got, F32), np.asarray(want, F32)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        i = np.unravel_index(np.argmin(same), same.shape)
        n_bad = int((~same).sum())
        raise AssertionError(f"{what}: {n_bad}/{same.size} differ; first at {i}: got {got[i]!r}, want {want[i]!r}")


# ----------------------------------------------------------------------------------------------------------------------
# numpy twins


def twin_rmsnorm(x, w, eps, double_sum):
    """ggml rms_norm (+ MUL): Σ f32(x²) in double or f32 (sequential), mean, 1/sqrtf, two f32 multiplies."""
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        sq = x[t] * x[t]
        if double_sum:
            mean = F32(_seq_sum64(sq) / x.shape[1])
        else:
            mean = _seq_sum32(sq) / F32(x.shape[1])
        scale = F32(1) / F32(np.sqrt(F32(mean + F32(eps))))
        out[t] = (x[t] * scale) * w
    return out


def _seq_sum64(v):
    total = 0.0
    for e in v.astype(F64):
        total += e
    return total


def _seq_sum32(v):
    total = F32(0)
    for e in v:
        total = F32(total + e)
    return total


def twin_rope_iterative(x, positions, n_head, hd, n_rot, theta_scale):
    """ggml NEOX rope: θ_{i+1} = θ_i·theta_scale (f32), libm cosf/sinf, the two fused multiply-adds."""
    out = x.copy()
    half = n_rot // 2
    for t, p in enumerate(positions):
        theta = np.empty(half, F32)
        th = F32(p)
        for i in range(half):
            theta[i] = th
            th = F32(th * theta_scale)
        c, s = libm("cosf", theta), libm("sinf", theta)
        for h in range(n_head):
            x0 = x[t, h * hd : h * hd + half]
            x1 = x[t, h * hd + half : h * hd + n_rot]
            out[t, h * hd : h * hd + half] = fma(x0, c, -(x1 * s))
            out[t, h * hd + half : h * hd + n_rot] = fma(x0, s, x1 * c)
    return out


def twin_rope_direct(x, positions, n_head, hd, n_rot, inv_freq):
    """HF rotate_half: angle = f32(pos)·inv_freq, f32 cos/sin (libm), unfused x·cos ∓ x·sin."""
    out = x.copy()
    half = n_rot // 2
    for t, p in enumerate(positions):
        ang = F32(p) * inv_freq
        c, s = libm("cosf", ang), libm("sinf", ang)
        for h in range(n_head):
            x0 = x[t, h * hd : h * hd + half].copy()
            x1 = x[t, h * hd + half : h * hd + n_rot].copy()
            out[t, h * hd : h * hd + half] = x0 * c - x1 * s
            out[t, h * hd + half : h * hd + n_rot] = x1 * c + x0 * s
    return out


_C = {
    k: F32(float.fromhex(v))
    for k, v in dict(
        R="0x1.8p23",
        LOG2E="0x1.715476p0",
        LN2_HI="0x1.62E4p-1",
        LN2_LO="0x1.7F7D1Cp-20",
        C5="0x1.0E4020p-7",
        C4="0x1.573E2Ep-5",
        C3="0x1.555E66p-3",
        C2="0x1.FFFDB6p-2",
        C1="0x1.FFFFECp-1",
    ).items()
}


def twin_v_expf(x, lanes):
    """ggml_v_expf lane function: AVX2 variant (lanes 8) or AVX-512 variant (lanes 16), in numpy."""
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        z = fma(x, _C["LOG2E"], _C["R"])
        n = (z - _C["R"]).astype(F32)
        b = fma(-n, _C["LN2_LO"], fma(-n, _C["LN2_HI"], x))
        u = (b * b).astype(F32)
        p = fma(fma(_C["C5"], b, _C["C4"]), u, fma(_C["C3"], b, _C["C2"]))
        if lanes == 16:
            j = fma(p, u, fma(_C["C1"], b, F32(1)))
            res = (j.astype(F64) * np.exp2(n.astype(F64))).astype(F32)
            alt = np.where(n <= 0, F32(0), F32(np.inf))
            return np.where(np.abs(n) > 192, alt, res).astype(F32)
        j = fma(p, u, (_C["C1"] * b).astype(F32))
        mask = np.uint64(0xFFFFFFFF)
        e = (z.view(np.uint32).astype(np.uint64) << np.uint64(23)) & mask
        k = ((e + np.uint64(0x3F800000)) & mask).astype(np.uint32).view(F32)
        fast = fma(j, k, k)
        g = np.where(n <= 0, np.uint64(0x82000000), np.uint64(0))
        s1 = ((g + np.uint64(0x7F000000)) & mask).astype(np.uint32).view(F32)
        s2 = ((e - g) & mask).astype(np.uint32).view(F32)
        slow = np.where(np.abs(n) > 192, (s1 * s1).astype(F32), (fma(s2, j, s2) * s1).astype(F32))
        return np.where(np.abs(n) > 126, slow, fast).astype(F32)


def twin_swiglu(gate, up, lanes, ggml_exp):
    """silu(gate)·up; ggml's vector expf on full lane chunks of each row, libm expf on the tail."""
    n = gate.shape[1]
    n_vec = n - n % lanes if ggml_exp else 0
    e = np.concatenate([twin_v_expf(-gate[:, :n_vec], lanes), libm("expf", -gate[:, n_vec:])], axis=1)
    return ((gate / (F32(1) + e)).astype(F32) * up).astype(F32)


def _r8_adjacent(v):
    t = v[..., 0:4] + v[..., 4:8]
    return (t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])


def _r8_strided(v):
    t = v[..., 0:4] + v[..., 4:8]
    return (t[..., 0] + t[..., 2]) + (t[..., 1] + t[..., 3])


def _r16(v):
    h = v[..., 0:8] + v[..., 8:16]
    g = h[..., 0:4] + h[..., 4:8]
    return (g[..., 0] + g[..., 2]) + (g[..., 1] + g[..., 3])


def twin_vec_dot(a, b, lanes, variant):
    """ggml vec_dot of each row of a (M, n) with b (n,), f32 inputs, in the order of `variant` (dense.VEC_*)."""
    M, n = a.shape
    nacc = 2 if variant == dense.VEC_BF16_AVX512 else 4
    width = nacc * lanes
    nfull = n - n % width
    acc = np.zeros((M, width), F32)
    for c in range(0, nfull, width):
        acc = fma(a[:, c : c + width], b[c : c + width], acc)
    if variant == dense.VEC_BF16_AVX512:
        total = _r16(acc[:, :16]).astype(F64) + _r16(acc[:, 16:]).astype(F64)
    else:
        a0 = (acc[:, :lanes] + acc[:, 2 * lanes : 3 * lanes]) + (acc[:, lanes : 2 * lanes] + acc[:, 3 * lanes :])
        if variant == dense.VEC_BF16_AVX2:
            total = _r8_strided(a0).astype(F64)
        else:
            total = (_r16(a0) if lanes == 16 else _r8_adjacent(a0)).astype(F64)
    if variant == dense.VEC_F32:
        left = n - nfull
        n_unfused = nfull + (left // 8) * 8 + (4 if left % 8 >= 4 else 0)
        t32 = total.astype(F32)
        for i in range(nfull, n_unfused):
            t32 = (t32 + (a[:, i] * b[i]).astype(F32)).astype(F32)
        for i in range(n_unfused, n):
            t32 = fma(a[:, i], b[i], t32)
        return t32
    for i in range(nfull, n):
        total = total + (a[:, i] * b[i]).astype(F32).astype(F64)
    return total.astype(F32)


def twin_tiled_dot(a, b, lanes):
    """tinyBLAS: one lanes-wide FMA accumulator over steps of lanes, then hsum."""
    acc = np.zeros((a.shape[0], lanes), F32)
    for c in range(0, a.shape[1], lanes):
        acc = fma(a[:, c : c + lanes], b[c : c + lanes], acc)
    return (_r16(acc) if lanes == 16 else _r8_strided(acc)).astype(F32)


def twin_matmul(wf, x, tiled, lanes, variant):
    """out (T, M) = W·xᵀ with the weight rows already decoded to f32."""
    if variant == dense.VEC_BF16_DPBF16:
        dot = twin_tiled_dot_dpbf16 if tiled else twin_vec_dot_dpbf16
        return np.stack([dot(wf, x[t]) for t in range(x.shape[0])]).astype(F32)
    cols = [
        twin_tiled_dot(wf, x[t], lanes) if tiled else twin_vec_dot(wf, x[t], lanes, variant) for t in range(x.shape[0])
    ]
    return np.stack(cols).astype(F32)


_F32_MIN_NORMAL = 2.0**-126


def flush(v) -> np.ndarray:
    """Denormal values replaced by zeros of their sign (vdpbf16ps: DAZ on its inputs, FTZ on its results)."""
    v = np.asarray(v)
    return np.where(np.abs(v) < _F32_MIN_NORMAL, np.copysign(np.zeros_like(v), v), v)


def round_f32_exact(x: Fraction) -> F32:
    """The f32 nearest to the exact rational x ≠ 0: ties to even, on the denormal grid 2^-149 below 2^-126, ±inf
    from 2^128 up."""
    m = abs(x)
    e = m.numerator.bit_length() - m.denominator.bit_length()  # 2^(e-1) < m < 2^(e+1)
    if m < Fraction(2) ** e:
        e -= 1  # now 2^e <= m < 2^(e+1)
    q = max(e, -126) - 23  # exponent of the f32 grid around m
    k = round(m / Fraction(2) ** q)  # Fraction.__round__: nearest integer, ties to even
    r = math.ldexp(k, q)  # exact: k <= 2^24
    r = math.inf if r >= 2.0**128 else r
    return F32(-r if x < 0 else r)


def fma_f32_exact(a, b, c) -> np.ndarray:
    """f32(a·b + c) with one rounding, for f32 arrays (a·b exact in float64: bf16·bf16 has ≤ 16 significant bits).

    The float64 sum s is exact where TwoSum's error term is zero, and then s → f32 is the only rounding; elsewhere the
    exact sum is rounded from fractions.
    """
    p = np.asarray(a, F32).astype(F64) * np.asarray(b, F32).astype(F64)
    p, c = np.broadcast_arrays(p, np.asarray(c, F32).astype(F64))
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # TwoSum (Knuth): s + err == p + c exactly
    out = s.astype(F32)
    for i in map(tuple, np.argwhere(err)):
        out[i] = round_f32_exact(Fraction(float(p[i])) + Fraction(float(c[i])))
    return out


def twin_dpbf16(acc, a, b) -> np.ndarray:
    """vdpbf16ps: f32 lanes acc (..., 16), bf16 values a, b (..., 32) held as f32; lane i adds a[2i+1]·b[2i+1], then
    a[2i]·b[2i], each sum rounded once, denormal inputs read as zero and denormal results flushed (to signed zero)."""
    a, b, acc = flush(np.asarray(a, F32)), flush(np.asarray(b, F32)), flush(np.asarray(acc, F32))
    acc = flush(fma_f32_exact(a[..., 1::2], b[..., 1::2], acc))
    return flush(fma_f32_exact(a[..., 0::2], b[..., 0::2], acc))


def twin_vec_dot_dpbf16(a, b) -> np.ndarray:
    """ggml_vec_dot_bf16 with AVX512_BF16 of each row of a (M, n) with b (n,): c1 takes elements i..i+31 and c2
    i+32..i+63 of each chunk of 64; sumf = 0.0 + R16(c1) + R16(c2) in double, then the leftovers' f32 products."""
    M, n = a.shape
    nfull = n - n % 64
    c1, c2 = np.zeros((M, 16), F32), np.zeros((M, 16), F32)
    for i in range(0, nfull, 64):
        c1 = twin_dpbf16(c1, a[:, i : i + 32], b[i : i + 32])
        c2 = twin_dpbf16(c2, a[:, i + 32 : i + 64], b[i + 32 : i + 64])
    total = np.zeros(M, F64)
    total = total + _r16(c1).astype(F64)
    total = total + _r16(c2).astype(F64)
    for i in range(nfull, n):
        total = total + (a[:, i] * b[i]).astype(F32).astype(F64)
    return total.astype(F32)


def twin_tiled_dot_dpbf16(a, b) -> np.ndarray:
    """tinyBLAS<32, __m512, __m512bh>: one vdpbf16ps accumulator over steps of 32, then R16 (n % 32 == 0)."""
    acc = np.zeros((a.shape[0], 16), F32)
    for c in range(0, a.shape[1], 32):
        acc = twin_dpbf16(acc, a[:, c : c + 32], b[c : c + 32])
    return _r16(acc).astype(F32)


def twin_softmax(w, lanes, ggml_exp, double_sum):
    """Softmax of a 1-D row: ggml (v_expf, lane-chunk hsum added in double, × f32(1/sum)) or f32 (libm, ÷ sum)."""
    mx = np.max(w)
    if not double_sum:
        e = twin_v_expf(w - mx, lanes) if ggml_exp else libm("expf", (w - mx).astype(F32))
        total = _seq_sum32(e)
        return (e / total).astype(F32)
    n = len(w)
    pad = (-n) % lanes
    e = twin_v_expf((w - mx).astype(F32), lanes) if ggml_exp else libm("expf", (w - mx).astype(F32))
    chunks = np.concatenate([e, np.zeros(pad, F32)]).reshape(-1, lanes)
    sums = (_r16(chunks) if lanes == 16 else _r8_strided(chunks)).astype(F64)
    total = 0.0
    for s in sums:
        total += s
    return (e * F32(1.0 / total)).astype(F32)


def twin_attention(
    q, k, v, start_pos, n_head, n_head_kv, hd, scale, tiled_kq, tiled_kqv, lanes, round_q, round_p, ggml_exp, double_sum
):
    """Causal GQA attention from f32 K (n, n_kv·hd) and V (n, n_kv·hd) as the engine stores them (rounded or not)."""
    T = q.shape[0]
    out = np.zeros((T, n_head * hd), F32)
    width = 4 * lanes
    for t in range(T):
        n = start_pos + t + 1
        for h in range(n_head):
            g = h // (n_head // n_head_kv)
            qh = q[t, h * hd : (h + 1) * hd]
            qh = qh.astype(np.float16).astype(F32) if round_q else qh
            kk = k[:n, g * hd : (g + 1) * hd]
            s = twin_tiled_dot(kk, qh, lanes) if tiled_kq else twin_vec_dot(kk, qh, lanes, dense.VEC_F16)
            p = twin_softmax((s * scale).astype(F32), lanes, ggml_exp, double_sum)
            p = p.astype(np.float16).astype(F32) if round_p else p
            n_dot = -(-n // lanes) * lanes if tiled_kqv else -(-(start_pos + T) // width) * width
            pp = np.zeros(n_dot, F32)
            pp[:n] = p
            vt = np.zeros((hd, n_dot), F32)
            vt[:, :n] = v[:n, g * hd : (g + 1) * hd].T
            out[t, h * hd : (h + 1) * hd] = (
                twin_tiled_dot(vt, pp, lanes) if tiled_kqv else twin_vec_dot(vt, pp, lanes, dense.VEC_F16)
            )
    return out


def twin_quantize_q8_0(x):
    """x86 quantize_row_q8_0: d = fp16(amax/127), q = rint(x·(127/amax))."""
    T, K = x.shape
    blocks = x.reshape(T, K // 32, 32)
    amax = np.abs(blocks).max(axis=2)
    d = (amax / F32(127)).astype(np.float16).astype(F32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, F32(127) / amax, F32(0)).astype(F32)
    qs = np.rint((blocks * inv[:, :, None]).astype(F32)).astype(np.int8).reshape(T, K)
    return qs, d


def twin_matmul_q8_0(raw, M, K, qs, d):
    """Q8_0 × Q8_0: 8 int32 lanes of 4 consecutive products per block, acc = fma(f32(d_w·d_x), lane, acc), hsum."""
    blocks = raw.reshape(M, K // 32, 34)
    dw = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(F32)
    wq = blocks[:, :, 2:].view(np.int8).astype(np.int32)
    out = np.zeros((qs.shape[0], M), F32)
    for t in range(qs.shape[0]):
        xq = qs[t].reshape(K // 32, 32).astype(np.int32)
        lanes = (wq * xq[None]).reshape(M, K // 32, 8, 4).sum(axis=3)
        acc = np.zeros((M, 8), F32)
        for b in range(K // 32):
            acc = fma((dw[:, b] * d[t, b]).astype(F32)[:, None], lanes[:, b].astype(F32), acc)
        out[t] = _r8_strided(acc)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# tests: elementwise and norm


@pytest.mark.parametrize("double_sum", [True, False])
def test_rmsnorm_matches_twin(double_sum):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 384)) * rng.uniform(0.01, 30, (5, 1))).astype(F32)
    x[3] = 0  # all-zero row: scale = 1/sqrt(eps)
    w = (1 + 0.1 * rng.standard_normal(384)).astype(F32)
    out = np.empty_like(x)
    norm.rmsnorm(x, w, 1e-5, double_sum, out)
    assert_same_bits(out, twin_rmsnorm(x, w, 1e-5, double_sum), f"rmsnorm double_sum={double_sum}")
    assert np.all(out[3] == 0)


def test_rmsnorm_in_place():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 100)).astype(F32)
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
def test_swiglu_matches_twin(lanes, n):
    rng = np.random.default_rng(n)
    gate = (rng.standard_normal((3, n)) * 8).astype(F32)
    gate[0, :4] = [-200, 200, 0, -0.0]
    up = rng.standard_normal((3, n)).astype(F32)
    for ggml_exp in (True, False):
        out = np.empty_like(gate)
        activation.swiglu(gate, up, lanes, ggml_exp, out)
        assert_same_bits(out, twin_swiglu(gate, up, lanes, ggml_exp), f"swiglu n={n} lanes={lanes} ggml={ggml_exp}")


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
# tests: dots and matmuls


@njit(cache=True)
def _dots(a, b, lanes, variant, tiled):
    """Every row of a dotted with b by dense.vec_dot / dense.tiled_dot."""
    acc = np.empty(64, np.float32)
    out = np.empty(a.shape[0], np.float32)
    for m in range(a.shape[0]):
        if tiled:
            out[m] = dense.tiled_dot(a[m], 0, b, 0, a.shape[1], lanes, acc)
        else:
            out[m] = dense.vec_dot(a[m], 0, b, 0, a.shape[1], lanes, variant, acc)
    return out


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("n", [32, 64, 100, 77, 257, 2563])
def test_vec_and_tiled_dots_match_twins(lanes, n):
    dots = _dots
    rng = np.random.default_rng(n + lanes)
    a = (rng.standard_normal((40, n)) * rng.uniform(0.1, 100, (40, 1))).astype(F32)
    b = rng.standard_normal(n).astype(F32)
    bf16_variant = dense.VEC_BF16_AVX512 if lanes == 16 else dense.VEC_BF16_AVX2
    for variant in (dense.VEC_F16, dense.VEC_F32, bf16_variant):
        assert_same_bits(dots(a, b, lanes, variant, False), twin_vec_dot(a, b, lanes, variant), f"vec_dot {variant}")
    if n % lanes == 0:
        assert_same_bits(dots(a, b, lanes, 0, True), twin_tiled_dot(a, b, lanes), "tiled_dot")


@pytest.mark.parametrize("lanes", LANES)
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("M", [37, 36])
def test_matmul_f16_f32_bf16_match_twins(lanes, T, M):
    rng = np.random.default_rng(10 * T + lanes + M)
    K = 96
    w = (rng.standard_normal((M, K)) * 0.5).astype(F32)
    x = rng.standard_normal((T, K)).astype(F32)
    tiled = dense.use_tiled("ggml", T, M, K, lanes)
    assert tiled == (T >= 2 and M % 4 == 0)
    cases = (
        ("f16", F16, dense.round_rows_f16, dense.VEC_F16),
        ("bf16", BF16, dense.round_rows_bf16, dense.VEC_BF16_AVX512 if lanes == 16 else dense.VEC_BF16_AVX2),
    )
    for name, fmt, rounding, variant in cases:
        raw = read_only(fmt.encode(w).view(np.uint16))
        wf = fmt.decode(raw.view(np.uint8), (K, M))
        xr = np.empty_like(x)
        rounding(x, xr)
        out = np.full((T, M), np.nan, F32)
        if name == "f16":
            dense.matmul_f16(raw, M, K, xr, tiled, lanes, out)
        else:
            dense.matmul_bf16(raw, M, K, xr, tiled, lanes, False, out)  # without AVX512_BF16: lanes-wide FMA
        assert_same_bits(out, twin_matmul(wf, xr, tiled, lanes, variant), f"matmul_{name} T={T} M={M}")
    out = np.full((T, M), np.nan, F32)
    dense.matmul_f32(read_only(w.reshape(-1)), M, K, x, tiled, lanes, out)
    assert_same_bits(out, twin_matmul(w, x, tiled, lanes, dense.VEC_F32), f"matmul_f32 T={T}")


def test_use_tiled_rule():
    assert not dense.use_tiled("ggml", 1, 128, 64, 8)
    assert dense.use_tiled("ggml", 2, 128, 64, 8)
    assert not dense.use_tiled("ggml", 2, 130, 64, 8)  # M % 4 != 0: tinyBLAS declines
    assert not dense.use_tiled("ggml", 2, 128, 68, 8)  # K % lanes != 0
    assert not dense.use_tiled("fixed", 5, 128, 64, 8)
    assert dense.use_tiled("ggml", 2, 128, 96, dense.DPBF16_KN)  # BF16 with vdpbf16ps: steps of 32
    assert not dense.use_tiled("ggml", 2, 128, 80, dense.DPBF16_KN)  # K % 32 != 0: vec_dot, though 80 % 16 == 0


def test_round_rows_match_numpy():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((3, 50)) * 1e3).astype(F32)
    x[0, :3] = [np.inf, np.nan, 1e-40]
    out = np.empty_like(x)
    dense.round_rows_f16(x, out)
    with np.errstate(over="ignore"):
        assert_same_bits(out, x.astype(np.float16).astype(F32), "f16 rounding")
    dense.round_rows_bf16(x, out)
    assert_same_bits(out, BF16.decode(BF16.encode(x), (50, 3)), "bf16 rounding")


def test_q8_0_quantize_and_matmul_match_twins():
    rng = np.random.default_rng(7)
    M, K, T = 12, 128, 3
    w = rng.standard_normal((M, K)).astype(F32)
    raw = Q8_0.encode(w)
    x = rng.standard_normal((T, K)).astype(F32)
    x[1, :32] = 0  # an all-zero block
    qs, d = np.empty((T, K), np.int8), np.empty((T, K // 32), F32)
    dense.quantize_q8_0(x, qs, d)
    tq, td = twin_quantize_q8_0(x)
    assert np.array_equal(qs, tq)
    assert_same_bits(d, td, "q8_0 d")
    out = np.empty((T, M), F32)
    dense.matmul_q8_0(read_only(raw), M, K, qs, d, out)
    assert_same_bits(out, twin_matmul_q8_0(raw, M, K, qs, d), "matmul_q8_0")
    out32 = np.empty((T, M), F32)
    dense.matmul_q8_0_f32(read_only(raw), M, K, x, 8, out32)
    wf = Q8_0.decode(raw, (K, M))
    assert_same_bits(out32, twin_matmul(wf, x, False, 8, dense.VEC_F32), "matmul_q8_0_f32")


# ----------------------------------------------------------------------------------------------------------------------
# tests: BF16 on builds with AVX512_BF16 (vdpbf16ps)


def bf16_values(x) -> np.ndarray:
    """x rounded to bf16 as ggml does (nearest even; denormals kept), as f32 of the same shape."""
    x = np.asarray(x, F32)
    bits = BF16.encode(x).view(np.uint16).reshape(x.shape)
    return (bits.astype(np.uint32) << 16).view(F32)


def bits_values(bits) -> np.ndarray:
    """f32 values of bf16 bit patterns."""
    return (np.asarray(bits, np.uint32) << 16).view(F32)


@njit(cache=True)
def _dots_dpbf16(a, b, tiled):
    """Every row of a dotted with b by vec_dot(VEC_BF16_DPBF16) or tiled_dot_dpbf16."""
    acc = np.empty(64, np.float32)
    out = np.empty(a.shape[0], np.float32)
    for m in range(a.shape[0]):
        if tiled:
            out[m] = dense.tiled_dot_dpbf16(a[m], 0, b, 0, a.shape[1], acc)
        else:
            out[m] = dense.vec_dot(a[m], 0, b, 0, a.shape[1], 16, dense.VEC_BF16_DPBF16, acc)
    return out


def test_dpbf16_twin_rounding_is_exact():
    """The twin's fast path (float64 sum, TwoSum-checked) agrees with rounding from fractions everywhere, extreme
    exponent gaps, ties and f32 denormal results included."""
    rng = np.random.default_rng(20)
    n = 4000
    a = bf16_values(rng.standard_normal(n) * np.exp2(rng.integers(-70, 40, n)))
    b = bf16_values(rng.standard_normal(n) * np.exp2(rng.integers(-70, 40, n)))
    c = (rng.standard_normal(n) * np.exp2(rng.integers(-130, 60, n))).astype(F32)
    c[:500] = -(a[:500].astype(F64) * b[:500]).astype(F32)  # cancellations, exact zeros
    c[500:1000] = np.nextafter(c[500:1000], F32(np.inf))
    a[1000:1100], b[1000:1100], c[1000:1100] = F32(1), bits_values(0x3380), F32(1)  # 1 + 2^-24: a tie, stays 1
    got = fma_f32_exact(a, b, c)
    exact = [Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i])) for i in range(n)]
    nonzero = np.array([x != 0 for x in exact])
    assert_same_bits(got[nonzero], np.array([round_f32_exact(x) for x in exact if x], F32), "fma_f32_exact")
    assert (~nonzero).sum() > 100 and np.all(got[~nonzero] == 0) and not np.signbit(got[~nonzero]).any()  # x − x = +0
    p = a.astype(F64) * b
    assert ((p + c) - p != c).sum() > 100  # the fractions path was taken
    assert np.all(got[1000:1100] == 1) and (np.abs(got) < _F32_MIN_NORMAL).any()


@pytest.mark.parametrize("n", [64, 77, 128, 2560, 2563])
def test_dpbf16_dots_match_twins(n):
    rng = np.random.default_rng(30 + n)
    a = rng.standard_normal((20, n)) * rng.uniform(0.01, 100, (20, 1))
    b = rng.standard_normal(n)
    b[::7] *= 2.0**-64
    a[3] = 0  # an all-zero row
    a[4, ::3] *= -(2.0**-63)  # with b[::7]: products in the f32 denormal range
    a[8] = rng.standard_normal(n) * 2.0**-125  # denormal inputs, and sums around 2^-126 that get flushed
    a, b = bf16_values(a), bf16_values(b)
    a[5] = bits_values(rng.integers(0, 128, n) | (rng.integers(0, 2, n) << 15))  # denormal (and ±0) inputs only
    a[6, : n // 2] = bits_values(0x8000)  # -0
    assert (np.abs(a[8][a[8] != 0]) < _F32_MIN_NORMAL).any()
    vec = _dots_dpbf16(a, b, False)
    assert_same_bits(vec, twin_vec_dot_dpbf16(a, b), f"vec_dot dpbf16 n={n}")
    if n % 64 == 0:
        assert vec[5] == 0 and vec[3] == 0  # denormal inputs read as zero (the scalar leftovers would not)
    if n % dense.DPBF16_KN == 0:
        assert_same_bits(_dots_dpbf16(a, b, True), twin_tiled_dot_dpbf16(a, b), f"tiled_dot dpbf16 n={n}")


def test_dpbf16_lane_semantics_by_hand():
    """Cases whose results are known without a twin (odd element first, one rounding per addition, denormal inputs read
    as zero, denormal sums flushed to signed zero); the tiled kernel and its twin both have to give them."""

    def lane0(chunks):
        """Rows of 64 bf16 (a, b) where only lane 0 is set: chunk c is ((a_even, b_even), (a_odd, b_odd))."""
        a, b = np.zeros((1, 64), F32), np.zeros(64, F32)
        for c, ((ae, be), (ao, bo)) in enumerate(chunks):
            a[0, 32 * c : 32 * c + 2] = ae, ao
            b[32 * c : 32 * c + 2] = be, bo
        return a, b

    p = 2.0 ** np.arange(-140, 120, dtype=F64)  # p[i + 140] = 2^i, all exact bf16 values (as f64)
    two = lambda i: F32(p[i + 140])  # noqa: E731
    cases = [
        # order: acc 1, then 1 − 1 = 0 and 0 + 2^-30 (even element first would give (1 + 2^-30) − 1 = 0)
        ([((1, 1), (0, 0)), ((two(-30), 1), (-1, 1))], two(-30)),
        # one rounding per addition: 1 + 2^-24 is a tie (→ 1), twice; one rounding of 1 + 2^-23 would keep it
        ([((1, 1), (0, 0)), ((two(-24), 1), (two(-24), 1))], F32(1)),
        # a product in the denormal range (2^-130, from normal inputs) is flushed
        ([((0, 0), (two(-65), two(-65))), ((0, 0), (0, 0))], F32(0)),
        # a sum in the denormal range: 2^-125 − 1.5·2^-126 = 2^-127 is flushed
        ([((two(-60), two(-65)), (0, 0)), ((0, 0), (F32(-1.5) * two(-63), two(-63)))], F32(0)),
        # a denormal input (bf16 0x0001 = 2^-133) reads as zero: not 2^-133 · 2^100
        ([((bits_values(0x0001), two(100)), (0, 0)), ((0, 0), (0, 0))], F32(0)),
    ]
    for chunks, want in cases:
        a, b = lane0(chunks)
        assert_same_bits(_dots_dpbf16(a, b, True), np.array([want], F32), f"tiled dpbf16 {chunks}")
        assert_same_bits(twin_tiled_dot_dpbf16(a, b), np.array([want], F32), f"twin dpbf16 {chunks}")
    a = np.zeros((1, 64), F32)  # every lane ends at -0: −2^-130 flushed to −0, then −0 + (−0)
    a[0, 1::2] = -two(-65)
    a[0, 0::2] = F32(-0.0)
    b = np.full(64, two(-65), F32)
    assert np.signbit(_dots_dpbf16(a, b, True)[0]) and np.signbit(twin_tiled_dot_dpbf16(a, b)[0])
    # ggml_vec_dot_bf16 adds the R16 sums to a double that starts at +0.0: no −0 comes out
    assert _dots_dpbf16(a, b, False)[0] == 0 and not np.signbit(_dots_dpbf16(a, b, False)[0])
    assert not np.signbit(twin_vec_dot_dpbf16(a, b)[0])


@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("M,K", [(36, 128), (37, 96), (36, 80), (8, 77)])
def test_matmul_bf16_dpbf16_matches_twin(T, M, K):
    rng = np.random.default_rng(100 * T + K)
    w = (rng.standard_normal((M, K)) * rng.uniform(0.05, 5, (M, 1))).astype(F32)
    w[1] = 0
    x = rng.standard_normal((T, K)).astype(F32)
    raw = BF16.encode(w)
    wf = BF16.decode(raw, (K, M))
    xr = np.empty_like(x)
    dense.round_rows_bf16(x, xr)
    tiled = dense.use_tiled("ggml", T, M, K, dense.DPBF16_KN)
    assert tiled == (T >= 2 and (M, K) == (36, 128))  # K = 80: tinyBLAS takes it in f32 lanes, not with vdpbf16ps
    out = np.full((T, M), np.nan, F32)
    dense.matmul_bf16(read_only(raw.view(np.uint16)), M, K, xr, tiled, 16, True, out)
    assert_same_bits(out, twin_matmul(wf, xr, tiled, 16, dense.VEC_BF16_DPBF16), f"matmul_bf16 dpbf16 T={T} K={K}")


# ----------------------------------------------------------------------------------------------------------------------
# tests: attention


@pytest.mark.parametrize("profile", ["ggml", "bitnet"])
@pytest.mark.parametrize("T,start_pos,n_head", [(1, 0, 4), (1, 40, 4), (5, 0, 4), (4, 37, 4), (12, 300, 24)])
def test_attention_matches_twin(profile, T, start_pos, n_head):
    nm = PROFILES[profile]
    rng = np.random.default_rng(T * 100 + start_pos)
    n_head_kv, hd, n_ctx = 2, 32, 320
    assert (T * (start_pos + T) * n_head * hd >= attention.PARALLEL_WORK) == (T == 12)  # both paths covered
    n = start_pos + T
    k_new = (rng.standard_normal((n, n_head_kv * hd)) * 2).astype(F32)
    v_new = rng.standard_normal((n, n_head_kv * hd)).astype(F32)
    q = (rng.standard_normal((T, n_head * hd)) * 2).astype(F32)
    dtype = np.uint16 if nm.kv_dtype == "f16" else F32
    k_cache, v_cache = np.zeros((n_ctx, n_head_kv * hd), dtype), np.zeros((n_head_kv * hd, n_ctx), dtype)
    attention.store_kv(k_new, v_new, 0, k_cache, v_cache)
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
    out = np.full((T, n_head * hd), np.nan, F32)
    attention.attend(q, k_cache, v_cache, start_pos, attention.AttentionSettings(*args[1:]), out)
    kf = k_new.astype(np.float16).astype(F32) if dtype == np.uint16 else k_new
    vf = v_new.astype(np.float16).astype(F32) if dtype == np.uint16 else v_new
    assert_same_bits(out, twin_attention(q, kf, vf, *args), f"attention {profile} T={T} start={start_pos}")


def test_attention_single_cell_is_v():
    k = np.ones((1, 8), F32)
    v = np.arange(8, dtype=F32)[None]
    kc, vc = np.zeros((4, 8), F32), np.zeros((8, 4), F32)
    attention.store_kv(k, v, 0, kc, vc)
    out = np.empty((1, 8), F32)
    settings = attention.AttentionSettings(1, 1, 8, F32(0.5), False, False, 8, False, False, True, True)
    attention.attend(np.ones((1, 8), F32), kc, vc, 0, settings, out)
    assert_same_bits(out, v, "softmax over one cell is 1")


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
