"""The tags' prototypes folded into the head: the changed model computes exactly the returned logits,
a label's tagged documents rise in its ranking, and the shrunk covariance discounts directions in
which every document varies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LABELS, make_texts

from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.prototype import (
    _covariance,
    features_and_logits,
    fold_prototypes,
    head_linear,
    prototype_directions,
)


@pytest.mark.parametrize("shrinkage", [1.0, 0.2])
def test_folded_prototypes_are_what_the_model_now_computes_and_lift_the_tags(tiny_clf, shrinkage):
    texts, y = make_texts(40, seed=4)
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)
    tags = [list(np.flatnonzero(y[:, j])[:4]) for j in range(len(LABELS))]
    tags[2] = []  # an untagged label keeps its head row
    row_before = head_linear(tiny_clf.model).weight[2].detach().clone()
    features, logits = features_and_logits(tiny_clf.model, tokens)
    np.testing.assert_allclose(logits, logits_for(tiny_clf.model, tokens), atol=1e-5)
    new = fold_prototypes(tiny_clf.model, features, logits, tags, 1.0, shrinkage)
    np.testing.assert_allclose(new, logits_for(tiny_clf.model, tokens), atol=1e-4)  # folded into the weights
    torch.testing.assert_close(head_linear(tiny_clf.model).weight[2], row_before)
    for label in (0, 1):
        others = np.setdiff1d(np.arange(40), tags[label])
        lift = (new[tags[label], label].mean() - new[others, label].mean()) - (
            logits[tags[label], label].mean() - logits[others, label].mean()
        )
        assert lift > 0  # the tags' prototype pulls them up against the rest


def test_gamma_zero_changes_nothing(tiny_clf):
    texts, y = make_texts(20, seed=6)
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)
    features, logits = features_and_logits(tiny_clf.model, tokens)
    tags = [list(np.flatnonzero(y[:, j])[:3]) for j in range(len(LABELS))]
    np.testing.assert_allclose(fold_prototypes(tiny_clf.model, features, logits, tags, 0.0, 0.2), logits, atol=1e-6)


def test_shrunk_covariance_discounts_a_noisy_direction():
    """Of 20 feature dimensions, dimension 0 is loud noise on which the ten tags happen to sit high;
    dimension 1 carries the label. The plain mean difference follows the noise; the whitened direction
    follows the signal and ranks the untagged positives higher."""
    rng = np.random.default_rng(0)
    positive = rng.random(2000) < 0.2
    features = rng.normal(0, 1, (2000, 20))
    features[:, 0] *= 5
    features[:, 1] += positive
    tags = [list(np.flatnonzero(positive & (features[:, 0] > 5))[:10])]
    plain, whitened = prototype_directions(features, tags, 1.0)[0], prototype_directions(features, tags, 0.2)[0]
    np.testing.assert_allclose(plain, features[tags[0]].mean(0) - features.mean(0))
    shrunk = 0.8 * np.cov(features, rowvar=False) + 0.2 * np.trace(np.cov(features, rowvar=False)) / 20 * np.eye(20)
    np.testing.assert_allclose(whitened, np.linalg.solve(shrunk, plain))
    np.testing.assert_allclose(_covariance(features, features.mean(0), chunk=300), np.cov(features, rowvar=False))
    assert abs(plain[0]) > abs(plain[1]) and abs(whitened[1]) > abs(whitened[0])
    rest = np.setdiff1d(np.arange(2000), tags[0])

    def auc(direction):
        score = features[rest] @ direction
        pos, neg = score[positive[rest]], score[~positive[rest]]
        return (pos[:, None] > neg[None, :]).mean()

    assert auc(whitened) > auc(plain) + 0.05
