"""What the insight pages show, computed from the store and cached per run (store.run_analysis).

Per-label AP reads stored metrics and predictions only (no model). The MixUp and domain-shift views
need the source and the adapted model: they are loaded here, in the calling process, on the first
view (the page shows a spinner), and their results are cached per run and parameters, so every later
view reads the store only. torch is imported lazily, so opening the app stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dallmi_core.app import decisions, run_models
from dallmi_core.errors import DataError, RunStateError
from dallmi_core.evaluation import metrics as m
from dallmi_core.store import Run, Store

SHIFT_LIMIT = 2000  # documents per domain embedded for the shift analysis (a random subsample past it)
MIXUP_FRESH = 64  # fresh pairs drawn per request: the scatter's points; the first few are shown as pairs


# ---- runs -----------------------------------------------------------------------------------------


def insight_runs(store: Store, project_id: int) -> list[Run]:
    """Finished adaptation runs that left a model and predictions: what the insight pages look at."""
    return [
        run
        for run in store.list_runs(project_id, status="done")
        if run.kind == "adapt" and run.prediction_labels and run.model_path and Path(run.model_path).is_dir()
    ]


def _adapt_run(store: Store, run_id: int) -> Run:
    run = store.get_run(run_id)
    if run.kind != "adapt" or run.status != "done":
        raise RunStateError(f"run {run_id} is a {run.status} {run.kind} run; pick a finished adaptation run.")
    return run


# ---- per-label AP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class APOverview:
    """AP per label for the run (before, after) and its baselines, in long form (label, series, ap)."""

    table: pd.DataFrame  # label, series, ap
    tags: dict[str, int]  # tagged positives per label the run trained on
    positives: dict[str, int]  # gold positives (true AP) or held-out tagged positives (PU estimate) per label
    summary: pd.DataFrame  # series, macro, micro
    estimate: bool
    before: str  # the series of the model the run started from: "before (source model)" or, without one,
    # "before (backbone, untrained head)"


def _series_name(run: Run) -> str:
    method = run_models.run_config(run).method
    return f"run {run.id} · {method}"


def ap_overview(store: Store, run_id: int) -> APOverview:
    run = _adapt_run(store, run_id)
    labels = list(run.prediction_labels or store.get_project(run.project_id).labels)
    metrics = run.metrics or {}
    estimate = bool(metrics.get("estimate"))
    before = f"before ({run_models.starting_model(store, run)})"
    tables: list[tuple[str, Mapping]] = [
        (name, metrics[key]) for key, name in (("before", before), ("after", "after")) if key in metrics
    ]
    for other in store.list_runs(run.project_id, status="done"):
        if other.id == run.id or other.kind != "adapt" or bool(other.metrics.get("estimate")) != estimate:
            continue
        if isinstance(other.metrics.get("after"), Mapping):
            tables.append((_series_name(other), other.metrics["after"]))
    rows, summary = [], []
    for name, table in tables:
        per_label = table.get("per_label_ap") or {}
        rows += [{"label": label, "series": name, "ap": per_label.get(label)} for label in labels]
        summary.append({"series": name, "macro": table.get("map_macro"), "micro": table.get("map_micro")})
    if estimate:
        split = store.load_analysis(run.id, "pu_split", {})
        held = split[0]["val_tags"] if split else {}
        positives = {label: len(held.get(label, [])) for label in labels}
    else:
        positives = {label: int((metrics.get("after") or {}).get("positives", {}).get(label, 0)) for label in labels}
    tags = {label: int((metrics.get("tags") or {}).get(label, 0)) for label in labels}
    return APOverview(
        pd.DataFrame(rows, columns=["label", "series", "ap"]),
        tags,
        positives,
        pd.DataFrame(summary, columns=["series", "macro", "micro"]),
        estimate,
        before,
    )


@dataclass(frozen=True)
class LabelCurve:
    """One label's gold (or PU) labels and the run's scores on the documents that measure it."""

    label: str
    y: np.ndarray  # 0/1
    scores: np.ndarray
    estimate: bool  # True: held-out tagged positives vs held-out unlabeled documents (PU estimate)

    @property
    def positives(self) -> int:
        return int(self.y.sum())

    @property
    def ap(self) -> float | None:
        return m.average_precision(self.y, self.scores)

    def pr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return m.pr_curve(self.y, self.scores)

    def at(self, threshold: float) -> dict:
        return m.f1_at_threshold(self.y, self.scores, threshold)

    def best_threshold(self) -> float:
        return min(1.0, m.best_f1_threshold(self.y, self.scores))


def label_curve(store: Store, run_id: int, label: str) -> LabelCurve:
    """Gold eval documents when the run was measured on gold; else the run's PU validation split."""
    run = _adapt_run(store, run_id)
    labels = list(run.prediction_labels or ())
    if label not in labels:
        raise DataError(f"run {run_id} has no label {label!r}; its labels are {', '.join(labels)}.")
    ids, scores = store.load_predictions(run.id)
    column = scores[:, labels.index(label)]
    row = {int(d): i for i, d in enumerate(ids)}
    if not run.metrics.get("estimate"):
        docs = [d for d in store.gold_documents(run.project_id) if d.id in row]
        if not docs:
            raise RunStateError(f"run {run_id} has no scored gold documents to draw a curve from.")
        y = np.array([label in d.gold_labels for d in docs], dtype=np.int64)
        return LabelCurve(label, y, column[[row[d.id] for d in docs]], estimate=False)
    split = store.load_analysis(run.id, "pu_split", {})
    if split is None:
        raise RunStateError(f"run {run_id} predates the stored PU split, so its curves cannot be drawn; adapt again.")
    held = [d for d in split[0]["val_tags"].get(label, []) if d in row]
    unlabeled = [d for d in split[0]["val_unlabeled"] if d in row and d not in set(held)]
    y = np.r_[np.ones(len(held), dtype=np.int64), np.zeros(len(unlabeled), dtype=np.int64)]
    return LabelCurve(label, y, column[[row[d] for d in held + unlabeled]], estimate=True)


# ---- MixUp ---------------------------------------------------------------------------------------------


def logged_mixup(store: Store, run_id: int, label: str, limit: int = 500) -> pd.DataFrame:
    """Pairs logged while the run trained: step, positive_doc, unlabeled_doc, mu, prediction, target."""
    rows = store.mixup_samples(run_id, label=label, limit=limit)
    columns = ["step", "positive_doc", "unlabeled_doc", "mu", "prediction", "target"]
    return pd.DataFrame(rows, columns=["label", *columns])[columns]


def fresh_mixup(store: Store, run_id: int, label: str, *, n: int = MIXUP_FRESH, seed: int = 0) -> pd.DataFrame:
    """n fresh pairs (tagged positive, target document) scored by the source and the adapted model.

    Columns: positive_doc, unlabeled_doc, mu, and per model (before/after) phi_u, target, prediction."""
    run = _adapt_run(store, run_id)
    params = {"label": label, "n": int(n), "seed": int(seed)}
    cached = store.load_analysis(run.id, "mixup", params)
    if cached is not None:
        return pd.DataFrame(cached[1])
    from dallmi_core.app.mixup_view import draw_pairs
    from dallmi_core.method.mixup import mixup_target, score_pairs
    from dallmi_core.modeling.tokens import TokenizedCorpus

    labels = list(run.prediction_labels or ())
    if label not in labels:
        raise DataError(f"run {run_id} has no label {label!r}; its labels are {', '.join(labels)}.")
    cfg = run_models.run_config(run)
    target = store.document_ids(run.project_id, "target")
    tagged = store.tags_by_label(run.project_id, domain="target").get(label, [])
    pairs = draw_pairs(tagged, target, int(n), alpha=cfg.mixup_alpha, seed=int(seed))
    docs = np.unique(np.r_[pairs.positive, pairs.unlabeled])
    texts = {d.id: d.text for d in store.get_documents(run.project_id, ids=[int(d) for d in docs])}
    row = {int(d): i for i, d in enumerate(docs)}
    columns: dict[str, np.ndarray] = {
        "positive_doc": pairs.positive,
        "unlabeled_doc": pairs.unlabeled,
        "mu": pairs.mu.astype(np.float64),
    }
    for name, clf in zip(("before", "after"), run_models.models(store, run), strict=True):
        tokens = TokenizedCorpus.build(clf.tokenizer, [texts[int(d)] for d in docs], cfg.max_length)
        phi_u, prediction = score_pairs(
            clf.model,
            tokens,
            [row[int(d)] for d in pairs.unlabeled],
            [row[int(d)] for d in pairs.positive],
            pairs.mu,
            labels.index(label),
            mixup_at=cfg.mixup_at,
        )
        columns |= {
            f"phi_u_{name}": phi_u,
            f"target_{name}": mixup_target(phi_u, pairs.mu),
            f"prediction_{name}": prediction,
        }
    store.save_analysis(run.id, "mixup", params, {"rows": int(n)}, columns)
    return pd.DataFrame(columns)


def decoded_pair(store: Store, run_id: int, positive_doc: int, unlabeled_doc: int, mu: float) -> pd.DataFrame:
    """The mixed input token by token under the adapted model's word embeddings (cached per pair):
    position, unlabeled, positive, mixed (nearest token), similarity (cosine)."""
    run = _adapt_run(store, run_id)
    params = {"positive": int(positive_doc), "unlabeled": int(unlabeled_doc), "mu": round(float(mu), 6)}
    cached = store.load_analysis(run.id, "mixup_decode", params)
    if cached is not None:
        return pd.DataFrame(cached[0]["rows"])
    from dallmi_core.app.mixup_view import decode_pair

    docs = {d.id: d.text for d in store.get_documents(run.project_id, ids=[int(positive_doc), int(unlabeled_doc)])}
    if len(docs) < len({int(positive_doc), int(unlabeled_doc)}):
        raise DataError("a document of this pair no longer exists (it was deleted); draw fresh pairs.")
    clf = run_models.models(store, run)[1]
    max_length = run_models.run_config(run).max_length
    rows = decode_pair(
        clf.model, clf.tokenizer, docs[int(unlabeled_doc)], docs[int(positive_doc)], mu, max_length=max_length
    )
    store.save_analysis(run.id, "mixup_decode", params, {"rows": rows})
    return pd.DataFrame(rows)


# ---- domain shift --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftAnalysis:
    meta: dict  # counts, per-model classifier accuracy / A-distance / MMD, terms, prior shift
    arrays: dict[str, np.ndarray]  # coords_before/after [n, 2], domain [n] (0 source, 1 target), labels [n, L]

    def groups(self, label: str | None = None) -> list[str]:
        """Per point: its domain, or (with a label) whether it carries the label: gold for source
        documents, the adapted model's prediction for target ones."""
        domain = np.where(self.arrays["domain"] == 0, "source", "target")
        if label is None:
            return domain.tolist()
        has = self.arrays["labels"][:, self.meta["labels"].index(label)]
        return np.where(has, f"{label}", f"not {label}").tolist()

    @property
    def terms(self) -> pd.DataFrame:
        return pd.DataFrame(self.meta["terms"])

    @property
    def prior(self) -> pd.DataFrame:
        return pd.DataFrame(self.meta["prior"])


def _documents(store: Store, project_id: int, domain: str):
    return [d for page in store.iter_documents(project_id, domain=domain) for d in page]


def _embedded(store: Store, run: Run, docs: Sequence, params: Mapping) -> dict[str, np.ndarray]:
    """Embeddings (float16) and probabilities of `docs` under the source and the adapted model, cached
    apart from the analysis, so another projection (t-SNE after PCA) does not embed again."""
    found = store.load_analysis(run.id, "shift_embeddings", params)
    if found is not None:
        return found[1]
    from dallmi_core.modeling.embeddings import embed_texts

    arrays = {}
    for name, clf in zip(("before", "after"), run_models.models(store, run), strict=True):
        emb, probs = embed_texts(clf, [d.text for d in docs], max_length=run_models.run_config(run).max_length)
        arrays |= {f"embeddings_{name}": emb.astype(np.float16), f"probabilities_{name}": probs}
    store.save_analysis(run.id, "shift_embeddings", params, {"documents": len(docs)}, arrays)
    return arrays


def cached_shift(
    store: Store, run_id: int, *, projection: str = "pca", limit: int = SHIFT_LIMIT
) -> ShiftAnalysis | None:
    found = store.load_analysis(run_id, "shift", {"projection": projection, "limit": int(limit)})
    return None if found is None else ShiftAnalysis(*found)


def shift_analysis(store: Store, run_id: int, *, projection: str = "pca", limit: int = SHIFT_LIMIT) -> ShiftAnalysis:
    """Source vs target under the source and the adapted model; computed once per run and parameters."""
    from dallmi_core.evaluation import shift

    found = cached_shift(store, run_id, projection=projection, limit=limit)
    if found is not None:
        return found
    run = _adapt_run(store, run_id)
    labels = list(run.prediction_labels or ())
    source, target = _documents(store, run.project_id, "source"), _documents(store, run.project_id, "target")
    if len(source) < 2 or len(target) < 2:
        raise DataError(
            "the shift analysis needs at least 2 source and 2 target documents: import the source text "
            "(domain 'source') the source model was trained on."
        )
    keep_s, keep_t = shift.subsample(len(source), limit, seed=1), shift.subsample(len(target), limit, seed=2)
    picked = [source[i] for i in keep_s] + [target[i] for i in keep_t]
    domain = np.r_[np.zeros(len(keep_s), dtype=np.int8), np.ones(len(keep_t), dtype=np.int8)]
    after_cut = decisions.thresholds(store, run.id)  # the run's decisions, as its exports use them
    before_cut = run_models.folder_thresholds(run_models.source_model(store, run))
    cuts = {
        name: np.array([float(chosen.get(label, 0.5)) for label in labels], dtype=np.float32)
        for name, chosen in (("before", before_cut), ("after", after_cut))
    }
    cut = cuts["after"]
    has_source_model = bool(run_models.source_model(store, run))
    meta: dict = {"source": len(source), "target": len(target), "sampled_source": len(keep_s)}
    meta |= {"sampled_target": len(keep_t), "projection": projection, "source_model": has_source_model}
    meta |= {"labels": labels, "models": {}}
    arrays: dict[str, np.ndarray] = {"domain": domain}
    predicted = {}
    embedded = _embedded(store, run, picked, {"limit": int(limit), "source": len(source), "target": len(target)})
    for name in ("before", "after"):
        emb, probs = embedded[f"embeddings_{name}"].astype(np.float32), embedded[f"probabilities_{name}"]
        xs, xt = emb[domain == 0], emb[domain == 1]
        classifier = shift.domain_classifier(xs, xt)
        mmd = shift.mmd_rbf(xs, xt)
        meta["models"][name] = {
            "accuracy": classifier.accuracy,
            "a_distance": classifier.a_distance,
            "mmd2": mmd.mmd2,
            "mmd_p": mmd.p_value,
            "bandwidth": mmd.bandwidth,
            "permutations": mmd.permutations,
        }
        arrays[f"coords_{name}"] = shift.project_2d(emb, method=projection)
        predicted[name] = probs >= cuts[name]
    gold = np.array([[label in (d.gold_labels or ()) for label in labels] for d in picked], dtype=bool)
    arrays["labels"] = np.where(domain[:, None] == 0, gold, predicted["after"])  # source: gold; target: predicted
    meta["terms"] = shift.weighted_log_odds([d.text for d in target], [d.text for d in source]).to_dict("records")
    tags = store.tags_by_label(run.project_id, domain="target")
    tagged = np.zeros((len(target), len(labels)), dtype=bool)
    position = {d.id: i for i, d in enumerate(target)}
    for j, label in enumerate(labels):
        tagged[[position[d] for d in tags.get(label, []) if d in position], j] = True
    ids, scores = store.load_predictions(run.id)
    target_ids = np.isin(ids, np.fromiter(position, dtype=np.int64, count=len(position)))
    source_gold = np.array([[label in d.gold_labels for label in labels] for d in source if d.gold_labels is not None])
    by_source = has_source_model  # without one, "before" is the backbone under an untrained head: no predictions
    prior = shift.label_prior_shift(
        labels,
        {
            "source gold": source_gold.reshape(-1, len(labels)) if len(source_gold) else None,
            "source predicted (source model)": predicted["before"][domain == 0] if by_source else None,
            "target tagged": tagged,
            "target predicted (source model)": predicted["before"][domain == 1] if by_source else None,
            "target predicted (adapted)": scores[target_ids] >= cut,
        },
    )
    meta["prior"] = prior.to_dict("records")
    store.save_analysis(run.id, "shift", {"projection": projection, "limit": int(limit)}, meta, arrays)
    return ShiftAnalysis(meta, arrays)


def save_thresholds(store: Store, run_id: int, thresholds: Mapping[str, float]) -> dict[str, float]:
    """Per-label thresholds the exports use (predictions' 0/1 columns, the model's config)."""
    return store.set_thresholds(run_id, thresholds)


def document_texts(store: Store, project_id: int, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """{document id: (external id, text)} for the documents a view shows."""
    return {d.id: (d.ext_id, d.text) for d in store.get_documents(project_id, ids=[int(i) for i in ids])}
