"""The decode roofline: the machine's streaming read bandwidth and the bytes one decoded token must read.

A decoded token reads every weight matrix once (at its stored width, the output head included), one row of the
token embedding, the norms, and the K and V cache of every past position; decode cannot beat
bandwidth / bytes-per-token (docs/PERFORMANCE.md §1: 2B-4T = 1.178 GB/token of ternary weights + F16 head).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from bitnet_ref import constants as C
from bitnet_ref import formats
from bitnet_ref.constants import GGMLType

KV_BYTES = 2  # llama.cpp's default KV cache type is f16 (docs/PERFORMANCE.md §1 counts the cache at f16)
BUFFER_BYTES = 256 << 20  # ≫ any L3 of this machine kind (32 MiB), so passes stream from DRAM
CHUNKS = 64  # work items of the parallel read; more than threads so the load balances


class Tensor(NamedTuple):
    """What the roofline needs of one tensor: name, ggml shape (ne order), type and stored bytes."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    nbytes: int


@dataclass(frozen=True)
class TokenBytes:
    """Bytes read per decoded token, split by kind."""

    ternary: int  # ternary-typed weight matrices at their stored width (scales included)
    head: int  # the output projection (token_embd when the head is tied)
    other: int  # non-ternary matrices, norms and one embedding row
    kv_per_pos: int  # K + V cache bytes per past position, all layers

    @property
    def weights(self) -> int:
        """All weight bytes per token."""
        return self.ternary + self.head + self.other

    def at(self, n_past: float) -> float:
        """Total bytes per token with n_past positions already in the KV cache."""
        return self.weights + self.kv_per_pos * n_past


def tensors_of(gguf: object) -> list[Tensor]:
    """The roofline view of a GGUFFile's tensors."""
    return [Tensor(t.name, tuple(t.shape), GGMLType(t.type), t.nbytes) for t in gguf.tensors.values()]


def planned_tensors(shapes: Mapping[str, tuple[int, ...]], ternary: GGMLType, head: GGMLType) -> list[Tensor]:
    """Tensors of a model that has no file yet (e.g. ModelConfig.expected_tensors() of the 2B-4T shapes):
    1-D tensors F32, token_embd / output in `head`'s type, every other matrix in `ternary`'s."""
    out = []
    for name, shape in shapes.items():
        typ = GGMLType.F32 if len(shape) == 1 else head if name in (C.TENSOR_TOKEN_EMBD, C.TENSOR_OUTPUT) else ternary
        out.append(Tensor(name, tuple(shape), typ, formats.get(typ).nbytes(tuple(shape))))
    return out


def _rows(t: Tensor) -> int:
    """Rows of a tensor (product of ne[1:])."""
    return int(np.prod(t.shape[1:], dtype=np.int64)) if len(t.shape) > 1 else 1


def _is_k_or_v(name: str) -> bool:
    """Whether a tensor is a K or V projection (its output width is cached per position)."""
    return name.endswith((".attn_k.weight", ".attn_v.weight"))


def token_bytes(tensors: Iterable[Tensor], kv_bytes: int = KV_BYTES) -> TokenBytes:
    """Bytes one decoded token reads: every matrix at stored width, one embedding row, norms, KV per position."""
    tensors = list(tensors)
    names = {t.name for t in tensors}
    tied = C.TENSOR_OUTPUT not in names
    ternary = head = other = kv = 0
    for t in tensors:
        if _is_k_or_v(t.name):
            kv += _rows(t) * kv_bytes
        if t.name == C.TENSOR_OUTPUT or (tied and t.name == C.TENSOR_TOKEN_EMBD):
            head += t.nbytes
        elif t.name == C.TENSOR_TOKEN_EMBD:
            other += t.nbytes // _rows(t)
        elif t.type in formats.TERNARY_TYPES:
            ternary += t.nbytes
        else:
            other += t.nbytes
    return TokenBytes(ternary=ternary, head=head, other=other, kv_per_pos=kv)


@njit(parallel=True, cache=True)
def _stream_sum(buf, partial):
    """Sum each of len(partial) equal chunks of buf into partial (a pure streaming read)."""
    n_chunks = partial.shape[0]
    chunk = buf.shape[0] // n_chunks
    for c in prange(n_chunks):
        seg = buf[c * chunk : (c + 1) * chunk]
        s = 0
        for i in range(seg.shape[0]):
            s += seg[i]
        partial[c] = s


@dataclass(frozen=True)
class Bandwidth:
    """Streaming read bandwidth of `threads` threads over repeated passes of a buffer, in GB/s (1e9 bytes)."""

    threads: int
    buffer_bytes: int
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """Median over passes."""
        return float(np.median(self.samples))

    @property
    def best(self) -> float:
        """The fastest pass."""
        return float(max(self.samples))


def measure_bandwidth(threads: int, nbytes: int = BUFFER_BYTES, passes: int = 12) -> Bandwidth:
    """Time `passes` parallel reads of an int64 buffer of `nbytes` with `threads` numba threads."""
    buf = np.ones(nbytes // 8, dtype=np.int64)
    partial = np.zeros(CHUNKS, dtype=np.int64)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _stream_sum(buf, partial)  # compile / load from cache, fault the pages in
        samples = []
        for _ in range(passes):
            t0 = time.perf_counter()
            _stream_sum(buf, partial)
            samples.append(buf.nbytes / (time.perf_counter() - t0) / 1e9)
    finally:
        numba.set_num_threads(before)
    return Bandwidth(threads=threads, buffer_bytes=buf.nbytes, samples=tuple(samples))


def bound_tok_s(bytes_per_token: float, gbps: float) -> float:
    """The decode speed limit in tokens/s at a bandwidth of gbps (1e9 bytes/s)."""
    return gbps * 1e9 / bytes_per_token


def roofline_pct(tok_s: float, bytes_per_token: float, gbps: float) -> float:
    """Decode speed as a percentage of the bandwidth bound."""
    return 100.0 * tok_s / bound_tok_s(bytes_per_token, gbps)


def summarize(bws: Sequence[Bandwidth]) -> list[dict]:
    """Bandwidth measurements as table rows."""
    return [
        {"threads": b.threads, "buffer_mb": b.buffer_bytes / 1e6, "passes": len(b.samples), "median_gbps": b.median,
         "min_gbps": min(b.samples), "max_gbps": b.best}
        for b in bws
    ]
