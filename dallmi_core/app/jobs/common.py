"""What the executors share: documents and label matrices from the store, paged scoring, AP, and
the classifier a run starts from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dallmi_core.app.jobs.job import Job, Stopped
from dallmi_core.errors import ConfigError
from dallmi_core.store import Project

SCORE_PAGE = 512  # documents per scoring page: bounded memory on any corpus size


def label_matrix(rows: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    return np.array([[label in row for label in labels] for row in rows], dtype=np.float32).reshape(-1, len(labels))


def documents(job: Job, domain: str, *, gold_only: bool = False) -> tuple[list[int], list[str], list]:
    """Training needs every text in memory anyway (tokenised once); scoring streams instead."""
    docs = [
        d
        for page in job.store.iter_documents(job.run.project_id, domain=domain)
        for d in page
        if not gold_only or d.gold_labels is not None
    ]
    return [d.id for d in docs], [d.text for d in docs], [d.gold_labels for d in docs]


@dataclass
class Scored:
    eval_gold: list = field(default_factory=list)
    eval_scores: list = field(default_factory=list)
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # target position -> scores
    documents: int = 0


def score_pages(
    job: Job,
    clf,
    max_length: int,
    *,
    save: bool,
    domains=("target", "eval"),
    keep: frozenset[int] = frozenset(),
    gold_only: bool = False,
) -> Scored:
    """Score the project's documents page by page (bounded memory); with `save`, every page's
    predictions are stored as they come. Keeps the gold labels and scores of eval documents and of
    target documents an evaluation file gave gold to, and the target positions in `keep`; with
    `gold_only`, only documents with gold labels are scored (a measurement before training)."""
    from dallmi_core.modeling.scoring import score_texts

    out, store, run = Scored(), job.store, job.run
    counts = store.count_documents(run.project_id)
    total = sum(counts[d] for d in domains)
    for domain in domains:
        position = 0
        for page in store.iter_documents(run.project_id, domain=domain, batch_size=SCORE_PAGE):
            job.check()
            if gold_only:
                page = [doc for doc in page if doc.gold_labels is not None]
                if not page:
                    continue
            scores = score_texts(clf, [doc.text for doc in page], max_length=max_length)
            if save:
                store.save_predictions(
                    run.id, [doc.id for doc in page], scores, labels=clf.label_names, replace=out.documents == 0
                )
            for i, doc in enumerate(page):
                if doc.gold_labels is not None and domain in ("eval", "target"):
                    out.eval_gold.append(doc.gold_labels)
                    out.eval_scores.append(scores[i])
                if domain == "target" and position + i in keep:
                    out.kept[position + i] = scores[i]
            position += len(page)
            out.documents += len(page)
            if save:
                job.report({"stage": "score", "scored": out.documents, "total": total})
    return out


def ap(scored: Scored, labels: Sequence[str]) -> dict | None:
    from dallmi_core.evaluation.metrics import ap_report

    if not scored.eval_gold:
        return None
    return ap_report(label_matrix(scored.eval_gold, labels), np.stack(scored.eval_scores), labels).to_dict()


def fresh_classifier(job: Job, project: Project, seed: int):
    """A new multi-label head (seeded) on the backbone pinned in the run, else the project's."""
    import torch

    from dallmi_core.modeling.model import new_classifier

    torch.manual_seed(seed)
    return new_classifier(
        job.run.config.get("backbone") or project.settings.get("backbone") or "default", project.labels
    )


def source_classifier(job: Job, project: Project, seed: int):
    """The source model folder pinned in the run (else the project's), or a fresh head (pure PU)."""
    from dallmi_core.modeling.model import load_classifier

    source = job.run.config.get("source_model", project.source_model)
    if not source:
        return fresh_classifier(job, project, seed)
    clf = load_classifier(source)
    missing = [label for label in project.labels if label not in clf.label_names]
    if missing:
        raise ConfigError(
            f"the source model {source} has no output for {', '.join(missing)}. Fine-tune a "
            "new source model for this project's labels."
        )
    return clf


def after_training(job: Job, result) -> None:
    if result.state.stop_reason == "cancelled":
        raise Stopped
