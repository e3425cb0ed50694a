"""The int8 CPU inference path: close to float32, chosen only where allowed, skipped where missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_texts

from dallmi_core.modeling import fast_inference
from dallmi_core.modeling.embeddings import embed_texts
from dallmi_core.modeling.scoring import score_texts
from dallmi_core.modeling.tokens import TokenizedCorpus

needs_engine = pytest.mark.skipif(fast_inference.engine() is None, reason="no int8 quantised engine in this torch")


@pytest.fixture()
def texts():
    return make_texts(80, seed=5)[0]


def _quantised_linears(module) -> int:
    return sum(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in module.modules())


@needs_engine
def test_int8_scores_and_embeddings_stay_close_to_float32(tiny_clf, texts):
    exact = score_texts(tiny_clf, texts, max_length=32, fast=False)
    fast = score_texts(tiny_clf, texts, max_length=32, fast=True)
    assert fast.shape == exact.shape
    assert not np.array_equal(fast, exact)  # the int8 path really ran
    np.testing.assert_allclose(fast, exact, atol=0.02)
    emb, probs = embed_texts(tiny_clf, texts, max_length=32, fast=False)
    emb8, probs8 = embed_texts(tiny_clf, texts, max_length=32, fast=True)
    np.testing.assert_allclose(probs8, probs, atol=0.02)
    cosine = (emb * emb8).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb8, axis=1)
    assert cosine.min() > 0.99


@needs_engine
def test_the_encoder_is_quantised_and_the_head_stays_float32(tiny_clf):
    fast = fast_inference.quantise(tiny_clf.model)
    assert _quantised_linears(fast.bert.encoder) == 2 * 6  # q, k, v, out, intermediate, output per layer
    assert _quantised_linears(fast.classifier) == _quantised_linears(fast.bert.pooler) == 0
    assert _quantised_linears(tiny_clf.model) == 0  # the model itself is untouched
    if fast_inference._cpu_has_vnni():  # full 8-bit activations (torch's default reduces them to 7)
        assert {m.version for m in fast.modules() if type(m).__name__ == "Linear" and hasattr(m, "version")} == {3}


@pytest.fixture()
def probed_faster(tiny_clf, texts, monkeypatch):
    """The tiny model and its tokens, with the probe stubbed to measure int8 faster on any corpus size."""
    monkeypatch.setattr(fast_inference, "AUTO_MIN_DOCS", 10)
    monkeypatch.setattr(fast_inference, "_measured_faster", lambda *_: True)
    return tiny_clf.model, TokenizedCorpus.build(tiny_clf.tokenizer, texts, 32)


@needs_engine
def test_switch_auto_probe_and_cache(probed_faster, monkeypatch):
    model, tokens = probed_faster
    monkeypatch.setenv(fast_inference.FAST_INFERENCE_ENV, "0")  # off, though auto would take it here
    assert fast_inference.inference_model(model, tokens, "cpu") == (model, None, 64)
    monkeypatch.setenv(fast_inference.FAST_INFERENCE_ENV, "1")
    fast, engine, batch_size = fast_inference.inference_model(model, tokens, "cpu")
    assert engine == fast_inference.ENGINE and _quantised_linears(fast) > 0
    assert batch_size == fast_inference.FAST_BATCH_SIZE
    assert fast_inference.inference_model(model, tokens, "cpu").model is fast  # cached
    assert fast_inference.inference_model(model, tokens, "cuda") == (model, None, 64)  # CPUs only
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # new weights: a stale int8 copy must not score them
    assert fast_inference.inference_model(model, tokens, "cpu").model is not fast
    monkeypatch.delenv(fast_inference.FAST_INFERENCE_ENV)  # auto: a probe decides, on corpora worth it
    monkeypatch.setattr(fast_inference, "_cpu_has_vnni", lambda: True)
    monkeypatch.setattr(fast_inference, "AUTO_MIN_DOCS", 100)
    assert fast_inference.inference_model(model, tokens, "cpu") == (model, None, 64)  # 80 documents: not worth it
    monkeypatch.setattr(fast_inference, "AUTO_MIN_DOCS", 10)
    monkeypatch.setattr(fast_inference, "_measured_faster", lambda *_: False)
    assert fast_inference.inference_model(model, tokens, "cpu") == (model, None, 64)
    monkeypatch.setattr(fast_inference, "_measured_faster", lambda *_: True)
    assert fast_inference.inference_model(model, tokens, "cpu") == (model, None, 64)  # the decision is cached
    with torch.no_grad():
        model.classifier.bias.add_(0.1)  # until the weights change: then measured again
    assert fast_inference.inference_model(model, tokens, "cpu").engine == fast_inference.ENGINE


def test_without_the_engine_scoring_stays_float32(tiny_clf, texts, monkeypatch):
    monkeypatch.setattr(fast_inference, "engine", lambda: None)
    exact = score_texts(tiny_clf, texts, max_length=32, fast=False)
    np.testing.assert_array_equal(score_texts(tiny_clf, texts, max_length=32, fast=True), exact)


@needs_engine
def test_auto_keeps_float32_on_a_cpu_without_vnni_and_forcing_still_works(probed_faster, monkeypatch):
    """Without VNNI the activations keep 7 bits and the scores move too far for auto to take int8."""
    model, tokens = probed_faster
    monkeypatch.setattr(fast_inference, "_cpu_has_vnni", lambda: False)
    monkeypatch.delenv(fast_inference.FAST_INFERENCE_ENV, raising=False)
    assert fast_inference.inference_model(model, tokens, "cpu") == (model, None, 64)
    assert fast_inference.inference_model(model, tokens, "cpu", fast=True).engine == fast_inference.ENGINE
    monkeypatch.setattr(fast_inference, "_cpu_has_vnni", lambda: True)
    assert fast_inference.inference_model(model, tokens, "cpu").engine == fast_inference.ENGINE
