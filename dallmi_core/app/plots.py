"""Plotly figures for the insight pages: plain functions, data in, go.Figure out, no streamlit.

Text from users (labels, terms) only ever goes into plotly data fields, which are drawn as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def _plain(text) -> str:
    """Plotly draws a subset of HTML tags in its strings: escape them so user text shows literally."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "legend": {"orientation": "h", "y": -0.2}}
DOMAIN_COLOURS = {"source": "#1f77b4", "target": "#ff7f0e"}


def ap_bars(table: pd.DataFrame, counts: Mapping[str, int], *, title: str = "AP per label") -> go.Figure:
    """Grouped bars: one group per label (named with its tagged-positive count), one bar per series."""
    fig = go.Figure()
    labels = list(dict.fromkeys(table["label"]))
    ticks = [_plain(f"{label} ({counts.get(label, 0)} tags)") for label in labels]
    for series, part in table.groupby("series", sort=False):
        values = part.set_index("label")["ap"].reindex(labels)
        fig.add_trace(
            go.Bar(
                x=ticks,
                y=values.to_numpy(dtype=float, na_value=np.nan),
                name=_plain(series),
                text=[("n/a" if pd.isna(v) else f"{v:.3f}") for v in values],
                textposition="outside",
            )
        )
    fig.update_layout(
        barmode="group", title=_plain(title), yaxis={"title": "AP", "range": [0, 1.08]}, height=380, **_LAYOUT
    )
    return fig


def pr_figure(precision, recall, *, point: tuple[float, float] | None = None, title: str = "") -> go.Figure:
    """A precision-recall curve (step-wise, as AP integrates it) with the chosen threshold's point."""
    fig = go.Figure(go.Scatter(x=recall, y=precision, mode="lines", line={"shape": "hv"}, name="precision-recall"))
    if point is not None:
        fig.add_trace(
            go.Scatter(x=[point[0]], y=[point[1]], mode="markers", marker={"size": 12}, name="at the threshold")
        )
    fig.update_layout(
        title=_plain(title),
        xaxis={"title": "recall", "range": [0, 1.02]},
        yaxis={"title": "precision", "range": [0, 1.05]},
        height=360,
        **_LAYOUT,
    )
    return fig


def mixup_scatter(points: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "") -> go.Figure:
    """Prediction on the mixed input against its target t, per named set; the diagonal is a perfect fit."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect"))
    for name, (target, prediction) in points.items():
        fig.add_trace(go.Scatter(x=list(target), y=list(prediction), mode="markers", name=_plain(name), opacity=0.7))
    fig.update_layout(
        title=_plain(title),
        xaxis={"title": "target t = μ·φ(u) + (1 − μ)", "range": [-0.02, 1.02]},
        yaxis={"title": "prediction φ(x̃)", "range": [-0.02, 1.02]},
        height=380,
        **_LAYOUT,
    )
    return fig


def projection_figure(coords: np.ndarray, groups: Sequence[str], *, title: str = "") -> go.Figure:
    """2-D document embeddings, one trace (colour) per group name; WebGL so thousands of points stay fast."""
    coords = np.asarray(coords)
    groups = np.asarray(groups, dtype=object)
    fig = go.Figure()
    for name in dict.fromkeys(groups.tolist()):
        rows = groups == name
        fig.add_trace(
            go.Scattergl(
                x=coords[rows, 0],
                y=coords[rows, 1],
                mode="markers",
                name=_plain(name),
                marker={"size": 4, "opacity": 0.6, "color": DOMAIN_COLOURS.get(str(name))},
            )
        )
    fig.update_layout(
        title=_plain(title), height=420, xaxis={"showticklabels": False}, yaxis={"showticklabels": False}, **_LAYOUT
    )
    return fig


def terms_figure(terms: pd.DataFrame, *, top: int = 15) -> go.Figure:
    """Horizontal bars of the z-scores: positive = typical of the target, negative = of the source."""
    positive, negative = terms[terms["z"] > 0], terms[terms["z"] < 0]
    shown = pd.concat([negative.nsmallest(top, "z"), positive.nlargest(top, "z")]).sort_values("z")  # bottom up
    colours = [DOMAIN_COLOURS["target"] if z > 0 else DOMAIN_COLOURS["source"] for z in shown["z"]]
    fig = go.Figure(
        go.Bar(x=shown["z"], y=[_plain(t) for t in shown["term"]], orientation="h", marker={"color": colours})
    )
    fig.update_layout(
        title="Terms that distinguish the domains (weighted log-odds z-score)",
        xaxis={"title": "z  (→ target, ← source)"},
        yaxis={"type": "category"},
        height=max(300, 18 * len(shown) + 80),
        **_LAYOUT,
    )
    return fig


def prior_figure(prior: pd.DataFrame) -> go.Figure:
    """Prevalence per label, one bar per source of labels (gold, tags, predictions)."""
    fig = go.Figure()
    for column in [c for c in prior.columns if c != "label"]:
        fig.add_trace(go.Bar(x=[_plain(label) for label in prior["label"]], y=prior[column], name=_plain(column)))
    fig.update_layout(
        barmode="group",
        title="Label prevalence: source vs target",
        yaxis={"title": "share of documents"},
        height=360,
        **_LAYOUT,
    )
    return fig
