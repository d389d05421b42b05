"""Choosing the next token from logits, in llama.cpp's order (common_sampler's default chain, llama-sampler.cpp):
repetition penalties -> top-k -> top-p -> min-p -> temperature -> a draw from the remaining distribution.

Every draw takes an explicit numpy Generator from the caller; nothing here touches global random state.

Seeds: `BITNET_SEED=N` sets the seed; `BITNET_DETERMINISTIC=1` fixes it (42 unless BITNET_SEED says otherwise). With a
fixed seed a run is reproducible, and it does not depend on the thread count: the engine's kernels give the same
logits for any n_threads (each output row is computed by one thread with a fixed reduction order) and sampling is
plain single-threaded numpy driven by that one Generator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bitnet_ref.errors import ConfigError, EngineError, TokenRangeError

ENV_SEED = "BITNET_SEED"
ENV_DETERMINISTIC = "BITNET_DETERMINISTIC"
DETERMINISTIC_SEED = 42
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings with llama.cpp's defaults; temperature <= 0 means greedy."""

    temperature: float = 0.8
    top_k: int = 40  # <= 0: keep all
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # tokens the penalties look back over; 0: off, -1: all
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    min_keep: int = 0  # top-p and min-p keep at least this many tokens

    def __post_init__(self) -> None:
        floats = ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty")
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"sampler {name} = {value!r}: expected a finite number")
        for name in ("top_k", "repeat_last_n", "min_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"sampler {name} = {value!r}: expected an integer")
        if not 0.0 <= self.top_p <= 1.0 or not 0.0 <= self.min_p <= 1.0:
            raise ConfigError(f"sampler top_p = {self.top_p}, min_p = {self.min_p}: expected values in [0, 1]")
        if self.repeat_penalty <= 0.0 or self.repeat_last_n < -1 or self.min_keep < 0:
            raise ConfigError(f"sampler repeat_penalty = {self.repeat_penalty} (> 0), repeat_last_n = "
                              f"{self.repeat_last_n} (>= -1), min_keep = {self.min_keep} (>= 0)")

    @property
    def greedy(self) -> bool:
        """Whether the highest logit is always taken (temperature <= 0)."""
        return self.temperature <= 0.0

    def describe(self) -> dict[str, object]:
        """The settings, for records."""
        return {**asdict(self), "greedy": self.greedy}


GREEDY = SamplerConfig(temperature=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Seeds


def _parse_bool(name: str, raw: str) -> bool:
    """An on/off environment value."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} = {raw!r}: expected 1/0 (or true/false, yes/no, on/off)")


def _parse_seed(name: str, raw: object) -> int:
    """A seed: a non-negative integer."""
    try:
        seed = int(str(raw).strip(), 10)
    except ValueError:
        raise ConfigError(f"{name} = {raw!r}: expected a non-negative integer") from None
    if seed < 0:
        raise ConfigError(f"{name} = {raw!r}: expected a non-negative integer")
    return seed


def seed_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The seed BITNET_SEED / BITNET_DETERMINISTIC ask for, or None when neither does."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_SEED, "").strip()
    if raw:
        return _parse_seed(ENV_SEED, raw)
    if _parse_bool(ENV_DETERMINISTIC, env.get(ENV_DETERMINISTIC, "")):
        return DETERMINISTIC_SEED
    return None


def resolve_seed(seed: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """An explicit seed, else the environment's, else a fresh one from OS entropy (returned so it can be recorded)."""
    if seed is not None:
        return _parse_seed("seed", seed)
    env_seed = seed_from_env(environ)
    if env_seed is not None:
        return env_seed
    return int(np.random.SeedSequence().entropy % (1 << 63))


def make_rng(seed: int) -> np.random.Generator:
    """The project's generator for a seed (numpy's default PCG64)."""
    return np.random.default_rng(_parse_seed("seed", seed))


def rng_seed(rng: np.random.Generator) -> int | None:
    """The integer seed a Generator was made from, when it was made from one (for records)."""
    seq = getattr(rng.bit_generator, "seed_seq", None)
    entropy = getattr(seq, "entropy", None)
    return entropy if isinstance(entropy, int) and not getattr(seq, "spawn_key", ()) else None


# ---------------------------------------------------------------------------------------------------------------------
# The chain


def apply_penalties(logits: np.ndarray, history: Sequence[int], config: SamplerConfig) -> np.ndarray:
    """Logits after llama.cpp's penalties over the last repeat_last_n tokens: a seen token's positive logit is divided
    by repeat_penalty and a negative one multiplied; then count * frequency_penalty + presence_penalty is subtracted."""
    n = config.repeat_last_n
    off = config.repeat_penalty == 1.0 and config.frequency_penalty == 0.0 and config.presence_penalty == 0.0
    if n == 0 or off or len(history) == 0:
        return logits
    window = np.asarray(history[-n:] if n > 0 else history, dtype=np.int64)
    bad = np.flatnonzero((window < 0) | (window >= len(logits)))
    if len(bad):
        raise TokenRangeError(f"history token {int(window[bad[0]])} is outside the vocabulary [0, {len(logits)})")
    tokens, counts = np.unique(window, return_counts=True)
    out = logits.copy()
    seen = out[tokens]
    seen = np.where(seen <= 0, seen * np.float32(config.repeat_penalty), seen / np.float32(config.repeat_penalty))
    seen -= counts.astype(np.float32) * np.float32(config.frequency_penalty) + np.float32(config.presence_penalty)
    out[tokens] = seen
    return out


def _sorted(ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates by decreasing logit, ties by increasing id."""
    order = np.lexsort((ids, -vals))
    return ids[order], vals[order]


def _top_k(ids: np.ndarray, vals: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest logits, sorted (ties at the cut go to the lower ids)."""
    n = len(vals)
    if k < n:
        kth = np.partition(vals, n - k)[n - k]
        above = np.flatnonzero(vals > kth)
        tied = np.flatnonzero(vals == kth)[: k - len(above)]
        keep = np.concatenate([above, tied])
        ids, vals = ids[keep], vals[keep]
    return _sorted(ids, vals)


def _softmax32(vals: np.ndarray) -> np.ndarray:
    """Probabilities as llama.cpp's softmax computes them in float32."""
    p = np.exp(vals - vals.max(), dtype=np.float32)
    return p / p.sum(dtype=np.float32)


def _top_p(ids: np.ndarray, vals: np.ndarray, p: float, min_keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The smallest head of the sorted candidates whose probability reaches p (at least min_keep tokens)."""
    cum = np.cumsum(_softmax32(vals), dtype=np.float32)
    reached = (cum >= np.float32(p)) & (np.arange(1, len(vals) + 1) >= min_keep)
    last = int(np.argmax(reached)) + 1 if reached.any() else len(vals)
    return ids[:last], vals[:last]


def _min_p(
    ids: np.ndarray, vals: np.ndarray, p: float, min_keep: int, is_sorted: bool
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Candidates whose probability is at least p times the top one's (at least min_keep tokens)."""
    floor = np.float32(vals.max()) + np.log(np.float32(p))
    if not is_sorted:
        keep = vals >= floor
        if keep.any() and keep.sum() >= min_keep:
            return ids[keep], vals[keep], False
        ids, vals = _sorted(ids, vals)
    below = (vals < floor) & (np.arange(len(vals)) >= min_keep)
    below[0] = False
    size = int(np.argmax(below)) if below.any() else len(vals)
    return ids[:size], vals[:size], True


def candidates(logits: np.ndarray, config: SamplerConfig, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(ids, logits) left after penalties, top-k, top-p, min-p and temperature (temperature > 0), in that order."""
    vals = np.asarray(logits, dtype=np.float32).reshape(-1)
    if np.isnan(vals).any():
        raise EngineError(f"logits contain NaN (first at token {int(np.flatnonzero(np.isnan(vals))[0])})")
    vals = apply_penalties(vals, history, config)
    ids = np.arange(len(vals))
    is_sorted = False
    if config.top_k > 0:
        ids, vals = _top_k(ids, vals, config.top_k)
        is_sorted = True
    if config.top_p < 1.0:
        if not is_sorted:
            ids, vals = _sorted(ids, vals)
            is_sorted = True
        ids, vals = _top_p(ids, vals, config.top_p, config.min_keep)
    if config.min_p > 0.0:
        ids, vals, is_sorted = _min_p(ids, vals, config.min_p, config.min_keep, is_sorted)
    if config.temperature > 0.0:
        vals = vals / np.float32(config.temperature)
    return ids, vals


def probabilities(vals: np.ndarray) -> np.ndarray:
    """The distribution the final draw uses: exp(logit - max) in float32, normalised in float64."""
    p = np.exp(vals - vals.max(), dtype=np.float32).astype(np.float64)
    return p / p.sum()


def sample(logits: np.ndarray, config: SamplerConfig, rng: np.random.Generator, history: Sequence[int] = ()) -> int:
    """The next token id: greedy when temperature <= 0, else one uniform draw from rng over the candidates."""
    if config.greedy:
        vals = np.asarray(logits, dtype=np.float32).reshape(-1)
        if np.isnan(vals).any():
            raise EngineError(f"logits contain NaN (first at token {int(np.flatnonzero(np.isnan(vals))[0])})")
        return int(np.argmax(apply_penalties(vals, history, config)))
    ids, vals = candidates(logits, config, history)
    weights = np.exp(vals - vals.max(), dtype=np.float32).astype(np.float64)
    target = weights.sum() * rng.random()
    i = int(np.searchsorted(np.cumsum(weights), target, side="left"))
    return int(ids[min(i, len(ids) - 1)])
