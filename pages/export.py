"""Export: the adapted model (zip), predictions (CSV/Parquet), annotations (CSV/JSONL), run reports (MD/JSON).

Files are built when a button is clicked (st.download_button with a callable), never on page load.
"""

import contextlib

import streamlit as st

from dallmi_core.app import exporter
from ui import gate, run_views, widgets

svc = gate.start()
project = gate.current_project()
st.title("Export")
stem = widgets.slug(project.name)
CSV = ("csv", "CSV", "text/csv")  # (file suffix, button name, MIME type)
ANNOTATION_FORMATS = (CSV, ("jsonl", "JSONL", "application/jsonl"))
PREDICTION_FORMATS = (CSV, ("parquet", "Parquet", "application/vnd.apache.parquet"))
REPORT_FORMATS = (("md", "Markdown", "text/markdown"), ("json", "JSON", "application/json"))
MODEL_FORMATS = (("zip", "zip", "application/zip"),)


def downloads(title: str, export, of: int, kind: str, formats, *, prefix: str = stem, columns: bool = False, **options):
    """One download button per format of an export (of the project or a run), built when clicked:
    `<prefix>-<kind>.<suffix>`, keyed `<kind>-<suffix>`; side by side in columns if asked."""
    places = st.columns(len(formats)) if columns else [contextlib.nullcontext()] * len(formats)
    for place, (suffix, name, mime) in zip(places, formats, strict=True):
        with place:
            widgets.download(
                f"{title} ({name})",
                export,
                svc.store,
                of,
                file_name=f"{prefix}-{kind}.{suffix}",
                mime=mime,
                key=f"{kind}-{suffix}",
                **options,
            )


st.subheader("Annotations")
counts = svc.store.count_documents(project.id)
if not sum(counts.values()):
    st.caption("No documents yet: import some on the Data page.")
else:
    only = st.checkbox(
        "Only documents with labels",
        key="only_labelled",
        help="Target documents carry your tags, source/eval documents their gold labels.",
    )
    st.caption(
        "id, text, labels ('|'-separated), domain, then your metadata columns: the import format, so the file "
        "re-imports cleanly. Documents: every document with its gold labels, tags and metadata."
    )
    downloads(
        "Annotations",
        exporter.export_annotations,
        project.id,
        "annotations",
        ANNOTATION_FORMATS,
        columns=True,
        only_labelled=only,
    )
    downloads("Documents", exporter.export_documents, project.id, "documents", (CSV,))

st.subheader("Runs")
runs = [run for run in svc.store.list_runs(project.id) if run.status == "done" and run.kind != "shift"]  # no analyses
if not runs:
    st.caption("No finished run yet: adapt on the Adapt page.")
else:
    by_id = {run.id: run for run in runs}
    adapted = [run.id for run in runs if run.kind == "adapt"]
    ids = list(by_id)
    run_id = st.selectbox(
        "Run",
        ids,
        index=ids.index(adapted[0]) if adapted else 0,
        key="export_run",
        format_func=lambda rid: f"run {rid} · {by_id[rid].kind} · {run_views.when(by_id[rid].finished_at)}",
    )
    run = by_id[run_id]
    run_stem = f"{stem}-run{run.id}"
    model, predictions, report = st.columns(3)
    with model:
        st.markdown("**Model**")
        if run_views.has_model(run):
            what = "scored with" if run.kind == "score" else "trained by"
            st.caption(f"The model folder {what} this run (Hugging Face format, id2label and thresholds).")
            downloads("Model folder", exporter.export_model, run.id, "model", MODEL_FORMATS, prefix=run_stem)
        else:
            st.caption("This run left no model folder.")
    with predictions:
        st.markdown("**Predictions**")
        if run.prediction_labels:
            st.caption(
                "id, then score_<label> and pred_<label> per label: 0/1 at the label's threshold, the one "
                "saved on the Per-label AP page, else the run's calibrated default (the run report lists each "
                "and where it came from)."
            )
            downloads(
                "Predictions", exporter.export_predictions, run.id, "predictions", PREDICTION_FORMATS, prefix=run_stem
            )
        else:
            st.caption("This run stored no predictions.")
    with report:
        st.markdown("**Run report**")
        st.caption("Configuration, timings and metrics: enough to reproduce the run.")
        downloads("Report", exporter.export_run_report, run.id, "report", REPORT_FORMATS, prefix=run_stem)
