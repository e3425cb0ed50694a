"""Calibration without gold: priors by EM from tags + unlabeled text, a monotone map, default thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.modeling import calibration as cal


def _binormal(rng, n: int, prior: float, gap: float = 3.0):
    y = rng.random(n) < prior
    return y, np.where(y, rng.normal(gap / 2, 1, n), rng.normal(-gap / 2, 1, n))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    slope=st.floats(0.05, 3),
    intercept=st.floats(-8, 8),
)
def test_the_map_is_increasing_and_leaves_per_label_ap_identical(seed, slope, intercept):
    rng = np.random.default_rng(seed)
    logits = np.clip(rng.normal(0, 2, (300, 3)), -4, 4)  # |slope * logit + intercept| <= 34 < 36: no saturation
    gold = (rng.random((300, 3)) < [0.1, 0.3, 0.5]).astype(int)
    gold[0] = 1
    items = {
        name: cal.LabelCalibration(slope * (1 + j / 2), intercept - j, 0.5, 0.2, None, None, 10, "estimate: test")
        for j, name in enumerate("abc")
    }
    probabilities = cal.Calibration(items).apply(logits, list("abc"))
    raw = 1 / (1 + np.exp(-logits))
    assert (
        ap_report(gold, probabilities, list("abc")).per_label_ap() == ap_report(gold, raw, list("abc")).per_label_ap()
    )
    for j in range(3):
        order = np.argsort(logits[:, j])
        assert np.all(np.diff(probabilities[order, j]) > 0) or np.unique(logits[:, j]).size < len(logits)


def test_under_covariate_shift_the_prior_is_the_mean_source_posterior():
    rng = np.random.default_rng(0)

    def domain(n, centre):  # P(y | z) is the same in both domains; only P(z) moves
        z = rng.normal(centre, 1.5, n)
        return rng.random(n) < 1 / (1 + np.exp(-(2 * z - 1))), z

    y_source, z_source = domain(4000, 0.5)
    y_target, z_target = domain(4000, -1.0)
    fit = cal.fit_on_source(z_source[:, None], y_source[:, None], ["x"])["x"]
    assert fit.prior == pytest.approx(y_source.mean(), abs=1e-9) and fit.slope == pytest.approx(2, rel=0.1)
    tags = rng.choice(np.flatnonzero(y_target), 10, replace=False)
    estimate = cal.estimate_prior(z_target, tags, slope=fit.slope, intercept=fit.intercept, seed=1)
    assert estimate.value == pytest.approx(y_target.mean(), abs=0.015)
    assert estimate.low <= estimate.value <= estimate.high and estimate.basis == "estimate: source model and 10 tags"


def test_the_tags_cap_an_overestimate():
    rng = np.random.default_rng(3)
    y = rng.random(3000) < 0.1
    z = np.where(y, rng.normal(2, 1, 3000), rng.normal(-2, 1, 3000))
    known = np.zeros(3000, dtype=bool)
    known[rng.choice(np.flatnonzero(y), 10, replace=False)] = True
    too_high = cal.covariate_prior(1 / (1 + np.exp(-(z + 4))), known)  # a source fit 4 logits too confident
    bound = cal.tag_bound(z, known)
    assert too_high > 0.4 and bound == pytest.approx(0.1, abs=0.04)
    estimate = cal.estimate_prior(z, np.flatnonzero(known), slope=1.0, intercept=4.0)
    assert estimate.value == pytest.approx(bound)  # min(covariate, bound)
    resampled = cal.tag_bound(np.stack([z, z]), np.stack([known, known]))  # vectorised over rows
    assert resampled.tolist() == pytest.approx([bound, bound])


def test_an_adapted_model_gets_the_source_spread_and_an_expected_f1_threshold():
    rng = np.random.default_rng(1)
    y_source, z_source = _binormal(rng, 3000, 0.1)
    y_target, z_target = _binormal(rng, 3000, 0.1)
    fits = cal.fit_on_source(z_source[:, None], y_source[:, None], ["x"])
    tags = [list(rng.choice(np.flatnonzero(y_target), 10, replace=False))]
    adapted = 4 * z_target - 7  # the same ranking on a scale of its own
    result = cal.calibrate_on_target(["x"], adapted[:, None], tags, source_fit=fits, prior_logits=z_target[:, None])
    item = result.labels["x"]
    probabilities = item.apply(adapted)
    assert probabilities.mean() == pytest.approx(item.prior, abs=1e-6)  # calibration in the large
    assert item.threshold == cal.expected_f1_threshold(probabilities)
    # the rescaled slope undoes the new scale: the adapted and the source model agree in probability
    source_view = cal.calibrate_on_target(["x"], z_target[:, None], tags, source_fit=fits, same_model=True)
    assert item.slope == pytest.approx(source_view.labels["x"].slope / 4, rel=1e-6)
    np.testing.assert_allclose(probabilities, source_view.labels["x"].apply(z_target), atol=1e-9)


def test_the_tags_flatten_a_map_the_target_does_not_bear_out():
    rng = np.random.default_rng(7)
    y = rng.random(4000) < 0.2
    z = np.where(y, rng.normal(1, 1, 4000), rng.normal(-1, 1, 4000))  # true posterior slope: 2
    known = np.zeros(4000, dtype=bool)
    known[rng.choice(np.flatnonzero(y), 25, replace=False)] = True
    slope = cal.tag_moment_slope(z, known, 0.2, start=6.0)  # a source fit three times too confident
    assert 1.0 < slope < 3.5
    assert cal.tag_moment_slope(-z, known, 0.2, start=6.0) == 6.0  # tags below average: no temperature, keep it


def test_the_expected_f1_cut_is_the_f1_optimum_of_calibrated_probabilities():
    rng = np.random.default_rng(5)
    p = rng.beta(0.5, 3, 20_000)
    y = rng.random(p.size) < p  # the probabilities are right by construction
    cut = cal.expected_f1_threshold(p)
    from dallmi_core.evaluation.metrics import best_f1_threshold, f1_at_threshold

    assert f1_at_threshold(y, p, cut)["f1"] == pytest.approx(
        f1_at_threshold(y, p, best_f1_threshold(y, p))["f1"], abs=0.01
    )


def test_too_few_tags_fall_back_to_a_stated_default():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, 500)
    fits = {"x": cal.SourceFit(1.0, -1.0, 0.25, 100), "y": cal.SourceFit(1.0, -1.0, 0.25, 100)}
    result = cal.calibrate_on_target(
        ["x", "y"], np.c_[z, z], [[1, 2], list(range(10))], source_fit=fits, same_model=True
    )
    few, enough = result.labels["x"], result.labels["y"]
    assert few.tags == 2 and f"< {cal.MIN_TAGS}" in few.basis and few.basis.startswith("default")
    assert few.prior == pytest.approx(0.25) and few.prior_low is None and "source share 0.250" in few.basis
    assert enough.basis.startswith("estimate")
    bare = cal.calibrate_on_target(["x"], z[:, None], [[1, 2, 3]])  # no source calibration at all
    item = bare.labels["x"]
    assert item.threshold == cal.DEFAULT_THRESHOLD and (item.slope, item.intercept) == (1.0, 0.0)
    assert "no source calibration" in item.basis


def test_calibration_round_trips_through_its_config():
    items = {"a": cal.LabelCalibration(2.0, -1.0, 0.3, 0.1, 0.05, 0.2, 10, "estimate: x")}
    config = cal.Calibration(items).to_config()
    import json

    again = cal.Calibration.from_config(json.loads(json.dumps(config)))
    assert again == cal.Calibration(items) and again.thresholds() == {"a": 0.3}
    assert cal.Calibration.from_config(None) is None


def test_platt_refuses_one_class_and_falls_back_to_the_share():
    assert cal.platt(np.arange(5.0), np.zeros(5)) is None
    fits = cal.fit_on_source(np.linspace(-2, 2, 50)[:, None], np.zeros((50, 1)), ["rare"])
    probabilities = 1 / (1 + np.exp(-(fits["rare"].slope * np.linspace(-2, 2, 50) + fits["rare"].intercept)))
    assert fits["rare"].slope == 1.0 and probabilities.mean() == pytest.approx(cal.PRIOR_FLOOR, rel=1e-3)


def test_platt_stays_finite_on_held_out_rows_the_model_separates():
    z = np.r_[np.linspace(1, 3, 10), np.linspace(-3, -1, 50)]  # 60 rows, perfectly separated
    slope, intercept = cal.platt(z, np.r_[np.ones(10), np.zeros(50)])
    assert 0.5 < slope < 5  # Platt's smoothed targets: plain maximum likelihood would run to infinity
