"""Sampling: llama.cpp's chain against a plain numpy twin and hand-worked distributions; seeds and determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bitnet_ref.errors import ConfigError, EngineError, TokenRangeError
from bitnet_ref.sampling import (
    DETERMINISTIC_SEED,
    GREEDY,
    SamplerConfig,
    apply_penalties,
    candidates,
    make_rng,
    probabilities,
    resolve_seed,
    rng_seed,
    sample,
    seed_from_env,
)

OFF = dict(top_k=0, top_p=1.0, min_p=0.0)  # every filter off
POW2 = np.log(np.array([1.0, 2.0, 4.0, 8.0], np.float32))  # softmax -> [1, 2, 4, 8] / 15


def dist(logits, config, history=()) -> dict[int, float]:
    """Our final distribution as {token id: probability}."""
    ids, vals = candidates(np.asarray(logits, np.float32), config, history)
    return dict(zip(ids.tolist(), probabilities(vals).tolist(), strict=True))


def twin(logits, config: SamplerConfig, history=()) -> dict[int, float]:
    """Plain re-statement of llama.cpp's chain: penalties, top-k, top-p, min-p, temperature, softmax."""
    z = np.array(logits, np.float64)
    n = config.repeat_last_n
    window = list(history)[-n:] if n > 0 else (list(history) if n == -1 else [])
    for t in set(window):
        c = window.count(t)
        z[t] = z[t] * config.repeat_penalty if z[t] <= 0 else z[t] / config.repeat_penalty
        z[t] -= c * config.frequency_penalty + config.presence_penalty
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if config.top_k > 0:
        order = order[: config.top_k]
    if config.top_p < 1.0:
        p = np.exp(z[order] - z[order].max())
        p /= p.sum()
        cum = np.cumsum(p)
        keep = next((i + 1 for i in range(len(order)) if cum[i] >= config.top_p and i + 1 >= config.min_keep),
                    len(order))
        order = order[:keep]
    if config.min_p > 0.0:
        top = max(z[i] for i in order)
        kept = [i for i in order if z[i] >= top + math.log(config.min_p)]
        order = kept if len(kept) >= max(config.min_keep, 1) else order[: max(config.min_keep, len(kept))]
    zz = z[order] / config.temperature
    p = np.exp(zz - zz.max())
    return dict(zip(order, (p / p.sum()).tolist(), strict=True))


def assert_same_dist(a: dict[int, float], b: dict[int, float], case: str) -> None:
    assert set(a) == set(b), f"{case}: kept {sorted(a)} vs twin {sorted(b)}"
    worst = max(abs(a[i] - b[i]) for i in a)
    assert worst < 2e-6, f"{case}: probabilities differ by {worst}"


# ---------------------------------------------------------------------------------------------------------------------
# Hand-worked distributions


def test_no_filters_is_softmax():
    d = dist(POW2, SamplerConfig(temperature=1.0, **OFF))
    assert np.allclose([d[i] for i in range(4)], np.array([1, 2, 4, 8]) / 15, atol=1e-7)


@pytest.mark.parametrize("over, expected", [
    ({"top_k": 2}, {3: 8 / 12, 2: 4 / 12}),
    ({"top_k": 1}, {3: 1.0}),
    ({"top_p": 0.5}, {3: 1.0}),  # 8/15 = 0.533 >= 0.5
    ({"top_p": 0.6}, {3: 8 / 12, 2: 4 / 12}),  # 12/15 = 0.8
    ({"top_p": 0.5, "min_keep": 3}, {3: 8 / 14, 2: 4 / 14, 1: 2 / 14}),
    ({"min_p": 0.3}, {3: 8 / 12, 2: 4 / 12}),  # keep p >= 0.3 * 8/15: 4/15 yes, 2/15 no
    ({"min_p": 0.25}, {3: 8 / 14, 2: 4 / 14, 1: 2 / 14}),  # 2/15 >= 2/15
    ({"temperature": 2.0}, {i: v / (1 + 2**0.5 + 2 + 8**0.5) for i, v in enumerate([1, 2**0.5, 2, 8**0.5])}),
])
def test_filters_by_hand(over, expected):
    config = SamplerConfig(**{**dict(temperature=1.0, **OFF), **over})
    d = dist(POW2, config)
    assert set(d) == set(expected) and all(abs(d[i] - expected[i]) < 1e-6 for i in d), (over, d)


def test_repetition_penalty_by_hand():
    logits = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
    c = SamplerConfig(repeat_penalty=2.0, repeat_last_n=64)
    assert apply_penalties(logits, [0, 1, 1], c).tolist() == [1.0, -2.0, 0.5, 3.0]
    c = SamplerConfig(repeat_penalty=2.0, frequency_penalty=0.25, presence_penalty=0.5)
    assert apply_penalties(logits, [0, 1, 1], c).tolist() == [0.25, -3.0, 0.5, 3.0]  # 1 - 0.25 - 0.5
    c = SamplerConfig(repeat_penalty=2.0, repeat_last_n=1)  # only the last token counts
    assert apply_penalties(logits, [0, 0, 1], c).tolist() == [2.0, -2.0, 0.5, 3.0]
    c = SamplerConfig(repeat_penalty=2.0, repeat_last_n=0)
    assert apply_penalties(logits, [0, 1], c) is logits
    c = SamplerConfig(repeat_penalty=2.0, repeat_last_n=-1)  # the whole history
    assert apply_penalties(logits, [3] + [2] * 100, c).tolist() == [2.0, -1.0, 0.25, 1.5]


def test_penalty_changes_the_greedy_choice():
    logits = np.array([1.0, 0.9, -5.0], np.float32)
    assert sample(logits, GREEDY, make_rng(0)) == 0
    assert sample(logits, SamplerConfig(temperature=0.0, repeat_penalty=1.5), make_rng(0), history=[0]) == 1


def test_greedy_takes_the_lowest_id_among_ties_and_draws_nothing():
    rng = make_rng(3)
    state = rng.bit_generator.state
    assert sample(np.array([0.0, 5.0, 5.0, 1.0], np.float32), GREEDY, rng) == 1
    assert rng.bit_generator.state == state


def test_top_k_ties_at_the_cut_keep_lower_ids():
    ids, _ = candidates(np.zeros(10, np.float32), SamplerConfig(top_k=3, top_p=1.0, min_p=0.0))
    assert ids.tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------------------
# Numpy twin on random logits and settings


def test_chain_matches_twin_on_random_cases():
    rng = np.random.default_rng(11)
    for case in range(300):
        n = int(rng.integers(2, 300))
        logits = (rng.standard_normal(n) * rng.uniform(0.1, 5)).astype(np.float32)
        config = SamplerConfig(
            temperature=float(rng.choice([0.3, 0.8, 1.0, 1.7])),
            top_k=int(rng.choice([0, 1, 5, 40, 1000])),
            top_p=float(rng.choice([1.0, 0.95, 0.5, 0.1])),
            min_p=float(rng.choice([0.0, 0.05, 0.2])),
            repeat_penalty=float(rng.choice([1.0, 1.1, 1.5])),
            repeat_last_n=int(rng.choice([0, 8, 64, -1])),
            frequency_penalty=float(rng.choice([0.0, 0.1])),
            presence_penalty=float(rng.choice([0.0, 0.3])),
            min_keep=int(rng.choice([0, 0, 2])),
        )
        history = rng.integers(0, n, size=int(rng.integers(0, 100))).tolist()
        assert_same_dist(dist(logits, config, history), twin(logits, config, history), f"case {case}: {config}")


# ---------------------------------------------------------------------------------------------------------------------
# Draws


def test_draw_frequencies_follow_the_distribution():
    rng = make_rng(1234)
    config = SamplerConfig(temperature=1.0, **OFF)
    n = 30000
    counts = np.bincount([sample(POW2, config, rng) for _ in range(n)], minlength=4)
    expected = n * np.array([1, 2, 4, 8]) / 15
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, f"chi-square {chi2:.2f} (3 dof, p = 0.001 bound 16.27); counts {counts.tolist()}"


def test_draws_stay_inside_the_filtered_set():
    rng = make_rng(5)
    config = SamplerConfig(temperature=1.5, top_k=2, top_p=1.0, min_p=0.0)
    assert {sample(POW2, config, rng) for _ in range(500)} == {2, 3}


def test_same_seed_same_tokens_other_seed_other_tokens():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    config = SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)

    def run(seed: int) -> list[int]:
        rng = make_rng(seed)
        return [sample(logits, config, rng) for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)


# ---------------------------------------------------------------------------------------------------------------------
# Seeds


@pytest.mark.parametrize("env, seed", [
    ({}, None),
    ({"BITNET_SEED": "7"}, 7),
    ({"BITNET_DETERMINISTIC": "1"}, DETERMINISTIC_SEED),
    ({"BITNET_DETERMINISTIC": "1", "BITNET_SEED": "9"}, 9),
    ({"BITNET_DETERMINISTIC": "0"}, None),
    ({"BITNET_DETERMINISTIC": "true", "BITNET_SEED": ""}, 42),
])
def test_seed_from_env(env, seed):
    assert seed_from_env(env) == seed


@pytest.mark.parametrize("env", [{"BITNET_SEED": "x"}, {"BITNET_SEED": "-1"}, {"BITNET_DETERMINISTIC": "maybe"}])
def test_bad_seed_env_raises(env):
    with pytest.raises(ConfigError, match="BITNET_"):
        seed_from_env(env)


def test_resolve_seed_order_and_records(monkeypatch):
    monkeypatch.delenv("BITNET_SEED", raising=False)
    monkeypatch.delenv("BITNET_DETERMINISTIC", raising=False)
    assert resolve_seed(5, {"BITNET_SEED": "9"}) == 5
    assert resolve_seed(None, {"BITNET_SEED": "9"}) == 9
    fresh = resolve_seed(None, {})
    assert isinstance(fresh, int) and fresh >= 0
    assert rng_seed(make_rng(fresh)) == fresh
    assert rng_seed(make_rng(3).spawn(1)[0]) is None
    monkeypatch.setenv("BITNET_DETERMINISTIC", "1")
    assert resolve_seed() == DETERMINISTIC_SEED


# ---------------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("over", [
    {"temperature": float("nan")}, {"top_p": 1.5}, {"min_p": -0.1}, {"repeat_penalty": 0.0},
    {"repeat_last_n": -2}, {"min_keep": -1}, {"top_k": 2.5}, {"temperature": "hot"},
])
def test_bad_config_raises(over):
    with pytest.raises(ConfigError):
        SamplerConfig(**over)


def test_nan_logits_and_bad_history_raise():
    with pytest.raises(EngineError, match="NaN"):
        sample(np.array([0.0, np.nan], np.float32), SamplerConfig(), make_rng(0))
    with pytest.raises(EngineError, match="NaN"):
        sample(np.array([0.0, np.nan], np.float32), GREEDY, make_rng(0))
    with pytest.raises(TokenRangeError, match="history token 5"):
        sample(np.zeros(3, np.float32), SamplerConfig(repeat_penalty=1.1), make_rng(0), history=[5])
