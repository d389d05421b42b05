"""IQ2_S (ggml type 22): a 2.5625-bit codebook type.

Per 256 elements, 82 bytes: `d: f16`, `qs: u8[32]` (grid-index low bytes), `signs: u8[32]`, `qh: u8[8]`,
`scales: u8[8]`.
Sub-block ib (32 elements) and group l (8 elements) give elements `32ib + 8l + j`, j = 0..7:
`idx = qs[4ib + l] | ((qh[ib] >> 2l) & 3) << 8`, `s = scales[ib]` low nibble for l < 2, high nibble otherwise,
`db = d * (0.5 + s) * 0.25`, `w = db * grid[idx][j] * (-1 if bit j of signs[4ib + l] else +1)`.
The grid (ggml's `iq2s_grid`, 1024 x 8 magnitudes in {8, 25, 43}) is loaded from gguf-py at import, not retyped.
Not ternary: there is no zero level.

Encoder (`encode_blocks`, a plain nearest-point search, not ggml's importance-weighted `quantize_iq2_s`; llama.cpp
only has to read the result): `d = f16(amax / (43 · 31/8))` so that the largest |x| can take the top grid value at
the top scale; per 16 elements the 4-bit scale `s = clamp(round((max|x| / (43·d) · 8 − 1) / 2), 0, 15)`; per 8
elements the grid entry nearest (least squares) to |x| / db with db = d·(2s+1)/8, signs = x < 0 (−0 counts as +).
An all-zero block is d = 0 (every element decodes to 0).
"""

from __future__ import annotations

import numpy as np
from gguf.quants import IQ2_S as _GGUF_IQ2_S

from bitnet_ref.constants import FileType, GGMLType
from bitnet_ref.formats.base import BlockFormat

GROUP_ELEMS = 8  # j: elements per grid entry


def _load_grid() -> np.ndarray:
    """The 1024 x 8 iq2s_grid magnitudes as float32, unpacked by gguf-py."""
    _GGUF_IQ2_S.init_grid()
    return np.asarray(_GGUF_IQ2_S.grid, dtype=np.float32).reshape(1024, GROUP_ELEMS)


class IQ2_S(BlockFormat):
    """IQ2_S blocks: an f16 scale, grid indices, signs, high index bits and 4-bit sub-block scales."""

    TYPE = GGMLType.IQ2_S
    FILE_TYPE = FileType.MOSTLY_IQ2_S
    VEC_DOT_TYPE = "q8_k"
    BLOCK_ELEMS = 256
    BLOCK_BYTES = 82
    SUB_BLOCKS = 8  # ib: 32 elements each
    GROUPS = 4  # l: 8 elements each, one grid entry
    GROUP_ELEMS = GROUP_ELEMS
    HIGH_BITS_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)  # qh[ib] >> 2l: bits 8-9 of group l's index
    SIGN_BITS = np.arange(GROUP_ELEMS, dtype=np.uint8)  # bit j of a sign byte negates element j
    NIBBLE_OF_GROUP = np.array([0, 0, 1, 1])  # groups 0-1 use the low scale nibble, 2-3 the high one
    GRID = _load_grid()
    GRID_U8 = GRID.astype(np.uint8)  # the same magnitudes as bytes, for the kernels
    TOP = float(GRID.max()) * (2 * 15 + 1) / 8  # largest |w| / d: grid value 43 at scale nibble 15
    ENCODE_CHUNK = 256  # blocks per step of the grid search (bounds its (blocks, groups, 1024) scratch)
    # block layout: field -> byte range inside one 82-byte block
    D = slice(0, 2)  # f16 super-block scale
    QS = slice(2, 34)  # low 8 bits of the grid index of group 4ib + l
    SIGNS = slice(34, 66)  # sign bits of group 4ib + l
    QH = slice(66, 74)  # bits 8-9 of the grid indices of sub-block ib, two bits per group
    SCALES = slice(74, 82)  # two 4-bit scales per sub-block

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """Bit-exact with gguf-py; an inf or NaN d decodes to inf/NaN, as in ggml."""
        n = blocks.shape[0]
        d = cls.load_f16(blocks, cls.D).reshape(n, 1, 1)
        high = (blocks[:, cls.QH, None] >> cls.HIGH_BITS_SHIFTS) & 3  # (n, ib, l)
        idx = blocks[:, cls.QS].reshape(n, cls.SUB_BLOCKS, cls.GROUPS).astype(np.uint16) | (high.astype(np.uint16) << 8)
        nibbles = (blocks[:, cls.SCALES, None] >> np.array([0, 4], dtype=np.uint8)) & 0xF  # (n, ib, low/high)
        s = nibbles[:, :, cls.NIBBLE_OF_GROUP].astype(np.float32)  # (n, ib, l)
        sign_bits = (blocks[:, cls.SIGNS].reshape(n, cls.SUB_BLOCKS, cls.GROUPS, 1) >> cls.SIGN_BITS) & 1
        signs = np.where(sign_bits == 0, np.float32(1), np.float32(-1))  # (n, ib, l, j)
        with np.errstate(invalid="ignore", over="ignore"):
            db = d * (np.float32(0.5) + s) * np.float32(0.25)
            w = db[..., None] * cls.GRID[idx] * signs  # (n, ib, l, j)
        return w.reshape(n, cls.BLOCK_ELEMS)

    @classmethod
    def encode_blocks(cls, x: np.ndarray) -> np.ndarray:
        """(n_blocks, 82) from (n_blocks, 256) finite float32 by the nearest-point search of the module docstring."""
        out = np.zeros((x.shape[0], cls.BLOCK_BYTES), dtype=np.uint8)
        for b0 in range(0, x.shape[0], cls.ENCODE_CHUNK):
            out[b0 : b0 + cls.ENCODE_CHUNK] = cls._encode_chunk(x[b0 : b0 + cls.ENCODE_CHUNK])
        return out

    @classmethod
    def _encode_chunk(cls, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        blocks = np.zeros((n, cls.BLOCK_BYTES), dtype=np.uint8)
        amax = np.abs(x).max(axis=1, keepdims=True)
        cls.store_f16(blocks, cls.D, amax / np.float32(cls.TOP))
        d = cls.load_f16(blocks, cls.D)  # (n, 1): the stored d, which the scales are fitted to
        mag = np.abs(x).reshape(n, cls.SUB_BLOCKS * 2, 16)  # (n, half sub-block, 16)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = mag.max(axis=2) / (np.float32(cls.GRID.max()) * d)  # (n, 16)
            nib = np.clip(np.rint((ratio * 8 - 1) / 2), 0, 15)
        nib = np.where(np.isfinite(nib), nib, 0).astype(np.uint8)
        db = d * (2 * nib.astype(np.float32) + 1) / 8  # (n, 16)
        groups = mag.reshape(n, cls.SUB_BLOCKS * cls.GROUPS, cls.GROUP_ELEMS)  # (n, 32, 8)
        db_g = np.repeat(db, 2, axis=1)[..., None]  # (n, 32, 1): two groups per half sub-block
        with np.errstate(divide="ignore", invalid="ignore"):
            target = np.where(db_g > 0, groups / db_g, 0)
        # argmin_g |target - G_g|^2 = argmin_g (|G_g|^2 - 2 target·G_g)
        err = (cls.GRID * cls.GRID).sum(axis=1) - 2 * target @ cls.GRID.T  # (n, 32, 1024)
        idx = err.argmin(axis=2).astype(np.uint16).reshape(n, cls.SUB_BLOCKS, cls.GROUPS)
        blocks[:, cls.QS] = (idx & 0xFF).reshape(n, -1)
        blocks[:, cls.QH] = np.bitwise_or.reduce((idx >> 8).astype(np.uint8) << cls.HIGH_BITS_SHIFTS, axis=2)
        pairs = nib.reshape(n, cls.SUB_BLOCKS, 2)
        blocks[:, cls.SCALES] = pairs[:, :, 0] | (pairs[:, :, 1] << 4)
        negative = np.signbit(x) & (x != 0)
        bits = negative.reshape(n, cls.SUB_BLOCKS * cls.GROUPS, cls.GROUP_ELEMS).astype(np.uint8) << cls.SIGN_BITS
        blocks[:, cls.SIGNS] = np.bitwise_or.reduce(bits, axis=2)
        return blocks
