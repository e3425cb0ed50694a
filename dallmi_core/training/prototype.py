"""Tag prototypes folded into the classifier head: dallmi-anchored's last step (docs/METHOD.md).

With ten tags per label, the tags' mean feature is a strong few-shot classifier of its own (a
prototype, as in prototypical networks and Rocchio): per label l, the direction d_l from the mean
feature of the unlabeled documents to the mean of l's tags, whitened by the documents' shrunk
covariance (linear discriminant analysis with shrinkage: directions along which all documents
vary a lot count less). Its projection, put in the head's own units (the spread of the head's
logits over the documents), is added to the logit with weight gamma. Both are linear in the
features the head sees, so the sum is folded into the head's last linear layer: the model stays
a plain Hugging Face classifier, and scoring costs nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dallmi_core.modeling.model import forward_logits, unwrap
from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus


def head_linear(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The head's last linear layer (BERT/DistilBERT: `classifier`; RoBERTa: `classifier.out_proj`)."""
    head = getattr(unwrap(model), "classifier", None)
    if isinstance(head, torch.nn.Linear):
        return head
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if head is not None else []
    return linears[-1] if linears else None


def features_and_logits(model: torch.nn.Module, tokens: TokenizedCorpus) -> tuple[np.ndarray, np.ndarray]:
    """The features the head's last linear layer sees, and the logits, in one inference pass."""
    linear = head_linear(model)

    def forward(m, ids, mask):
        seen = {}
        hook = linear.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
        try:
            logits = forward_logits(m, input_ids=ids, attention_mask=mask)
        finally:
            hook.remove()
        return torch.cat([seen["x"].float(), logits.float()], dim=1)

    both = logits_for(model, tokens, forward=forward)
    width = linear.in_features
    return both[:, :width], both[:, width:]


def prototype_directions(features: np.ndarray, tags: Sequence[Sequence[int]], shrinkage: float) -> np.ndarray:
    """Per label, the tags' mean minus the documents' mean, times the inverse of the documents'
    covariance shrunk toward a scaled identity: (1 - shrinkage) x covariance + shrinkage x its
    mean variance x I. Shrinkage 1 leaves the plain mean difference (a prototype, up to scale); the
    shrinkage keeps the inverse stable with fewer documents than feature dimensions."""
    centre = features.mean(axis=0, dtype=np.float64)
    means = np.zeros((len(tags), features.shape[1]))
    for label, docs in enumerate(tags):
        if len(docs):
            means[label] = features[list(docs)].mean(axis=0, dtype=np.float64) - centre
    if shrinkage >= 1 or len(features) < 2:
        return means
    covariance = _covariance(features, centre)
    variance = float(np.trace(covariance)) / covariance.shape[0]
    if variance <= 0:
        return means
    shrunk = (1 - shrinkage) * covariance + shrinkage * variance * np.eye(covariance.shape[0])
    return np.linalg.solve(shrunk, means.T).T


def _covariance(features: np.ndarray, centre: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The features' sample covariance in float64, a chunk of rows at a time: a large corpus's
    features are not copied whole."""
    total = np.zeros((features.shape[1], features.shape[1]))
    for start in range(0, len(features), chunk):
        rows = features[start : start + chunk].astype(np.float64) - centre
        total += rows.T @ rows
    return total / (len(features) - 1)


def fold_prototypes(
    model: torch.nn.Module,
    features: np.ndarray,
    logits: np.ndarray,
    tags: Sequence[Sequence[int]],
    gamma: float,
    shrinkage: float,
) -> np.ndarray:
    """Add gamma x the standardised prototype score to every tagged label's logit, in the head's
    weights; returns the new logits of `features` (exactly what the changed model now computes)."""
    linear = head_linear(model)
    weight, bias = np.zeros((len(tags), features.shape[1]), np.float64), np.zeros(len(tags), np.float64)
    directions = prototype_directions(features, tags, shrinkage)
    for label, docs in enumerate(tags):
        if not len(docs):
            continue
        projection = features @ directions[label]
        spread = float(projection.std())
        if spread <= 0:
            continue
        scale = gamma * float(logits[:, label].std()) / spread
        weight[label] = scale * directions[label]
        bias[label] = -scale * float(projection.mean())
    if linear.bias is None:
        bias[:] = 0.0  # a constant per label: it moves no ranking
    with torch.no_grad():
        linear.weight.add_(torch.as_tensor(weight, dtype=linear.weight.dtype, device=linear.weight.device))
        if linear.bias is not None:
            linear.bias.add_(torch.as_tensor(bias, dtype=linear.bias.dtype, device=linear.bias.device))
    return (logits + features @ weight.T + bias).astype(np.float32)
