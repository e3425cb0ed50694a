"""The Domain shift page's analysis: source vs target under the source and the adapted model.

It embeds up to SHIFT_LIMIT documents per domain with both models (about 30 s on a CPU with the
default backbone), so it never runs in the app process: the page queues a worker job (run kind
"shift", jobs/shift.py) that calls `shift_analysis` with the job's progress report and stop check,
shows its progress live and, once it is done, draws the result from the store's cache
(run_analysis, kind "shift", keyed by projection and limit). Every later view, in any session,
reads the cache only. The embeddings are cached apart, so another projection does not embed again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dallmi_core.app import decisions, run_models
from dallmi_core.errors import ConfigError, DataError
from dallmi_core.evaluation.shift import PROJECTIONS
from dallmi_core.store import Run, Store

SHIFT_KIND = "shift"  # the worker's run kind for this analysis
SHIFT_LIMIT = 2000  # documents per domain embedded for the shift analysis (a random subsample past it)
SHIFT_PAGE = 256  # documents embedded between two progress reports (and stop checks)

Report = Callable[[dict], None]
Check = Callable[[], None]


def _no_report(progress: dict) -> None:
    """The default report: nobody is watching."""


def _no_check() -> None:
    """The default stop check: never stop."""


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


# ---- what the page asks before it offers to compute ----------------------------------------------


def missing_documents(store: Store, project_id: int) -> str | None:
    """What the project lacks for the analysis (at least 2 source and 2 target documents), in words;
    None when it has what it needs."""
    counts = store.count_documents(project_id)
    lacking = [
        f"{'no' if not counts[domain] else f'only {counts[domain]:,}'} {domain} document"
        + ("" if counts[domain] == 1 else "s")
        for domain in ("source", "target")
        if counts[domain] < 2
    ]
    if not lacking:
        return None
    return (
        f"The shift analysis compares the source text (what the source model was trained on) with the target "
        f"text, at least 2 documents of each; this project has {' and '.join(lacking)}. Import them on the "
        "Data page (domain 'source' for the source text)."
    )


def shift_params(projection: str = "pca", limit: int = SHIFT_LIMIT) -> dict:
    """The analysis' cache key (and the job's settings): the projection and the per-domain limit."""
    if projection not in PROJECTIONS:
        raise ConfigError(f"projection {projection!r} is not one of {', '.join(PROJECTIONS)}.")
    if int(limit) < 2:
        raise ConfigError(f"the shift analysis' limit must be at least 2 documents per domain, got {limit!r}.")
    return {"projection": projection, "limit": int(limit)}


def job_settings(store: Store, project_id: int, settings: Mapping) -> dict:
    """A shift job's stored settings {run, projection, limit}, checked: a finished adaptation run of this
    project, a known projection, and enough documents (a DataError saying what is missing)."""
    run = run_models.adapt_run(store, int(settings.get("run", 0)))
    if run.project_id != project_id:
        raise ConfigError(f"run {run.id} belongs to another project.")
    params = shift_params(settings.get("projection", "pca"), settings.get("limit", SHIFT_LIMIT))
    if (missing := missing_documents(store, project_id)) is not None:
        raise DataError(missing)
    return {"run": run.id, **params}


def shift_job(store: Store, run_id: int, *, projection: str = "pca", limit: int = SHIFT_LIMIT) -> Run | None:
    """The newest worker job computing this analysis of run `run_id` (any status), or None."""
    wanted = {"run": int(run_id), **shift_params(projection, limit)}
    project_id = store.get_run(run_id).project_id
    return next(
        (r for r in store.list_runs(project_id) if r.kind == SHIFT_KIND and r.config.get("analysis") == wanted), None
    )


def cached_shift(
    store: Store, run_id: int, *, projection: str = "pca", limit: int = SHIFT_LIMIT
) -> ShiftAnalysis | None:
    found = store.load_analysis(run_id, "shift", shift_params(projection, limit))
    return None if found is None else ShiftAnalysis(*found)


# ---- the computation (in the worker: jobs/shift.py) ------------------------------------------------


def _documents(store: Store, project_id: int, domain: str):
    return [d for page in store.iter_documents(project_id, domain=domain) for d in page]


def _embedded(
    store: Store, run: Run, docs: Sequence, params: Mapping, report: Report, check: Check
) -> dict[str, np.ndarray]:
    """Embeddings (float16) and probabilities of `docs` under the source and the adapted model, cached
    apart from the analysis, so another projection (t-SNE after PCA) does not embed again."""
    found = store.load_analysis(run.id, "shift_embeddings", params)
    if found is not None:
        return found[1]
    from dallmi_core.modeling.embeddings import embed_texts

    report({"stage": "loading the two models"})
    check()
    texts, arrays = [d.text for d in docs], {}
    names = {"before": run_models.starting_model(store, run), "after": "adapted model"}
    for k, (name, clf) in enumerate(zip(names, run_models.models(store, run), strict=True)):
        stage = f"embedding with the {names[name]} ({k + 1} of 2)"

        def progress(done: int, stage: str = stage) -> None:
            report({"stage": stage, "scored": done, "total": len(texts)})
            check()

        progress(0)
        emb, probs = embed_texts(
            clf, texts, max_length=run_models.run_config(run).max_length, page=SHIFT_PAGE, on_page=progress
        )
        arrays |= {f"embeddings_{name}": emb.astype(np.float16), f"probabilities_{name}": probs}
    store.save_analysis(run.id, "shift_embeddings", params, {"documents": len(docs)}, arrays)
    return arrays


def shift_analysis(
    store: Store,
    run_id: int,
    *,
    projection: str = "pca",
    limit: int = SHIFT_LIMIT,
    report: Report = _no_report,
    check: Check = _no_check,
) -> ShiftAnalysis:
    """Source vs target under the source and the adapted model; computed once per run and parameters.

    `report` gets the progress to show ({"stage", "scored", "total"}); `check` raises to stop (a cancel),
    called between pages of documents and between the stages."""
    from dallmi_core.evaluation import shift

    params = shift_params(projection, limit)
    found = cached_shift(store, run_id, **params)
    if found is not None:
        return found
    run = run_models.adapt_run(store, run_id)
    if (missing := missing_documents(store, run.project_id)) is not None:
        raise DataError(missing)
    labels = list(run.prediction_labels or ())
    source, target = _documents(store, run.project_id, "source"), _documents(store, run.project_id, "target")
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
    counts = {"limit": int(limit), "source": len(source), "target": len(target)}
    embedded = _embedded(store, run, picked, counts, report, check)
    for name in ("before", "after"):
        who = run_models.starting_model(store, run) if name == "before" else "adapted model"
        report({"stage": f"measuring the shift under the {who} ({projection.upper()} projection)"})
        check()
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
    report({"stage": "the terms and the label priors"})
    check()
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
    store.save_analysis(run.id, "shift", params, meta, arrays)
    return ShiftAnalysis(meta, arrays)
