"""A model trained under mixed precision comes back with its plain forward (no autocast patch left
by accelerate), so the int8 CPU scoring path and float32 evaluation work on it (the demo adaptation
failed with "expected scalar type Float but found BFloat16" on CPUs with native bf16)."""

from __future__ import annotations

import numpy as np
import pytest

from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.modeling.fast_inference import engine
from dallmi_core.modeling.scoring import score_texts
from dallmi_core.training.adapt import adapt
from dallmi_core.training.source import finetune_source

TEXTS = [f"document {i} about {'cats' if i % 2 else 'dogs'} and a few more words" for i in range(24)]


@pytest.mark.skipif(engine() is None, reason="no int8 engine in this torch build")
def test_a_bf16_trained_model_scores_on_the_int8_path(tiny_clf):
    labels = len(tiny_clf.label_names)
    gold = np.zeros((len(TEXTS), labels), dtype=np.float32)
    gold[::2, 0] = 1
    finetune_source(tiny_clf, TEXTS, gold, SourceConfig(max_steps=1, max_length=24, precision="bf16", probe_epochs=0))
    tags = [[0, 2, 4]] + [[1, 3, 5]] * (labels - 1)
    cfg = AdaptConfig(max_steps=1, max_length=24, precision="bf16", batch_size=8, positives_per_label=2)
    result = adapt(tiny_clf, TEXTS, tags, cfg)
    assert result.extras["precision"] == "bf16"
    scores = score_texts(result.clf, TEXTS, max_length=24, fast=True)
    assert scores.shape == (len(TEXTS), labels) and np.isfinite(scores).all()
