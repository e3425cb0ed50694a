"""What a run does: the executors of the worker's run kinds (finetune-source, adapt, score).

Each executor gets a `Job` (the claimed run, the store, stop checks, reporting) and returns the
model folder and the metrics to record; the worker (`worker.py`) owns the process, the queue loop,
the lock and the heartbeat. torch and the training libraries are imported inside the executors,
so importing this module (the services do, through the worker) stays cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dallmi_core.app.decisions import save_calibration
from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.errors import ConfigError, DataError
from dallmi_core.store import Project, Run, Store
from dallmi_core.training.callbacks import Callback, CancelCallback, CheckpointEvery

RUN_KINDS = ("finetune-source", "adapt", "score")
DEFAULT_CHECKPOINT_EVERY = 50
SCORE_PAGE = 512  # documents per scoring page: bounded memory on any corpus size


class Stopped(Exception):
    """The run was cancelled, the worker is shutting down, or the run is no longer ours."""


@dataclass
class Job:
    """A claimed run with what its executor needs: the store, its folders, stop checks, reporting."""

    store: Store
    run: Run
    stopping: threading.Event
    lost: threading.Event = field(default_factory=threading.Event)

    @property
    def project(self) -> Project:
        return self.store.get_project(self.run.project_id)

    @property
    def model_dir(self) -> Path:
        return self.store.models_dir / f"run-{self.run.id}"

    def checkpoint_dir(self) -> Path:
        path = self.store.data_dir / "runs" / str(self.run.id) / "checkpoint"
        self.store.set_checkpoint(self.run.id, str(path))
        return path

    def should_stop(self) -> bool:
        return self.stopping.is_set() or self.lost.is_set() or self.store.is_cancel_requested(self.run.id)

    def check(self) -> None:
        if self.should_stop():
            raise Stopped

    def report(self, progress: dict, metrics: Mapping | None = None) -> None:
        """The progress to show (and `metrics` to append to the run's series at progress['step'])."""
        if not self.store.update_progress(self.run.id, progress, metrics=metrics):
            self.lost.set()

    def callbacks(self) -> list[Callback]:
        every = int(self.run.config.get("checkpoint_every") or DEFAULT_CHECKPOINT_EVERY)
        return [
            _ProgressToStore(self),
            _EvalToStore(self.store, self.run.id),
            CancelCallback(self.should_stop),
            CheckpointEvery(every),
        ]


class _ProgressToStore(Callback):
    """Every step's progress into the run row, its loss parts (only those) into the run's series.

    A run resumed from its checkpoint at step s first drops its series rows past s: the attempt that
    was killed logged steps it had not checkpointed, and this attempt logs them again."""

    def __init__(self, job: Job):
        self.job = job

    def on_train_begin(self, state):
        if state.resumed_from:
            self.job.store.drop_metrics_after(self.job.run.id, state.resumed_from)

    def on_step_end(self, state):
        self.job.report(state.progress(), metrics=state.parts)


class _EvalToStore(Callback):
    """Validation metrics (PU loss, PU-estimated AP) into the run's time series."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id

    def on_evaluate(self, state, metrics):
        self.store.log_metrics(self.run_id, state.step, {k: v for k, v in metrics.items() if k != "step"})


class _MixupToStore(Callback):
    """A bounded sample of the MixUp pairs trained on (about `per_label` per label, spread over the
    run) into mixup_samples, scored by the model right after their step; a resumed run first drops
    the rows of the steps it trains again."""

    def __init__(self, store: Store, run_id: int, doc_ids: Sequence[int], labels: Sequence[str], per_label: int = 32):
        self.store, self.run_id, self.doc_ids, self.labels = store, run_id, np.asarray(doc_ids), list(labels)
        self.per_label, self.every = per_label, 1

    def on_train_begin(self, state):
        self.every = max(1, state.max_steps // self.per_label)
        if state.resumed_from:
            self.store.drop_mixup_samples_after(self.run_id, state.resumed_from)

    def on_step_end(self, state):
        record = state.mixup
        if record is None or (record.step % self.every and record.step != state.max_steps):
            return
        phi_u, prediction, target = record.scored()
        self.store.log_mixup_samples(
            self.run_id,
            record.step,
            (
                {
                    "label": self.labels[int(label)],
                    "positive_doc": int(self.doc_ids[p]),
                    "unlabeled_doc": int(self.doc_ids[u]),
                    "mu": float(mu),
                    "prediction": float(pred),
                    "target": float(t),
                }
                for label, p, u, mu, pred, t in zip(
                    record.labels, record.positive, record.unlabeled, record.mu, prediction, target, strict=True
                )
            ),
        )


def _label_matrix(rows: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    return np.array([[label in row for label in labels] for row in rows], dtype=np.float32).reshape(-1, len(labels))


def _documents(job: Job, domain: str, *, gold_only: bool = False) -> tuple[list[int], list[str], list]:
    """Training needs every text in memory anyway (tokenised once); scoring streams instead."""
    docs = [
        d
        for page in job.store.iter_documents(job.run.project_id, domain=domain)
        for d in page
        if not gold_only or d.gold_labels is not None
    ]
    return [d.id for d in docs], [d.text for d in docs], [d.gold_labels for d in docs]


@dataclass
class _Scored:
    eval_gold: list = field(default_factory=list)
    eval_scores: list = field(default_factory=list)
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # target position -> scores
    documents: int = 0


def _score_pages(
    job: Job,
    clf,
    max_length: int,
    *,
    save: bool,
    domains=("target", "eval"),
    keep: frozenset[int] = frozenset(),
    gold_only: bool = False,
) -> _Scored:
    """Score the project's documents page by page (bounded memory); with `save`, every page's
    predictions are stored as they come. Keeps the gold labels and scores of eval documents and of
    target documents an evaluation file gave gold to, and the target positions in `keep`; with
    `gold_only`, only documents with gold labels are scored (a measurement before training)."""
    from dallmi_core.modeling.scoring import score_texts

    out, store, run = _Scored(), job.store, job.run
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


def _ap(scored: _Scored, labels: Sequence[str]) -> dict | None:
    from dallmi_core.evaluation.metrics import ap_report

    if not scored.eval_gold:
        return None
    return ap_report(_label_matrix(scored.eval_gold, labels), np.stack(scored.eval_scores), labels).to_dict()


def _pu_report(split, scores: dict[int, np.ndarray], labels: Sequence[str]) -> dict:
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


def _split_meta(split, ids: Sequence[int], labels: Sequence[str]) -> dict:
    """The held-out tags and unlabeled documents (document ids) behind a run's PU-estimated AP."""
    return {
        "val_tags": {label: [int(ids[p]) for p in held] for label, held in zip(labels, split.val_tags, strict=True)},
        "val_unlabeled": [int(ids[p]) for p in split.val_unlabeled],
    }


def _fresh_classifier(job: Job, project: Project, seed: int):
    """A new multi-label head (seeded) on the backbone pinned in the run, else the project's."""
    import torch

    from dallmi_core.modeling.model import new_classifier

    torch.manual_seed(seed)
    return new_classifier(
        job.run.config.get("backbone") or project.settings.get("backbone") or "default", project.labels
    )


def _source_classifier(job: Job, project: Project, seed: int):
    """The source model folder pinned in the run (else the project's), or a fresh head (pure PU)."""
    from dallmi_core.modeling.model import load_classifier

    source = job.run.config.get("source_model", project.source_model)
    if not source:
        return _fresh_classifier(job, project, seed)
    clf = load_classifier(source)
    missing = [label for label in project.labels if label not in clf.label_names]
    if missing:
        raise ConfigError(
            f"the source model {source} has no output for {', '.join(missing)}. Fine-tune a "
            "new source model for this project's labels."
        )
    return clf


def _after_training(job: Job, result) -> None:
    if result.state.stop_reason == "cancelled":
        raise Stopped


def run_finetune_source(job: Job) -> tuple[str, dict]:
    """BCE fine-tuning of the project's backbone on its labelled source documents."""
    from dallmi_core.modeling.model import save_classifier
    from dallmi_core.training.train import finetune_source

    cfg = SourceConfig.from_dict(job.run.config.get("config", {}))
    project = job.project
    _, texts, gold = _documents(job, "source", gold_only=True)
    if not texts:
        raise DataError(
            f"project {project.name!r} has no labelled source documents. Import a file with a labels "
            "column as domain 'source', or give the project a source model folder."
        )
    clf = _fresh_classifier(job, project, cfg.seed)
    result = finetune_source(
        clf,
        texts,
        _label_matrix(gold, project.labels),
        cfg,
        callbacks=job.callbacks(),
        checkpoint_dir=job.checkpoint_dir(),
    )
    _after_training(job, result)
    out = save_classifier(result.clf, job.model_dir)
    job.store.update_project(project.id, source_model=str(out))
    return str(out), {"steps": result.state.step, "documents": len(texts), "precision": result.extras.get("precision")}


def run_adapt(job: Job) -> tuple[str, dict]:
    """Adapt the source model to the target documents from the tagged positives, then score all."""
    from dallmi_core.modeling.model import resolve_device, save_classifier
    from dallmi_core.modeling.scoring import score_texts
    from dallmi_core.training.train import adapt, pu_split

    cfg = AdaptConfig.from_dict(job.run.config.get("config", {}))
    project, store = job.project, job.store
    clf = _source_classifier(job, project, cfg.seed)
    labels = clf.label_names
    ids, texts, gold = _documents(job, "target")
    if not ids:
        raise DataError(f"project {project.name!r} has no target documents. Import the target text first.")
    position = {doc: i for i, doc in enumerate(ids)}
    by_label = store.tags_by_label(project.id)
    tags = [[position[d] for d in by_label.get(label, []) if d in position] for label in labels]
    oracle = None
    if cfg.method == "target-oracle":
        if any(g is None for g in gold):
            raise DataError("target-oracle needs gold labels on every target document; this project has none.")
        oracle = _label_matrix(gold, labels)
    elif not any(tags):
        raise DataError(f"no target document of project {project.name!r} is tagged. Tag a few positives per label.")
    clf.model.to(resolve_device(cfg.device))
    before = _ap(_score_pages(job, clf, cfg.max_length, save=False, domains=("eval", "target"), gold_only=True), labels)
    split = pu_split(tags, len(ids), cfg)
    val = sorted({*split.val_unlabeled, *(p for held in split.val_tags for p in held)})
    before_val = dict(zip(val, score_texts(clf, [texts[p] for p in val], max_length=cfg.max_length), strict=True))
    del gold
    store.save_analysis(job.run.id, "pu_split", {}, _split_meta(split, ids, labels))
    callbacks = [*job.callbacks(), _MixupToStore(store, job.run.id, ids, labels)]
    source_texts = _documents(job, "source")[1] if cfg.method == "aad" else None  # aad learns source vs target
    result = adapt(
        clf, texts, tags, cfg, callbacks=callbacks, checkpoint_dir=job.checkpoint_dir(), gold=oracle,
        source_texts=source_texts,
    )  # fmt: skip
    del texts
    _after_training(job, result)
    out = save_classifier(result.clf, job.model_dir)
    if result.extras.get("calibration") is not None:
        save_calibration(store, job.run.id, result.extras["calibration"])
    scored = _score_pages(job, result.clf, cfg.max_length, save=True, keep=frozenset(val))
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
    after = _ap(scored, labels)
    if after is not None:
        metrics |= {"estimate": False, "before": before, "after": after}
    else:
        metrics |= {
            "estimate": True,
            "before": _pu_report(split, before_val, labels),
            "after": _pu_report(split, scored.kept, labels),
        }
    return str(out), metrics


def _target_calibration(job: Job, clf, max_length: int):
    """A source model's calibration re-estimated on the project's target documents and tags
    (train.calibrate_source_on_target); a model without a source fit keeps the one it carries."""
    from dallmi_core.training.train import calibrate_source_on_target

    if clf.source_fit() is None:
        return clf.calibration()
    ids, texts, _ = _documents(job, "target")
    job.check()
    position = {doc: i for i, doc in enumerate(ids)}
    by_label = job.store.tags_by_label(job.run.project_id)
    tags = [[position[d] for d in by_label.get(label, []) if d in position] for label in clf.label_names]
    return calibrate_source_on_target(clf, texts, tags, max_length)


def run_score(job: Job) -> tuple[str, dict]:
    """Score target and eval documents with a model folder (e.g. "what to tag next" before adapting)."""
    from dallmi_core.modeling.model import load_classifier, resolve_device

    project = job.project
    model = job.run.config.get("model") or project.source_model
    if not model:
        raise ConfigError(
            f"project {project.name!r} has no source model to score with. Give a model folder, "
            "or fine-tune a source model first."
        )
    clf = load_classifier(model)
    clf.model.to(resolve_device(job.run.config.get("device", "auto")))
    max_length = int(job.run.config.get("max_length", 128))
    calibration = _target_calibration(job, clf, max_length)
    if calibration is not None:
        save_calibration(job.store, job.run.id, calibration)
    scored = _score_pages(job, clf, max_length, save=True)
    evaluation = _ap(scored, clf.label_names)
    return str(model), {"documents": scored.documents, **({"evaluation": evaluation} if evaluation else {})}


EXECUTORS: dict[str, Callable[[Job], tuple[str, dict]]] = {
    "finetune-source": run_finetune_source,
    "adapt": run_adapt,
    "score": run_score,
}
