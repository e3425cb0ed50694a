"""The vectorised DALLMi step computes exactly the per-label reference loss, and MixUp trains the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LABELS, make_texts
from hypothesis import given, settings
from hypothesis import strategies as st

import dallmi_core.method.step as step_module
from dallmi_core.config import AdaptConfig
from dallmi_core.method.mixup import MixupDraws, draw_mixup
from dallmi_core.method.sampling import BalancedBatch, LabelBalancedSampler
from dallmi_core.method.step import (
    StepContext,
    bce_step,
    length_groups,
    reference_dallmi_step,
    vectorised_dallmi_step,
)
from dallmi_core.modeling.model import word_embedding_matrix
from dallmi_core.modeling.tokens import TokenizedCorpus

CPU = torch.device("cpu")


@pytest.fixture()
def setup(tiny_clf):
    texts, y = make_texts(60, seed=3)
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)
    tags = [list(np.flatnonzero(y[:, j])[:5]) for j in range(len(LABELS))]
    sampler = LabelBalancedSampler(np.arange(60), tags, batch_size=8, positives_per_label=3, seed=0)
    tiny_clf.model.eval()  # dropout off: the two paths must then agree exactly
    return tiny_clf.model, tokens, sampler


def _loss_and_grads(step, model, tokens, batch, mix, cfg):
    model.zero_grad(set_to_none=True)
    loss, parts = step(StepContext(model, tokens, cfg, CPU), batch, mix)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), parts, grads


@pytest.mark.parametrize("variational", ["log", "norm"])
@pytest.mark.parametrize("mixup_at", ["word_embeddings", "embedding_output"])
@pytest.mark.parametrize("pairs", [0, 1, 3])
def test_vectorised_step_equals_reference(setup, variational, mixup_at, pairs):
    model, tokens, sampler = setup
    cfg = AdaptConfig(variational=variational, mixup_at=mixup_at, mixup_pairs=pairs)
    batch = sampler.next()
    mix = draw_mixup(np.random.default_rng(1), batch, pairs, 0.3) if pairs else None
    fast, fast_parts, fast_grads = _loss_and_grads(vectorised_dallmi_step, model, tokens, batch, mix, cfg)
    ref, ref_parts, ref_grads = _loss_and_grads(reference_dallmi_step, model, tokens, batch, mix, cfg)
    assert fast == pytest.approx(ref, abs=1e-5)
    for key in ("variational", "mixup"):
        assert fast_parts[key] == pytest.approx(ref_parts[key], abs=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_reference_padded_to_128_matches_too(setup):
    """The official shape (every text padded to a fixed length) changes speed, not the loss."""
    model, tokens, sampler = setup
    cfg = AdaptConfig()
    batch = sampler.next()
    mix = draw_mixup(np.random.default_rng(2), batch, 1, 0.3)
    context = StepContext(model, tokens, cfg, CPU)
    fast, _ = vectorised_dallmi_step(context, batch, mix)
    ref, _ = reference_dallmi_step(context, batch, mix, pad_to=32)
    assert float(fast) == pytest.approx(float(ref), abs=1e-5)


def test_labels_without_tags_are_skipped_identically(setup):
    model, tokens, sampler = setup
    full = sampler.next()
    active = full.active.copy()
    active[1] = False
    positives = full.positives.copy()
    positives[1] = -1
    batch = BalancedBatch(full.unlabeled, positives, active)
    mix = draw_mixup(np.random.default_rng(3), batch, 2, 0.3)
    cfg = AdaptConfig(mixup_pairs=2)
    context = StepContext(model, tokens, cfg, CPU)
    fast, _ = vectorised_dallmi_step(context, batch, mix)
    ref, _ = reference_dallmi_step(context, batch, mix)
    assert float(fast) == pytest.approx(float(ref), abs=1e-5)


@pytest.mark.parametrize("detach_target", [True, False])
def test_mixup_regulariser_gradient_reaches_embeddings_and_encoder(setup, monkeypatch, detach_target):
    """The official code took the MixUp term with .item(): no gradient. Ours must train the model
    through the mixed forward phi(x~) itself, whether or not the target t carries a gradient too."""
    model, tokens, sampler = setup
    batch = sampler.next()
    mix = draw_mixup(np.random.default_rng(4), batch, 1, 0.3)
    with_mix = AdaptConfig(lambda_mix=1.0, detach_target=detach_target)
    seen = {}
    real_mix = step_module.mix_sequences

    def keep_mixed(*args):
        mixed, mixed_mask = real_mix(*args)
        mixed.retain_grad()
        seen["mixed"] = mixed
        return mixed, mixed_mask

    monkeypatch.setattr(step_module, "mix_sequences", keep_mixed)
    _, parts, grads_with = _loss_and_grads(vectorised_dallmi_step, model, tokens, batch, mix, with_mix)
    mixed_grad = seen["mixed"].grad
    assert mixed_grad is not None and mixed_grad.abs().max() > 1e-6, "no gradient flows through phi(x~)"
    _, _, grads_without = _loss_and_grads(vectorised_dallmi_step, model, tokens, batch, None, with_mix)
    assert parts["mixup"] > 0
    embedding = "bert.embeddings.word_embeddings.weight"
    encoder = "bert.encoder.layer.0.attention.self.query.weight"
    for name in (embedding, encoder):
        delta = (grads_with[name] - grads_without[name]).abs().max()
        assert delta > 1e-7, f"the MixUp term does not reach {name}"


def test_mixed_input_interpolates_word_embeddings(setup, monkeypatch):
    """At mu=1 the mixed sequence is the unlabeled document's embeddings, at mu=0 the positive's."""
    model, tokens, sampler = setup
    batch = sampler.next()
    seen = {}

    def spy(model_, *, input_ids=None, inputs_embeds=None, attention_mask):
        seen["embeds"], seen["mask"] = inputs_embeds, attention_mask
        return torch.zeros(inputs_embeds.shape[0], len(LABELS), requires_grad=True)

    monkeypatch.setattr("dallmi_core.modeling.model.forward_logits", spy)  # the forward of (mixed) embeddings
    W = word_embedding_matrix(model)
    for mu, doc_of in ((1.0, lambda lab: batch.unlabeled[0]), (0.0, lambda lab: batch.positives[lab, 0])):
        labels = batch.positives.shape[0]
        mix = MixupDraws(np.zeros((labels, 1), int), np.zeros((labels, 1), int), np.full((labels, 1), mu, np.float32))
        vectorised_dallmi_step(StepContext(model, tokens, AdaptConfig(), CPU), batch, mix)
        mixed = seen["embeds"][-labels:]
        for lab in range(labels):
            ids = torch.as_tensor(tokens.ids[doc_of(lab)])
            torch.testing.assert_close(mixed[lab, : len(ids)], W[ids])


@pytest.mark.parametrize("pairs", [0, 2])
def test_length_grouped_forwards_give_the_same_loss_and_gradients(setup, monkeypatch, pairs):
    """With a zero forward cost the CPU path cuts the batch into several length groups: same numbers."""
    model, tokens, sampler = setup
    cfg = AdaptConfig(mixup_pairs=pairs)
    batch = sampler.next()
    mix = draw_mixup(np.random.default_rng(5), batch, pairs, 0.3) if pairs else None
    ref, _, ref_grads = _loss_and_grads(reference_dallmi_step, model, tokens, batch, mix, cfg)
    monkeypatch.setattr("dallmi_core.method.step.CPU_FORWARD_COST_TOKENS", 0.0)
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        fast, _, fast_grads = _loss_and_grads(vectorised_dallmi_step, model, tokens, batch, mix, cfg)
    finally:
        hook.remove()
    assert len(calls) > 1, "the batch was not cut into length groups"
    assert fast == pytest.approx(ref, abs=1e-5)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@given(
    st.lists(st.integers(1, 128), min_size=1, max_size=60),
    st.sampled_from([0.0, 16.0, 256.0, float("inf")]),
)
@settings(max_examples=60, deadline=None)
def test_length_groups_partition_the_rows_and_never_cost_more_than_one_forward(lengths, cost):
    lengths = np.asarray(lengths)
    groups = length_groups(lengths, cost)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    padded = sum(len(g) * lengths[g].max() for g in groups)
    overhead = 0.0 if not np.isfinite(cost) else cost * len(groups)
    one = len(lengths) * lengths.max() + (0.0 if not np.isfinite(cost) else cost)
    assert padded + overhead <= one
    if not np.isfinite(cost):
        assert len(groups) == 1
    if cost == 0.0:
        assert padded == lengths.sum()  # free forwards: no padding at all


def test_bce_step_in_length_groups_gives_the_same_loss_and_gradients(setup, monkeypatch):
    model, tokens, _ = setup
    indices = np.arange(12)
    targets = np.random.default_rng(0).integers(0, 2, size=(12, len(LABELS))).astype(np.float32)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss, _ = bce_step(model, tokens, indices, targets, CPU)
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    monkeypatch.setattr("dallmi_core.method.step.CPU_FORWARD_COST_TOKENS", float("inf"))
    one, one_grads = loss_and_grads()
    monkeypatch.setattr("dallmi_core.method.step.CPU_FORWARD_COST_TOKENS", 0.0)
    grouped, grouped_grads = loss_and_grads()
    assert len(length_groups(tokens.lengths[indices], 0.0)) > 1
    assert grouped == pytest.approx(one, abs=1e-6)
    for name, grad in one_grads.items():
        torch.testing.assert_close(grouped_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
