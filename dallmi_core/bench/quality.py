"""The paper's benchmark protocol (DESIGN.md section 4) behind `dallmi bench-quality`.

Fine-tune on source rows; per seed, split target rows into a train part (keep K gold positives
per label as tags, hide the rest) and a gold test part; run each method (no method sees hidden
gold labels: steps and checkpoints are chosen on PU validation data) and measure AP on the test
part. Gold serves the final test alone (and target-oracle, the upper bound, by definition).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dallmi_core.bench.report import QualityResult
from dallmi_core.config import DEFAULT_METHOD, AdaptConfig, SourceConfig
from dallmi_core.data.corpus import Corpus
from dallmi_core.errors import DataError
from dallmi_core.evaluation.metrics import ap_report, f1_macro, f1_macro_best, thresholded_ap
from dallmi_core.modeling.model import Classifier, load_classifier, new_classifier, resolve_device, save_classifier
from dallmi_core.modeling.scoring import logits_for, sigmoid
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.adapt import adapt, calibrate_source_on_target
from dallmi_core.training.callbacks import Callback, TqdmProgress
from dallmi_core.training.source import finetune_source

METHODS = ("tfidf-source", "source-only", "bce-partial", "aad", "dallmi", DEFAULT_METHOD, "target-oracle")
# Per-method settings on top of the shared AdaptConfig (whose defaults are the default method's). The
# paper's DALLMi keeps its budget and selection; bce-partial and aad get the default's step budget,
# learning rate and selection rule (the same tuning budget: every method ran the same dev grid,
# benchmarks/method_dev.py, docs/BENCHMARKS.md "v6"); the oracle trains on all gold, last step kept.
METHOD_OVERRIDES: dict[str, dict] = {
    "dallmi": {"method": "dallmi"},
    "bce-partial": {"method": "bce-partial", "selection": "last"},
    "aad": {"method": "aad", "selection": "last"},
    "target-oracle": {"method": "target-oracle", "selection": "last", "epochs": 3.0},
}


def resolve_methods(names: Sequence[str]) -> list[str]:
    """`default` stands for the default adaptation method (its rows carry that method's own name)."""
    methods = list(dict.fromkeys(DEFAULT_METHOD if m == "default" else m for m in names))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DataError(f"Unknown method(s) {unknown}; choose from default, {', '.join(METHODS)}.")
    return methods


def method_config(base: AdaptConfig, method: str, seed: int, baseline_epochs: float | None = None) -> AdaptConfig:
    """The shared adaptation config with the method's own settings (the baselines' budget is theirs,
    METHOD_OVERRIDES'; `baseline_epochs` replaces an epoch budget: a large target set makes 3 epochs
    slow on a CPU)."""
    cfg = base.replace(seed=seed, method=method)
    if method in (DEFAULT_METHOD, "dallmi"):
        return cfg.replace(**METHOD_OVERRIDES.get(method, {}))
    if method in ("bce-partial", "aad"):  # the default's step budget (at K=10: min_steps), its selection
        return cfg.replace(max_steps=base.max_steps or base.min_steps, epochs=None, **METHOD_OVERRIDES[method])
    cfg = cfg.replace(max_steps=None, epochs=None).replace(**METHOD_OVERRIDES[method])
    if baseline_epochs is not None:
        cfg = cfg.replace(epochs=baseline_epochs)
    return cfg


def tfidf_source_scores(source_texts: Sequence[str], source_gold: np.ndarray, test_texts: Sequence[str]) -> np.ndarray:
    """Reference row: TF-IDF (1-2 grams) + one-vs-rest logistic regression on the source rows,
    as ../shared/data/SOURCES.md's sanity check. A source model should beat it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train, x_test = vectorizer.fit_transform(source_texts), vectorizer.transform(test_texts)
    scores = np.zeros((len(test_texts), source_gold.shape[1]), dtype=np.float32)
    for label in range(source_gold.shape[1]):
        y = source_gold[:, label]
        if 0 < y.sum() < len(y):
            scores[:, label] = LogisticRegression(max_iter=2000).fit(x_train, y).predict_proba(x_test)[:, 1]
    return scores


EVAL_PARTS = ("dev", "test")


@dataclass(frozen=True)
class TargetSplit:
    """Three disjoint parts of the target rows: `train` (the tags come from here, the rest of it is
    unlabeled), `dev` (gold, only for choosing defaults) and `test` (gold, reported)."""

    train: np.ndarray  # indices into the target corpus
    dev: np.ndarray
    test: np.ndarray
    tags: tuple[tuple[int, ...], ...]  # per label, indices into `train` (positions) kept as tags

    def part(self, name: str) -> np.ndarray:
        if name not in EVAL_PARTS:
            raise ValueError(f"evaluate on one of {', '.join(EVAL_PARTS)}, not {name!r}.")
        return self.dev if name == "dev" else self.test


def split_target(
    gold: np.ndarray,
    seed: int,
    *,
    positives_per_label: int | None = None,
    remove_ratio: float | None = None,
    test_fraction: float = 0.4,
    dev_fraction: float = 0.2,
) -> TargetSplit:
    """Train/dev/test split of the target rows (deterministic from the seed); keep K positives per
    label of the train part (or drop a ratio r of them, at least one kept) as tags."""
    if (positives_per_label is None) == (remove_ratio is None):
        raise ValueError("Give exactly one of positives_per_label and remove_ratio.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(gold))
    n_test, n_dev = int(round(test_fraction * len(gold))), int(round(dev_fraction * len(gold)))
    test, dev = np.sort(order[:n_test]), np.sort(order[n_test : n_test + n_dev])
    train = np.sort(order[n_test + n_dev :])
    tags = []
    for label in range(gold.shape[1]):
        positives = np.flatnonzero(gold[train, label])
        if positives_per_label is not None:
            keep = positives_per_label
        else:
            keep = max(1, int(round((1 - remove_ratio) * len(positives))))
        tags.append(tuple(int(i) for i in np.sort(rng.permutation(positives)[: min(keep, len(positives))])))
    return TargetSplit(train, dev, test, tuple(tags))


class TestTrace(Callback):
    """Diagnostics only: test mAP on a fixed sample at every validation. Never used for selection;
    it lets a benchmark compare selection rules (which step each rule keeps vs the best step)."""

    def __init__(self, clf: Classifier, texts: Sequence[str], gold: np.ndarray, labels: list[str], max_length: int):
        self.clf, self.gold, self.labels = clf, gold, labels
        self.tokens = TokenizedCorpus.build(clf.tokenizer, texts, max_length)

    def on_evaluate(self, state, metrics):
        scores = sigmoid(logits_for(self.clf.model, self.tokens))
        metrics["test_map_macro"] = ap_report(self.gold, scores, self.labels).map_macro


def source_cache_key(source: Corpus, labels: list[str], backbone: str | None, cfg: SourceConfig) -> str:
    """Same source rows, labels, backbone and config -> same cached source model."""
    return hashlib.sha256(json.dumps([source.ids, labels, str(backbone), cfg.to_dict()]).encode()).hexdigest()[:12]


def source_model(
    corpus: Corpus,
    labels: list[str],
    backbone: str | None,
    cfg: SourceConfig,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> Path:
    """Fine-tune on the source rows once; reuse the folder when data, labels and config match."""
    source = corpus.where_domain("source")
    if len(source) == 0:
        raise DataError("The benchmark file has no rows with domain=source to fine-tune on.")
    out = cache_dir / f"source-{source_cache_key(source, labels, backbone, cfg)}"
    if (out / "config.json").exists():
        log(f"reusing source model {out}")
        return out
    clf = new_classifier(backbone, labels)
    finetune_source(clf, source.texts, source.label_matrix(labels), cfg, callbacks=[TqdmProgress("finetune-source")])
    save_classifier(clf, out)
    return out


def prediction_report(
    gold: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float],
    labels: list[str],
    priors: Sequence[float | None] | None = None,
    raw: np.ndarray | None = None,
) -> dict:
    """What a run's predictions are worth on gold: AP (ranking), F1 of the exported 0/1 columns at
    the default thresholds, F1 at each label's best threshold on this gold (the ceiling), the error
    of the estimated priors, and the paper's thresholded AP (raw sigmoid at 0.5)."""
    report = ap_report(gold, scores, labels)
    raw_report = report if raw is None else ap_report(gold, raw, labels)
    raw = scores if raw is None else raw
    errors = [abs(p - float(gold[:, j].mean())) for j, p in enumerate(priors or []) if p is not None]
    return {
        "map_macro": report.map_macro,
        "map_micro": report.map_micro,
        "map_macro_raw": raw_report.map_macro,
        "map_micro_raw": raw_report.map_micro,
        "per_label_ap": report.per_label_ap(),
        "f1_macro_default": f1_macro(gold, scores, thresholds),
        "f1_macro_best": f1_macro_best(gold, scores),
        "prior_abs_error": float(np.mean(errors)) if errors else None,
        "thresholded_map_macro": thresholded_ap(gold, raw, labels).map_macro,
    }


def _calibrated_scores(clf: Classifier, calibration, texts: Sequence[str], max_length: int, logits=None):
    """(calibrated probabilities, raw sigmoid probabilities, thresholds, priors, logits) on `texts`
    (`logits`: the model's on them, when known already)."""
    if logits is None:
        logits = logits_for(clf.model, TokenizedCorpus.build(clf.tokenizer, texts, max_length))
    raw = sigmoid(logits)
    if calibration is None:
        return raw, raw, [0.5] * clf.num_labels, None, logits
    thresholds = [calibration.labels[name].threshold for name in clf.label_names]
    priors = [calibration.labels[name].prior for name in clf.label_names]
    calibrated = calibration.apply(logits, clf.label_names).astype(np.float32)  # as stored
    return calibrated, raw, thresholds, priors, logits


def source_logits_on(src_dir: Path, texts: Sequence[str], cfg: AdaptConfig) -> np.ndarray:
    """The source model's logits on every target document, computed once per benchmark: every method
    of every seed starts from this model, so its passes over a seed's train part (the priors, the
    anchor, source-only's calibration) and source-only's evaluation scores are read from here."""
    clf = load_classifier(src_dir)
    clf.model.to(resolve_device(cfg.device))
    return logits_for(clf.model, TokenizedCorpus.build(clf.tokenizer, texts, cfg.max_length))


def run_quality(
    corpus: Corpus,
    *,
    labels: list[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    adapt_cfg: AdaptConfig,
    source_cfg: SourceConfig,
    backbone: str | None,
    work_dir: Path,
    positives_per_label: int | None = None,
    remove_ratio: float | None = None,
    eval_on: str = "test",
    callbacks: Callable[[str, int], list[Callback]] | None = None,
    trace_test: int = 0,
    baseline_epochs: float | None = None,
    on_run: Callable[[QualityResult], None] | None = None,
    log: Callable[[str], None] = print,
    dump_dir: Path | None = None,
) -> QualityResult:
    """Each method on each seed's split; adapting methods see only the train part's texts and tags,
    gold serves the target-oracle and the final scoring on `eval_on` (dev or test) alone."""
    methods = resolve_methods(methods)
    if eval_on not in EVAL_PARTS:
        raise DataError(f"--eval-on {eval_on!r}: choose dev (for choosing defaults) or test (for reporting).")
    target = corpus.where_domain("target")
    gold = target.label_matrix(labels)
    source = corpus.where_domain("source")
    needs_model = any(m != "tfidf-source" for m in methods)
    src_dir = source_model(corpus, labels, backbone, source_cfg, work_dir, log) if needs_model else None
    start_logits = None
    if needs_model:
        started = time.perf_counter()
        start_logits = source_logits_on(src_dir, target.texts, adapt_cfg)
        log(f"source model's logits on {len(target)} target documents, shared by every method and seed "
            f"({time.perf_counter() - started:.0f}s)")  # fmt: skip
    result = QualityResult(labels)
    for seed in seeds:
        split = split_target(gold, seed, positives_per_label=positives_per_label, remove_ratio=remove_ratio)
        part = split.part(eval_on)
        train_texts = [target.texts[i] for i in split.train]
        eval_texts = [target.texts[i] for i in part]
        for method in methods:
            started = time.perf_counter()
            info: dict = {}
            if method == "tfidf-source":
                scores = tfidf_source_scores(source.texts, source.label_matrix(labels), eval_texts)
                figures = prediction_report(gold[part], scores, [0.5] * len(labels), labels)
            else:
                torch.manual_seed(seed)
                clf: Classifier = load_classifier(src_dir)
                known = None  # the model's logits on the evaluation part, when they are known already
                if method == "source-only":
                    calibration = calibrate_source_on_target(
                        clf, train_texts, split.tags, adapt_cfg.max_length, seed, logits=start_logits[split.train]
                    )
                    known = start_logits[part]
                else:
                    extra = callbacks(method, seed) if callbacks else [TqdmProgress(f"{method} seed {seed}")]
                    if trace_test:
                        sample = np.random.default_rng(seed).permutation(part)[:trace_test]
                        texts = [target.texts[i] for i in sample]
                        extra = [*extra, TestTrace(clf, texts, gold[sample], labels, adapt_cfg.max_length)]
                    res = adapt(
                        clf,
                        train_texts,
                        split.tags,
                        method_config(adapt_cfg, method, seed, baseline_epochs),
                        callbacks=extra,
                        gold=gold[split.train] if method == "target-oracle" else None,
                        source_texts=source.texts if method == "aad" else None,
                        start_logits=start_logits[split.train],
                    )
                    calibration = res.extras.get("calibration")
                    info = {"steps": res.state.step, "best_step": res.state.best_step, "history": res.state.history}
                scores, raw, thresholds, priors, logits = _calibrated_scores(
                    clf, calibration, eval_texts, adapt_cfg.max_length, logits=known
                )
                if dump_dir is not None:
                    _dump(dump_dir, f"{method}-seed{seed}-{eval_on}", clf, train_texts, logits, gold[part],
                          split.tags, adapt_cfg.max_length)  # fmt: skip
                figures = prediction_report(gold[part], scores, thresholds, labels, priors, raw)
                info["priors"] = dict(zip(labels, priors or [None] * len(labels), strict=True))
            run = {
                "method": method,
                "seed": seed,
                "eval_on": eval_on,
                **figures,
                "tags": [len(t) for t in split.tags],
                "seconds": time.perf_counter() - started,
                **info,
            }
            result.runs.append(run)
            if on_run is not None:
                on_run(result)  # e.g. rewrite the JSON, so a late failure loses nothing
            log(
                f"seed {seed} {method}: macro mAP {run['map_macro']:.4f}, micro {run['map_micro']:.4f}, "
                f"F1 default/best {run['f1_macro_default']:.3f}/{run['f1_macro_best']:.3f} ({run['seconds']:.0f}s)"
            )
    return result


def _dump(folder: Path, name: str, clf: Classifier, train_texts, eval_logits, eval_gold, tags, max_length: int) -> None:
    """A run's raw logits on the train and evaluation parts, the gold of the latter and the tags, so
    calibration variants can be compared on dev without training again (benchmarks/calibration_dev.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_logits = logits_for(clf.model, TokenizedCorpus.build(clf.tokenizer, train_texts, max_length))
    lengths = np.array([len(t) for t in tags])
    flat = np.array([i for t in tags for i in t], dtype=np.int64)
    np.savez_compressed(folder / f"{name}.npz", train_logits=train_logits, eval_logits=eval_logits, eval_gold=eval_gold,
                        tag_lengths=lengths, tags=flat, labels=np.array(clf.label_names))  # fmt: skip
