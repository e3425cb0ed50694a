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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dallmi_core.callbacks import Callback, TqdmProgress
from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.data import Corpus
from dallmi_core.errors import DataError
from dallmi_core.metrics import ap_report
from dallmi_core.model import Classifier, load_classifier, new_classifier, save_classifier
from dallmi_core.scoring import logits_for, score_texts, sigmoid
from dallmi_core.tokens import TokenizedCorpus
from dallmi_core.train import adapt, finetune_source

METHODS = ("tfidf-source", "source-only", "bce-partial", "dallmi", "target-oracle")
# Per-method settings on top of the shared AdaptConfig: BCE baselines select by the PU-estimated
# AP (a variational loss means nothing to them); the oracle trains on all gold and keeps its last step.
METHOD_OVERRIDES: dict[str, dict] = {
    "dallmi": {"method": "dallmi"},
    "bce-partial": {"method": "bce-partial", "selection": "val_pu_ap", "epochs": 3.0},
    "target-oracle": {"method": "target-oracle", "selection": "last", "epochs": 3.0},
}


def method_config(base: AdaptConfig, method: str, seed: int, baseline_epochs: float | None = None) -> AdaptConfig:
    """The shared adaptation config with the method's own settings (BCE baselines: an epoch budget,
    METHOD_OVERRIDES' unless `baseline_epochs` is given: a large target set makes 3 epochs slow on a CPU)."""
    cfg = base.replace(seed=seed, method=method)
    if method != "dallmi":
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


@dataclass(frozen=True)
class TargetSplit:
    train: np.ndarray  # indices into the target corpus
    test: np.ndarray
    tags: tuple[tuple[int, ...], ...]  # per label, indices into `train` (positions) kept as tags


def split_target(
    gold: np.ndarray,
    seed: int,
    *,
    positives_per_label: int | None = None,
    remove_ratio: float | None = None,
    test_fraction: float = 0.5,
) -> TargetSplit:
    """Train/test split of the target rows; keep K positives per label (or drop a ratio r) as tags."""
    if (positives_per_label is None) == (remove_ratio is None):
        raise ValueError("Give exactly one of positives_per_label and remove_ratio.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(gold))
    n_test = int(round(test_fraction * len(gold)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    tags = []
    for label in range(gold.shape[1]):
        positives = np.flatnonzero(gold[train, label])
        keep = (
            positives_per_label if positives_per_label is not None else int(round((1 - remove_ratio) * len(positives)))
        )
        tags.append(tuple(int(i) for i in np.sort(rng.permutation(positives)[: min(keep, len(positives))])))
    return TargetSplit(train, test, tuple(tags))


class TestTrace(Callback):
    """Diagnostics only: test mAP on a fixed sample at every validation. Never used for selection;
    it lets a benchmark compare selection rules (which step each rule keeps vs the best step)."""

    def __init__(self, clf: Classifier, texts: Sequence[str], gold: np.ndarray, labels: list[str], max_length: int):
        self.clf, self.gold, self.labels = clf, gold, labels
        self.tokens = TokenizedCorpus.build(clf.tokenizer, texts, max_length)

    def on_evaluate(self, state, metrics):
        scores = sigmoid(logits_for(self.clf.model, self.tokens))
        metrics["test_map_macro"] = ap_report(self.gold, scores, self.labels).map_macro


@dataclass
class QualityResult:
    labels: list[str]
    runs: list[dict] = field(default_factory=list)  # one per (method, seed)

    def summary(self) -> dict:
        methods = {}
        for method in dict.fromkeys(r["method"] for r in self.runs):
            runs = [r for r in self.runs if r["method"] == method]
            maps = np.array([r["map_macro"] for r in runs], dtype=float)
            per_label = {label: _mean([r["per_label_ap"][label] for r in runs]) for label in self.labels}
            methods[method] = {
                "map_macro_mean": float(maps.mean()),
                "map_macro_std": float(maps.std(ddof=1)) if len(maps) > 1 else 0.0,
                "map_micro_mean": _mean([r["map_micro"] for r in runs]),
                "per_label_ap": per_label,
                "seeds": [r["seed"] for r in runs],
                "map_macro_by_seed": maps.tolist(),
                "steps_mean": _mean([r.get("steps") for r in runs]),
                "best_step_mean": _mean([r.get("best_step") for r in runs]),
                "seconds_mean": _mean([r["seconds"] for r in runs]),
            }
        return {"labels": self.labels, "methods": methods}

    def to_markdown(self) -> str:
        summary = self.summary()["methods"]
        head = "| method | macro mAP (mean ± std) | " + " | ".join(self.labels) + " | steps (best) |"
        rows = [head, "|" + "---|" * (len(self.labels) + 3)]
        for method, s in summary.items():
            cells = [
                f"{s['per_label_ap'][label]:.3f}" if s["per_label_ap"][label] is not None else "n/a"
                for label in self.labels
            ]
            steps = "-" if s["steps_mean"] is None else f"{s['steps_mean']:.0f}"
            if s["best_step_mean"] is not None:
                steps += f" ({s['best_step_mean']:.0f})"
            rows.append(
                f"| {method} | {s['map_macro_mean']:.3f} ± {s['map_macro_std']:.3f} | "
                + " | ".join(cells)
                + f" | {steps} |"
            )
        return "\n".join(rows)


def _mean(values: Sequence) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


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
    callbacks: Callable[[str, int], list[Callback]] | None = None,
    trace_test: int = 0,
    baseline_epochs: float | None = None,
    on_run: Callable[[QualityResult], None] | None = None,
    log: Callable[[str], None] = print,
) -> QualityResult:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DataError(f"Unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
    target = corpus.where_domain("target")
    gold = target.label_matrix(labels)
    source = corpus.where_domain("source")
    needs_model = any(m != "tfidf-source" for m in methods)
    src_dir = source_model(corpus, labels, backbone, source_cfg, work_dir, log) if needs_model else None
    result = QualityResult(labels)
    for seed in seeds:
        split = split_target(gold, seed, positives_per_label=positives_per_label, remove_ratio=remove_ratio)
        train_texts = [target.texts[i] for i in split.train]
        test_texts = [target.texts[i] for i in split.test]
        for method in methods:
            started = time.perf_counter()
            if method == "tfidf-source":
                scores, info = tfidf_source_scores(source.texts, source.label_matrix(labels), test_texts), {}
            else:
                torch.manual_seed(seed)
                clf: Classifier = load_classifier(src_dir)
                info = {}
                if method != "source-only":
                    extra = callbacks(method, seed) if callbacks else [TqdmProgress(f"{method} seed {seed}")]
                    if trace_test:
                        sample = np.random.default_rng(seed).permutation(split.test)[:trace_test]
                        texts = [target.texts[i] for i in sample]
                        extra = [*extra, TestTrace(clf, texts, gold[sample], labels, adapt_cfg.max_length)]
                    res = adapt(
                        clf,
                        train_texts,
                        split.tags,
                        method_config(adapt_cfg, method, seed, baseline_epochs),
                        callbacks=extra,
                        gold=gold[split.train] if method == "target-oracle" else None,
                    )
                    info = {"steps": res.state.step, "best_step": res.state.best_step, "history": res.state.history}
                scores = score_texts(clf, test_texts, max_length=adapt_cfg.max_length)
            report = ap_report(gold[split.test], scores, labels)
            run = {
                "method": method,
                "seed": seed,
                "map_macro": report.map_macro,
                "map_micro": report.map_micro,
                "per_label_ap": report.per_label_ap(),
                "tags": [len(t) for t in split.tags],
                "seconds": time.perf_counter() - started,
                **info,
            }
            result.runs.append(run)
            if on_run is not None:
                on_run(result)  # e.g. rewrite the JSON, so a late failure loses nothing
            log(f"seed {seed} {method}: macro mAP {report.map_macro:.4f} ({run['seconds']:.0f}s)")
    return result
