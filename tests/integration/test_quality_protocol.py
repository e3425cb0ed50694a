"""bench-quality's protocol: adapting methods see only train texts and tags; gold reaches the oracle
and the final scoring alone, on the part asked for (dev or test)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts

from dallmi_core.bench import quality
from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.data.corpus import read_corpus
from dallmi_core.modeling.model import load_classifier
from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus


@pytest.fixture()
def corpus(tmp_path):
    frames = []
    for domain, n, seed in (("source", 40, 1), ("target", 60, 2)):
        texts, y = make_texts(n, seed=seed)
        labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) for row in y]
        frames.append(
            pd.DataFrame({"id": [f"{domain}{i}" for i in range(n)], "text": texts, "labels": labels, "domain": domain})
        )
    path = tmp_path / "bench.csv"
    pd.concat(frames).to_csv(path, index=False)
    return read_corpus(path)


@pytest.mark.parametrize("eval_on", ["dev", "test"])
def test_gold_reaches_only_the_oracle_and_the_final_scoring(corpus, tmp_path, tiny_backbone, monkeypatch, eval_on):
    seen, scored, known = [], [], []
    real_adapt, real_scores = quality.adapt, quality._calibrated_scores

    def recording_adapt(clf, texts, tags, cfg, callbacks=(), gold=None, source_texts=None, start_logits=None):
        seen.append((cfg.method, list(texts), tags, gold, source_texts, start_logits))
        return real_adapt(clf, texts, tags, cfg, callbacks=callbacks, gold=gold, source_texts=source_texts,
                          start_logits=start_logits)  # fmt: skip

    def recording_scores(clf, calibration, texts, max_length, logits=None):
        scored.append(list(texts))
        known.append(logits)
        return real_scores(clf, calibration, texts, max_length, logits)

    monkeypatch.setattr(quality, "adapt", recording_adapt)
    monkeypatch.setattr(quality, "_calibrated_scores", recording_scores)
    result = quality.run_quality(
        corpus, labels=LABELS, seeds=[0],
        methods=["source-only", "dallmi", "default", "bce-partial", "aad", "target-oracle"],
        adapt_cfg=AdaptConfig(max_steps=1, max_length=24, eval_every=1), source_cfg=SourceConfig(max_steps=1,
        max_length=24, probe_epochs=0), backbone=tiny_backbone, work_dir=tmp_path / "work", positives_per_label=3,
        eval_on=eval_on, baseline_epochs=None, log=lambda _: None,
    )  # fmt: skip
    target = corpus.where_domain("target")
    gold = target.label_matrix(LABELS)
    split = quality.split_target(gold, 0, positives_per_label=3)
    train_texts = [target.texts[i] for i in split.train]
    eval_texts = [target.texts[i] for i in split.part(eval_on)]
    assert [m for m, *_ in seen] == ["dallmi", "dallmi-anchored", "bce-partial", "aad", "target-oracle"]
    source = load_classifier(next((tmp_path / "work").glob("source-*")))
    own = logits_for(source.model, TokenizedCorpus.build(source.tokenizer, train_texts, 24))
    for method, texts, tags, given_gold, source_texts, start_logits in seen:
        # the source model's logits on the train part, scored once for all methods: row for row its own
        np.testing.assert_allclose(start_logits, own, atol=1e-5)
        assert texts == train_texts and tags == split.tags  # the train part alone, and only its tags
        if method == "target-oracle":
            np.testing.assert_array_equal(given_gold, gold[split.train])
        else:
            assert given_gold is None
        # aad alone learns from source text (its domain discriminator), and never from target gold
        assert source_texts == (corpus.where_domain("source").texts if method == "aad" else None)
    assert scored == [eval_texts] * 6  # every model is scored on the evaluation part only
    # source-only's scores are the source model's own on that part; every trained model scores itself
    own_eval = logits_for(source.model, TokenizedCorpus.build(source.tokenizer, eval_texts, 24))
    np.testing.assert_allclose(known[0], own_eval, atol=1e-5)
    assert all(logits is None for logits in known[1:])
    summary = result.summary()
    assert summary["default_method"] == "dallmi-anchored" and "dallmi-anchored" in summary["methods"]
    assert {r["eval_on"] for r in result.runs} == {eval_on}
