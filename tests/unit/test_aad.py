"""AAD (the paper's unsupervised baseline): the discriminator is trained on both domain labels, the
encoder only fools it, and distillation is multi-label (per-label sigmoids at the temperature)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LABELS, make_texts

import dallmi_core.training.adversarial as adversarial
from dallmi_core.config import AdaptConfig
from dallmi_core.errors import ConfigError
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.adapt import adapt


@pytest.fixture()
def trainer(tiny_clf):
    target, y = make_texts(30, seed=1)
    source, _ = make_texts(20, seed=2)
    tags = [list(np.flatnonzero(y[:, j])[:3]) for j in range(len(LABELS))]
    cfg = AdaptConfig(method="aad", max_steps=2, max_length=32, batch_size=6, aad_temperature=4.0)
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, target, 32)
    source_tokens = TokenizedCorpus.build(tiny_clf.tokenizer, source, 32)
    aad = adversarial.AadTrainer(tiny_clf, tokens, tags, cfg, source_tokens=source_tokens)
    aad.setup()
    return aad


def test_the_discriminator_learns_both_domains_and_the_encoder_only_fools_it(trainer, monkeypatch):
    calls = []
    real = torch.nn.functional.binary_cross_entropy_with_logits

    def recording(logits, target, *a, **kw):
        calls.append((logits, target))
        return real(logits, target, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits", recording)
    trainer.compute_loss()
    disc = list(trainer.disc.parameters())
    encoder = [p for n, p in trainer.model.named_parameters() if "classifier" not in n]

    def reaches(logits, target, params):
        grads = torch.autograd.grad(real(logits, target), params, retain_graph=True, allow_unused=True)
        return any(g is not None and g.abs().sum() > 0 for g in grads)

    domain_calls = [(z, t) for z, t in calls if z.dim() == 1]
    labels = [float(t.mean()) for _, t in domain_calls]
    assert labels == [1.0, 0.0, 1.0]  # source as 1 and target as 0 for D; target as "source" for the encoder
    (src_z, src_t), (tgt_z, tgt_t), (fool_z, fool_t) = domain_calls
    assert reaches(src_z, src_t, disc) and reaches(tgt_z, tgt_t, disc)
    assert not reaches(tgt_z, tgt_t, encoder)  # D's target-side loss does not train the encoder ...
    assert reaches(fool_z, fool_t, encoder) and not reaches(fool_z, fool_t, disc)  # ... the fooling term does
    ((kd_z, kd_t),) = [(z, t) for z, t in calls if z.dim() == 2]  # anchor_term's cross-entropy: the KL's
    assert kd_t.shape == (6, len(LABELS))
    assert not torch.allclose(kd_t.sum(dim=1), torch.ones(6))  # per-label sigmoids, not a softmax
    assert ((kd_t > 0) & (kd_t < 1)).all()


def test_aad_keeps_the_source_head_and_needs_source_text(tiny_clf):
    target, y = make_texts(24, seed=3)
    source, _ = make_texts(16, seed=4)
    tags = [list(np.flatnonzero(y[:, j])[:3]) for j in range(len(LABELS))]
    head = {k: v.clone() for k, v in tiny_clf.model.classifier.state_dict().items()}
    cfg = AdaptConfig(method="aad", max_steps=2, max_length=32, batch_size=6, lr=1e-3)
    with pytest.raises(ConfigError, match="source documents"):
        adapt(tiny_clf, target, tags, cfg)
    result = adapt(tiny_clf, target, tags, cfg, source_texts=source)
    assert result.state.step == 2 and {"discriminator", "adversarial", "distill"} <= set(result.state.parts)
    for name, value in result.clf.model.classifier.state_dict().items():
        torch.testing.assert_close(value, head[name])
