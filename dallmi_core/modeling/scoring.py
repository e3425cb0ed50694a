"""Score documents with a classifier: length-sorted batches, dynamic padding, inference mode.

`score_texts` (the `dallmi score` path, the score job) runs whole corpora and takes the int8 CPU
path where fast_inference.py takes it (a CPU with VNNI, measured faster); `logits_for`, which training, validation
and the quality benchmark use, always runs the model it is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from dallmi_core.modeling.fast_inference import inference_model
from dallmi_core.modeling.model import Classifier, forward_logits
from dallmi_core.modeling.tokens import TokenizedCorpus, length_sorted_batches


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that supports it (half the memory traffic, tensor cores); else none.

    CPUs keep float32, so CPU scores are exact: bf16 helps only CPUs with avx512_bf16 or AMX
    (1.4x for inference on the reference machine, docs/BENCHMARKS.md) and slows the others."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def logits_for(
    model,
    tokens: TokenizedCorpus,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
    forward: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Logits [n, L] for `indices` (default: all) in their given order; restores train mode.

    `forward(model, input_ids, attention_mask)` computes something else per document instead
    (e.g. encoder states for the head warm-up), batched the same way."""
    indices = np.arange(len(tokens)) if indices is None else np.asarray(indices, dtype=np.int64)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    try:
        with torch.inference_mode(), autocast_for(torch.device(device)):
            lengths = np.array([len(tokens.ids[i]) for i in indices], dtype=np.int64)
            for batch in length_sorted_batches(lengths, batch_size):
                ids, mask = (t.to(device) for t in tokens.collate(indices[batch]))
                if forward is None:
                    logits = forward_logits(model, input_ids=ids, attention_mask=mask)
                else:
                    logits = forward(model, ids, mask)
                logits = logits.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(indices), logits.shape[1]), dtype=np.float32)
                out[batch] = logits
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        model.train(was_training)
    if out is None:
        out = np.empty((0, len(getattr(model.config, "id2label", {}) or [])), dtype=np.float32)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def score_texts(
    clf: Classifier,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
    calibrated: bool = True,
    fast: bool | None = None,
) -> np.ndarray:
    """Probabilities [n, L] for raw texts: through the model's calibration map when it has one
    (calibration.py; `calibrated=False`: the plain sigmoid of the logits). `fast`: the int8 CPU
    path on (True), off (False), or as DALLMI_FAST_INFERENCE and a probe decide (None)."""
    if device is not None:
        clf.model.to(device)
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, max_length)
    on = next(clf.model.parameters()).device
    run = inference_model(clf.model, tokens, on, batch_size, fast)
    return probabilities(clf, logits_for(run.model, tokens, batch_size=run.batch_size, on_batch=on_batch), calibrated)


def probabilities(clf: Classifier, logits: np.ndarray, calibrated: bool = True) -> np.ndarray:
    """The model's probabilities for its logits: calibrated when it carries a calibration."""
    calibration = clf.calibration() if calibrated else None
    if calibration is None:
        return sigmoid(logits)
    return calibration.apply(logits, clf.label_names).astype(np.float32)
