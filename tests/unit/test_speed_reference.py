"""The faithful official shapes: forwards counted by a hook, one tokeniser call per corpus, same loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LABELS, make_texts

import dallmi_core.method.step as step_module
from dallmi_core.bench.flops import ShapeRecorder
from dallmi_core.bench.speed_reference import CountingTokenizer, PaddedCorpus, cycle_reference_step
from dallmi_core.config import AdaptConfig
from dallmi_core.method.mixup import draw_mixup
from dallmi_core.method.sampling import LabelBalancedSampler
from dallmi_core.method.step import StepContext, length_groups, reference_dallmi_step, vectorised_dallmi_step
from dallmi_core.modeling.tokens import TokenizedCorpus

CPU = torch.device("cpu")
L = len(LABELS)


@pytest.fixture()
def setup(tiny_clf):
    texts, y = make_texts(60, seed=3)
    counting = CountingTokenizer(tiny_clf.tokenizer)
    padded = PaddedCorpus.build(counting, texts, 32)
    tokens = TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)
    tags = [list(np.flatnonzero(y[:, j])[:5]) for j in range(L)]
    sampler = LabelBalancedSampler(np.arange(60), tags, batch_size=8, positives_per_label=3, seed=0)
    tiny_clf.model.eval()  # dropout off: every path must then compute the same loss
    return tiny_clf.model, counting, padded, tokens, sampler


def _counted(model, step, tokens, batch, mix, cfg) -> tuple[int, float]:
    recorder = ShapeRecorder(model)
    try:
        loss, _ = step(StepContext(model, tokens, cfg, CPU), batch, mix)
        loss.backward()
    finally:
        recorder.close()
    return recorder.forwards, float(loss.detach())


@pytest.mark.parametrize("mixup_at", ["word_embeddings", "embedding_output"])
def test_counted_forwards_are_1_plus_3l_and_1_plus_2l(setup, mixup_at):
    model, _, padded, _, sampler = setup
    cfg = AdaptConfig(mixup_at=mixup_at)
    batch = sampler.next()
    mix = draw_mixup(np.random.default_rng(1), batch, 1, 0.3)
    assert _counted(model, reference_dallmi_step, padded, batch, mix, cfg)[0] == 1 + 3 * L
    assert _counted(model, cycle_reference_step, padded, batch, mix, cfg)[0] == 1 + 2 * L


def test_ours_counts_one_forward_per_length_group_and_one_on_a_gpu(setup, monkeypatch):
    model, _, _, tokens, sampler = setup
    cfg = AdaptConfig()
    batch = sampler.next()
    mix = draw_mixup(np.random.default_rng(1), batch, 1, 0.3)
    docs = np.unique(np.concatenate([batch.unlabeled, batch.positives.ravel()]))
    u_len = tokens.lengths[batch.unlabeled[mix.pair_u[:, 0]]]
    p_len = tokens.lengths[batch.positives[np.arange(L), mix.pair_p[:, 0]]]
    lengths = np.concatenate([tokens.lengths[docs], np.maximum(u_len, p_len)])
    monkeypatch.setattr(step_module, "CPU_FORWARD_COST_TOKENS", 3)  # cheap forwards: several groups
    groups = len(length_groups(lengths, 3))
    assert groups > 1
    assert _counted(model, vectorised_dallmi_step, tokens, batch, mix, cfg)[0] == groups
    monkeypatch.setattr(step_module, "CPU_FORWARD_COST_TOKENS", float("inf"))  # what a GPU's forward costs
    assert _counted(model, vectorised_dallmi_step, tokens, batch, mix, cfg)[0] == 1


def test_the_official_table_is_tokenised_once_per_corpus_and_padded_to_max_length(setup):
    model, counting, padded, _, sampler = setup
    assert counting.calls == 1
    cfg = AdaptConfig()
    rng = np.random.default_rng(0)
    for step in (reference_dallmi_step, cycle_reference_step, reference_dallmi_step):
        batch = sampler.next()
        step(StepContext(model, padded, cfg, CPU), batch, draw_mixup(rng, batch, 1, 0.3))
    assert counting.calls == 1  # every forward takes rows of the table; nothing is tokenised again
    ids, mask = padded.collate([0, 5])
    assert ids.shape == mask.shape == (2, 32)
    assert int(mask[0].sum()) < 32  # padded, not merely truncated


@pytest.mark.parametrize("variational", ["log", "norm"])
@pytest.mark.parametrize("pairs", [0, 1, 2])
def test_both_official_structures_compute_our_loss_and_gradients(setup, variational, pairs):
    model, _, padded, tokens, sampler = setup
    cfg = AdaptConfig(variational=variational, mixup_pairs=pairs)
    batch = sampler.next()
    mix = draw_mixup(np.random.default_rng(2), batch, pairs, 0.3) if pairs else None
    results = {}
    for name, step, table in (
        ("ours", vectorised_dallmi_step, tokens),
        ("trainer", reference_dallmi_step, padded),
        ("cycle", cycle_reference_step, padded),
    ):
        model.zero_grad(set_to_none=True)
        loss, _ = step(StepContext(model, table, cfg, CPU), batch, mix)
        loss.backward()
        results[name] = (
            float(loss.detach()),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )
    loss, grads = results["ours"]
    for name in ("trainer", "cycle"):
        assert results[name][0] == pytest.approx(loss, abs=1e-5), name
        for param, grad in grads.items():
            torch.testing.assert_close(results[name][1][param], grad, atol=1e-5, rtol=1e-4, msg=f"{name} {param}")
