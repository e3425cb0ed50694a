"""Plotly figures for the insight pages and the run views: plain functions, data in, go.Figure out, no streamlit.

Text from users (labels, terms) only ever goes into plotly data fields, which are drawn as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots


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


STAGE_TITLES = {
    "probe-head": "head warm-up (frozen features)",
    "finetune-source": "fine-tuning on source",
    "adapt": "adaptation",
}
"""What each training stage is called on the loss chart; another stage keeps its own name."""
CLIP_QUANTILE = 0.98  # a loss panel's y-axis may end at this quantile of each line ...
CLIP_REACH = 0.5  # ... when values reach further past it than this share of the quantiles' range


def robust_range(lines: Sequence[Sequence[float]], *, quantile: float = CLIP_QUANTILE) -> tuple[float, float] | None:
    """A y-range that a few extreme values (an early MixUp spike) do not flatten: from the lowest line's
    (1 - quantile) quantile to the highest line's `quantile` quantile, with a 5% margin, on each side
    where values reach more than CLIP_REACH of that range beyond it (the other side shows every value).
    None when no side needs it: every value fits without squeezing the rest."""
    values = [np.asarray(line, dtype=float) for line in lines if len(line)]
    if not values:
        return None
    low = min(float(np.quantile(v, 1.0 - quantile)) for v in values)
    high = max(float(np.quantile(v, quantile)) for v in values)
    lowest, highest = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    span = high - low
    clip_low, clip_high = low - lowest > CLIP_REACH * span, highest - high > CLIP_REACH * span
    if span <= 0 or not (clip_low or clip_high):
        return None
    margin = 0.05 * span
    return (low if clip_low else lowest) - margin, (high if clip_high else highest) + margin


def _clip_note(values: Sequence[float], bounds: tuple[float, float]) -> str:
    above = [v for v in values if v > bounds[1]]
    below = [v for v in values if v < bounds[0]]
    parts = [f"{len(above)} above, up to {max(above):.3g}"] if above else []
    parts += [f"{len(below)} below, down to {min(below):.3g}"] if below else []
    return f"y clipped at each line's {CLIP_QUANTILE:.0%} quantile; off the chart: {'; '.join(parts)}"


def _validation(name: str) -> bool:
    return name.startswith("val_") or name == "selection_score"


def loss_figure(stages: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]]) -> go.Figure:
    """Training loss parts as lines and validation metrics (val_*, selection_score) as lines with markers,
    by step: one panel per training stage, side by side in the order they ran, each on its own step axis
    (a fine-tuning's head warm-up and the fine-tuning both count from step 1). A panel where a few extreme
    values would flatten the other lines has its y-axis clipped (robust_range), and its title says so."""
    stages = {stage: {n: p for n, p in series.items() if p} for stage, series in stages.items()}
    stages = {stage: series for stage, series in stages.items() if series}
    layout = {**_LAYOUT, "margin": {"l": 10, "r": 10, "t": 80, "b": 10}, "legend": {"orientation": "h", "y": -0.3}}
    if not stages:
        return go.Figure().update_layout(title="Loss parts and validation metrics", height=300, **layout)
    titles = [_plain(STAGE_TITLES.get(stage, stage)) for stage in stages]
    lengths = [max(step for points in series.values() for step, _ in points) for series in stages.values()]
    widths = [max(length, 0.25 * max(lengths), 1) for length in lengths]  # a short warm-up stays readable
    fig = make_subplots(rows=1, cols=len(stages), subplot_titles=titles, column_widths=widths, horizontal_spacing=0.08)
    names = sorted({name for series in stages.values() for name in series}, key=lambda n: (_validation(n), n))
    colours = {name: qualitative.Plotly[i % len(qualitative.Plotly)] for i, name in enumerate(names)}
    shown: set[str] = set()
    for col, series in enumerate(stages.values(), start=1):
        for name in sorted(series, key=lambda n: (_validation(n), n)):
            steps, values = zip(*series[name], strict=True)
            line = go.Scatter(
                x=steps,
                y=values,
                name=_plain(name),
                legendgroup=name,
                showlegend=name not in shown,
                mode="lines+markers" if _validation(name) else "lines",
                line={"color": colours[name]},
            )
            fig.add_trace(line, row=1, col=col)
            shown.add(name)
        fig.update_xaxes(title_text="step", row=1, col=col)
        bounds = robust_range([[v for _, v in points] for points in series.values()])
        if bounds is not None:
            fig.update_yaxes(range=list(bounds), row=1, col=col)
            note = _clip_note([v for points in series.values() for _, v in points], bounds)
            fig.layout.annotations[col - 1].text = f"{titles[col - 1]}<br><sup>{note}</sup>"
    fig.update_layout(title="Loss parts and validation metrics", height=360, **layout)
    return fig
