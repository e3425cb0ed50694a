"""Export: the adapted model (zip), predictions (CSV/Parquet), annotations (CSV/JSONL), run reports (MD/JSON).

Files are built when a button is clicked (st.download_button with a callable), never on page load.
"""

import streamlit as st

from dallmi_core.app import exporter
from ui import gate, run_views, widgets

svc = gate.start()
project = gate.current_project()
st.title("Export")
stem = widgets.slug(project.name)
PREDICTION_FORMATS = (("csv", "CSV", "text/csv"), ("parquet", "Parquet", "application/vnd.apache.parquet"))
REPORT_FORMATS = (("md", "Markdown", "text/markdown"), ("json", "JSON", "application/json"))


def run_downloads(title: str, export, kind: str, formats, run_id: int) -> None:
    """One download button per format of a run's export, built when clicked."""
    for fmt, name, mime in formats:
        widgets.download(
            f"{title} ({name})",
            export,
            svc.store,
            run_id,
            file_name=f"{stem}-run{run_id}-{kind}.{fmt}",
            mime=mime,
            key=f"{kind}-{fmt}",
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
    for col, fmt, mime in zip(st.columns(2), ("csv", "jsonl"), ("text/csv", "application/jsonl"), strict=True):
        with col:
            widgets.download(
                f"Annotations ({fmt.upper()})",
                exporter.export_annotations,
                svc.store,
                project.id,
                only_labelled=only,
                file_name=f"{stem}-annotations.{fmt}",
                mime=mime,
                key=f"annotations-{fmt}",
            )
    widgets.download(
        "Documents (CSV)",
        exporter.export_documents,
        svc.store,
        project.id,
        file_name=f"{stem}-documents.csv",
        mime="text/csv",
        key="documents-csv",
    )

st.subheader("Runs")
runs = [run for run in svc.store.list_runs(project.id) if run.status == "done"]
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
    model, predictions, report = st.columns(3)
    with model:
        st.markdown("**Model**")
        if run_views.has_model(run):
            what = "scored with" if run.kind == "score" else "trained by"
            st.caption(f"The model folder {what} this run (Hugging Face format, id2label and thresholds).")
            widgets.download(
                "Model folder (zip)",
                exporter.export_model,
                svc.store,
                run.id,
                file_name=f"{stem}-run{run.id}-model.zip",
                mime="application/zip",
                key="model-zip",
            )
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
            run_downloads("Predictions", exporter.export_predictions, "predictions", PREDICTION_FORMATS, run.id)
        else:
            st.caption("This run stored no predictions.")
    with report:
        st.markdown("**Run report**")
        st.caption("Configuration, timings and metrics: enough to reproduce the run.")
        run_downloads("Report", exporter.export_run_report, "report", REPORT_FORMATS, run.id)
