"""The training loop seen through its callbacks: progress, cancel, early stopping, checkpoints and
exact resume, seeded determinism, source fine-tuning, and the PU validation split.

Every run uses the tiny random BERT from conftest and a handful of steps.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import LABELS, ProgressCallback, make_texts
from hypothesis import given, settings
from hypothesis import strategies as st

from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.errors import ConfigError, RunStateError
from dallmi_core.method.losses import bce_loss, variational_term
from dallmi_core.modeling.model import new_classifier
from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.adapt import adapt
from dallmi_core.training.callbacks import (
    Callback,
    CancelCallback,
    CheckpointEvery,
    EarlyStopping,
    TrainState,
)
from dallmi_core.training.pu_split import pu_split
from dallmi_core.training.source import finetune_source
from dallmi_core.training.trainer import CHECKPOINT_FILE


@pytest.fixture(scope="module")
def corpus():
    texts, y = make_texts(60, seed=0)
    tags = [np.flatnonzero(y[:, j])[:5].tolist() for j in range(len(LABELS))]
    return texts, y, tags


@pytest.fixture(scope="module")
def initial_clf(tiny_backbone):
    torch.manual_seed(1)
    return new_classifier(tiny_backbone, LABELS)


@pytest.fixture()
def clf(initial_clf):
    """A fresh copy of the same initial weights for every run."""
    return copy.deepcopy(initial_clf)


def adapt_cfg(**kw) -> AdaptConfig:
    base = {
        "max_steps": 10,
        "batch_size": 8,
        "selection": "last",
        "seed": 3,
        "lr": 1e-3,
        "max_length": 32,
        "device": "cpu",
    }
    return AdaptConfig(**{**base, **kw})


def source_cfg(**kw) -> SourceConfig:
    base = {
        "epochs": None,
        "max_steps": 10,
        "batch_size": 16,
        "seed": 3,
        "lr": 1e-3,
        "head_lr": 1e-2,
        "max_length": 32,
        "device": "cpu",
        "probe_epochs": 0,  # the loop's mechanics alone; the warm-up has tests/unit/test_probe.py
    }
    return SourceConfig(**{**base, **kw})


def weights(clf) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in clf.model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


class StopAfter(CancelCallback):
    """Cancel once `n` steps have run (counts its own polls, like a flag set from outside)."""

    def __init__(self, n: int):
        self.calls = 0

        def cancelled() -> bool:
            self.calls += 1
            return self.calls >= n

        super().__init__(cancelled)


class Recorder(Callback):
    def __init__(self):
        self.events: list[tuple] = []

    def on_train_begin(self, state):
        self.events.append(("begin", state.step))

    def on_step_end(self, state):
        self.events.append(("step", state.step))

    def on_evaluate(self, state, metrics):
        self.events.append(("evaluate", metrics["step"]))

    def on_train_end(self, state):
        self.events.append(("end", state.step))


# -- progress ------------------------------------------------------------------------------


def test_progress_reports_step_budget_eta_and_dallmi_loss_parts(clf, corpus):
    texts, _, tags = corpus
    reports: list[dict] = []
    cfg = adapt_cfg(max_steps=6, lambda_mix=0.5)
    result = adapt(clf, texts, tags, cfg, callbacks=[ProgressCallback(reports.append)])
    assert [r["step"] for r in reports] == [1, 2, 3, 4, 5, 6]
    for r in reports:
        assert r["stage"] == "adapt" and r["max_steps"] == 6
        assert isinstance(r["eta_s"], float) and r["eta_s"] >= 0
        assert {"loss", "variational", "mixup"} <= r.keys()
        assert all(np.isfinite(r[k]) for k in ("loss", "variational", "mixup"))
        assert r["mixup"] >= 0
        assert r["loss"] == pytest.approx(r["variational"] + 0.5 * r["mixup"], rel=1e-5, abs=1e-5)
    assert reports[-1]["eta_s"] == 0.0
    epochs = [r["epoch"] for r in reports]
    assert epochs == sorted(epochs) and epochs[-1] > 0
    assert result.state.step == 6 and result.state.stop_reason is None


def test_progress_every_n_steps_and_at_the_end(clf, corpus):
    texts, y, _ = corpus
    reports: list[dict] = []
    finetune_source(clf, texts, y, source_cfg(max_steps=10), callbacks=[ProgressCallback(reports.append, every=4)])
    assert [r["step"] for r in reports] == [4, 8, 10]
    assert all(r["stage"] == "finetune-source" and "loss" in r for r in reports)


def test_hooks_are_called_in_order(clf, corpus):
    texts, _, tags = corpus
    rec = Recorder()
    adapt(clf, texts, tags, adapt_cfg(max_steps=4, selection="val_variational", eval_every=2), callbacks=[rec])
    assert rec.events == [
        ("begin", 0),
        ("evaluate", 0),
        ("step", 1),
        ("step", 2),
        ("evaluate", 2),
        ("step", 3),
        ("step", 4),
        ("evaluate", 4),
        ("end", 4),
    ]


def test_eta_is_none_before_the_first_step():
    state = TrainState(stage="adapt", max_steps=10)
    assert state.eta_seconds() is None
    state.step = 10
    assert state.eta_seconds() == 0.0


# -- cancel and early stopping -------------------------------------------------------------


@pytest.mark.parametrize("method", ["dallmi", "bce-partial"])
def test_cancel_stops_at_the_step_and_still_returns_a_result(clf, corpus, method):
    texts, _, tags = corpus
    before = weights(clf)
    stopper = StopAfter(3)
    result = adapt(clf, texts, tags, adapt_cfg(method=method), callbacks=[stopper])
    assert result.state.step == 3
    assert result.state.should_stop and result.state.stop_reason == "cancelled"
    assert stopper.calls == 3  # no step ran after the cancel
    assert result.clf is clf and not result.clf.model.training
    assert max_diff(before, weights(result.clf)) > 0  # the three steps did train


def test_cancel_source_finetuning(clf, corpus):
    texts, y, _ = corpus
    result = finetune_source(clf, texts, y, source_cfg(), callbacks=[StopAfter(3)])
    assert result.state.step == 3 and result.state.stop_reason == "cancelled"


def test_early_stopping_stops_when_validation_does_not_improve(clf, corpus):
    texts, _, tags = corpus
    # an lr so small that the weights cannot move: the validation score stays exactly put
    cfg = adapt_cfg(max_steps=12, lr=1e-30, weight_decay=0.0, selection="val_variational", eval_every=2)
    result = adapt(copy.deepcopy(clf), texts, tags, cfg, callbacks=[EarlyStopping(patience=1)])
    assert result.state.stop_reason == "early_stopping"
    assert result.state.step == 2
    assert [h["improved"] for h in result.state.history] == [True, False]
    assert result.state.best_step == 0

    # without the callback the same run goes the whole way
    full = adapt(copy.deepcopy(clf), texts, tags, cfg)
    assert full.state.step == 12 and full.state.stop_reason is None
    assert len(full.state.history) == 7  # steps 0, 2, ..., 12


def test_early_stopping_counts_consecutive_bad_evaluations():
    state = TrainState(stage="adapt", max_steps=100)
    stopper = EarlyStopping(patience=2)
    for improved in (True, False, True, False):
        stopper.on_evaluate(state, {"improved": improved})
        assert not state.should_stop
    stopper.on_evaluate(state, {"improved": False})
    assert state.should_stop and state.stop_reason == "early_stopping"


def test_validation_selects_the_best_step(clf, corpus):
    texts, _, tags = corpus
    result = adapt(clf, texts, tags, adapt_cfg(max_steps=6, selection="val_variational", eval_every=2))
    history = result.state.history
    assert [h["step"] for h in history] == [0, 2, 4, 6]
    assert all(np.isfinite(h["val_variational"]) and 0 <= h["val_pu_ap"] <= 1 for h in history)
    best = max(history, key=lambda h: -h["val_variational"])
    assert result.state.best_step == best["step"]
    assert result.state.best_score == pytest.approx(-best["val_variational"])
    assert result.split is not None and any(result.split.val_tags)


def held_out_variational(clf, texts, split) -> float:
    """The selection signal recomputed from scratch: sum over labels of V_log on held-out PU data."""
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, 32)
    unl = logits_for(clf.model, tokens, list(split.val_unlabeled))
    total = 0.0
    for label, held in enumerate(split.val_tags):
        if held:
            pos = logits_for(clf.model, tokens, list(held))[:, label]
            total += float(variational_term(torch.from_numpy(unl[:, [label]]), torch.from_numpy(pos[None]), "log")[0])
    return total


def test_best_validation_weights_are_restored_at_the_end(clf, corpus):
    texts, _, tags = corpus
    result = adapt(clf, texts, tags, adapt_cfg(max_steps=8, lr=1e-2, selection="val_variational", eval_every=2))
    last = result.state.history[-1]
    assert result.state.best_step != last["step"]  # otherwise this test proves nothing
    restored = held_out_variational(result.clf, texts, result.split)
    assert -restored == pytest.approx(result.state.best_score, abs=1e-6)
    assert restored != pytest.approx(last["val_variational"], abs=1e-6)


# -- checkpoints and exact resume ------------------------------------------------------------


@pytest.mark.parametrize("selection", ["last", "val_variational"])
def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(initial_clf, corpus, tmp_path, selection):
    texts, _, tags = corpus
    cfg = adapt_cfg(max_steps=10, selection=selection, eval_every=3)

    run_a = adapt(copy.deepcopy(initial_clf), texts, tags, cfg)
    assert run_a.state.step == 10

    ckpt = tmp_path / "ckpt"
    first = adapt(
        copy.deepcopy(initial_clf), texts, tags, cfg, callbacks=[CheckpointEvery(5), StopAfter(5)], checkpoint_dir=ckpt
    )
    assert first.state.step == 5 and first.state.stop_reason == "cancelled"
    assert (ckpt / CHECKPOINT_FILE).is_file()
    if selection == "last":
        halfway = max_diff(weights(first.clf), weights(run_a.clf))
        assert halfway > 0  # stopped half-way: not yet A

    steps: list[int] = []
    run_b = adapt(
        copy.deepcopy(initial_clf),
        texts,
        tags,
        cfg,
        checkpoint_dir=ckpt,
        callbacks=[ProgressCallback(lambda r: steps.append(r["step"]))],
    )
    assert run_b.state.resumed_from == 5
    assert steps == [6, 7, 8, 9, 10]
    assert run_b.state.step == 10
    diff = max_diff(weights(run_a.clf), weights(run_b.clf))
    assert diff <= 1e-6
    # the same trajectory after the resume, not just the same (possibly early) best weights
    assert run_b.state.best_step == run_a.state.best_step
    assert len(run_b.state.history) == len(run_a.state.history)
    for ha, hb in zip(run_a.state.history, run_b.state.history, strict=True):
        assert ha["step"] == hb["step"] and ha["improved"] == hb["improved"]
        assert hb["val_variational"] == pytest.approx(ha["val_variational"], abs=1e-6)


def test_resume_source_finetuning(initial_clf, corpus, tmp_path):
    texts, y, _ = corpus
    cfg = source_cfg(max_steps=8, batch_size=8)
    run_a = finetune_source(copy.deepcopy(initial_clf), texts, y, cfg)
    ckpt = tmp_path / "ckpt"
    finetune_source(
        copy.deepcopy(initial_clf), texts, y, cfg, callbacks=[CheckpointEvery(4), StopAfter(4)], checkpoint_dir=ckpt
    )
    run_b = finetune_source(copy.deepcopy(initial_clf), texts, y, cfg, checkpoint_dir=ckpt)
    assert run_b.state.resumed_from == 4 and run_b.state.step == 8
    assert max_diff(weights(run_a.clf), weights(run_b.clf)) <= 1e-6


def test_checkpoint_every_asks_only_at_multiples_before_the_end():
    cb = CheckpointEvery(5)
    asked = [s for s in range(1, 16) if cb.on_checkpoint(TrainState("adapt", max_steps=15, step=s))]
    assert asked == [5, 10]


def test_resume_with_another_config_is_refused(clf, corpus, tmp_path):
    texts, _, tags = corpus
    ckpt = tmp_path / "ckpt"
    adapt(
        copy.deepcopy(clf), texts, tags, adapt_cfg(), callbacks=[CheckpointEvery(2), StopAfter(2)], checkpoint_dir=ckpt
    )
    with pytest.raises(RunStateError, match="another configuration"):
        adapt(copy.deepcopy(clf), texts, tags, adapt_cfg(lr=2e-3), checkpoint_dir=ckpt)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


@pytest.mark.parametrize("payload", ["object", "garbage"])
def test_a_checkpoint_that_is_not_ours_is_refused_without_running_it(clf, corpus, tmp_path, monkeypatch, payload):
    """Checkpoints load as tensors and plain values only (weights_only): a pickled object in a
    tampered or foreign trainer_state.pt is a clear error, and its code never runs."""
    texts, _, tags = corpus
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if payload == "object":
        torch.save({"step": 2, "config": _RunsCodeWhenUnpickled()}, ckpt / "trainer_state.pt")
    else:
        (ckpt / "trainer_state.pt").write_bytes(b"not a checkpoint at all")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunStateError, match="not a checkpoint of this tool"):
        adapt(copy.deepcopy(clf), texts, tags, adapt_cfg(), checkpoint_dir=ckpt)
    assert not (tmp_path / "PWNED").exists()


# -- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dallmi", "bce-partial"])
def test_seeded_runs_are_identical(initial_clf, corpus, method):
    texts, _, tags = corpus
    cfg = adapt_cfg(max_steps=6, method=method)
    one = weights(adapt(copy.deepcopy(initial_clf), texts, tags, cfg).clf)
    two = weights(adapt(copy.deepcopy(initial_clf), texts, tags, cfg).clf)
    other = weights(adapt(copy.deepcopy(initial_clf), texts, tags, cfg.replace(seed=4)).clf)
    assert max_diff(one, weights(initial_clf)) > 0
    assert max_diff(one, two) == 0.0
    assert max_diff(one, other) > 0  # the seed is what fixes the run


# -- source fine-tuning ----------------------------------------------------------------------


def bce_on(clf, texts, y) -> float:
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, 32)
    logits = logits_for(clf.model, tokens)
    return float(bce_loss(torch.from_numpy(logits), torch.from_numpy(y)))


def test_finetune_source_lowers_training_bce(clf, corpus):
    texts, y, _ = corpus
    before = bce_on(clf, texts, y)
    result = finetune_source(clf, texts, y, source_cfg(max_steps=20, lr=1e-2, head_lr=1e-2))
    after = bce_on(result.clf, texts, y)
    assert result.state.step == 20
    # below the best constant predictor (label frequencies alone): the keywords were learned
    freq = y.mean(axis=0)
    prior = float(-np.mean(freq * np.log(freq) + (1 - freq) * np.log(1 - freq)))
    assert after < min(before, prior) - 0.05, (before, prior, after)


def test_finetune_source_by_epochs(clf, corpus):
    texts, y, _ = corpus
    result = finetune_source(clf, texts, y, source_cfg(max_steps=None, epochs=1.0, batch_size=16))
    assert result.state.max_steps == 4  # ceil(60 / 16)


# -- adaptation inputs -----------------------------------------------------------------------


def test_label_without_tags_is_skipped_not_fatal(clf, corpus):
    texts, _, tags = corpus
    reports: list[dict] = []
    result = adapt(
        clf, texts, [tags[0], [], tags[2]], adapt_cfg(max_steps=3), callbacks=[ProgressCallback(reports.append)]
    )
    assert result.state.step == 3
    assert all(np.isfinite(r["loss"]) for r in reports)


def test_tags_for_the_wrong_number_of_labels(clf, corpus):
    texts, _, tags = corpus
    with pytest.raises(ConfigError, match="labels"):
        adapt(clf, texts, tags[:2], adapt_cfg())


def test_target_oracle_needs_gold(clf, corpus):
    texts, _, tags = corpus
    with pytest.raises(ConfigError, match="gold"):
        adapt(clf, texts, tags, adapt_cfg(method="target-oracle"))


# -- the PU split ----------------------------------------------------------------------------


def held_by_others(split, label_tags):
    """Documents of this label that another label held out (they are validation data for both)."""
    return {d for v in split.val_tags for d in v} & set(label_tags)


def check_split(tags, n_docs, cfg):
    split = pu_split(tags, n_docs, cfg)
    assert len(split.train_tags) == len(split.val_tags) == len(tags)
    pool = set(split.train_pool)
    val_unl = set(split.val_unlabeled)
    held = {d for v in split.val_tags for d in v}
    for label_tags, train, val in zip(tags, split.train_tags, split.val_tags, strict=True):
        distinct = set(label_tags)
        n = len(distinct)
        assert set(train) | set(val) == distinct and not set(train) & set(val)
        assert len(train) == len(set(train)) and len(val) == len(set(val))
        if n:
            assert len(train) >= 1  # every label with a tag keeps one for training
        if n < 2:
            assert not set(val) - held_by_others(split, label_tags)
        assert not set(train) & held  # a held-out document trains no label
    assert not pool & held and not pool & val_unl  # held-out documents never train
    assert not val_unl & held
    assert pool | val_unl | held == set(range(n_docs))  # everything else is unlabeled data
    assert len(split.val_unlabeled) <= cfg.val_unlabeled
    if len(set(range(n_docs)) - held) >= 5 and cfg.val_unlabeled:
        assert split.val_unlabeled  # held out under every selection rule: the PU estimate needs them
    return split


def test_pu_split_holds_out_a_share_of_each_labels_tags():
    tags = [list(range(10)), [20], [], [30, 31, 32, 33, 34], [40, 41]]
    cfg = AdaptConfig(val_fraction=0.2, val_unlabeled=8)
    split = check_split(tags, 100, cfg)
    assert [len(v) for v in split.val_tags] == [2, 0, 0, 1, 0]
    assert len(split.val_unlabeled) == 8
    assert 20 in split.train_pool  # training tags stay in the unlabeled pool (U holds them too)
    assert split == pu_split(tags, 100, cfg)  # seeded
    assert split != pu_split(tags, 100, cfg.replace(seed=99))


def test_pu_split_caps_the_share_so_a_tag_stays_for_training():
    split = check_split([[1, 2, 3], [4, 5]], 50, AdaptConfig(val_fraction=0.9))
    assert [len(t) for t in split.train_tags] == [1, 1]


def test_pu_split_without_validation():
    split = check_split([[1, 2, 3, 4, 5]], 50, AdaptConfig(val_fraction=0.0, val_unlabeled=0, selection="last"))
    assert split.val_tags == ((),) and split.val_unlabeled == ()
    assert split.train_pool == tuple(range(50))


@settings(max_examples=60, deadline=None)
@given(
    n_docs=st.integers(1, 80),
    raw=st.lists(st.lists(st.integers(0, 79), max_size=15), min_size=1, max_size=5),
    val_fraction=st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.9]),
    val_unlabeled=st.integers(0, 40),
    selection=st.sampled_from(["val_variational", "last"]),
    seed=st.integers(0, 1000),
)
def test_property_pu_split(n_docs, raw, val_fraction, val_unlabeled, selection, seed):
    tags = [[d for d in t if d < n_docs] for t in raw]
    cfg = AdaptConfig(val_fraction=val_fraction, val_unlabeled=val_unlabeled, selection=selection, seed=seed)
    check_split(tags, n_docs, cfg)


def test_pu_split_never_trains_on_a_document_held_out_for_another_label():
    # doc 0 carries both labels; whichever label holds it out, it must leave both training sets
    tags = [[0, 1, 2, 3, 4], [0, 5, 6, 7, 8]]
    for seed in range(20):
        split = pu_split(tags, 50, AdaptConfig(val_fraction=0.4, seed=seed))
        held = {d for v in split.val_tags for d in v}
        assert all(not set(t) & held for t in split.train_tags)
        assert all(len(t) >= 1 for t in split.train_tags)
        if 0 in held:
            assert 0 in split.val_tags[0] and 0 in split.val_tags[1]
