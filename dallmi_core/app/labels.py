"""Labels after a project exists: add new ones, rename one with everything that carries its name.

A rename changes the store (store.rename_label: tags, reviewed-not marks, gold labels, prediction
columns, thresholds, metrics, analyses) and the model folders the app wrote under its data folder
(config.json: id2label, label2id and the per-label calibration, thresholds and source fits), so the
project's source model and every run's model keep an output under the new name and the next score or
adapt run works. A source model folder outside the data folder is the user's: it is never written,
so renaming one of its outputs is refused. Runs still pending would finish under the old name, so a
rename waits for them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from dallmi_core.errors import ConfigError, DataError, RunStateError
from dallmi_core.store import Project, Store
from dallmi_core.store.runs import PENDING

_KEYED = ("label2id", "dallmi_calibration", "dallmi_thresholds", "dallmi_source_fit")  # dicts keyed by label


def add_labels(store: Store, project_id: int, names: Iterable[str]) -> Project:
    """Append labels (checked like a new project's). A source model has no output for them until a
    new fine-tuning; runs made before have no scores for them (the pages say so)."""
    names = [name for name in (str(n).strip() for n in names) if name]
    if not names:
        raise DataError("no label to add: type one or more names, separated by commas.")
    return store.update_project(project_id, add_labels=names)


def _inside(folder: Path, root: Path) -> bool:
    try:
        folder.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _renamed_config(config: dict, old: str, new: str) -> dict:
    out = dict(config)
    if isinstance(config.get("id2label"), dict):
        out["id2label"] = {k: (new if v == old else v) for k, v in config["id2label"].items()}
    for key in _KEYED:
        if isinstance(config.get(key), dict):
            out[key] = {(new if k == old else k): v for k, v in config[key].items()}
    return out


def _model_rewrites(store: Store, project: Project, old: str, new: str) -> dict[Path, tuple[bytes, bytes]]:
    """config.json path -> (its bytes now, its bytes renamed), for the model folders naming `old`."""
    folders = {Path(run.model_path) for run in store.list_runs(project.id) if run.model_path}
    if project.source_model:
        folders.add(Path(project.source_model))
    out = {}
    for folder in sorted(folders):
        path = folder / "config.json"
        try:
            before = path.read_bytes()
            config = json.loads(before)
        except (OSError, ValueError):
            continue  # a folder gone or unreadable: nothing there to keep in step
        if not isinstance(config, dict) or old not in (config.get("id2label") or {}).values():
            continue
        if not _inside(folder, store.models_dir):
            if project.source_model and folder == Path(project.source_model):
                raise ConfigError(
                    f"the source model {folder} (outside the data folder, so never written by the app) has an "
                    f"output named {old!r}: renaming the label would leave it without one for {new!r}. Rename "
                    "that output in its config.json (id2label, label2id) first, or fine-tune a source model here."
                )
            continue  # a model a score run read from elsewhere: its stored scores are renamed, the folder is not
        after = json.dumps(_renamed_config(config, old, new), indent=2, ensure_ascii=False).encode("utf-8")
        out[path] = (before, after)
    return out


def rename_label(store: Store, project_id: int, old: str, new: str) -> Project:
    """Rename `old` to `new` in the store and in the app's model folders, all or nothing."""
    project, new = store.get_project(project_id), str(new).strip()
    if new == old and old in project.labels:
        return project
    pending = store.list_runs(project_id, status=PENDING)
    if pending:
        run = pending[-1]
        raise RunStateError(
            f"run {run.id} ({run.kind}) is {run.status}: wait for it to finish, or cancel it on the Adapt page, "
            "before renaming a label (it would finish under the old name)."
        )
    rewrites = _model_rewrites(store, project, old, new) if old in project.labels else {}
    temps: dict[Path, Path] = {}
    try:
        for path, (_, after) in rewrites.items():
            fd, tmp = tempfile.mkstemp(prefix=".config.json.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(after)
            temps[path] = Path(tmp)
        with store.transaction():
            renamed = store.rename_label(project_id, old, new)
            done: list[Path] = []
            for path, tmp in temps.items():
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    for written in done:  # put the folders back as the store will be: unchanged
                        written.write_bytes(rewrites[written][0])
                    raise DataError(f"cannot rename the label in {path.parent} ({exc.strerror or exc}).") from exc
                done.append(path)
        return renamed
    except OSError as exc:
        raise DataError(f"cannot write the model folders to rename the label ({exc.strerror or exc}).") from exc
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
