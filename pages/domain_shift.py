"""Domain shift: how far the target text is from the source text, for the source and the adapted model,
which words moved, and which labels became more or less frequent."""

import streamlit as st

from dallmi_core.app import plots, shift_view
from dallmi_core.app.services import PENDING
from ui import gate, run_views, widgets

SATURATED = 1.9  # an A-distance this close to 2 means a held-out domain error under 2.5%: no room left to compare

svc = gate.start()
project = gate.current_project()
st.title("Domain shift")
run = run_views.insight_run(project, key="shift_run")
projection = st.radio(
    "Projection",
    ["pca", "tsne"],
    horizontal=True,
    key="shift_projection",
    format_func={"pca": "PCA", "tsne": "t-SNE"}.get,
    help="PCA is linear and fast; t-SNE keeps neighbourhoods (clusters) but takes longer and distorts distances.",
)
analysis = shift_view.cached_shift(svc.store, run.id, projection=projection)
if analysis is None:
    job = shift_view.shift_job(svc.store, run.id, projection=projection)
    if job is not None and job.status in PENDING:  # the worker computes it: live progress, then a full rerun
        st.info(
            "The worker computes the analysis in the background: this page shows it when it is done. You can "
            "leave the page meanwhile; the result is kept with the run.",
            icon=":material/hourglass_top:",
        )
        run_views.live_run(job.id)
        st.stop()
    missing = shift_view.missing_documents(svc.store, project.id)
    if missing is not None:
        st.warning(missing, icon=":material/folder_off:")
        st.page_link("pages/data.py", label="Go to the Data page", icon=":material/upload_file:")
        st.stop()
    if job is not None and job.status == "failed":
        st.error(widgets.plain(f"The last computation (run {job.id}) failed: {job.error}"), icon=":material/error:")
    elif job is not None and job.status == "cancelled":
        st.caption(f"The last computation (run {job.id}) was cancelled.")
    st.info(
        "The analysis embeds the source and the target documents (at most 2,000 of each, a random sample past "
        "that) with the source and the adapted model, once; the result is kept with the run. With a full-size "
        "model this takes minutes on a CPU (seconds on a GPU); the worker does it in the background, with its "
        "progress shown here.",
        icon=":material/hourglass_empty:",
    )
    if st.button("Compute the analysis", key="compute_shift", type="primary", icon=":material/play_arrow:"):
        with widgets.shown_errors():
            job_id = svc.start_run(project.id, "shift", {"run": run.id, "projection": projection})
            widgets.flash(f"Run {job_id} (the shift analysis of run {run.id}) is queued.", "info")
            st.rerun()
    st.stop()
meta = analysis.meta
sampled = (meta["sampled_source"], meta["sampled_target"]) != (meta["source"], meta["target"])
st.caption(
    f"{meta['sampled_source']:,} of {meta['source']:,} source and {meta['sampled_target']:,} of "
    f"{meta['target']:,} target documents embedded"
    + (" (a random sample: the measures and the plots use it)." if sampled else ".")
    + " The terms use every document."
)

# a backbone-only project starts from the backbone under a fresh head, not from a fine-tuned source model
names = {"before": "Source model" if meta.get("source_model", True) else "Backbone, untrained head"}
names["after"] = "Adapted model"
cols = st.columns(2)
for col, key in zip(cols, ("before", "after"), strict=True):
    model = meta["models"][key]
    with col:
        st.markdown(f"**{names[key]}**")
        a, b, c = st.columns(3)
        a.metric(
            "A-distance",
            f"{model['a_distance']:.2f}",
            help="Proxy A-distance 2(1 − 2·error), the error of a logistic-regression domain classifier on "
            f"held-out documents (5-fold cross-validated; balanced accuracy {model['accuracy']:.1%}, 50% is "
            "chance): 0 = the domains look alike, 2 = perfectly separable.",
        )
        b.metric(
            "MMD²",
            f"{model['mmd2']:.3f}",
            help="Squared maximum mean discrepancy between the domains' embeddings: 0 = the same distribution, "
            f"larger = further apart. RBF kernel with the median bandwidth (σ = {model['bandwidth']:.3g}), set "
            "from each model's own distances, so the figure does not depend on the embeddings' scale.",
        )
        c.metric(
            "MMD p-value",
            f"{model['mmd_p']:.3f}",
            help=f"From {model['permutations']} permutations. Small p: the embeddings differ between the domains.",
        )
if min(meta["models"][key]["a_distance"] for key in ("before", "after")) >= SATURATED:
    st.info(
        "Both models tell source from target apart almost without error on held-out documents, so the "
        "A-distance sits at its ceiling of 2 for both and cannot rank them: the domains differ in ways any "
        "text representation keeps (length, register, vocabulary). Compare the MMD², which still measures "
        "how far apart the two domains' embeddings lie.",
        icon=":material/info:",
    )

labels = list(meta["labels"])
colour = st.selectbox(
    "Colour by",
    [None, *labels],
    key="shift_colour",
    format_func=lambda value: "domain" if value is None else f"label: {value}",
    help="A label colours source documents by their gold labels and target documents by the adapted model's "
    "predictions.",
)
groups = analysis.groups(colour)
cols = st.columns(2)
for col, key in zip(cols, ("before", "after"), strict=True):
    with col:
        figure = plots.projection_figure(
            analysis.arrays[f"coords_{key}"], groups, title=f"{names[key]} ({projection.upper()})"
        )
        st.plotly_chart(figure, key=f"projection-{key}", width="stretch")

st.subheader("Terms that distinguish target from source")
st.caption(
    "Weighted log-odds with an informative Dirichlet prior (the pooled counts), as z-scores: above about 2, a "
    "term is reliably more frequent in the target; below about −2, in the source."
)
terms = analysis.terms
left, right = st.columns([3, 2])
left.plotly_chart(plots.terms_figure(terms), key="terms", width="stretch")
right.dataframe(
    terms,
    hide_index=True,
    column_config={"z": st.column_config.NumberColumn(format="%.2f"), "log_odds": None},
)

st.subheader("Label prior shift")
st.caption(
    "Share of documents per label: gold labels of the source, tags and predictions on the target (at each "
    "label's threshold in use, as the exports: saved on the Per-label AP page, else the run's calibrated "
    "default); the source model's predictions (where the project has one) are those of the embedded documents. "
    "Tags cover only what was "
    "tagged, so they understate."
)
prior = analysis.prior
st.plotly_chart(plots.prior_figure(prior), key="prior", width="stretch")
st.dataframe(prior, hide_index=True)
