"""The head warm-up on frozen features before source fine-tuning (LP-FT, dallmi_core/training/probe.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import LABELS, ProgressCallback, make_texts
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from dallmi_core.config import SourceConfig
from dallmi_core.method.losses import bce_loss
from dallmi_core.modeling.model import new_classifier
from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.callbacks import Callback, CheckpointEvery
from dallmi_core.training.probe import first_token_head, first_token_states, probe_head
from dallmi_core.training.source import finetune_source

SMALL = {
    "vocab_size": 120,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "num_labels": 3,
}


@pytest.fixture(scope="module")
def corpus():
    return make_texts(60, seed=0)


@pytest.fixture(scope="module")
def initial_clf(tiny_backbone):
    torch.manual_seed(1)
    return new_classifier(tiny_backbone, LABELS)


def cfg(**kw) -> SourceConfig:
    base = {"max_steps": 4, "batch_size": 16, "seed": 3, "max_length": 32, "device": "cpu", "probe_epochs": 3.0}
    return SourceConfig(**{**base, **kw})


class StopAfter(Callback):
    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def on_step_end(self, state):
        self.calls += 1
        if self.calls >= self.n:
            state.stop("cancelled")


@pytest.mark.parametrize(
    "model_cls, config_cls",
    [(BertForSequenceClassification, BertConfig), (RobertaForSequenceClassification, RobertaConfig)],
)
def test_the_head_on_first_token_states_reproduces_the_models_logits(model_cls, config_cls):
    torch.manual_seed(0)
    model = model_cls(config_cls(**SMALL, pad_token_id=1)).eval()
    ids = torch.randint(3, 120, (5, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    head = first_token_head(model)
    assert head is not None
    with torch.no_grad():
        states = model.base_model(input_ids=ids, attention_mask=mask)[0][:, 0]
        torch.testing.assert_close(head.forward(states), model(input_ids=ids, attention_mask=mask).logits)


def test_an_unknown_head_is_left_to_plain_fine_tuning():
    config = DistilBertConfig(vocab_size=120, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=3)
    model = DistilBertForSequenceClassification(config)
    assert first_token_head(model) is None
    texts, y = make_texts(8)
    assert probe_head(model, None, y, cfg()) is None  # nothing touched, no features computed


def test_first_token_states_follow_document_order(initial_clf, corpus):
    texts, _ = corpus
    tokens = TokenizedCorpus.build(initial_clf.tokenizer, texts, 32)
    states = first_token_states(initial_clf.model, tokens, torch.device("cpu"))
    one = first_token_states(
        initial_clf.model, TokenizedCorpus.build(initial_clf.tokenizer, texts[7:8], 32), torch.device("cpu")
    )
    torch.testing.assert_close(states[7:8], one, atol=1e-5, rtol=1e-5)  # length-sorted batches, unsorted rows


def test_the_probe_trains_the_head_alone_and_learns_the_labels(initial_clf, corpus):
    texts, y = corpus
    # a random tiny encoder's features say nothing about the keywords: make them informative first
    # (plain fine-tuning), then start the probe from a fresh classifier layer
    clf = finetune_source(copy.deepcopy(initial_clf), texts, y, cfg(max_steps=20, lr=1e-2, probe_epochs=0)).clf
    torch.manual_seed(0)
    clf.model.classifier.reset_parameters()
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, 32)
    head = {id(p) for p in first_token_head(clf.model).parameters()}
    before = {n: p.detach().clone() for n, p in clf.model.named_parameters()}
    bce_before = float(bce_loss(torch.from_numpy(logits_for(clf.model, tokens)), torch.from_numpy(y)))

    state = probe_head(clf.model, tokens, y, cfg(probe_epochs=30.0, probe_lr=1e-2))

    after = dict(clf.model.named_parameters())
    moved = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    assert moved and all(id(after[n]) in head for n in moved), moved  # the encoder is frozen
    assert state.stage == "probe-head" and state.step == state.max_steps
    bce_after = float(bce_loss(torch.from_numpy(logits_for(clf.model, tokens)), torch.from_numpy(y)))
    freq = y.mean(axis=0)
    prior = float(-np.mean(freq * np.log(freq) + (1 - freq) * np.log(1 - freq)))
    assert bce_after < min(bce_before, prior) - 0.05, (bce_before, prior, bce_after)


def test_source_finetuning_reports_the_probe_then_the_finetuning(initial_clf, corpus):
    texts, y = corpus
    reports: list[dict] = []
    finetune_source(copy.deepcopy(initial_clf), texts, y, cfg(), callbacks=[ProgressCallback(reports.append)])
    stages = [r["stage"] for r in reports]
    n_probe = stages.count("probe-head")
    # one tick per feature batch (60 docs / 64), then 3 epochs of ceil(60 / 16) head steps
    assert n_probe == 1 + 3 * 4
    assert stages == ["probe-head"] * n_probe + ["finetune-source"] * 4
    assert all("probe_loss" in r for r in reports[1:n_probe])


def test_no_probe_when_turned_off(initial_clf, corpus):
    texts, y = corpus
    reports: list[dict] = []
    finetune_source(
        copy.deepcopy(initial_clf), texts, y, cfg(probe_epochs=0), callbacks=[ProgressCallback(reports.append)]
    )
    assert {r["stage"] for r in reports} == {"finetune-source"}


def test_a_cancel_during_the_probe_ends_source_finetuning(initial_clf, corpus):
    texts, y = corpus
    stopper = StopAfter(3)
    result = finetune_source(copy.deepcopy(initial_clf), texts, y, cfg(), callbacks=[stopper])
    assert result.state.stage == "probe-head" and result.state.stop_reason == "cancelled"
    assert stopper.calls == 3 and not result.clf.model.training


def test_a_resumed_finetuning_does_not_probe_again(initial_clf, corpus, tmp_path):
    texts, y = corpus
    ckpt = tmp_path / "ckpt"
    first = StopAfter(13 + 2)  # the whole probe, then 2 fine-tuning steps
    finetune_source(
        copy.deepcopy(initial_clf), texts, y, cfg(), callbacks=[CheckpointEvery(2), first], checkpoint_dir=ckpt
    )
    reports: list[dict] = []
    result = finetune_source(
        copy.deepcopy(initial_clf), texts, y, cfg(), callbacks=[ProgressCallback(reports.append)], checkpoint_dir=ckpt
    )
    assert result.state.resumed_from == 2 and result.state.step == 4
    assert [r["stage"] for r in reports] == ["finetune-source"] * 2
