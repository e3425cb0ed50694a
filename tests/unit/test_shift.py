"""Domain-shift measures with known answers: no shift, a clear shift, a planted term."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dallmi_core.errors import ConfigError, DataError
from dallmi_core.evaluation.shift import (
    domain_classifier,
    label_prior_shift,
    mmd_rbf,
    project_2d,
    subsample,
    weighted_log_odds,
)


def _gauss(n, shift=0.0, seed=0, dim=8):
    return np.random.default_rng(seed).normal(size=(n, dim)) + shift


def test_same_distribution_gives_a_distance_near_zero_and_a_large_mmd_p_value():
    source, target = _gauss(300, seed=1), _gauss(300, seed=2)
    clf = domain_classifier(source, target)
    assert clf.a_distance < 0.3 and abs(clf.accuracy - 0.5) < 0.1
    result = mmd_rbf(source, target, permutations=200)
    assert result.p_value > 0.05


def test_identical_samples_are_indistinguishable():
    x = _gauss(200, seed=3)
    assert domain_classifier(x, x.copy()).a_distance < 0.3
    assert mmd_rbf(x, x.copy(), permutations=100).p_value > 0.5


def test_separated_samples_give_a_distance_near_two_and_a_small_p_value():
    source, target = _gauss(200, seed=1), _gauss(150, shift=4.0, seed=2)
    clf = domain_classifier(source, target)
    assert clf.a_distance > 1.9 and clf.accuracy > 0.97
    result = mmd_rbf(source, target, permutations=200)
    assert result.p_value < 0.01 and result.mmd2 > 0.1
    assert result.p_value == pytest.approx(1 / 201)  # no permutation reaches the observed statistic


def test_a_partly_overlapping_pair_lies_strictly_between_and_the_distance_grows_with_the_shift():
    """Held-out error, not training error: a 384-wide embedding of 300 documents per domain lets a linear
    classifier separate the training rows of any two samples, yet equal samples stay near 0."""
    rng = np.random.default_rng(7)
    source = rng.normal(size=(300, 384))
    distances = [
        domain_classifier(source, rng.normal(size=(300, 384)) + shift).a_distance for shift in (0.0, 0.05, 1.0)
    ]
    assert distances[0] < 0.3 and 0.3 < distances[1] < 1.7 and distances[2] > 1.9
    shifts = (0.3, 0.6)  # every one of 8 dimensions: Bayes errors Phi(-s sqrt(8) / 2) of 0.336 and 0.198
    found = [domain_classifier(_gauss(400, seed=8), _gauss(400, shift=s, seed=9)).a_distance for s in shifts]
    assert found == pytest.approx([2 * (1 - 2 * 0.336), 2 * (1 - 2 * 0.198)], abs=0.15)  # 0.66 and 1.21


def test_mmd_matches_a_direct_computation_with_the_median_bandwidth():
    source, target = _gauss(20, seed=4, dim=3), _gauss(30, shift=0.5, seed=5, dim=3)
    x = np.vstack([source, target])
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    sigma2 = np.median(d2[np.triu_indices(len(x), 1)]) / 2
    k = np.exp(-d2 / (2 * sigma2))
    expected = k[:20, :20].mean() + k[20:, 20:].mean() - 2 * k[:20, 20:].mean()
    result = mmd_rbf(source, target, permutations=10)
    assert result.mmd2 == pytest.approx(expected, rel=1e-4)
    assert result.bandwidth == pytest.approx(np.sqrt(sigma2))


def test_log_odds_ranks_a_planted_term_first():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "theta"]
    source = [" ".join(rng.choice(words, 8)) for _ in range(200)]
    target = [" ".join(rng.choice(words, 8)) + " zeppelin" for _ in range(200)]
    frame = weighted_log_odds(target, source, top=3)
    assert frame.iloc[0]["term"] == "zeppelin" and frame.iloc[0]["z"] > 5
    assert frame.iloc[0]["source_count"] == 0 and frame.iloc[0]["target_count"] == 200
    assert frame["z"].iloc[-1] < frame["z"].iloc[0]
    assert list(frame.columns) == ["term", "z", "log_odds", "target_count", "source_count"]


def test_log_odds_of_identical_corpora_is_zero():
    texts = ["the cat sat", "a dog ran far", "the dog sat"]
    frame = weighted_log_odds(texts, list(texts))
    assert np.allclose(frame["z"], 0.0)


def test_projection_shapes_and_choices():
    x = _gauss(40, seed=6)
    assert project_2d(x).shape == (40, 2)
    assert project_2d(x, method="tsne").shape == (40, 2)
    with pytest.raises(ConfigError, match="umap"):
        project_2d(x, method="umap")


def test_label_prior_shift_is_the_prevalence_per_label():
    frame = label_prior_shift(
        ["a", "b"], {"source gold": np.array([[1, 0], [1, 1]]), "target tagged": np.array([[0, 0]]), "x": None}
    )
    assert list(frame.columns) == ["label", "source gold", "target tagged"]
    assert frame["source gold"].tolist() == [1.0, 0.5] and frame["target tagged"].tolist() == [0.0, 0.0]


def test_subsample_is_bounded_and_sorted():
    assert subsample(5, 10).tolist() == [0, 1, 2, 3, 4]
    picked = subsample(1000, 50, seed=1)
    assert len(picked) == 50 and len(set(picked)) == 50 and np.all(np.diff(picked) > 0)


def test_bad_input_is_a_data_error():
    with pytest.raises(DataError, match="differ in width"):
        mmd_rbf(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(DataError, match="at least 2"):
        domain_classifier(np.zeros((1, 2)), np.ones((5, 2)))
    with pytest.raises(DataError, match="NaN"):
        project_2d(np.full((4, 2), np.nan))
    assert isinstance(label_prior_shift(["a"], {}), pd.DataFrame)
