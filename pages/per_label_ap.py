"""Per-label AP: before vs after adaptation and vs other runs, PR curves, and per-label thresholds for export."""

import pandas as pd
import streamlit as st

from dallmi_core.app import decisions, insights, plots
from ui import gate, run_views, widgets

svc = gate.start()
project = gate.current_project()
st.title("Per-label AP")
run = run_views.insight_run(project, key="ap_run")
overview = widgets.attempt(insights.ap_overview, svc.store, run.id)
if overview is None:
    st.stop()

if overview.estimate:
    held = sum(overview.positives.values())
    st.warning(
        f"**Estimate, not measured AP.** This project has no gold target labels, so AP is estimated from "
        f"{held} held-out tagged positives ranked among held-out unlabeled target documents (per label in the "
        "table below). Unknown positives hide among the unlabeled ones, so the estimate understates true AP; "
        "use it to compare runs. Import a labelled eval file on the Data page to measure true AP.",
        icon=":material/warning:",
    )
else:
    st.caption("Measured on the gold-labelled eval documents: true average precision on the model's scores.")

summary = overview.summary.set_index("series")


def _mean(series: str, column: str):
    value = summary[column].get(series) if series in summary.index else None
    return None if value is None or pd.isna(value) else float(value)


cols = st.columns(2)
for col, (column, name) in zip(cols, (("macro", "Macro mAP"), ("micro", "Micro mAP")), strict=True):
    after, before = _mean("after", column), _mean(overview.before, column)
    col.metric(
        name + (" (estimate)" if overview.estimate else ""),
        "n/a" if after is None else f"{after:.3f}",
        delta=None if after is None or before is None else f"{after - before:+.3f} vs before",
        help="Mean over labels of AP (macro) or AP over all label decisions pooled (micro).",
    )

st.plotly_chart(
    plots.ap_bars(overview.table, overview.tags, title="AP per label (tags each label was trained on)"),
    key="ap_bars",
    width="stretch",
)
wide = overview.table.pivot(index="label", columns="series", values="ap").reindex(
    list(dict.fromkeys(overview.table["label"]))
)
wide = wide[list(dict.fromkeys(overview.table["series"]))]
wide.insert(0, "tags", [overview.tags.get(label, 0) for label in wide.index])
counted = "held-out positives (estimate rests on)" if overview.estimate else "gold positives"
wide.insert(1, counted, [overview.positives.get(label, 0) for label in wide.index])
if {"after", overview.before} <= set(wide.columns):
    wide["change"] = wide["after"] - wide[overview.before]
st.dataframe(wide.reset_index(), hide_index=True, column_config={"label": st.column_config.TextColumn("label")})

st.subheader("Decisions: the thresholds of the exported 0/1 columns")
table = widgets.attempt(decisions.decision_table, svc.store, run.id)
if table is not None:
    st.caption(
        "Each label's scores are calibrated without gold: its share of your target documents (the prior) is "
        "estimated from the tagged positives and the unlabeled text, the scores are mapped so that their mean is "
        "that share, and the suggested threshold is the one with the best expected F1 under them. **from**: "
        "*estimate* (that suggestion), *saved* (yours), *default* (too little to estimate: the reason is under "
        "*rests on*)."
        + (" With gold eval documents, *gold-tuned* is the best-F1 threshold there." if "gold-tuned" in table else "")
        + (
            " *reviewed: not*: target documents you marked as not carrying the label; *of them ≥ threshold* "
            "would be exported as positives (they measure the run; nothing is trained or calibrated on them)."
            if "reviewed: not" in table
            else ""
        )
    )
    few = table[table["rests on"].str.contains("tag(s) <", regex=False)]["label"].tolist()
    if few:
        st.warning(
            f"Too few tags to estimate the share of {', '.join(map(widgets.md_escape, few))}: their thresholds are a "
            "stated default (see *rests on*). Tag more positives for them, then score or adapt again.",
            icon=":material/info:",
        )
    if table["rests on"].str.startswith("no calibration").all():
        st.caption("This run predates calibration: its 0/1 columns use 0.5 unless you save a threshold.")
    shares = {"estimated prior", "predicted share", "gold share"} & set(table.columns)
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "label": st.column_config.TextColumn("label"),
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in shares},
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in ("threshold", "suggested", "gold-tuned")},
        },
    )

st.subheader("Precision-recall and threshold")
labels = list(run.prediction_labels or project.labels)
label = st.selectbox("Label", labels, key="ap_label", help="Type to search the labels.")
curve = widgets.attempt(insights.label_curve, svc.store, run.id, label)
if curve is not None and table is not None:
    decision = table.set_index("label").loc[label]
    gold_tuned = decision.get("gold-tuned") if "gold-tuned" in decision else None
    gold_tuned = None if gold_tuned is None or pd.isna(gold_tuned) else float(gold_tuned)
    threshold = st.slider(
        f"Decision threshold for {widgets.md_escape(label)}",
        0.0,
        1.0,
        value=float(decision["threshold"]),
        step=0.001,
        format="%.3f",
        key=f"threshold-{run.id}-{label}",
        help=f"Documents scoring at least this are predicted '{widgets.md_escape(label)}'. In use now: "
        f"{decision['threshold']:.3f} ({decision['from']}).",
    )
    at = curve.at(threshold)
    precision, recall, _ = curve.pr()
    left, right = st.columns([3, 2])
    with left:
        title = f"{label}: AP {curve.ap:.3f}" if curve.ap is not None else label
        if curve.estimate:
            title += f" (estimate from {curve.positives} held-out positives)"
        st.plotly_chart(
            plots.pr_figure(precision, recall, point=(at["recall"], at["precision"]), title=title),
            key="pr_curve",
            width="stretch",
        )
    with right:
        a, b, c = st.columns(3)
        a.metric("Precision", f"{at['precision']:.3f}")
        b.metric("Recall", f"{at['recall']:.3f}")
        c.metric("F1", f"{at['f1']:.3f}")
        kind = "held-out tagged positives vs held-out unlabeled documents" if curve.estimate else "gold eval documents"
        st.caption(
            f"On {len(curve.y):,} {kind}: {at['tp']} true positives, {at['fp']} false positives, "
            f"{at['fn']} missed of {curve.positives} positives."
        )
        if st.button("Save this threshold for export", key="save_threshold", icon=":material/save:"):
            with widgets.shown_errors():
                insights.save_thresholds(svc.store, run.id, {label: threshold})
                widgets.flash(
                    f"Saved threshold {threshold:.3f} for {widgets.md_escape(label)}: "
                    f"the exports of run {run.id} use it."
                )
                st.rerun()
        if gold_tuned is not None and st.button(
            f"Use the gold-tuned threshold ({gold_tuned:.3f})", key="gold_threshold", icon=":material/target:"
        ):
            with widgets.shown_errors():
                insights.save_thresholds(svc.store, run.id, {label: gold_tuned})
                widgets.flash(f"Saved the gold-tuned threshold {gold_tuned:.3f} for {widgets.md_escape(label)}.")
                st.rerun()
        if decision["from"] == "saved" and st.button(
            "Back to the suggested threshold", key="clear_threshold", icon=":material/undo:"
        ):
            svc.store.clear_threshold(run.id, label)
            widgets.flash(f"{widgets.md_escape(label)} uses the suggested threshold again.")
            st.rerun()
