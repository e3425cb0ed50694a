"""MixUp for display: decoding the mixed word embeddings, fresh draws and their scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_texts

from dallmi_core.app.mixup_view import decode_mixed, decode_pair, draw_pairs
from dallmi_core.errors import DataError
from dallmi_core.method.mixup import mixup_target, score_pairs
from dallmi_core.modeling.model import word_embedding_matrix
from dallmi_core.modeling.scoring import logits_for, sigmoid
from dallmi_core.modeling.tokens import TokenizedCorpus


def test_decoded_mix_is_the_positive_at_mu_0_and_the_unlabeled_at_mu_1():
    w = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    ids_u, ids_p, pad = [1, 7, 9, 11, 3], [1, 20, 2], 0
    at0, sim0 = decode_mixed(w, ids_u, ids_p, 0.0, pad)
    at1, sim1 = decode_mixed(w, ids_u, ids_p, 1.0, pad)
    assert at0.tolist() == ids_p + [pad, pad]  # the shorter document is padded, as in a batch
    assert at1.tolist() == ids_u
    assert np.allclose(sim0, 1.0, atol=1e-5) and np.allclose(sim1, 1.0, atol=1e-5)
    _, mid = decode_mixed(w, ids_u, ids_p, 0.5, pad)
    assert mid[1] < 0.99  # a real mix of two different tokens is near neither


def test_decode_pair_names_tokens_with_the_tokenizer(tiny_clf):
    rows = decode_pair(tiny_clf.model, tiny_clf.tokenizer, "my parcel is late again", "help please", 0.0)
    assert [r["mixed"] for r in rows[:4]] == ["[CLS]", "help", "please", "[SEP]"]
    assert [r["positive"] for r in rows] == ["[CLS]", "help", "please", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]
    assert [r["unlabeled"] for r in rows] == ["[CLS]", "my", "parcel", "is", "late", "again", "[SEP]"]
    assert [r["mixed"] for r in rows] == [r["positive"] for r in rows]
    back = decode_pair(tiny_clf.model, tiny_clf.tokenizer, "my parcel", "help", 1.0)
    assert [r["mixed"] for r in back] == ["[CLS]", "my", "parcel", "[SEP]"]
    assert min(r["similarity"] for r in back) == pytest.approx(1.0, abs=1e-5)


def test_draw_pairs_is_seeded_and_checks_its_input():
    a = draw_pairs([1, 2, 3], [10, 11, 12, 13], 20, alpha=0.3, seed=4)
    b = draw_pairs([1, 2, 3], [10, 11, 12, 13], 20, alpha=0.3, seed=4)
    assert np.array_equal(a.positive, b.positive) and np.array_equal(a.mu, b.mu)
    assert set(a.positive) <= {1, 2, 3} and set(a.unlabeled) <= {10, 11, 12, 13}
    assert np.all((a.mu >= 0) & (a.mu <= 1))
    with pytest.raises(DataError, match="tag a few positives"):
        draw_pairs([], [1], 3)


def test_mixup_target_weights_the_unlabeled_document():
    assert mixup_target([0.2, 0.2], [0.0, 1.0]).tolist() == pytest.approx([1.0, 0.2])


def test_scores_of_a_document_mixed_with_itself_are_its_own(tiny_clf):
    texts, _ = make_texts(6, seed=2)
    tiny_clf.model.train()
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)
    phi_u, prediction = score_pairs(tiny_clf.model, tokens, [0, 3, 5], [0, 3, 5], [0.3, 0.9, 0.5], [0, 1, 2])
    direct = sigmoid(logits_for(tiny_clf.model, tokens, [0, 3, 5]))[[0, 1, 2], [0, 1, 2]]
    assert phi_u == pytest.approx(direct, abs=1e-5) and prediction == pytest.approx(direct, abs=1e-5)
    assert tiny_clf.model.training  # train mode restored
    assert word_embedding_matrix(tiny_clf.model).requires_grad
