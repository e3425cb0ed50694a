"""The benchmark protocol's split: three disjoint parts; tags come only from the train part, gold dev and
test rows stay hidden from the adapting methods."""

from __future__ import annotations

import numpy as np
import pytest

from dallmi_core.bench.quality import split_target
from dallmi_core.bench.report import QualityResult


@pytest.fixture()
def gold():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < [0.5, 0.2, 0.05, 0.02]).astype(np.float32)
    y[:3, 3] = 1  # the rare label has a few positives
    return y


def test_three_parts_are_disjoint_and_cover_the_target(gold):
    split = split_target(gold, seed=1, positives_per_label=5)
    parts = [set(split.train.tolist()), set(split.dev.tolist()), set(split.test.tolist())]
    assert all(not a & b for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert set().union(*parts) == set(range(len(gold)))
    assert (len(split.test), len(split.dev)) == (80, 40)  # 40% test, 20% dev, the rest train
    assert np.array_equal(split.part("dev"), split.dev) and np.array_equal(split.part("test"), split.test)
    with pytest.raises(ValueError):
        split.part("train")


def test_keeps_k_positives_per_label_from_the_train_part(gold):
    split = split_target(gold, seed=1, positives_per_label=5)
    for label, tags in enumerate(split.tags):
        positives_in_train = int(gold[split.train, label].sum())
        assert len(tags) == min(5, positives_in_train)
        assert all(gold[split.train[t], label] == 1 for t in tags)  # positions into the train part


def test_remove_ratio_hides_that_share_of_each_labels_positives(gold):
    split = split_target(gold, seed=2, remove_ratio=0.7)
    for label, tags in enumerate(split.tags):
        positives = int(gold[split.train, label].sum())
        assert len(tags) == max(1, int(round((1 - 0.7) * positives)))  # at least one positive kept


def test_remove_ratio_keeps_at_least_one_positive(gold):
    split = split_target(gold, seed=2, remove_ratio=0.99)
    assert all(len(tags) == 1 for tags in split.tags)


def test_split_is_seeded(gold):
    a, b, c = (split_target(gold, seed=s, positives_per_label=3) for s in (4, 4, 5))
    assert np.array_equal(a.test, b.test) and np.array_equal(a.dev, b.dev) and a.tags == b.tags
    assert not np.array_equal(a.test, c.test) and not np.array_equal(a.dev, c.dev)


def test_exactly_one_of_k_and_ratio(gold):
    with pytest.raises(ValueError):
        split_target(gold, seed=0)
    with pytest.raises(ValueError):
        split_target(gold, seed=0, positives_per_label=3, remove_ratio=0.5)


def test_summary_reports_mean_and_spread_over_seeds():
    result = QualityResult(["a", "b"])
    for seed, m in enumerate([0.4, 0.5, 0.6]):
        result.runs.append(
            {
                "method": "dallmi",
                "seed": seed,
                "map_macro": m,
                "map_micro": m,
                "per_label_ap": {"a": m, "b": None},
                "seconds": 1.0,
                "steps": 10,
                "best_step": 5,
            }
        )
    s = result.summary()["methods"]["dallmi"]
    assert s["map_macro_mean"] == pytest.approx(0.5) and s["map_macro_std"] == pytest.approx(0.1)
    assert s["per_label_ap"] == {"a": pytest.approx(0.5), "b": None}
    assert "0.500 ± 0.100" in result.to_markdown() and "n/a" in result.to_markdown()


def test_tfidf_reference_learns_planted_keywords():
    from conftest import make_texts

    from dallmi_core.bench.quality import tfidf_source_scores
    from dallmi_core.evaluation.metrics import ap_report

    train_texts, train_y = make_texts(120, seed=1)
    test_texts, test_y = make_texts(60, seed=2)
    scores = tfidf_source_scores(train_texts, train_y, test_texts)
    assert scores.shape == test_y.shape
    assert ap_report(test_y, scores, ["a", "b", "c"]).map_macro > 0.9


def test_method_config_gives_baselines_their_own_budget():
    from dallmi_core.bench.quality import method_config
    from dallmi_core.config import AdaptConfig

    base = AdaptConfig(max_steps=20, lr=1e-4)
    assert method_config(base, "dallmi", 3) == base.replace(seed=3, method="dallmi")
    assert method_config(base, "dallmi-anchored", 3) == base.replace(seed=3)  # the defaults are its own
    bce = method_config(base, "bce-partial", 3)
    assert bce.max_steps == 20 and bce.epochs is None and bce.selection == "last" and bce.lr == 1e-4
    oracle = method_config(base, "target-oracle", 3)
    assert oracle.selection == "last" and oracle.epochs == 3.0 and oracle.max_steps is None
    short = method_config(base, "target-oracle", 3, baseline_epochs=1.0)
    assert short.epochs == 1.0 and short.max_steps is None
    assert method_config(base, "dallmi", 3, baseline_epochs=1.0) == base.replace(seed=3, method="dallmi")
    aad = method_config(base, "aad", 3, baseline_epochs=1.0)
    assert aad.max_steps == 20 and aad.epochs is None and aad.lr == 1e-4 and aad.selection == "last"
    assert method_config(AdaptConfig(), "bce-partial", 0).max_steps == AdaptConfig().min_steps
