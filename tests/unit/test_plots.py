"""Figure builders: the data lands where a reader looks for it, and user text is never markup."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dallmi_core.app import plots


def test_ap_bars_group_by_label_with_tag_counts_and_mark_missing_ap():
    table = pd.DataFrame(
        {"label": ["a", "b", "a", "b"], "series": ["before", "before", "after", "after"], "ap": [0.2, None, 0.5, 0.4]}
    )
    fig = plots.ap_bars(table, {"a": 3})
    assert [t.name for t in fig.data] == ["before", "after"]
    assert list(fig.data[0].x) == ["a (3 tags)", "b (0 tags)"] and list(fig.data[0].text) == ["0.200", "n/a"]


def test_terms_are_ordered_by_z_with_the_most_target_typical_on_top():
    terms = pd.DataFrame({"term": ["x", "y", "z", "w"], "z": [3.0, 1.0, -0.5, -2.0]})
    bar = plots.terms_figure(terms).data[0]
    assert list(bar.y) == ["w", "z", "y", "x"]  # plotly draws the first category at the bottom
    assert list(bar.x) == [-2.0, -0.5, 1.0, 3.0]


def test_user_text_is_escaped_for_plotly():
    fig = plots.projection_figure(np.zeros((2, 2)), ["<b>x</b>", "a&b"], title="<script>")
    assert [t.name for t in fig.data] == ["&lt;b&gt;x&lt;/b&gt;", "a&amp;b"]
    assert fig.layout.title.text == "&lt;script&gt;"


def test_mixup_scatter_has_the_diagonal_and_one_trace_per_set():
    fig = plots.mixup_scatter({"during training": ([0.9, 0.5], [0.6, 0.4])})
    assert list(fig.data[0].x) == [0, 1] and list(fig.data[1].y) == [0.6, 0.4]
