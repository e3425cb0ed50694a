"""What `--precision auto` picks, and every precision trains on a CPU (bf16 natively on some, emulated on others)."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from conftest import LABELS, make_texts

from dallmi_core.config import AdaptConfig
from dallmi_core.modeling.model import eager_attention
from dallmi_core.modeling.precision import CPU_BF16_ENV, cpu_has_native_bf16, resolve_precision
from dallmi_core.modeling.scoring import autocast_for
from dallmi_core.training import trainer
from dallmi_core.training.adapt import adapt
from dallmi_core.training.trainer import make_accelerator


def test_auto_precision_is_float32_on_a_cpu_told_to_keep_it(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert make_accelerator("cpu", "auto").mixed_precision == "no"


def test_auto_precision_is_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert make_accelerator("cpu", "auto").mixed_precision == "bf16"
    assert make_accelerator("cpu", "no").mixed_precision == "no"  # an explicit setting wins


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"), [(True, False, True), (False, True, True), (False, False, False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_has_native_bf16() is native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "no")


def test_a_torch_without_the_cpu_probes_counts_as_no_native_bf16(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_has_native_bf16() is False


def test_explicit_precisions_pass_through_and_mps_keeps_float32(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_precision("fp16", "cpu") == "fp16"
    assert resolve_precision("no", "cuda") == "no"
    assert resolve_precision("auto", "mps") == "no"


def test_the_run_reports_the_precision_it_trained_in(monkeypatch, tiny_clf):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    texts, y = make_texts(24, seed=6)
    tags = [list(np.flatnonzero(y[:, j])[:3]) for j in range(len(LABELS))]
    cfg = AdaptConfig(max_steps=1, batch_size=4, max_length=32, device="cpu")
    assert adapt(tiny_clf, texts, tags, cfg).extras["precision"] == "bf16"


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


def _attention(clf) -> str:
    return clf.model.config._attn_implementation


def test_eager_attention_computes_what_sdpa_computes_and_is_undone_after(tiny_clf):
    model = tiny_clf.model.eval()
    batch = tiny_clf.tokenizer(["my invoice again", "hello"], padding=True, return_tensors="pt")
    assert _attention(tiny_clf) == "sdpa"
    with torch.no_grad():
        sdpa = model(**batch).logits
        with eager_attention(model):
            assert _attention(tiny_clf) == "eager"
            eager = model(**batch).logits
    assert _attention(tiny_clf) == "sdpa"
    torch.testing.assert_close(eager, sdpa)  # the same function, padding mask included
    with pytest.raises(RuntimeError), eager_attention(model):
        raise RuntimeError("a failing step")
    assert _attention(tiny_clf) == "sdpa"
    with eager_attention(model, enabled=False):
        assert _attention(tiny_clf) == "sdpa"


@pytest.mark.parametrize(("precision", "eager"), [("bf16", True), ("no", False)])
def test_cpu_training_forwards_use_eager_attention_only_under_bf16(monkeypatch, tiny_clf, precision, eager):
    seen = []

    def recording(model, enabled=True):
        seen.append((enabled, model.training))
        return contextlib.nullcontext()

    monkeypatch.setattr(trainer, "eager_attention", recording)
    texts, y = make_texts(24, seed=6)
    tags = [list(np.flatnonzero(y[:, j])[:3]) for j in range(len(LABELS))]
    cfg = AdaptConfig(max_steps=2, batch_size=4, max_length=32, device="cpu", precision=precision, eval_every=1)
    adapt(tiny_clf, texts, tags, cfg)
    assert seen == [(eager, True)] * 2  # training steps only; validation forwards keep SDPA
