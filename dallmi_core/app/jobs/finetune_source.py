"""The finetune-source run: BCE fine-tuning of a fresh head on the project's labelled source documents."""

from __future__ import annotations

from dallmi_core.app.jobs.common import after_training, documents, fresh_classifier, label_matrix
from dallmi_core.app.jobs.job import Job
from dallmi_core.config import SourceConfig
from dallmi_core.errors import DataError


def run_finetune_source(job: Job) -> tuple[str, dict]:
    """BCE fine-tuning of the project's backbone on its labelled source documents."""
    from dallmi_core.modeling.model import save_classifier
    from dallmi_core.training.source import finetune_source

    cfg = SourceConfig.from_dict(job.run.config.get("config", {}))
    project = job.project
    _, texts, gold = documents(job, "source", gold_only=True)
    if not texts:
        raise DataError(
            f"project {project.name!r} has no labelled source documents. Import a file with a labels "
            "column as domain 'source', or give the project a source model folder."
        )
    clf = fresh_classifier(job, project, cfg.seed)
    result = finetune_source(
        clf,
        texts,
        label_matrix(gold, project.labels),
        cfg,
        callbacks=job.callbacks(),
        checkpoint_dir=job.checkpoint_dir(),
    )
    after_training(job, result)
    out = save_classifier(result.clf, job.model_dir)
    job.store.update_project(project.id, source_model=str(out))
    return str(out), {"steps": result.state.step, "documents": len(texts), "precision": result.extras.get("precision")}
