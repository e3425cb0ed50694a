"""The score run: a stored model scores every target and eval document, page by page."""

from __future__ import annotations

from dallmi_core.app.decisions import save_calibration
from dallmi_core.app.jobs.common import ap, documents, score_pages
from dallmi_core.app.jobs.job import Job
from dallmi_core.errors import ConfigError


def target_calibration(job: Job, clf, max_length: int):
    """A source model's calibration re-estimated on the project's target documents and tags
    (train.calibrate_source_on_target); a model without a source fit keeps the one it carries."""
    from dallmi_core.training.adapt import calibrate_source_on_target

    if clf.source_fit() is None:
        return clf.calibration()
    ids, texts, _ = documents(job, "target")
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
    calibration = target_calibration(job, clf, max_length)
    if calibration is not None:
        save_calibration(job.store, job.run.id, calibration)
    scored = score_pages(job, clf, max_length, save=True)
    evaluation = ap(scored, clf.label_names)
    return str(model), {"documents": scored.documents, **({"evaluation": evaluation} if evaluation else {})}
