"""The tags' prototypes folded into the head: the changed model computes exactly the returned logits,
and a label's tagged documents rise in its ranking."""

from __future__ import annotations

import numpy as np
import torch
from conftest import LABELS, make_texts

from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.prototype import features_and_logits, fold_prototypes, head_linear


def test_folded_prototypes_are_what_the_model_now_computes_and_lift_the_tags(tiny_clf):
    texts, y = make_texts(40, seed=4)
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)
    tags = [list(np.flatnonzero(y[:, j])[:4]) for j in range(len(LABELS))]
    tags[2] = []  # an untagged label keeps its head row
    row_before = head_linear(tiny_clf.model).weight[2].detach().clone()
    features, logits = features_and_logits(tiny_clf.model, tokens)
    np.testing.assert_allclose(logits, logits_for(tiny_clf.model, tokens), atol=1e-5)
    new = fold_prototypes(tiny_clf.model, features, logits, tags, gamma=1.0)
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
    np.testing.assert_allclose(fold_prototypes(tiny_clf.model, features, logits, tags, 0.0), logits, atol=1e-6)
