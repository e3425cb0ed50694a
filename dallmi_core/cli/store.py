"""`dallmi projects|import|export`: the project store from a shell, for scripts and headless use.

The commands open the same store as the app (dallmi_core.app.services over --data-dir, default
$DALLMI_DATA_DIR or ./dallmi_data) and never start a worker. A project is named by its name or id.
"""

from __future__ import annotations

import json
import re

from dallmi_core.app import exporter
from dallmi_core.errors import DataError

_DATA_DIR_HELP = "data directory (default: $DALLMI_DATA_DIR or ./dallmi_data), shared with the app"


def _services(args):
    from dallmi_core.app.services import open_services

    return open_services(args.data_dir, autostart_worker=False)


def _project(svc, name_or_id: str):
    projects = svc.store.list_projects()
    found = next((p for p in projects if p.name.casefold() == name_or_id.casefold()), None)
    if found is None and name_or_id.isdigit():
        found = next((p for p in projects if p.id == int(name_or_id)), None)
    if found is None:
        names = ", ".join(repr(p.name) for p in projects) or "(none yet)"
        raise DataError(f"no project {name_or_id!r}; projects: {names}. Create it with `dallmi projects create`.")
    return found


def cmd_projects_create(args) -> None:
    labels = [part.strip() for part in re.split(r"[,\n]", args.labels or "") if part.strip()]
    with _services(args) as svc:
        project = svc.create_project(args.name, labels, source_model=args.source_model, backbone=args.backbone)
        print(f"created project {project.id} {project.name!r} with {len(project.labels)} labels")


def cmd_projects_list(args) -> None:
    with _services(args) as svc:
        rows = [
            {"id": p.id, "name": p.name, "labels": list(p.labels), "source_model": p.source_model,
             "documents": svc.store.count_documents(p.id)}
            for p in svc.store.list_projects()
        ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    for row in rows:
        counts = ", ".join(f"{n:,} {d}" for d, n in row["documents"].items())
        print(f"{row['id']}\t{row['name']}\t{len(row['labels'])} labels: {', '.join(row['labels'])}\t{counts}")


def cmd_import(args) -> None:
    from dallmi_core.app import importer

    with _services(args) as svc:
        project = _project(svc, args.project)
        preview = importer.preview_import(args.file)
        guess = importer.guess_mapping(preview.columns, preview.frame)
        text = args.text_column or guess.text
        mapping = importer.ColumnMapping(text=text, id=args.id_column or guess.id, labels=guess.labels, domain=None)
        report = importer.import_file(svc.store, project.id, args.file, mapping=mapping, domain=args.domain)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    print(f"{report.imported} imported, {report.repeated} repeated, {report.attached} attached to existing")
    print(report.summary())
    for warning in report.warnings:
        print(f"warning: {warning}")


def cmd_export(args) -> None:
    from dallmi_core.app import candidates

    with _services(args) as svc:
        project = _project(svc, args.project)
        if args.what == "documents":
            path = exporter.export_documents(svc.store, project.id, args.out)
        elif args.what == "annotations":
            path = exporter.export_annotations(svc.store, project.id, args.out)
        else:
            run = candidates.latest_predictions_run(svc.store, project.id)
            if run is None:
                raise DataError(f"project {project.name!r} has no predictions yet: adapt or score first.")
            path = exporter.export_predictions(svc.store, run.id, args.out)
    print(f"wrote {path}")


def add_store_commands(sub) -> None:
    """The store's subcommands on the `dallmi` parser's subparsers."""
    p = sub.add_parser("projects", help="create and list projects in the store the app uses")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("create", help="a new project: its name and labels")
    q.add_argument("--name", required=True)
    q.add_argument("--labels", default="", help="comma-separated label names (a,b,c)")
    q.add_argument("--source-model", help="an existing model folder (its labels are the default)")
    q.add_argument("--backbone", help="a backbone for PU adaptation or source fine-tuning (default: MiniLM)")
    q.add_argument("--data-dir", help=_DATA_DIR_HELP)
    q.set_defaults(func=cmd_projects_create)
    q = actions.add_parser("list", help="every project with its labels and document counts")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument("--data-dir", help=_DATA_DIR_HELP)
    q.set_defaults(func=cmd_projects_list)

    p = sub.add_parser("import", help="import a data file into a project (the app's import policy)")
    p.add_argument("--project", required=True, help="project name or id")
    p.add_argument("--file", required=True)
    p.add_argument("--domain", required=True, choices=("target", "source", "eval"))
    p.add_argument("--text-column", help="the column with the text (default: as the app guesses)")
    p.add_argument("--id-column", help="the column with the ids (default: id, doc_id, ... if present)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--data-dir", help=_DATA_DIR_HELP)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a project's documents, annotations or latest predictions")
    p.add_argument("--project", required=True, help="project name or id")
    p.add_argument("--what", required=True, choices=("documents", "annotations", "predictions"))
    p.add_argument("--out", required=True, help="the file to write (.csv or .jsonl; predictions: .csv or .parquet)")
    p.add_argument("--data-dir", help=_DATA_DIR_HELP)
    p.set_defaults(func=cmd_export)
