"""The narrow interface crossval and bench use to drive an engine, and the bitnet_ref backend.

A backend loads one GGUF and answers: tokenize, eval (logits of every position), capture (activations at the named
points, `(point, layer) -> (n_tokens, width)`), greedy (a continuation through the KV cache) and describe (what
went into its numbers). Every call starts from an empty KV cache. A backend that cannot load raises; nothing falls
back to another engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from bitnet_ref.errors import BitnetRefError

N_UBATCH_DEFAULT = 512  # used only when no n_ctx is given (the engine's own default)


class BackendError(BitnetRefError, RuntimeError):
    """A backend could not load a model or run it; the run stops."""


@runtime_checkable
class Backend(Protocol):
    """What crossval needs from an engine."""

    name: str

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """Token ids of text (special tokens parsed)."""

    def eval(self, tokens: list[int]) -> np.ndarray:
        """Logits of every position, (n_tokens, n_vocab) float32, from an empty cache."""

    def capture(self, tokens: list[int], points: Iterable[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
        """Activations at the requested (point, layer)s for one batch, each (n_tokens, width) float32."""

    def greedy(self, tokens: list[int], n_new: int) -> tuple[list[int], np.ndarray]:
        """Greedy continuation through the KV cache: n_new tokens and the (n_new, n_vocab) logits that chose them."""

    def describe(self) -> dict:
        """Versions, build info, numerics and threads, for the records."""


def check_distinct(a: Backend, b: Backend) -> None:
    """A comparison of an engine with itself proves nothing: refuse it."""
    if a.name == b.name or type(a) is type(b):
        raise BackendError(f"both backends are {a.name!r}/{type(a).__name__}; a cross-check needs two engines")


class BitnetRefBackend:
    """bitnet_ref's numba engine, its tokenizer, and its trace hook; one ubatch of n_ctx tokens, like llama.cpp's."""

    name = "bitnet_ref"

    def __init__(self, path: str | Path, *, numerics: object = "ggml", n_threads: int = 2, ffn_act: str | None = None,
                 n_ctx: int | None = None, i2s_layout: str = "x86", device: str = "cpu"):
        from bitnet_ref.model import load_model
        from bitnet_ref.tokenizer import Tokenizer

        self.path = Path(path)
        try:
            self.model = load_model(self.path, numerics=numerics, n_threads=n_threads, ffn_act=ffn_act, n_ctx=n_ctx,
                                    n_ubatch=n_ctx or N_UBATCH_DEFAULT, i2s_layout=i2s_layout, device=device)
            self.tokenizer = Tokenizer.from_gguf(self.model.gguf)
        except BitnetRefError as exc:
            raise BackendError(f"bitnet_ref cannot load {self.path}: {exc}") from exc
        self.config = self.model.config
        self.n_threads = n_threads

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        """Token ids from the model's own tokenizer (the GGUF's, or the checkpoint's tokenizer.json)."""
        return list(self.tokenizer.encode(text, add_bos=add_bos, parse_special=True))

    def _forward(self, tokens: list[int], trace=None) -> np.ndarray:
        """One batched forward from position 0 with an empty cache."""
        self.model.kv.reset()
        return self.model.forward(np.asarray(tokens, np.int32), 0, all_logits=True, trace=trace)

    def eval(self, tokens: list[int]) -> np.ndarray:
        """Logits of every position."""
        return np.array(self._forward(tokens), np.float32)

    def capture(self, tokens: list[int], points: Iterable[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
        """Activations the trace hook reports at the requested points (missing points are simply absent)."""
        wanted = set(points)
        parts: dict[tuple[str, int], list[np.ndarray]] = {}

        def trace(name: str, layer: int, array: np.ndarray) -> None:
            if (name, layer) in wanted:
                parts.setdefault((name, layer), []).append(np.array(array, np.float32).reshape(array.shape[0], -1))

        self._forward(tokens, trace)
        return {key: np.concatenate(arrays, axis=0) for key, arrays in parts.items()}

    def greedy(self, tokens: list[int], n_new: int) -> tuple[list[int], np.ndarray]:
        """Prefill, then n_new single-token steps, always taking the argmax."""
        self.model.kv.reset()
        step, pos = np.asarray(tokens, np.int32), 0
        out, rows = [], []
        while len(out) < n_new:
            rows.append(self.model.forward(step, pos, all_logits=False)[-1])  # a fresh f32 row: no copy
            out.append(int(np.argmax(rows[-1])))
            step, pos = np.asarray(out[-1:], np.int32), len(tokens) + len(out) - 1
        return out, np.stack(rows) if rows else np.zeros((0, self.config.n_vocab), np.float32)

    def describe(self) -> dict:
        """The engine's own description (config, numerics, threads) plus the backend name."""
        return {"backend": self.name, "path": str(self.path), "n_threads": self.n_threads, **self.model.describe()}
