"""dallmi-anchored: the KL anchor to the source model's predictions and the WiSE-FT interpolation;
the paper's dallmi stays exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LABELS, make_texts

from dallmi_core.config import AdaptConfig
from dallmi_core.errors import ConfigError
from dallmi_core.method.losses import anchor_term
from dallmi_core.method.mixup import draw_mixup
from dallmi_core.method.sampling import LabelBalancedSampler
from dallmi_core.method.step import StepContext, vectorised_dallmi_step
from dallmi_core.modeling.model import load_classifier, save_classifier
from dallmi_core.modeling.scoring import logits_for, sigmoid
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.adapt import adapt, anchor_targets, interpolate_weights

CPU = torch.device("cpu")


def test_anchor_term_is_zero_where_the_model_agrees_and_pulls_toward_the_target():
    targets = torch.tensor([[0.2, 0.9], [0.6, 0.01]])
    agree = torch.logit(targets).requires_grad_(True)
    assert torch.allclose(anchor_term(agree, targets), torch.zeros(2), atol=1e-6)
    z = torch.zeros(2, 2, requires_grad=True)
    term = anchor_term(z, targets)
    assert (term > 0).all()
    term.sum().backward()
    assert (torch.sign(-z.grad) == torch.sign(targets - 0.5)).all()  # descent moves phi(z) toward t


def test_anchor_targets_are_source_probabilities_with_tags_set_to_one():
    logits = np.array([[-2.0, 0.0], [1.0, -3.0], [0.5, 0.5]], dtype=np.float32)
    targets = anchor_targets(logits, [[1], [0, 2]])
    expected = sigmoid(logits)
    expected[1, 0] = expected[0, 1] = expected[2, 1] = 1.0
    np.testing.assert_allclose(targets, expected)


@pytest.fixture()
def step_setup(tiny_clf):
    texts, y = make_texts(40, seed=5)
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)
    tags = [list(np.flatnonzero(y[:, j])[:4]) for j in range(len(LABELS))]
    sampler = LabelBalancedSampler(np.arange(40), tags, batch_size=8, positives_per_label=3, seed=0)
    tiny_clf.model.eval()
    return tiny_clf.model, tokens, sampler.next()


def test_the_anchor_adds_its_weighted_kl_on_every_document_of_the_step(step_setup):
    model, tokens, batch = step_setup
    cfg = AdaptConfig(mixup_pairs=1)
    mix = draw_mixup(np.random.default_rng(0), batch, 1, 0.3)
    context = StepContext(model, tokens, cfg, CPU)
    plain, plain_parts = vectorised_dallmi_step(context, batch, mix)
    with torch.no_grad():
        own = sigmoid(logits_for(model, tokens))
    agreeing, parts = vectorised_dallmi_step(context, batch, mix, anchor=own)
    assert parts["anchor"] == pytest.approx(0.0, abs=1e-4)  # the model's own predictions: nothing to pull
    assert float(agreeing) == pytest.approx(float(plain), abs=1e-4)
    flipped = np.where(own > 0.5, 0.02, 0.98).astype(np.float32)  # confidently the other way
    pulled, parts = vectorised_dallmi_step(
        StepContext(model, tokens, cfg.replace(anchor_weight=2.0), CPU), batch, mix, flipped
    )
    assert parts["anchor"] > 0.1
    assert float(pulled) == pytest.approx(plain_parts["loss"] + 2.0 * parts["anchor"], rel=1e-4)


def test_interpolate_weights_is_wise_ft():
    model = torch.nn.Linear(3, 2)
    start = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    adapted = {k: v.clone() for k, v in model.state_dict().items()}
    interpolate_weights(model, start, 0.25)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, 0.25 * adapted[name])


@pytest.fixture()
def source_model(tiny_clf, tmp_path):
    texts, y = make_texts(48, seed=9)
    tiny_clf.model.config.dallmi_fresh_head = False  # as a fine-tuned source model: its head holds knowledge
    save_classifier(tiny_clf, tmp_path / "source")
    tags = [list(np.flatnonzero(y[:, j])[:4]) for j in range(len(LABELS))]
    return tmp_path / "source", texts, tags


def _weights(clf):
    return {k: v.detach().clone() for k, v in clf.model.state_dict().items()}


def test_wise_alpha_zero_gives_back_the_source_weights_and_one_keeps_the_adapted(source_model):
    folder, texts, tags = source_model
    cfg = AdaptConfig(max_steps=3, max_length=32, batch_size=8, positives_per_label=3, eval_every=10, lr=1e-3)
    start = _weights(load_classifier(folder))
    back = adapt(load_classifier(folder), texts, tags, cfg.replace(wise_alpha=0.0, prototype_weight=0.0))
    assert back.extras["anchored"]
    for name, value in _weights(back.clf).items():
        torch.testing.assert_close(value, start[name])
    # with the prototypes on, the head's last layer alone moves from there
    folded = adapt(load_classifier(folder), texts, tags, cfg.replace(wise_alpha=0.0, prototype_weight=0.5))
    moved = {k for k, v in _weights(folded.clf).items() if not torch.equal(v, start[k])}
    assert moved == {"classifier.weight", "classifier.bias"}
    kept = adapt(load_classifier(folder), texts, tags, cfg.replace(wise_alpha=1.0))
    assert any(not torch.equal(v, start[k]) for k, v in _weights(kept.clf).items())


def test_the_papers_dallmi_ignores_the_anchor_settings(source_model):
    folder, texts, tags = source_model
    cfg = AdaptConfig(method="dallmi", max_steps=2, max_length=32, batch_size=8, positives_per_label=3, lr=1e-3)
    runs = [adapt(load_classifier(folder), texts, tags, cfg.replace(anchor_weight=w, wise_alpha=a)) for w, a in
            ((1.0, 0.5), (0.0, 1.0))]  # fmt: skip
    assert not runs[0].extras["anchored"]
    first, second = (_weights(r.clf) for r in runs)
    for name in first:
        torch.testing.assert_close(first[name], second[name])


def test_a_fresh_head_is_not_anchored(tiny_clf):
    texts, y = make_texts(32, seed=2)
    tags = [list(np.flatnonzero(y[:, j])[:3]) for j in range(len(LABELS))]
    tiny_clf.model.config.dallmi_fresh_head = True  # a backbone with a new head: nothing to keep
    result = adapt(tiny_clf, texts, tags, AdaptConfig(max_steps=1, max_length=32, batch_size=8, positives_per_label=2))
    assert result.extras["anchored"] is False
    assert result.clf.fresh_head is False  # it has been trained now


def test_given_start_logits_replace_the_source_pass_and_feed_the_anchor(source_model, monkeypatch):
    import dallmi_core.training.adapt as adapt_module

    folder, texts, tags = source_model
    cfg = AdaptConfig(max_steps=2, max_length=32, batch_size=8, positives_per_label=3, lr=1e-3, wise_alpha=1.0)
    clf = load_classifier(folder)
    own = logits_for(clf.model, TokenizedCorpus.build(clf.tokenizer, texts, 32))
    passes = []
    real = adapt_module.logits_for
    monkeypatch.setattr(adapt_module, "logits_for", lambda *a, **kw: passes.append(1) or real(*a, **kw))

    def run(start_logits=None):
        torch.manual_seed(0)
        passes.clear()
        result = adapt(load_classifier(folder), texts, tags, cfg, start_logits=start_logits)
        return _weights(result.clf), len(passes)

    computed, computed_passes = run()
    given, given_passes = run(own)
    assert given_passes == computed_passes - 1  # the pass over the texts before training is skipped
    for name, value in given.items():
        torch.testing.assert_close(value, computed[name])
    flipped, _ = run(-own)  # the anchor reads the given logits: other logits, other weights
    assert any(not torch.equal(v, computed[k]) for k, v in flipped.items())
    with pytest.raises(ConfigError, match="3 rows for 48 documents"):
        adapt(load_classifier(folder), texts, tags, cfg, start_logits=own[:3])
