"""numpy twins of the float kernels (norm, rope, expf, SwiGLU, dots, attention, Q8_0, vdpbf16ps) and the helpers
the float kernel tests share: each twin follows docs/NUMERICS.md §4 (and docs/NUMERICS-AVX512.md §2) step by step in
numpy float32, with FMA emulated as f32(f64·f64 + f64) (exact product); the vdpbf16ps twins round exactly on their
own (a float64 sum checked exact by TwoSum, else Python fractions)."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from fractions import Fraction

import numpy as np

from bitnet_ref.formats import BF16
from bitnet_ref.kernels import dense

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


F32_MIN_NORMAL = 2.0**-126


def flush(v) -> np.ndarray:
    """Denormal values replaced by zeros of their sign (vdpbf16ps: DAZ on its inputs, FTZ on its results)."""
    v = np.asarray(v)
    return np.where(np.abs(v) < F32_MIN_NORMAL, np.copysign(np.zeros_like(v), v), v)


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


def twin_attention_blocked(q, k, v, start_pos, n_head, n_head_kv, hd, scale):
    """Causal GQA attention in the blocked sequential order: s_j = Σ_d q_d·K_j,d in d order, × scale, libm expf of
    (w − max), Σ e in j order, P = e / Σ, out_d = Σ_j P_j·V_j,d in j order, all f32 (one rounding per operation)."""
    T = q.shape[0]
    out = np.zeros((T, n_head * hd), F32)
    for t in range(T):
        n = start_pos + t + 1
        for h in range(n_head):
            g = h // (n_head // n_head_kv)
            kk, vv = k[:n, g * hd : (g + 1) * hd], v[:n, g * hd : (g + 1) * hd]
            s = np.zeros(n, F32)
            for d in range(hd):
                s = (s + (kk[:, d] * q[t, h * hd + d]).astype(F32)).astype(F32)
            w = (s * F32(scale)).astype(F32)
            e = libm("expf", (w - w.max()).astype(F32))
            p = (e / _seq_sum32(e)).astype(F32)
            o = np.zeros(hd, F32)
            for j in range(n):
                o = (o + (p[j] * vv[j]).astype(F32)).astype(F32)
            out[t, h * hd : (h + 1) * hd] = o
    return out


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


def bf16_values(x) -> np.ndarray:
    """x rounded to bf16 as ggml does (nearest even; denormals kept), as f32 of the same shape."""
    x = np.asarray(x, F32)
    bits = BF16.encode(x).view(np.uint16).reshape(x.shape)
    return (bits.astype(np.uint32) << 16).view(F32)


def bits_values(bits) -> np.ndarray:
    """f32 values of bf16 bit patterns."""
    return (np.asarray(bits, np.uint32) << 16).view(F32)


def twin_bitlinear(wf, q, s):
    """out (T, M) = f32(Σ_k f64(W)·f64(q), sequential in k) / s (dense.matmul_*_i8's order)."""
    prod = wf[None, :, :].astype(np.float64) * q[:, None, :].astype(np.float64)  # (T, M, K) exact products
    acc = np.cumsum(prod, axis=2)[:, :, -1] + 0.0  # in order (np.sum adds pairwise), from +0 as the kernel (no −0)
    return (acc.astype(F32) / s[:, None].astype(F32)).astype(F32)
