"""Rotary position embedding, NEOX pairing (element i with i + n_rot/2), applied in place per head."""

from __future__ import annotations

import numpy as np
from numba import njit

from bitnet_ref.kernels.intrinsics import cosf, fma32, sinf


@njit(cache=True, inline="always")
def _cache_iterative(pos, theta_scale, half, cos_out, sin_out):
    """ggml_rope_cache_init: θ_0 = (float)pos, θ_{i+1} = θ_i · theta_scale in f32; libm cosf/sinf."""
    theta = np.float32(pos)
    for i in range(half):
        cos_out[i] = cosf(theta)
        sin_out[i] = sinf(theta)
        theta = theta * theta_scale


@njit(cache=True)
def neox(x, positions, n_head, head_dim, n_rot, theta_scale, out):
    """ggml's ROPE (NEOX): iterative f32 theta, libm cosf/sinf, the two FMAs GCC fuses (docs/NUMERICS.md §4.8)."""
    T = x.shape[0]
    half = n_rot // 2
    for t in range(T):
        c = np.empty(half, np.float32)
        s = np.empty(half, np.float32)
        _cache_iterative(positions[t], theta_scale, half, c, s)
        for h in range(n_head):
            base = h * head_dim
            for i in range(half):
                x0 = x[t, base + i]
                x1 = x[t, base + i + half]
                out[t, base + i] = fma32(x0, c[i], -(x1 * s[i]))
                out[t, base + i + half] = fma32(x0, s[i], x1 * c[i])
            for i in range(n_rot, head_dim):
                out[t, base + i] = x[t, base + i]


@njit(cache=True)
def neox_direct(x, positions, n_head, head_dim, n_rot, inv_freq, out):
    """HF rotate_half RoPE: angle = pos · inv_freq[i] in f32, f32 cos/sin, x·cos + rotate_half(x)·sin unfused."""
    T = x.shape[0]
    half = n_rot // 2
    for t in range(T):
        c = np.empty(half, np.float32)
        s = np.empty(half, np.float32)
        p = np.float32(positions[t])
        for i in range(half):
            angle = p * inv_freq[i]
            c[i] = cosf(angle)
            s[i] = sinf(angle)
        for h in range(n_head):
            base = h * head_dim
            for i in range(half):
                x0 = x[t, base + i]
                x1 = x[t, base + i + half]
                out[t, base + i] = x0 * c[i] - x1 * s[i]
                out[t, base + i + half] = x1 * c[i] + x0 * s[i]
            for i in range(n_rot, head_dim):
                out[t, base + i] = x[t, base + i]


def inv_freq(base: float, n_rot: int) -> np.ndarray:
    """HF's inv_freq = 1 / base^(2i/n_rot), i < n_rot/2, computed in f32 like torch."""
    exponents = np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot)
    return (np.float32(1.0) / np.power(np.float32(base), exponents, dtype=np.float32)).astype(np.float32)


@njit(cache=True)
def direct_tables(inv_freq, cos_out, sin_out):
    """cos_out[p, i], sin_out[p, i] = cosf, sinf of f32(p · inv_freq[i]) for every position p < cos_out.shape[0]:
    neox_direct's angles and libm values as a table (the CUDA engine's RoPE reads it)."""
    for p in range(cos_out.shape[0]):
        pf = np.float32(p)
        for i in range(inv_freq.shape[0]):
            angle = pf * inv_freq[i]
            cos_out[p, i] = cosf(angle)
            sin_out[p, i] = sinf(angle)
