"""crossval.metrics against values worked by hand."""

import math

import numpy as np
import pytest

from crossval import metrics, points


def test_pearson_and_cosine_by_hand():
    ref = np.array([1.0, 2.0, 3.0])
    assert metrics.pearson(2 * ref + 5, ref) == pytest.approx(1.0)
    assert metrics.pearson(-ref, ref) == pytest.approx(-1.0)
    # centred: a = [-1, 0, 1], b = [-1, 1, 0] -> 1 / (sqrt2 * sqrt2) = 0.5
    assert metrics.pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert metrics.cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert metrics.pearson(np.ones(3), np.ones(3)) == 1.0
    assert metrics.pearson(np.ones(3), ref) == 0.0
    assert metrics.cosine(np.zeros(2), np.zeros(2)) == 1.0


def test_nmse_and_max_abs_rel_by_hand():
    ref = np.array([1.0, -1.0, 1.0, -1.0])  # var 1, rms 1
    test = ref + np.array([0.1, 0.0, -0.1, 0.0])  # mse 0.005
    assert metrics.nmse(test, ref) == pytest.approx(0.005)
    assert metrics.max_abs_rel(test, ref) == pytest.approx(0.1)
    assert metrics.nmse(ref, ref) == 0.0
    assert metrics.nmse(np.ones(2), np.zeros(2)) == math.inf
    assert metrics.nmse(np.full(2, 3.0), np.full(2, 2.0)) == pytest.approx(1 / 4)  # zero var -> mean(ref²)
    with pytest.raises(ValueError):
        metrics.nmse(np.ones(2), np.ones(3))


def test_kl_by_hand():
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.25, 0.75]]))
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert metrics.kl_divergence(p, q)[0] == pytest.approx(want)
    assert metrics.kl_divergence(p + 7.0, p)[0] == pytest.approx(0.0, abs=1e-15)  # shift invariant


def test_top_k_and_first_mismatch():
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [6, 5, 4, 3, 2, 1]])
    test = np.array([[5.0, 4, 3, 2, 0, 1], [0, 1, 2, 3, 4, 5], [1, 5, 4, 3, 2, 6]])
    assert metrics.first_top1_mismatch(test, ref) == 2
    assert metrics.first_top1_mismatch(ref, ref) is None
    np.testing.assert_allclose(metrics.topk_overlap(test, ref, 3), [1.0, 1.0, 2 / 3])
    assert metrics.topk_overlap(test, ref, 5)[0] == pytest.approx(4 / 5)
    lm = metrics.logit_metrics(test, ref)
    assert lm["top1"].tolist() == [1.0, 1.0, 0.0] and lm["kl"].shape == (3,)


def test_row_and_tensor_metrics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 16))
    rows = metrics.compare(ref, ref)[1]
    assert np.all(rows["nmse"] == 0) and np.allclose(rows["pearson"], 1)
    whole = metrics.compare(ref * 1.01, ref)[0]
    assert whole["nmse"] == pytest.approx(1e-4 * np.mean(ref**2) / np.var(ref))


def test_point_names():
    assert points.llama_name("ffn_sub_out", 12) == "ffn_sub_out-12"
    assert points.llama_name("result_output", points.HEAD_LAYER) == "result_output"
    assert points.pick_op("Qcur", ["MUL_MAT", "RESHAPE", "ROPE"]) == "ROPE"
    assert points.pick_op("Vcur", ["RESHAPE", "MUL_MAT"]) == "MUL_MAT"
    assert points.pick_op("Qcur", ["MUL_MAT"]) is None


def test_row_metrics_match_the_scalar_functions():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((5, 33))
    test = ref + 0.1 * rng.standard_normal((5, 33))
    test[1] = ref[1]
    ref[2] = 0.0
    test[2] = 0.0
    ref[3] = 1.5  # constant row
    rows = metrics.compare(test, ref)[1]
    for t in range(5):
        assert rows["nmse"][t] == pytest.approx(metrics.nmse(test[t], ref[t]))
        assert rows["pearson"][t] == pytest.approx(metrics.pearson(test[t], ref[t]))
        assert rows["cosine"][t] == pytest.approx(metrics.cosine(test[t], ref[t]))
        assert rows["max_abs_rel"][t] == pytest.approx(metrics.max_abs_rel(test[t], ref[t]))
