"""MixUp samples: what the model was trained on. Pairs (tagged positive, unlabeled document), their mix
decoded token by token, and how close the predictions on mixed inputs come to their targets."""

import pandas as pd
import streamlit as st

from dallmi_core.app import insights, plots, run_models
from ui import gate, run_views, widgets

svc = gate.start()
project = gate.current_project()
st.title("MixUp samples")
run = run_views.insight_run(project, key="mixup_run")
labels = list(run.prediction_labels or project.labels)
before = run_models.starting_model(svc.store, run)  # "source model", or the backbone under a fresh head
label = st.selectbox("Label", labels, key="mixup_label", help="Type to search the labels.")
st.caption(
    "Each step mixes the word embeddings of an unlabeled target document u and a document p tagged "
    "with the label: x̃ = μ·W[u] + (1 − μ)·W[p], μ ~ Beta(α, α). The model is trained to score x̃ near the "
    "target t = μ·φ(u) + (1 − μ): the more of the tagged positive in the mix, the closer to 1."
)

source = st.radio(
    "Pairs",
    ["logged during training", "fresh draw"],
    horizontal=True,
    key="mixup_source",
    help="Logged: a sample of the pairs the run trained on, scored right after their step. "
    f"Fresh: new pairs drawn now, scored by the adapted model and by the model it started from ({before}).",
)
if source == "logged during training":
    pairs = insights.logged_mixup(svc.store, run.id, label)
    if pairs.empty:
        st.info("This run logged no MixUp pairs for this label (no tagged positive, or no MixUp): draw fresh pairs.")
        st.stop()
    st.caption(f"{len(pairs)} pairs logged at {pairs['step'].nunique()} training steps.")
    scatter = {"during training": (pairs["target"], pairs["prediction"])}
    shown = pairs.rename(columns={"prediction": "prediction (at that step)"})
else:
    draw = st.number_input("Draw", min_value=0, max_value=9999, value=0, step=1, key="mixup_seed")
    with st.spinner(f"Scoring fresh pairs with the {before} and the adapted model…"):
        pairs = widgets.attempt(insights.fresh_mixup, svc.store, run.id, label, seed=int(draw))
    if pairs is None:
        st.stop()
    scatter = {
        before: (pairs["target_before"], pairs["prediction_before"]),
        "adapted model": (pairs["target_after"], pairs["prediction_after"]),
    }
    shown = pairs
st.plotly_chart(
    plots.mixup_scatter(scatter, title=f"Prediction on the mixed input vs its target ({len(pairs)} pairs)"),
    key="mixup_scatter",
    width="stretch",
)
# Internal document ids mean nothing to a reader: show each pair's external ids and texts instead.
named = insights.document_texts(
    svc.store, project.id, sorted({int(i) for i in (*pairs["positive_doc"], *pairs["unlabeled_doc"])})
)
table = shown.copy()
for key, title in (("positive_doc", "tagged positive p"), ("unlabeled_doc", "unlabeled u")):
    table[key] = [
        f"{named[int(i)][0]}: {widgets.shorten(named[int(i)][1], 80)}" if int(i) in named else "(deleted)"
        for i in table[key]
    ]
    table = table.rename(columns={key: title})
st.dataframe(
    table,
    key="mixup_pairs",
    hide_index=True,
    column_config={"mu": st.column_config.NumberColumn("μ", format="%.3f")},
)

st.subheader("One pair, side by side")
choice = st.selectbox(
    "Pair",
    list(range(min(len(pairs), 50))),
    key="mixup_pair",
    format_func=lambda i: f"pair {i} · μ = {pairs['mu'].iloc[i]:.3f}",
)
row = pairs.iloc[int(choice)]
docs = insights.document_texts(svc.store, project.id, [int(row["positive_doc"]), int(row["unlabeled_doc"])])
cols = st.columns(2)
for col, key, title in zip(
    cols, ("positive_doc", "unlabeled_doc"), ("Tagged positive p", "Unlabeled document u"), strict=True
):
    with col, st.container(border=True):
        ext, text = docs.get(int(row[key]), ("(deleted)", ""))
        st.caption(f"{title} · {widgets.md_escape(ext)}")
        st.text(widgets.shorten(text, 1200))
facts = st.columns(4)
facts[0].metric("μ (weight of u)", f"{row['mu']:.3f}")
if source == "logged during training":
    facts[1].metric("step", int(row["step"]))
    facts[2].metric("target t", f"{row['target']:.3f}")
    facts[3].metric("prediction φ(x̃)", f"{row['prediction']:.3f}")
else:
    facts[1].metric("φ(u), adapted", f"{row['phi_u_after']:.3f}", help=f"{before}: {row['phi_u_before']:.3f}")
    facts[2].metric("target t, adapted", f"{row['target_after']:.3f}", help=f"{before}: {row['target_before']:.3f}")
    facts[3].metric(
        "prediction φ(x̃), adapted",
        f"{row['prediction_after']:.3f}",
        delta=f"{row['prediction_after'] - row['prediction_before']:+.3f} vs {before}",
    )
with st.spinner("Decoding the mixed input…"):
    decoded = widgets.attempt(
        insights.decoded_pair, svc.store, run.id, int(row["positive_doc"]), int(row["unlabeled_doc"]), float(row["mu"])
    )
if decoded is not None:
    st.markdown(
        "**The mixed input, decoded**: the nearest vocabulary token to each mixed word embedding (cosine, "
        "under the adapted model's embeddings); the shorter document is padded, as in a training batch."
    )
    st.text(" ".join(decoded["mixed"]))
    st.dataframe(
        pd.DataFrame(decoded),
        key="mixup_decoded",
        hide_index=True,
        column_config={"similarity": st.column_config.NumberColumn("cosine similarity", format="%.3f")},
    )
