"""Source fine-tuning: BCE on labelled source documents, then the Platt calibration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dallmi_core.config import SourceConfig
from dallmi_core.method.sampling import UnlabeledStream
from dallmi_core.modeling.calibration import fit_on_source, source_calibration
from dallmi_core.modeling.model import Classifier
from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.callbacks import Callback
from dallmi_core.training.probe import probe_head
from dallmi_core.training.trainer import CHECKPOINT_FILE, BceTrainer, TrainResult, steps_for_epochs


class SourceTrainer(BceTrainer):
    """BCE on labelled source documents, after the head's warm-up on frozen features (probe.py)."""

    stage = "finetune-source"

    def __init__(self, clf, tokens, targets: np.ndarray, cfg: SourceConfig, **kw):
        super().__init__(clf, tokens, cfg, **kw)
        self.targets = targets
        pool = np.arange(len(tokens))[self.rank :: self.world]
        self.stream = UnlabeledStream(pool, cfg.batch_size, np.random.default_rng(cfg.seed + self.rank))

    def param_groups(self, model):
        head = {id(p) for p in model.classifier.parameters()} if hasattr(model, "classifier") else set()
        body = [p for p in model.parameters() if id(p) not in head]
        groups = [{"params": body}]
        if head:
            head_lr = self.cfg.head_lr if self.cfg.head_lr is not None else self.cfg.lr
            groups.append({"params": [p for p in model.parameters() if id(p) in head], "lr": head_lr})
        return groups

    def step_budget(self):
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        epochs = self.cfg.epochs or SourceConfig.default_epochs
        return steps_for_epochs(epochs, len(self.tokens), self.cfg.batch_size, self.world)


def calibration_rows(n: int, cfg: SourceConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out calibration rows) of the source rows; with too few to hold out,
    every row trains and the calibration is fitted on the training rows (slightly overconfident)."""
    held = int(round(cfg.calibration_fraction * n))
    if held < SourceConfig.min_calibration_rows or n - held < 1:
        everything = np.arange(n)
        return everything, everything
    order = np.random.default_rng(cfg.seed + 104729).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def finetune_source(
    clf: Classifier,
    texts: Sequence[str],
    targets: np.ndarray,
    cfg: SourceConfig,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir=None,
) -> TrainResult:
    """Fine-tune `clf` with BCE on labelled source texts (targets [n, L] 0/1): first the head alone
    on frozen features (skipped when resuming: the checkpoint holds the weights), then everything;
    finally the per-label Platt calibration on the held-out source rows (`calibration_fraction`)."""
    train_rows, held_rows = calibration_rows(len(texts), cfg)
    targets = np.asarray(targets)
    tokens = TokenizedCorpus.build(clf.tokenizer, [texts[i] for i in train_rows], cfg.max_length)
    resuming = checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT_FILE).exists()
    if not resuming:
        probed = probe_head(clf.model, tokens, targets[train_rows], cfg, callbacks)
        if probed is not None and probed.should_stop:  # cancelled during the warm-up: nothing to resume
            clf.model.eval()
            return TrainResult(clf, probed)
    trainer = SourceTrainer(clf, tokens, targets[train_rows], cfg, callbacks=callbacks, checkpoint_dir=checkpoint_dir)
    result = trainer.fit()
    if result.state.stop_reason != "cancelled":
        held = TokenizedCorpus.build(clf.tokenizer, [texts[i] for i in held_rows], cfg.max_length)
        logits = logits_for(result.clf.model, held)
        fits = fit_on_source(logits, targets[held_rows], clf.label_names)
        result.clf.set_calibration(source_calibration(fits, logits, clf.label_names), source_fit=fits)
    return result
