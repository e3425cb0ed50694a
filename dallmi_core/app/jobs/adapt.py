"""The adapt run: DALLMi on the target's tagged positives and unlabeled documents, judged by a
PU-estimated AP on held-out tags (and by AP where an evaluation file gave gold labels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dallmi_core.app.decisions import save_calibration
from dallmi_core.app.jobs.common import after_training, ap, documents, label_matrix, score_pages, source_classifier
from dallmi_core.app.jobs.job import Job, MixupToStore
from dallmi_core.config import AdaptConfig
from dallmi_core.errors import DataError


def pu_report(split, scores: dict[int, np.ndarray], labels: Sequence[str]) -> dict:
    """PU-estimated AP per label: held-out tagged positives ranked among held-out unlabeled docs."""
    from dallmi_core.evaluation.metrics import pu_estimated_ap

    per_label = {}
    for j, label in enumerate(labels):
        held = split.val_tags[j]
        per_label[label] = (
            pu_estimated_ap([scores[p][j] for p in held], [scores[u][j] for u in split.val_unlabeled])
            if held and split.val_unlabeled
            else None
        )
    values = [v for v in per_label.values() if v is not None]
    return {
        "per_label_ap": per_label,
        "map_macro": float(np.mean(values)) if values else None,
        "map_micro": None,
        "estimate": True,
    }


def split_meta(split, ids: Sequence[int], labels: Sequence[str]) -> dict:
    """The held-out tags and unlabeled documents (document ids) behind a run's PU-estimated AP."""
    return {
        "val_tags": {label: [int(ids[p]) for p in held] for label, held in zip(labels, split.val_tags, strict=True)},
        "val_unlabeled": [int(ids[p]) for p in split.val_unlabeled],
    }


def run_adapt(job: Job) -> tuple[str, dict]:
    """Adapt the source model to the target documents from the tagged positives, then score all."""
    from dallmi_core.modeling.model import resolve_device, save_classifier
    from dallmi_core.modeling.scoring import score_texts
    from dallmi_core.training.adapt import adapt
    from dallmi_core.training.pu_split import pu_split

    cfg = AdaptConfig.from_dict(job.run.config.get("config", {}))
    project, store = job.project, job.store
    clf = source_classifier(job, project, cfg.seed)
    labels = clf.label_names
    ids, texts, gold = documents(job, "target")
    if not ids:
        raise DataError(f"project {project.name!r} has no target documents. Import the target text first.")
    position = {doc: i for i, doc in enumerate(ids)}
    by_label = store.tags_by_label(project.id)
    tags = [[position[d] for d in by_label.get(label, []) if d in position] for label in labels]
    oracle = None
    if cfg.method == "target-oracle":
        if any(g is None for g in gold):
            raise DataError("target-oracle needs gold labels on every target document; this project has none.")
        oracle = label_matrix(gold, labels)
    elif not any(tags):
        raise DataError(f"no target document of project {project.name!r} is tagged. Tag a few positives per label.")
    clf.model.to(resolve_device(cfg.device))
    before = ap(score_pages(job, clf, cfg.max_length, save=False, domains=("eval", "target"), gold_only=True), labels)
    split = pu_split(tags, len(ids), cfg)
    val = sorted({*split.val_unlabeled, *(p for held in split.val_tags for p in held)})
    before_val = dict(zip(val, score_texts(clf, [texts[p] for p in val], max_length=cfg.max_length), strict=True))
    del gold
    store.save_analysis(job.run.id, "pu_split", {}, split_meta(split, ids, labels))
    callbacks = [*job.callbacks(), MixupToStore(store, job.run.id, ids, labels)]
    source_texts = documents(job, "source")[1] if cfg.method == "aad" else None  # aad learns source vs target
    result = adapt(
        clf, texts, tags, cfg, callbacks=callbacks, checkpoint_dir=job.checkpoint_dir(), gold=oracle,
        source_texts=source_texts,
    )  # fmt: skip
    del texts
    after_training(job, result)
    out = save_classifier(result.clf, job.model_dir)
    if result.extras.get("calibration") is not None:
        save_calibration(store, job.run.id, result.extras["calibration"])
    scored = score_pages(job, result.clf, cfg.max_length, save=True, keep=frozenset(val))
    split = result.split or split
    counts = dict(zip(labels, map(len, tags), strict=True))
    metrics = {
        "method": cfg.method,
        "steps": result.state.step,
        "best_step": result.state.best_step,
        "stop_reason": result.state.stop_reason,
        "precision": result.extras.get("precision"),
        "tags": counts,
        "skipped_labels": [label for label, n in counts.items() if not n],
    }
    after = ap(scored, labels)
    if after is not None:
        metrics |= {"estimate": False, "before": before, "after": after}
    else:
        metrics |= {
            "estimate": True,
            "before": pu_report(split, before_val, labels),
            "after": pu_report(split, scored.kept, labels),
        }
    return str(out), metrics
