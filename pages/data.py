"""Data: upload target / source / evaluation files, preview and map their columns, import; counts per domain."""

import streamlit as st

from dallmi_core.app import importer
from dallmi_core.app.services import SOURCE_EPOCHS
from ui import gate, widgets

svc = gate.start()
project = gate.current_project()
st.title("Data")
counts_box = st.container()  # filled last, so it shows the counts after an import in this run

KINDS = {
    "target": "Target text: the unlabeled documents to adapt to (a labels column = your tagged positives)",
    "source": "Source data: labelled documents of the old domain, to fine-tune the source model",
    "eval": "Evaluation set: gold-labelled target documents, used only to measure",
}
POLICIES = {
    "auto": "auto: tags on target rows, gold labels on source/eval rows",
    "gold": "gold: store every row's labels as gold labels (no tags)",
    "ignore": "ignore: import the text only",
}
SUFFIXES = ["csv", "tsv", "jsonl", "json", "parquet", "txt"]
NONE = "(none)"


def upload_form(uploaded, kind: str) -> None:
    """Preview, column mapping and the Import button for one uploaded file."""
    path = widgets.uploaded_path(uploaded)
    preview = widgets.attempt(importer.preview_import, path)
    if preview is None:
        return
    sep = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}.get(preview.delimiter or "")
    st.caption(
        f"**{widgets.md_escape(uploaded.name)}** · {uploaded.size:,} bytes · encoding: {preview.encoding}"
        + (f" · delimiter: {sep}" if sep else "")
    )
    for warning in preview.warnings:  # its note on a missing 'text' column becomes the error below
        if not warning.startswith("no 'text' column"):
            st.warning(warning)
    if not preview.columns:
        st.error(f"{widgets.plain(uploaded.name)}: no columns or records could be read. Check the file's format.")
        return
    columns, optional = list(preview.columns), [NONE, *preview.columns]
    named = importer.guess_mapping(columns)  # conventional column names only
    guess = importer.guess_mapping(columns, preview.frame)  # else the column with the longest texts
    text_error = st.empty()
    key = uploaded.file_id

    def pick(label: str, default: str | None, name: str, help: str) -> str | None:
        index = optional.index(default) if default in optional else 0
        value = st.selectbox(label, optional, index=index, key=f"{name}-{key}", help=help)
        return None if value == NONE else value

    c1, c2, c3, c4 = st.columns(4)
    with c1:
        text_col = st.selectbox(
            "Text column",
            columns,
            index=columns.index(named.text) if named.text in columns else None,
            key=f"map-text-{key}",
            placeholder="choose the text column",
            help="The column with the document text.",
        )
    with c2:
        id_col = pick("Id column", guess.id, "map-id", "Unique per document; none: ids are generated.")
    with c3:
        labels_col = pick("Labels column", guess.labels, "map-labels", "Label names separated by '|', or a list.")
    with c4:
        domain_col = pick(
            "Domain column",
            guess.domain,
            "map-domain",
            "target/source/eval per row. None: every row is imported as the kind chosen above.",
        )
    policy = st.selectbox(
        "Labels in this file",
        list(POLICIES),
        format_func=POLICIES.get,
        key=f"policy-{key}",
        disabled=labels_col is None,
    )
    st.dataframe(
        preview.frame.map(lambda v: widgets.shorten(v, 160) if isinstance(v, str) else v), hide_index=True, height=240
    )
    st.caption(f"The first {len(preview.frame)} rows as read; the import checks every row.")
    if text_col is None:
        text_error.error(
            widgets.plain(
                f"{uploaded.name}: has no 'text' column (columns: {', '.join(columns)}). Choose the column that "
                f"holds the document text (the longest texts are in {guess.text!r}), or name it 'text' in the file."
            ),
            icon=":material/error:",
        )
        return
    if text_col in preview.frame and (
        numbers := importer.numeric_text_warning(preview.frame[text_col].tolist(), text_col)
    ):
        st.warning(widgets.plain(numbers), icon=":material/pin:")
    extra = [c for c in columns if c not in {text_col, id_col, labels_col, domain_col}]
    if extra:
        st.caption(
            "Kept as metadata (shown with the documents, written back by every export): "
            + widgets.md_escape(", ".join(extra))
        )
    mapping = importer.ColumnMapping(text=text_col, id=id_col, labels=labels_col, domain=domain_col)
    if st.button(f"Import into {widgets.md_escape(project.name)}", type="primary", key="import"):
        with st.spinner("Importing…"), widgets.shown_errors():
            report = importer.import_file(
                svc.store, project.id, path, mapping=mapping, domain=None if domain_col else kind, label_policy=policy
            )
            widgets.forget_upload(path)
            st.success(widgets.plain(f"{uploaded.name}: {report.summary()}"))
            for warning in report.warnings:
                st.warning(widgets.plain(warning))
            with st.expander("Import details"):
                st.json(report.to_dict())


kind = st.radio("What are you uploading?", list(KINDS), format_func=KINDS.get, key="upload_kind")
uploaded = st.file_uploader(
    f"A {kind} file",
    type=SUFFIXES,
    key=f"upload-{kind}",
    help="CSV/TSV with a header, JSONL/JSON records, Parquet, or TXT (one document per line). "
    "Only a text column is required; labels are '|'-separated.",
)
if uploaded is not None:
    upload_form(uploaded, kind)

# ---- counts and the source model ----------------------------------------------------------------

counts = svc.store.count_documents(project.id)
with counts_box:
    for col, domain in zip(st.columns(3), ("target", "source", "eval"), strict=True):
        col.metric(f"{domain} documents", f"{counts.get(domain, 0):,}")

meta = svc.store.meta_columns(project.id)
if sum(counts.values()):
    with st.expander(f"Browse the documents (the first 50){' with their metadata' if meta else ''}"):
        docs = svc.store.get_documents(project.id, limit=50)
        table = {"id": [d.ext_id for d in docs], "domain": [d.domain for d in docs]}
        table["text"] = [widgets.shorten(d.text, 160) for d in docs]
        table["gold labels"] = [", ".join(d.gold_labels) if d.gold_labels is not None else "" for d in docs]
        table |= {name: [str(d.meta.get(name, "")) for d in docs] for name in meta}
        st.dataframe(table, hide_index=True)

if counts.get("source"):
    st.divider()
    st.subheader("Fine-tune the source model")
    running = svc.pending_finetune(project.id)
    current = (
        f"The current source model is `{project.source_model}`."
        if project.source_model
        else "A source model is being fine-tuned now."
        if running is not None
        else "The project has no source model yet."
    )
    st.caption(
        f"BCE fine-tuning of the backbone ({project.settings.get('backbone', 'default')}) on the "
        f"{counts['source']:,} source documents: first the new head alone on the backbone's frozen "
        "features, then the whole model briefly at a small learning rate (it transfers better "
        f"to the target than long fine-tuning). The result becomes this project's source model. {current} "
        "Progress shows on the Adapt page."
    )
    epochs = st.number_input(
        "Epochs", min_value=0.5, max_value=50.0, value=SOURCE_EPOCHS, step=0.5, key="source_epochs"
    )
    if running is not None:
        step, total = running.progress.get("step"), running.progress.get("max_steps")
        where = f", step {step} of {total}" if step is not None and total else ""
        st.info(
            f"A fine-tuning is {running.status} (run {running.id}{where}); its model becomes the source model when "
            "it finishes. Follow it on the Adapt page.",
            icon=":material/hourglass_top:",
        )
    elif st.button("Start fine-tuning", key="finetune"):
        with widgets.shown_errors():
            run_id = svc.start_run(project.id, "finetune-source", {"epochs": float(epochs)})
            widgets.flash(f"Run {run_id} (source fine-tuning) is queued; follow it on the Adapt page.")
            st.rerun()
