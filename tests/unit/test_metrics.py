"""Metrics: AP on scores matching sklearn, unevaluable labels, thresholds, PU estimates."""

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_recall_curve

from dallmi_core.errors import ConfigError, DataError
from dallmi_core.evaluation.metrics import (
    APReport,
    ap_report,
    average_precision,
    best_f1_threshold,
    f1_at_threshold,
    pr_curve,
    pu_estimated_ap,
    recall_at_k,
    thresholded_ap,
)

LABELS = ["cs.AI", "cs.RO", "math.ST"]


def _data(seed: int = 0, n: int = 60):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.4, 0.1, 0.3]).astype(int)
    y[0, :2] = 1  # make sure the first two labels have a positive
    y[:, 2] = 0  # math.ST: no gold positive
    scores = np.clip(0.5 * y + rng.random((n, 3)) * 0.8, 0, 1)
    return y, scores


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 6)),  # small integer scores force ties
        min_size=1,
        max_size=40,
    ),
    st.floats(0.01, 10),
)
def test_average_precision_equals_sklearn(rows, scale):
    y = np.array([int(b) for b, _ in rows])
    s = np.array([v for _, v in rows], dtype=float) * scale
    ap = average_precision(y, s)
    if y.sum() == 0:
        assert ap is None
    else:
        assert ap == pytest.approx(average_precision_score(y, s), abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_average_precision_random_continuous_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 50)
    y[0] = 1
    s = rng.normal(size=50)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_macro_is_mean_of_evaluable_and_unevaluable_excluded():
    y, s = _data()
    report = ap_report(y, s, LABELS)
    assert isinstance(report, APReport)
    per = report.per_label_ap()
    assert per["math.ST"] is None
    assert report.unevaluable == ("math.ST",)
    assert [item.evaluable for item in report.per_label] == [True, True, False]
    assert [item.positives for item in report.per_label] == [int(v) for v in y.sum(axis=0)]
    assert all(item.support == len(y) for item in report.per_label)
    for j in (0, 1):
        assert per[LABELS[j]] == pytest.approx(average_precision_score(y[:, j], s[:, j]))
    expected = (per["cs.AI"] + per["cs.RO"]) / 2
    assert report.map_macro == pytest.approx(expected)
    # Not counted as 0: the mean over all three columns would be lower.
    assert report.map_macro > (per["cs.AI"] + per["cs.RO"]) / 3
    assert not math.isnan(report.map_macro)


def test_micro_equals_sklearn_on_raveled_evaluable_columns():
    y, s = _data(seed=3)
    report = ap_report(y, s, LABELS)
    expected = average_precision_score(y[:, :2].ravel(), s[:, :2].ravel())
    assert report.map_micro == pytest.approx(expected)


def test_no_evaluable_label_gives_none_means():
    report = ap_report(np.zeros((4, 2)), np.random.default_rng(0).random((4, 2)), ["a", "b"])
    assert report.map_macro is None and report.map_micro is None
    assert report.unevaluable == ("a", "b")


def test_thresholded_ap_is_the_papers_figure_not_ap_on_scores():
    y, s = _data(seed=1)
    on_scores = ap_report(y, s, LABELS)
    thresholded = thresholded_ap(y, s, LABELS, threshold=0.5)
    pred = (s >= 0.5).astype(int)
    for j in (0, 1):
        expected = average_precision_score(y[:, j], pred[:, j])
        assert thresholded.per_label_ap()[LABELS[j]] == pytest.approx(expected)
    assert thresholded.map_macro != pytest.approx(on_scores.map_macro)
    assert thresholded.unevaluable == ("math.ST",)


def test_pr_curve_agrees_with_sklearn():
    y, s = _data(seed=2)
    s = np.round(s, 1)  # ties
    ours = pr_curve(y[:, 0], s[:, 0])
    theirs = precision_recall_curve(y[:, 0], s[:, 0])
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b)


def test_label_without_positive_is_none_without_warnings():
    y, s = _data(seed=4)
    s = np.round(s, 1)  # ties
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn would warn about math.ST: it must never be asked
        report = ap_report(y, s, LABELS)
        _, recall, _ = pr_curve(y[:, 2], s[:, 2])
    assert report.per_label_ap()["math.ST"] is None
    for j in (0, 1):
        assert report.per_label_ap()[LABELS[j]] == pytest.approx(average_precision_score(y[:, j], s[:, j]))
    assert np.all(recall[:-1] == 1.0)


def test_f1_at_threshold_hand_example():
    y = [1, 1, 0, 1, 0, 0]
    s = [0.9, 0.6, 0.55, 0.3, 0.2, 0.7]
    # predicted >= 0.5: idx 0,1,2,5 -> tp 2, fp 2, fn 1
    out = f1_at_threshold(y, s, 0.5)
    assert out["tp"] == 2 and out["fp"] == 2 and out["fn"] == 1
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_f1_zero_division_gives_zero():
    out = f1_at_threshold([0, 0, 1], [0.1, 0.2, 0.3], 0.9)
    assert out == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}


def test_best_f1_threshold_hand_example():
    # A rare label whose positives score low: 0.5 predicts nothing, 0.2 catches both.
    y = [1, 1, 0, 0, 0, 0]
    s = [0.3, 0.2, 0.1, 0.05, 0.15, 0.01]
    assert f1_at_threshold(y, s, 0.5)["f1"] == 0.0
    best = best_f1_threshold(y, s)
    assert best == pytest.approx(0.2)
    assert f1_at_threshold(y, s, best)["f1"] == pytest.approx(1.0)


def test_best_f1_threshold_without_positive_predicts_nothing():
    s = [0.3, 0.9]
    best = best_f1_threshold([0, 0], s)
    assert best > 0.9
    assert f1_at_threshold([0, 0], s, best)["fp"] == 0


def test_pu_estimated_ap_perfect_and_reversed():
    pos = [0.9, 0.8, 0.95]
    unl = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert pu_estimated_ap(pos, unl) == pytest.approx(1.0)
    reversed_ap = pu_estimated_ap([0.01, 0.02, 0.03], unl)
    assert reversed_ap < 0.5
    assert reversed_ap == pytest.approx(average_precision_score([1] * 3 + [0] * 5, [0.01, 0.02, 0.03] + unl))
    assert pu_estimated_ap([], unl) is None


def test_recall_at_k():
    pos = [0.9, 0.35]
    unl = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert recall_at_k(pos, unl, 1) == pytest.approx(0.5)
    assert recall_at_k(pos, unl, 3) == pytest.approx(0.5)
    assert recall_at_k(pos, unl, 4) == pytest.approx(1.0)
    assert recall_at_k([0.5], [0.5], 1) == 0.0  # ties count against the positives
    assert recall_at_k([], unl, 3) is None
    with pytest.raises(ConfigError):
        recall_at_k(pos, unl, 0)


def test_to_dict_is_json_and_markdown_names_every_label():
    y, s = _data()
    report = ap_report(y, s, LABELS)
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(d) == {"per_label_ap", "map_macro", "map_micro", "unevaluable", "positives"}
    assert d["per_label_ap"]["math.ST"] is None
    assert d["unevaluable"] == ["math.ST"]
    assert d["positives"]["cs.RO"] == int(y[:, 1].sum())
    md = report.to_markdown()
    for label in LABELS:
        assert label in md
    assert "n/a (no positives)" in md
    assert "macro" in md and "micro" in md


@pytest.mark.parametrize(
    "y, s, names",
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), ["a", "b", "c"]),  # shape mismatch
        (np.zeros((4, 3)), np.zeros((5, 3)), ["a", "b", "c"]),  # row mismatch
        (np.zeros(4), np.zeros(4), ["a"]),  # not 2-D
        (np.zeros((4, 3)), np.zeros((4, 3)), ["a", "b"]),  # names length
        (np.zeros((4, 2)), np.zeros((4, 2)), ["a", "a"]),  # duplicate names
        (np.full((2, 1), 2), np.zeros((2, 1)), ["a"]),  # y not 0/1
        (np.zeros((2, 1)), np.array([[np.nan], [0.1]]), ["a"]),  # non-finite
        (np.zeros((2, 1)), np.array([[np.inf], [0.1]]), ["a"]),
    ],
)
def test_ap_report_rejects_bad_input(y, s, names):
    with pytest.raises(DataError):
        ap_report(y, s, names)


def test_one_dimensional_functions_reject_bad_input():
    with pytest.raises(DataError):
        average_precision([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError):
        pr_curve([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(DataError):
        f1_at_threshold([0, 1, 3], [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(DataError):
        best_f1_threshold([0, 1], [0.1, float("nan")])
    with pytest.raises(DataError):
        pu_estimated_ap([[0.1]], [0.2])
