"""Adaptation to a target domain: the trainer for the method, then anchoring and calibration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dallmi_core.config import DALLMI_LOSS, AdaptConfig
from dallmi_core.errors import ConfigError
from dallmi_core.modeling.calibration import Calibration, calibrate_on_target
from dallmi_core.modeling.model import Classifier, resolve_device, unwrap
from dallmi_core.modeling.scoring import logits_for, sigmoid
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.adversarial import AadTrainer
from dallmi_core.training.callbacks import Callback, EarlyStopping
from dallmi_core.training.distributed import rank_device
from dallmi_core.training.prototype import features_and_logits, fold_prototypes, head_linear
from dallmi_core.training.target import BceTargetTrainer, DallmiTrainer
from dallmi_core.training.trainer import TrainResult


def interpolate_weights(model: torch.nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT (Wortsman et al. 2022) in place: every floating weight becomes alpha * its adapted
    value + (1 - alpha) * its value in `start` (the source model's)."""
    with torch.no_grad():
        for name, value in unwrap(model).state_dict().items():
            if value.is_floating_point():
                value.mul_(alpha).add_(start[name].to(value.device, value.dtype), alpha=1 - alpha)


def calibrate_adapted(
    result: TrainResult,
    tokens: TokenizedCorpus,
    tags: Sequence[Sequence[int]],
    prior: CalibrationInputs,
    logits: np.ndarray | None = None,
) -> Calibration:
    """The adapted model's calibration on all its target documents (the priors estimated before it
    trained, by the source model; `logits` if its pass over them is done already); attached to the
    model's config."""
    clf = result.clf
    logits = logits_for(clf.model, tokens) if logits is None else logits
    calibration = calibrate_on_target(
        clf.label_names, logits, tags, source_fit=prior.source_fit, prior_logits=prior.logits, seed=result.state.step
    )
    clf.set_calibration(calibration)
    return calibration


def calibrate_source_on_target(
    clf: Classifier,
    texts: Sequence[str],
    tags: Sequence[Sequence[int]],
    max_length: int,
    seed: int = 0,
    logits: np.ndarray | None = None,
) -> Calibration | None:
    """A source model's calibration re-estimated on target `texts` and their tags (its source fit
    kept; `logits`: its logits on `texts`, when the caller has them); a model without a source fit
    keeps the calibration it carries."""
    fit = clf.source_fit()
    if fit is None or not len(texts):
        return clf.calibration()
    if logits is None:
        logits = logits_for(clf.model, TokenizedCorpus.build(clf.tokenizer, texts, max_length))
    calibration = calibrate_on_target(clf.label_names, logits, tags, source_fit=fit, same_model=True, seed=seed)
    clf.set_calibration(calibration, source_fit=fit)
    return calibration


@dataclass(frozen=True)
class CalibrationInputs:
    """What the initial model says about the target before adapting: its logits and source fit."""

    logits: np.ndarray | None
    source_fit: dict | None


def adapt(
    clf: Classifier,
    texts: Sequence[str],
    tags: Sequence[Sequence[int]],
    cfg: AdaptConfig,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir=None,
    gold: np.ndarray | None = None,
    tokens: TokenizedCorpus | None = None,
    source_texts: Sequence[str] | None = None,
    start_logits: np.ndarray | None = None,
) -> TrainResult:
    """Adapt `clf` to target `texts`; `tags[l]` lists the documents tagged positive for label l.

    A source model with a source fit first scores the target (one inference pass): the label priors
    are estimated from it; after training the adapted model is calibrated on the target with them.
    dallmi-anchored uses that pass as its anchor too, and ends with the WiSE-FT interpolation toward
    the source weights and the tags' prototypes folded into the head (one pass, which the
    calibration reuses); a model whose head was never trained has no knowledge to keep, and is not
    anchored. aad also needs `source_texts`. `start_logits`: `clf`'s logits on `texts` before
    training, when the caller has them already (the quality benchmark scores its source model once
    for every method and seed), so that pass is skipped."""
    tokens = tokens or TokenizedCorpus.build(clf.tokenizer, texts, cfg.max_length)
    if start_logits is not None and len(start_logits) != len(tokens):
        raise ConfigError(f"start_logits has {len(start_logits)} rows for {len(tokens)} documents.")
    callbacks = list(callbacks)
    if cfg.patience is not None:
        callbacks.append(EarlyStopping(cfg.patience))
    source_fit = clf.source_fit()
    anchored = cfg.anchored and not clf.fresh_head
    clf.model.to(rank_device(resolve_device(cfg.device)))  # each rank on its own device under a launcher
    if start_logits is None and (source_fit or anchored):
        start_logits = logits_for(clf.model, tokens)
    inputs = CalibrationInputs(start_logits if source_fit else None, source_fit)
    start = {k: v.detach().to("cpu", copy=True) for k, v in clf.model.state_dict().items()} if anchored else None
    kw = {"callbacks": callbacks, "checkpoint_dir": checkpoint_dir}
    if cfg.method in DALLMI_LOSS:
        anchor = anchor_targets(start_logits, tags) if anchored else None
        result = DallmiTrainer(clf, tokens, tags, cfg, anchor=anchor, **kw).fit()
    elif cfg.method == "aad":
        if not source_texts:
            raise ConfigError("aad needs source documents: it learns from source vs target text.")
        source_tokens = TokenizedCorpus.build(clf.tokenizer, source_texts, cfg.max_length)
        result = AadTrainer(clf, tokens, tags, cfg, source_tokens=source_tokens, **kw).fit()
    elif cfg.method == "target-oracle":
        if gold is None:
            raise ConfigError("target-oracle needs gold target labels (it is the upper bound).")
        result = BceTargetTrainer(clf, tokens, tags, cfg, gold=gold, **kw).fit()
    else:
        result = BceTargetTrainer(clf, tokens, tags, cfg, **kw).fit()
    if result.state.stop_reason != "cancelled":
        final_logits = None
        if anchored and cfg.wise_alpha < 1:
            interpolate_weights(result.clf.model, start, cfg.wise_alpha)
        if anchored and cfg.prototype_weight > 0 and head_linear(result.clf.model) is not None:
            features, logits = features_and_logits(result.clf.model, tokens)
            final_logits = fold_prototypes(
                result.clf.model, features, logits, tags, cfg.prototype_weight, cfg.prototype_shrinkage
            )
        result.extras["anchored"] = anchored
        result.extras["calibration"] = calibrate_adapted(result, tokens, tags, inputs, final_logits)
    return result


def anchor_targets(logits: np.ndarray, tags: Sequence[Sequence[int]]) -> np.ndarray:
    """The anchor of dallmi-anchored: the source model's probabilities per document and label, 1
    where the user tagged the document with the label."""
    targets = sigmoid(logits).astype(np.float32)
    for label, docs in enumerate(tags):
        targets[list(docs), label] = 1.0
    return targets
