"""Projects: create (name, labels, source model), open, rename, delete with confirmation."""

import re

import streamlit as st

from dallmi_core.app.services import PENDING
from ui import gate, label_admin, run_views, session, widgets

svc = gate.start()
st.title("Projects")

SOURCES = {
    "backbone": "Backbone only (pure positive-unlabeled adaptation)",
    "folder": "An existing model folder (Hugging Face multi-label classifier)",
    "finetune": "Fine-tune one from a labelled source file (uploaded on the Data page)",
}

# ---- the projects ------------------------------------------------------------------------------

projects = svc.store.list_projects()
current = st.session_state.get(gate.PROJECT_KEY)
demo = next((p for p in projects if p.id == current and session.is_demo(p)), None)
if demo is not None:  # a first-time viewer lands here: say what the demo is and what to do next
    finetunes = [run for run in svc.store.list_runs(demo.id) if run.kind == "finetune-source"]
    if demo.source_model:
        step1 = "done, the model is ready."
    elif finetunes and finetunes[0].status in PENDING:
        run = finetunes[0]
        step, total = run.progress.get("step"), run.progress.get("max_steps")
        where = f", step {step} of {total}" if step is not None and total else ""
        step1 = f"running now (run {run.id}{where}; a few CPU minutes, live progress on the Adapt page)."
    else:
        step1 = "not running: start it on the Data page (Fine-tune the source model)."
    n = svc.store.count_documents(demo.id)
    st.info(
        f"**The demo project.** Support tickets of a coffee-machine maker: {n.get('source', 0):,} formal e-mails "
        f"about its old machine (the labelled *source* domain) and {n.get('target', 0):,} casual app-chat messages "
        f"about its new one (the *target*, with a few tagged positives per label), plus {n.get('eval', 0):,} chat "
        "messages with gold labels to measure.\n\n"
        f"1. A source model is fine-tuned on the e-mails: {step1}\n"
        "2. On the **Adapt** page, press *Run the demo adaptation* and watch its live progress.\n"
        "3. The run history there then shows the macro AP on the gold chat messages before and after "
        "adaptation. The **Annotate** page shows the starter tags; tag more and adapt again.",
        icon=":material/school:",
    )
    st.page_link("pages/adapt.py", label="Go to the Adapt page", icon=":material/model_training:")
if projects:
    rows = {"": [], "name": [], "labels": [], "target": [], "source": [], "eval": [], "source model": [], "created": []}
    for p in projects:
        counts = svc.store.count_documents(p.id)
        rows[""].append("▶" if p.id == current else "")
        rows["name"].append(p.name)
        rows["labels"].append(f"{len(p.labels)}: {widgets.shorten(', '.join(p.labels), 80)}")
        for domain in ("target", "source", "eval"):
            rows[domain].append(counts.get(domain, 0))
        rows["source model"].append(p.source_model or f"none (backbone: {p.settings.get('backbone', 'default')})")
        rows["created"].append(run_views.when(p.created_at))
    st.dataframe(rows, hide_index=True)
    by_id = {p.id: p for p in projects}
    col, button = st.columns([3, 1], vertical_alignment="bottom")
    chosen = col.selectbox(
        "Open a project",
        list(by_id),
        format_func=lambda pid: by_id[pid].name,
        index=list(by_id).index(current) if current in by_id else 0,
        key=f"open_project-{current}",  # a new widget once another project is current (e.g. one just created)
    )
    if button.button("Open", disabled=chosen == current):
        gate.select_project(chosen)
        st.rerun()
else:
    st.info("No project yet. Create one below: a name, its labels, and the model to start from.")

# ---- create ------------------------------------------------------------------------------------

with st.expander("Create a project", expanded=not projects, icon=":material/add:"):
    name = st.text_input("Name", key="new_name", placeholder="e.g. support tickets 2024")
    labels_text = st.text_area(
        "Labels",
        key="new_labels",
        placeholder="billing, login, shipping",
        help="Comma- or line-separated. With a model folder, leave empty to take the model's labels.",
    )
    source = st.radio("Start from", list(SOURCES), format_func=SOURCES.get, key="new_source")
    folder = backbone = None
    if source == "folder":
        folder = st.text_input(
            "Model folder",
            key="new_folder",
            placeholder="/path/to/model",
            help="A folder with config.json (id2label) and *.safetensors weights.",
        )
    else:
        backbone = st.text_input(
            "Backbone",
            value="default",
            key="new_backbone",
            help="'default' is the bundled all-MiniLM-L6-v2 (offline). Or a Hugging Face id "
            "(e.g. bert-base-uncased, needs the network) or a local folder.",
        )
    if source == "finetune":
        st.caption(
            "After creating the project, upload the labelled source file on the Data page "
            '("source") and start the fine-tuning there.'
        )
    if st.button("Create project", type="primary", key="create_project"):
        labels = [part.strip() for part in re.split(r"[,\n]", labels_text or "") if part.strip()]
        with widgets.shown_errors():
            if source == "folder":
                project = svc.create_project(name or "", labels, source_model=(folder or "").strip() or None)
            else:
                project = svc.create_project(name or "", labels, backbone=(backbone or "").strip() or None)
            gate.select_project(project.id)
            nxt = (
                "upload its labelled source file on the Data page"
                if source == "finetune"
                else "upload its target text on the Data page"
            )
            widgets.flash(
                f"Created project {widgets.md_escape(repr(project.name))} with {len(project.labels)} labels. "
                f"Next: {nxt}."
            )
            st.rerun()

# ---- rename and delete the current project -------------------------------------------------------

project = next((p for p in projects if p.id == current), None)
if project is not None:
    st.subheader(f"Current project: {widgets.md_escape(project.name)}")
    st.caption(f"Labels ({len(project.labels)}): {', '.join(map(widgets.md_escape, project.labels))}")
    label_admin.label_editor(svc, project)
    left, right = st.columns(2)
    with left:
        new_name = st.text_input("New name", value=project.name, key=f"rename-{project.id}")
        if st.button("Rename", disabled=new_name.strip() == project.name, key="rename_project"):
            with widgets.shown_errors():
                svc.store.rename_project(project.id, new_name)
                widgets.flash(f"Renamed to {widgets.md_escape(repr(new_name.strip()))}.")
                st.rerun()
    with right:
        st.write("")
        if st.button("Delete this project…", key="delete_project", icon=":material/delete:"):
            st.session_state["confirm_delete"] = project.id
        if st.session_state.get("confirm_delete") == project.id:
            counts = svc.store.count_documents(project.id)
            runs = svc.store.list_runs(project.id)
            with st.container(border=True):
                st.warning(
                    f"Delete **{widgets.md_escape(project.name)}** for good? Its {sum(counts.values()):,} documents, "
                    f"all tags, {len(runs)} runs and their model folders go too. This cannot be undone."
                )
                yes, no = st.columns(2)
                if yes.button("Delete for good", type="primary", key="delete_confirm"):
                    st.session_state.pop("confirm_delete", None)
                    with widgets.shown_errors():
                        svc.delete_project(project.id)
                        gate.select_project(None)
                        widgets.flash(f"Deleted project {widgets.md_escape(repr(project.name))}.")
                        st.rerun()
                if no.button("Keep it", key="delete_cancel"):
                    st.session_state.pop("confirm_delete", None)
                    st.rerun()
