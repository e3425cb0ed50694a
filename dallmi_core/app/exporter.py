"""Exports: documents, annotations, predictions, run reports and model folders, written atomically.

Every file is written to a temp file beside its target and moved into place with os.replace, so a
failed export never leaves half a file. Annotations use the interchange format the importer reads
(id, text, labels 'a|b' or a JSON list, domain, then the project's metadata columns), so an export
re-imports into an equal project: a target document with gold labels from an evaluation file is
written twice, as its target row (its tags) and as an eval row (its gold), which the importer
attaches again. Every export writes the metadata columns back, so a user's file round-trips.
Default destinations are timestamped files under <data dir>/exports/.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from dallmi_core.app import decisions
from dallmi_core.data.corpus import LABEL_SEPARATOR
from dallmi_core.errors import DataError, RunStateError
from dallmi_core.store import Store

REVIEWED_NOT = "reviewed_not"  # the column of a target document's "reviewed: not <label>" marks


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(temp path), then move the temp file onto `path`; on any error remove it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        reason = getattr(exc, "strerror", None) or exc
        raise DataError(f"{path.name}: cannot be written ({reason}). Check the folder.") from exc
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(f"{path.name}: cannot be written ({exc.strerror or exc}).") from exc
        raise
    return path


def _default_path(store: Store, stem: str, what: str, suffix: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "project"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return store.exports_dir / f"{slug}-{what}-{stamp}.{suffix}"


def _format(path: Path | None, fmt: str | None, allowed: tuple[str, ...]) -> str:
    fmt = (fmt or (path.suffix.lstrip(".").lower() if path is not None else "") or allowed[0]).lower()
    if fmt not in allowed:
        raise DataError(f"cannot export as {fmt!r}; use one of {', '.join(allowed)}.")
    return fmt


def _meta_cell(value) -> str:
    """A metadata value in a CSV cell: text as is, anything else as JSON (numbers read back alike)."""
    return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)


def _rows(store: Store, project_id: int, only_labelled: bool):
    """(document, labels, domain, reviewed-not labels) in the interchange format: tags and marks of
    target documents, gold labels of source/eval ones, and an extra eval row for a target document
    that has gold labels."""
    for page in store.iter_documents(project_id):
        tags, marks = store.tags_for([doc.id for doc in page]), store.reviews_for([doc.id for doc in page])
        for doc in page:
            target = doc.domain == "target"
            labels = tags.get(doc.id, []) if target else list(doc.gold_labels or ())
            reviewed = marks.get(doc.id, []) if target else []
            if labels or reviewed or not only_labelled:
                yield doc, labels, doc.domain, reviewed
            if target and doc.gold_labels is not None:
                yield doc, list(doc.gold_labels), "eval", []


def _write_records(path: Path, fmt: str, header: list[str], records, meta: list[str]) -> Path:
    """CSV or JSONL of (fixed cells, metadata dict) records; CSV cells hold labels as 'a|b'."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if fmt == "csv":
                writer.writerow(header + meta)
            for cells, extra in records:
                if fmt == "csv":
                    flat = [LABEL_SEPARATOR.join(c) if isinstance(c, list) else c for c in cells]
                    writer.writerow(flat + [_meta_cell(extra.get(name)) for name in meta])
                else:
                    record = dict(zip(header, cells, strict=True)) | {k: extra[k] for k in meta if k in extra}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    return _atomic_write(path, write)


def export_annotations(
    store: Store, project_id: int, path=None, *, fmt: str | None = None, only_labelled: bool = False
) -> Path:
    """Every document (or only those with labels or marks) as id, text, labels, domain and its metadata:
    exactly what import_file(label_policy='auto') turns back into documents, tags, gold labels and
    metadata. A project with "reviewed: not" marks gets a `reviewed_not` column after `domain` (the
    labels each target document was reviewed as not carrying, 'a|b'); the importer reads it back as a
    metadata column, not as marks."""
    project = store.get_project(project_id)
    path = None if path is None else Path(path)
    fmt = _format(path, fmt, ("csv", "jsonl"))
    path = path or _default_path(store, project.name, "annotations", fmt)
    marked = any(store.reviews_by_label(project_id).values())
    header = ["id", "text", "labels", "domain"] + ([REVIEWED_NOT] if marked else [])
    records = (
        ([doc.ext_id, doc.text, labels, domain] + ([reviewed] if marked else []), doc.meta)
        for doc, labels, domain, reviewed in _rows(store, project_id, only_labelled)
    )
    meta = [name for name in store.meta_columns(project_id) if name not in header]  # a re-imported reviewed_not
    return _write_records(path, fmt, header, records, meta)


def export_documents(store: Store, project_id: int, path=None, *, fmt: str | None = None) -> Path:
    """Every document as id, text, domain, gold_labels ('a|b'; empty without gold), tags (then
    reviewed_not, its "reviewed: not" labels, when the project has any) and its metadata columns: the
    project's data as one table, for a spreadsheet or a script."""
    project = store.get_project(project_id)
    path = None if path is None else Path(path)
    fmt = _format(path, fmt, ("csv", "jsonl"))
    path = path or _default_path(store, project.name, "documents", fmt)

    def records():
        for page in store.iter_documents(project_id):
            tags, marks = store.tags_for([doc.id for doc in page]), store.reviews_for([doc.id for doc in page])
            for doc in page:
                gold = list(doc.gold_labels) if doc.gold_labels is not None else ([] if fmt == "csv" else None)
                cells = [doc.ext_id, doc.text, doc.domain, gold, tags.get(doc.id, [])]
                yield cells + ([marks.get(doc.id, [])] if marked else []), doc.meta

    marked = any(store.reviews_by_label(project_id).values())
    header = ["id", "text", "domain", "gold_labels", "tags"] + ([REVIEWED_NOT] if marked else [])
    meta = [name for name in store.meta_columns(project_id) if not (marked and name == REVIEWED_NOT)]
    return _write_records(path, fmt, header, records(), meta)


def _thresholds(labels: tuple[str, ...], thresholds: Mapping[str, float] | None) -> np.ndarray:
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(labels))
    if unknown:
        raise DataError(f"thresholds for unknown labels {', '.join(map(repr, unknown))}; labels: {', '.join(labels)}.")
    values = np.array([float(thresholds.get(label, 0.5)) for label in labels], dtype=np.float32)
    if not np.all((values >= 0) & (values <= 1)):
        raise DataError("thresholds must be between 0 and 1.")
    return values


def predictions_frame(store: Store, run_id: int, thresholds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """id, the metadata columns, score_<label>..., pred_<label>... (0/1 at each label's threshold:
    `thresholds`, else the one decisions.py picks: saved on the Per-label AP page, else the calibration's
    default)."""
    run = store.get_run(run_id)
    doc_ids, scores = store.load_predictions(run_id)
    if not len(doc_ids):
        raise RunStateError(f"run {run_id} has no predictions yet (status {run.status}).")
    labels = run.prediction_labels or ()
    cut = _thresholds(labels, decisions.thresholds(store, run_id, thresholds))
    ext, meta = store.ext_ids(doc_ids.tolist()), store.document_meta(doc_ids.tolist())
    columns: dict[str, object] = {"id": [ext[int(i)] for i in doc_ids]}
    for name in store.meta_columns(run.project_id):  # the user's own columns, to join or filter on
        columns[name] = [_meta_cell(meta.get(int(i), {}).get(name)) for i in doc_ids]
    columns |= {f"score_{label}": scores[:, j] for j, label in enumerate(labels)}
    columns |= {f"pred_{label}": (scores[:, j] >= cut[j]).astype(np.int8) for j, label in enumerate(labels)}
    return pd.DataFrame(columns)


def export_predictions(
    store: Store, run_id: int, path=None, *, fmt: str | None = None, thresholds: Mapping[str, float] | None = None
) -> Path:
    """A run's predictions as CSV or Parquet (see predictions_frame)."""
    path = None if path is None else Path(path)
    fmt = _format(path, fmt, ("csv", "parquet"))
    frame = predictions_frame(store, run_id, thresholds)
    project = store.get_project(store.get_run(run_id).project_id)
    path = path or _default_path(store, project.name, f"run{run_id}-predictions", fmt)
    if fmt == "csv":
        return _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))
    return _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def run_report(store: Store, run_id: int) -> dict:
    """Everything needed to understand and reproduce a run, as plain JSON-ready data."""
    run = store.get_run(run_id)
    project = store.get_project(run.project_id)
    last: dict[str, float] = {}
    for _, name, value in store.run_metrics(run_id):
        last[name] = value
    return {
        "run": {
            "id": run.id,
            "kind": run.kind,
            "status": run.status,
            "error": run.error,
            "attempts": run.attempts,
            "model_path": run.model_path,
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
        },
        "project": {
            "id": project.id,
            "name": project.name,
            "labels": list(project.labels),
            "source_model": project.source_model,
        },
        "config": run.config,
        "progress": run.progress,
        "metrics": run.metrics,
        "last_logged": last,
        "thresholds": (
            {
                label: {"threshold": d.threshold, "source": d.source, "basis": d.basis, "prior": d.prior}
                for label, d in decisions.decisions(store, run_id).items()
            }
            if run.prediction_labels
            else {}
        ),
        "generated_at": _iso(time.time()),
    }


def _ap_tables(metrics: Mapping, prefix: str = "") -> list[tuple[str, Mapping]]:
    """Every dict holding 'per_label_ap' (an APReport.to_dict()), at the top or one level down."""
    found = [(prefix or "evaluation", metrics)] if isinstance(metrics.get("per_label_ap"), Mapping) else []
    if not prefix:
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                found += _ap_tables(value, str(key))
    return found


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def report_markdown(report: Mapping) -> str:
    run, project = report["run"], report["project"]
    lines = [
        f"# Run {run['id']}: {run['kind']} ({run['status']})",
        "",
        f"Project **{project['name']}**, labels: {', '.join(project['labels'])}.",
        "",
    ]
    lines += [
        f"- {key.replace('_', ' ')}: {_num(value)}"
        for key, value in run.items()
        if key not in ("id", "kind", "status", "error") and value is not None
    ]
    if run.get("error"):
        lines += ["", "```", str(run["error"]), "```"]
    lines += ["", "## Configuration", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {_cell(json.dumps(value))} |" for key, value in sorted(report["config"].items())]
    for title, table in _ap_tables(report["metrics"]):
        lines += ["", f"## Per-label AP: {title}", "", "| label | AP |", "| --- | ---: |"]
        lines += [f"| {_cell(label)} | {_num(ap)} |" for label, ap in table["per_label_ap"].items()]
        lines += [
            f"| **macro mAP** | {_num(table.get('map_macro'))} |",
            f"| **micro mAP** | {_num(table.get('map_micro'))} |",
        ]
    if report.get("thresholds"):
        lines += [
            "",
            "## Decision thresholds (the 0/1 columns of the predictions export)",
            "",
            "| label | threshold | from | estimated prior | basis |",
            "| --- | ---: | --- | ---: | --- |",
        ]
        lines += [
            f"| {_cell(label)} | {_num(d['threshold'])} | {d['source']} | {_num(d['prior'])} | {_cell(d['basis'])} |"
            for label, d in report["thresholds"].items()
        ]
    scalars = {k: v for k, v in report["metrics"].items() if not isinstance(v, Mapping | list)}
    if scalars or report["last_logged"]:
        lines += ["", "## Metrics", ""]
        lines += [f"- {key}: {_num(value)}" for key, value in scalars.items()]
        lines += [f"- {key} (last logged): {_num(value)}" for key, value in report["last_logged"].items()]
    return "\n".join(lines) + "\n"


def export_run_report(store: Store, run_id: int, path=None, *, fmt: str | None = None) -> Path:
    """The run report as JSON or Markdown ('md')."""
    path = None if path is None else Path(path)
    fmt = _format(path, fmt, ("md", "json"))
    report = run_report(store, run_id)
    path = path or _default_path(store, report["project"]["name"], f"run{run_id}-report", fmt)
    text = report_markdown(report) if fmt == "md" else json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def zip_folder(folder, path, replace: Mapping[str, bytes] | None = None) -> Path:
    """A zip of `folder`, its files under one top-level folder named like the zip; `replace` gives
    other contents for some files (by path relative to `folder`)."""
    replace = dict(replace or {})
    folder, path = Path(folder), Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: is not a folder, so there is nothing to zip.")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                name = Path(path.stem) / file.relative_to(folder)
                relative = file.relative_to(folder).as_posix()
                if relative in replace:
                    archive.writestr(str(name), replace[relative])
                else:
                    archive.write(file, name)

    return _atomic_write(path, write)


def export_model(store: Store, run_id: int, path=None) -> Path:
    """The run's model folder (Hugging Face format) as a zip; thresholds the user saved for the run go
    into its config.json (`dallmi_thresholds`, what `dallmi score` and load_classifier(...).thresholds()
    read) over the calibration's defaults already there."""
    run = store.get_run(run_id)
    if not run.model_path or not Path(run.model_path).is_dir():
        raise RunStateError(f"run {run_id} has no model folder to export (status {run.status}).")
    project = store.get_project(run.project_id)
    replace = {}
    calibration = decisions.run_calibration(store, run_id)
    saved = store.thresholds(run_id)
    config_file = Path(run.model_path) / "config.json"
    if (saved or calibration is not None) and config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if calibration is not None:  # the run's own (a score run re-estimates the source model's on the target)
            config["dallmi_calibration"] = calibration.to_config()
        config["dallmi_thresholds"] = {**(config.get("dallmi_thresholds") or {}), **decisions.thresholds(store, run_id)}
        replace["config.json"] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
    path = path or _default_path(store, project.name, f"run{run_id}-model", "zip")
    return zip_folder(run.model_path, path, replace)
