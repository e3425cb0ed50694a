"""Mixed precision stays correct where it cannot speed anything up: on a CPU every setting trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import LABELS, make_texts

from dallmi_core.config import AdaptConfig
from dallmi_core.scoring import autocast_for
from dallmi_core.train import adapt, make_accelerator


def test_auto_precision_is_float32_on_a_cpu():
    assert make_accelerator("cpu", "auto").mixed_precision == "no"


def test_scoring_on_a_cpu_runs_without_autocast():
    with autocast_for(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "no"])
def test_adaptation_trains_under_every_precision_on_a_cpu(tiny_clf, precision):
    texts, y = make_texts(40, seed=5)
    tags = [list(np.flatnonzero(y[:, j])[:4]) for j in range(len(LABELS))]
    before = {k: v.clone() for k, v in tiny_clf.model.state_dict().items()}
    cfg = AdaptConfig(max_steps=3, batch_size=8, max_length=32, device="cpu", precision=precision, lr=1e-3)
    result = adapt(tiny_clf, texts, tags, cfg)
    assert result.state.step == 3
    assert all(math.isfinite(v) for v in result.state.parts.values())
    after = result.clf.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight moved"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
