"""Comparison metrics: pure functions on arrays, computed in float64. `test` is compared against `ref`."""

from __future__ import annotations

import numpy as np


def _pair(test: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 of one shape (shapes must match)."""
    a, b = np.asarray(test, np.float64), np.asarray(ref, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: test {a.shape} vs ref {b.shape}")
    return a, b


def pearson(test: np.ndarray, ref: np.ndarray) -> float:
    """Pearson correlation of the flattened arrays; 1.0 for two equal constants, 0.0 if only one is constant."""
    a, b = _pair(test, ref)
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if den == 0.0:
        return 1.0 if np.array_equal(np.asarray(test), np.asarray(ref)) else 0.0
    return float(np.dot(a, b) / den)


def cosine(test: np.ndarray, ref: np.ndarray) -> float:
    """Cosine similarity of the flattened arrays; 1.0 when both are zero."""
    a, b = _pair(test, ref)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    if den == 0.0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a.ravel(), b.ravel()) / den)


def nmse(test: np.ndarray, ref: np.ndarray) -> float:
    """mean((test − ref)²) / var(ref), as llama.cpp's check-nmse.py; mean(ref²) replaces a zero variance."""
    a, b = _pair(test, ref)
    mse = np.mean((a - b) ** 2)
    den = np.var(b) or np.mean(b**2)
    if den == 0.0:
        return 0.0 if mse == 0.0 else float("inf")
    return float(mse / den)


def max_abs_rel(test: np.ndarray, ref: np.ndarray) -> float:
    """max |test − ref| divided by the RMS of ref."""
    a, b = _pair(test, ref)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    rms = float(np.sqrt(np.mean(b**2))) if b.size else 0.0
    if rms == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / rms


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) per row of the softmaxes of two logit arrays (T, V) -> (T,), in nats."""
    return kl_of_log_probs(log_softmax(p_logits), log_softmax(q_logits))


def kl_of_log_probs(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) per row from row-wise log-probabilities, in nats (≥ 0: rounding may dip below)."""
    return np.maximum(np.sum(np.exp(lp) * (lp - lq), axis=-1), 0.0)




def topk_overlap(test: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """Per row, |top-k(test) ∩ top-k(ref)| / k (sets; order inside the top k ignored)."""
    a, b = _pair(test, ref)
    k = min(k, a.shape[-1])
    ta = np.argpartition(-a, k - 1, axis=-1)[..., :k]
    tb = np.argpartition(-b, k - 1, axis=-1)[..., :k]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(ta.reshape(-1, k), tb.reshape(-1, k), strict=True)])


def first_top1_mismatch(test: np.ndarray, ref: np.ndarray) -> int | None:
    """Index of the first row whose argmax differs, or None when all agree."""
    a, b = _pair(test, ref)
    bad = np.flatnonzero(a.argmax(axis=-1) != b.argmax(axis=-1))
    return int(bad[0]) if bad.size else None




def _stats(a: np.ndarray, b: np.ndarray, axis: int | None) -> dict[str, np.ndarray]:
    """nmse, pearson, cosine, max_abs_rel along an axis (None: whole array), with the scalar functions' edge rules."""
    diff = a - b
    d2 = np.mean(diff**2, axis=axis)
    ms_b = np.mean(b**2, axis=axis)
    var = np.var(b, axis=axis)
    den = np.where(var > 0, var, ms_b)
    ac = a - a.mean(axis=axis, keepdims=True)
    bc = b - b.mean(axis=axis, keepdims=True)
    pden = np.sqrt(np.sum(ac**2, axis=axis) * np.sum(bc**2, axis=axis))
    cden = np.sqrt(np.sum(a**2, axis=axis) * np.sum(b**2, axis=axis))
    same = np.all(diff == 0, axis=axis)
    both_zero = ~np.any(a, axis=axis) & ~np.any(b, axis=axis)
    rms = np.sqrt(ms_b)
    dmax = np.max(np.abs(diff), axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "nmse": np.where(den > 0, d2 / den, np.where(d2 == 0, 0.0, np.inf)),
            "pearson": np.where(pden > 0, np.sum(ac * bc, axis=axis) / pden, np.where(same, 1.0, 0.0)),
            "cosine": np.where(cden > 0, np.sum(a * b, axis=axis) / cden, np.where(both_zero, 1.0, 0.0)),
            "max_abs_rel": np.where(rms > 0, dmax / rms, np.where(dmax == 0, 0.0, np.inf)),
        }


def compare(test: np.ndarray, ref: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Whole-tensor metrics and per-row metrics of two (T, width) arrays in one pass over float64 copies."""
    a, b = _pair(test, ref)
    whole = {k: float(v) for k, v in _stats(a.ravel(), b.ravel(), axis=None).items()}
    return whole, _stats(a, b, axis=1)




def logit_metrics(test: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per-position logit metrics: KL(ref ‖ test), top-1 agreement, top-5/top-10 overlap."""
    a, b = _pair(test, ref)
    return {
        "kl": kl_divergence(b, a),
        "top1": (a.argmax(axis=-1) == b.argmax(axis=-1)).astype(np.float64),
        "top5": topk_overlap(a, b, 5),
        "top10": topk_overlap(a, b, 10),
    }
