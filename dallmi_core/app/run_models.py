"""The source and adapted models of an adaptation run, loaded once per process for the insight views
(MixUp, domain shift); torch is imported only when one is loaded."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from dallmi_core.config import AdaptConfig
from dallmi_core.errors import RunStateError
from dallmi_core.store import Run, Store


def adapt_run(store: Store, run_id: int) -> Run:
    """The run, when it is a finished adaptation run (what the insight views look at)."""
    run = store.get_run(run_id)
    if run.kind != "adapt" or run.status != "done":
        raise RunStateError(f"run {run_id} is a {run.status} {run.kind} run; pick a finished adaptation run.")
    return run


def run_config(run: Run) -> AdaptConfig:
    """The run's stored settings, defaults filled in."""
    return AdaptConfig.from_dict(dict(run.config.get("config") or {}))


def source_model(store: Store, run: Run) -> str:
    """The source model folder an adaptation run started from (pinned in its config, else the project's);
    "" for a project without one: pure PU learning from the backbone under a fresh head."""
    return run.config.get("source_model", store.get_project(run.project_id).source_model) or ""


def starting_model(store: Store, run: Run) -> str:
    """What the run's "before" is, in words for its charts and tables: the fine-tuned source model, or the
    backbone under the run's untrained head, whose predictions hold no knowledge yet."""
    return "source model" if source_model(store, run) else "backbone, untrained head"


def _stamp(folder: str) -> int:
    """When a model folder's config last changed: part of the model cache key, so a replaced folder reloads."""
    config = Path(folder) / "config.json"
    return config.stat().st_mtime_ns if folder and config.is_file() else 0


@lru_cache(maxsize=4)
def _load(source: str, backbone: str, labels: tuple[str, ...], seed: int, stamp: int):
    """A classifier in eval mode on the best device: a model folder, or (no source model: pure PU) the
    run's seeded fresh head on its backbone, as jobs.common.fresh_classifier built it."""
    import torch

    from dallmi_core.modeling.model import load_classifier, new_classifier, resolve_device

    if source:
        clf = load_classifier(source)
    else:
        torch.manual_seed(seed)
        clf = new_classifier(backbone, labels)
    clf.model.to(resolve_device("auto")).eval()
    return clf


def folder_thresholds(folder: str | None) -> dict[str, float]:
    """A model folder's own decision thresholds (config.json's dallmi_thresholds), read without loading it."""
    config = Path(folder) / "config.json" if folder else None
    if config is None or not config.is_file():
        return {}
    return json.loads(config.read_text(encoding="utf-8")).get("dallmi_thresholds") or {}


def release() -> None:
    """Forget the loaded models (a worker job that loaded them gives their memory back)."""
    _load.cache_clear()


def models(store: Store, run: Run):
    """(source model, adapted model) of an adaptation run."""
    project = store.get_project(run.project_id)
    cfg = run_config(run)
    backbone = run.config.get("backbone") or project.settings.get("backbone") or "default"
    labels = tuple(run.prediction_labels or project.labels)
    source = source_model(store, run)
    before = _load(source, backbone, labels, cfg.seed, _stamp(source))
    return before, _load(run.model_path, "", labels, 0, _stamp(run.model_path))
