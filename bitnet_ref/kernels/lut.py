"""bitnet.cpp's TL1 / TL2 lookup-table kernels, read straight from the packed bytes.

Formats and byte orders are those of formats/tl1.py and formats/tl2.py (docs/FORMATS.md §3.3–§3.5); the tiling
(BM, BK, bm) is an argument, as it comes from the build's kernel_config.ini and is not in the GGUF. Arithmetic as
bitnet.cpp's generated kernels (utils/codegen_tl1.py, utils/codegen_tl2.py; docs/NUMERICS.md §5.2), exactly:

Their input is int8 rows q with one scale s per row: bitnet.cpp's own preprocessing (actquant.quantize_lut_rows: an
f32 127/max|x| with no floor, half-even rounding, no clamp) or any other per-token int8 (the bitnet profile's).

Tables (int16 values, exact for every int8 q: |entry| <= 3·128): for an activation pair (a, b) = (q[2p], q[2p+1]),
`pair[idx] = t0·a + t1·b` for the pattern idx = 3·t0 + t1 + 4 (0..8), entries 9..15 = 0 (the TL2 tail table zeroes
them; the TL1 NEON table leaves them uninitialised; the converter never writes codes 9..15). For a triple
(a, b, c) = (q[3u], q[3u+1], q[3u+2]), `triple[mag] = t0·a + t1·b + t2·c` for the positive representative of
mag = 9·t0 + 3·t1 + t2 (0..13), entries 14, 15 = 0.

`matmul_tl1(w, M, K, BM, BK, bm, q, s, scale, out)`: for output row m and token row t
    for each BK block k:  A_k = wrap16( Σ_{pairs p of block k} pair_p[hi/lo nibble of the byte holding (m, p)] )
    C = Σ_k A_k (int32);  out[t, m] = f32(f32(f32(C) / s[t]) · f32(scale))
  wrap16 is two's-complement int16 wrap-around: bitnet.cpp keeps one int16 NEON lane per row for the whole BK block
  (vec_c, zeroed per block and per bm-row group) and widens it into the int32 C after the block; addition mod 2^16 is
  associative, so wrapping the exact block sum once equals wrapping after every add. |block sum| <= 127·BK for
  |q| <= 127, so no wrap is possible for BK <= 258 (every shipped TL1 config has BK <= 128): then C = Σ t·q exactly.

`matmul_tl2(w, M, K, BM, BK, bm, q, s, scale, out)`, with three_k = (K div BK)·BK, two_k = K - three_k:
    three part, per BK block k of columns [0, three_k):
        A_k = wrap16( Σ_{triples u of block k} (v_u + g_u) ^ g_u ),  v_u = triple_u[magnitude nibble of (m, u)],
        g_u = -(sign bit of (m, u)) in {0, -1}, so (v + g) ^ g = -v when the bit is set (AVX2 add_epi16 / xor)
    tail, per 32-column block j of columns [three_k, K):  B_j = wrap16( Σ_{16 pairs p of block j} pair_p[code] )
    C = Σ_k A_k + Σ_j B_j (int32: C_three + C_two);  out[t, m] = f32(f32(f32(C) / s[t]) · f32(scale))
  The generated three_tbl_impl keeps, per 32-row group, two __m256i int16 accumulators (vec_c0: rows 0..15, vec_c1:
  rows 16..31 of the group, one lane per row), zeroed per BK block and summing all BK/3 triples of the block (BK/24
  steps of 8 triples) before widening them (cvtepi16_epi32) into the int32 C_three; two_tbl_impl does the same over
  the 16 pairs of each 32-column tail block (BK2 = 32) into C_two; two_qgemm_lut then adds C_two onto C_three and
  converts. Again |block sum| <= 127·BK, so no wrap for BK <= 258 (shipped TL2 configs have BK <= 192), and the
  tail (at most 16 · 254) never wraps. With two_k = 0 the tail contributes 0.

Every token row is computed independently (bitnet.cpp runs TL1 one token at a time; TL2's generated batched
epilogue is unverified), so results do not depend on T. Parallel over row tiles tm < M/BM (prange); each output is
one thread's fixed-order sum, so results do not depend on the thread count either. The weights are never expanded:
the kernels walk the payload in byte order (TL1 loops tm, tk, sm, sk, m16, kq, r; TL2 magnitude groups tm, tk, sm,
sk, 32 bytes; sign words tm, tk, sm, BK/24, 16 words; tail groups tm, tk, sm, 8, 32 bytes) and build one table set
per (tile, token, block). `check_tl` validates the arguments (plain Python, once per weight).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from bitnet_ref.errors import FormatError
from bitnet_ref.formats import TL1, TL2

GROUP_ROWS = TL2.GROUP_ROWS  # 32 rows per TL2 byte group
TAIL_BK = TL2.TAIL_BK  # 32 columns per TL2 tail block
SIGN_WORDS = TL2.SIGN_WORDS  # 16 u16 words per TL2 sign group (32 rows x 8 triples)
TAIL_PAIRS_PER_GROUP = TL2.TAIL_PAIRS_PER_GROUP  # 8 pair steps per TL2 tail group
ROWS_PER_STEP = TL1.ROWS_PER_STEP  # 16 rows per TL1 byte run
LUT_WIDTH_TL1 = TL1.LUT_WIDTH  # by = 256 / bm
LUT_WIDTH_TL2 = TL2.LUT_WIDTH  # by = 192 / bm (= 6)


# ---------------------------------------------------------------------------------------------------------------------
# shared helpers


@njit(cache=True, error_model="numpy")
def _wrap16(x):
    """x mod 2^16 as a signed int16 value (two's-complement wrap-around of int16 adds)."""
    return ((np.int64(x) + 32768) & 0xFFFF) - 32768


@njit(cache=True, error_model="numpy")
def _epilogue(c, st, scale):
    """bitnet.cpp's LUT epilogue in f32, in this order: f32(f32(f32(int32 C) / lut_scale) · w_scale)."""
    return np.float32(np.float32(np.int32(c)) / st) * scale


@njit(cache=True, error_model="numpy")
def _pair_lut(q, t, col0, n_pairs, lut):
    """lut[j, 3·t0 + t1 + 4] = t0·q[t, col0 + 2j] + t1·q[t, col0 + 2j + 1] for j < n_pairs; entries 9..15 = 0."""
    for j in range(n_pairs):
        a = np.int32(q[t, col0 + 2 * j])
        b = np.int32(q[t, col0 + 2 * j + 1])
        for t0 in range(-1, 2):
            for t1 in range(-1, 2):
                lut[j, 3 * t0 + t1 + 4] = t0 * a + t1 * b
        for e in range(9, 16):
            lut[j, e] = 0


@njit(cache=True, error_model="numpy")
def _triple_lut(q, t, col0, n_triples, lut):
    """lut[u, 9·t0 + 3·t1 + t2] = t0·a + t1·b + t2·c over the positive representatives (0..13) of triple u < n_triples,
    (a, b, c) = q[t, col0 + 3u .. col0 + 3u + 2]; entries 14, 15 = 0."""
    for u in range(n_triples):
        a = np.int32(q[t, col0 + 3 * u])
        b = np.int32(q[t, col0 + 3 * u + 1])
        c = np.int32(q[t, col0 + 3 * u + 2])
        lut[u, 0] = 0
        for t0 in range(0, 2):
            for t1 in range(-1, 2):
                for t2 in range(-1, 2):
                    v = 9 * t0 + 3 * t1 + t2
                    if v > 0:
                        lut[u, v] = t0 * a + t1 * b + t2 * c
        lut[u, 14] = 0
        lut[u, 15] = 0


@njit(cache=True, error_model="numpy")
def _row_of_byte(b):
    """Row (inside a 32-row TL2 group) of byte b of a 32-byte group: byte runs 1 and 2 (bytes 8..23) swapped."""
    return (b & 7) | ((b & 8) << 1) | ((b & 16) >> 1)


@njit(cache=True, error_model="numpy")
def _sign_mask(w, o, r, u):
    """-1 if the sign bit of triple u (inside its BK block) of group row r (0..31) is set in the sign group run at
    byte o (BK/24 groups of 16 little-endian u16 words), else 0: bit 15 - (2·(u mod 8) + r div 16) of word r mod 16."""
    a = o + 2 * (SIGN_WORDS * (u // 8) + r % 16)
    word = np.int64(w[a]) | (np.int64(w[a + 1]) << 8)
    return -((word >> (15 - (2 * (u % 8) + r // 16))) & 1)


# ---------------------------------------------------------------------------------------------------------------------
# TL1


@njit(cache=True, parallel=True, error_model="numpy")
def matmul_tl1(w, M, K, BM, BK, bm, q, s, scale, out):
    """out[t, m] = f32(f32(f32(C) / s[t]) · scale), C = Σ_BK-blocks wrap16(Σ pair-table lookups) of TL1 row m with the
    int8 token row t; w the M·K/4 payload bytes in the order of Tiling(BM, BK, bm), q i8 (T, K), s f32 (T,)."""
    T = q.shape[0]
    by = LUT_WIDTH_TL1 // bm
    n_tk = K // BK
    n_pairs = BK // 2
    tile_bytes = BM * BK // 4
    sc = np.float32(scale)
    for tm in prange(M // BM):
        lut = np.zeros((n_pairs, 16), np.int32)
        blk = np.zeros(BM, np.int64)
        acc = np.zeros(BM, np.int64)
        for t in range(T):
            acc[:] = 0
            for tk in range(n_tk):
                _pair_lut(q, t, tk * BK, n_pairs, lut)
                blk[:] = 0
                o = (tm * n_tk + tk) * tile_bytes
                for sm in range(BM // bm):
                    for sk in range(BK // by):
                        for m16 in range(bm // ROWS_PER_STEP):
                            r0 = sm * bm + m16 * ROWS_PER_STEP
                            for kq in range(by // 4):
                                p = sk * (by // 2) + 2 * kq
                                for r in range(ROWS_PER_STEP):
                                    byte = np.int64(w[o])
                                    o += 1
                                    blk[r0 + r] += lut[p, byte >> 4] + lut[p + 1, byte & 15]
                for r in range(BM):
                    acc[r] += _wrap16(blk[r])
            for r in range(BM):
                out[t, tm * BM + r] = _epilogue(acc[r], s[t], sc)


# ---------------------------------------------------------------------------------------------------------------------
# TL2


@njit(cache=True, parallel=True, error_model="numpy")
def matmul_tl2(w, M, K, BM, BK, bm, q, s, scale, out):
    """out[t, m] = f32(f32(f32(C_three + C_two) / s[t]) · scale) of TL2 row m with the int8 token row t: C_three sums
    wrap16(Σ signed triple-table lookups) per BK block, C_two wrap16(Σ pair-table lookups) per 32-column tail block;
    w the TL2 tensor bytes laid out with Tiling(BM, BK, bm) (bm = 32), q i8 (T, K), s f32 (T,)."""
    T = q.shape[0]
    three_k = K // BK * BK
    n_tk = three_k // BK
    n_tk2 = (K - three_k) // TAIL_BK
    n_triples = BK // 3
    n_groups = BM // GROUP_ROWS
    sign_start = three_k * M // 6
    tail_start = sign_start + three_k * M // 24
    mag_bytes = BM * BK // 6  # per (tm, tk)
    sign_bytes = BM * BK // 24  # per (tm, tk)
    sign_group_bytes = 2 * SIGN_WORDS * (BK // 24)  # per (tm, tk, sm)
    tail_bytes = BM * TAIL_BK // 4  # per (tm, tail block)
    sc = np.float32(scale)
    for tm in prange(M // BM):
        lut3 = np.zeros((n_triples, 16), np.int32)
        lut2 = np.zeros((TAIL_BK // 2, 16), np.int32)
        blk = np.zeros(BM, np.int64)
        acc = np.zeros(BM, np.int64)
        for t in range(T):
            acc[:] = 0
            for tk in range(n_tk):
                _triple_lut(q, t, tk * BK, n_triples, lut3)
                blk[:] = 0
                o = (tm * n_tk + tk) * mag_bytes
                for sm in range(n_groups):
                    so = sign_start + (tm * n_tk + tk) * sign_bytes + sm * sign_group_bytes
                    for sk in range(BK // (LUT_WIDTH_TL2 // bm)):
                        u = 2 * sk
                        for b in range(GROUP_ROWS):
                            byte = np.int64(w[o])
                            o += 1
                            r = _row_of_byte(b)
                            g0 = _sign_mask(w, so, r, u)
                            g1 = _sign_mask(w, so, r, u + 1)
                            v0 = lut3[u, byte >> 4]
                            v1 = lut3[u + 1, byte & 15]
                            blk[sm * GROUP_ROWS + r] += ((v0 + g0) ^ g0) + ((v1 + g1) ^ g1)
                for r in range(BM):
                    acc[r] += _wrap16(blk[r])
            for tk in range(n_tk2):
                _pair_lut(q, t, three_k + tk * TAIL_BK, TAIL_BK // 2, lut2)
                blk[:] = 0
                o = tail_start + (tm * n_tk2 + tk) * tail_bytes
                for sm in range(n_groups):
                    for sk in range(TAIL_PAIRS_PER_GROUP):
                        p = 2 * sk
                        for b in range(GROUP_ROWS):
                            byte = np.int64(w[o])
                            o += 1
                            blk[sm * GROUP_ROWS + _row_of_byte(b)] += lut2[p, byte >> 4] + lut2[p + 1, byte & 15]
                for r in range(BM):
                    acc[r] += _wrap16(blk[r])
            for r in range(BM):
                out[t, tm * BM + r] = _epilogue(acc[r], s[t], sc)


# ---------------------------------------------------------------------------------------------------------------------
# argument checks (Python; the engine runs them once per weight at load time)

FORMATS = {"tl1": TL1, "tl2": TL2}  # the `fmt` names check_tl takes


def _check_array(what: str, a: np.ndarray, dtype, shape: tuple[int, ...]) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
        got = (type(a).__name__, getattr(a, "dtype", None), getattr(a, "shape", None))
        raise FormatError(f"{what}: expected a C-contiguous {np.dtype(dtype)} array of shape {shape}, got {got}")


def check_tl(fmt: str, w: np.ndarray, M: int, K: int, tiling, *arrays: np.ndarray) -> None:
    """Raise FormatError unless `w` holds an M x K `fmt` ('tl1' or 'tl2') tensor laid out with `tiling` (a
    TL1.Tiling / TL2.Tiling that fits M, K) that matmul_<fmt> can read: a flat C-contiguous uint8 array of exactly the
    format's nbytes. Optional `arrays` (q, s, out) are checked against matmul_<fmt>'s activation and output arrays."""
    cls = FORMATS.get(fmt)
    if cls is None:
        raise FormatError(f"LUT kernel: unknown format {fmt!r}; expected one of {tuple(FORMATS)}")
    if not isinstance(tiling, cls.Tiling):
        raise FormatError(f"{fmt}: tiling must be a {cls.__name__}.Tiling, got {type(tiling).__name__}")
    if not (isinstance(M, int | np.integer) and isinstance(K, int | np.integer)) or M < 1 or K < 1:
        raise FormatError(f"{fmt}: M = {M!r}, K = {K!r}; expected positive integers")
    tiling.check(int(M), int(K))
    need = cls.nbytes((int(K), int(M)))
    if not isinstance(w, np.ndarray) or w.dtype != np.uint8 or w.ndim != 1 or not w.flags.c_contiguous:
        raise FormatError(f"{fmt}: weight bytes must be a flat C-contiguous uint8 array, got {getattr(w, 'dtype', w)}")
    if w.size != need:
        raise FormatError(f"{fmt}: weight has {w.size} bytes; {M} x {K} needs {need}")
    if not arrays:
        return
    if len(arrays) != 3:
        raise FormatError(f"matmul_{fmt} takes (q, s, out), got {len(arrays)} arrays")
    q, s, out = arrays
    T = q.shape[0] if isinstance(q, np.ndarray) and q.ndim == 2 else -1
    if T < 1:
        raise FormatError(f"matmul_{fmt}: activations must be 2-D with at least one token row")
    for name, a, dtype, shape in (
        ("q", q, np.int8, (T, K)),
        ("s", s, np.float32, (T,)),
        ("out", out, np.float32, (T, M)),
    ):
        _check_array(f"matmul_{fmt} {name}", a, dtype, shape)
