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


def test_the_loss_chart_draws_each_stage_on_its_own_step_axis_named_by_the_stage():
    stages = {
        "probe-head": {"probe_loss": [(1, 0.9), (2, 0.7), (3, 0.6)]},
        "finetune-source": {"loss": [(s, 1.0 / s) for s in range(1, 21)], "val_loss": [(10, 0.2), (20, 0.1)]},
    }
    fig = plots.loss_figure(stages)
    axes = {t.name: t.xaxis for t in fig.data}
    assert axes == {"probe_loss": "x", "loss": "x2", "val_loss": "x2"}  # steps 1..3 twice, never on one axis
    assert [a.text for a in fig.layout.annotations] == ["head warm-up (frozen features)", "fine-tuning on source"]
    assert fig.layout.yaxis.range is None and fig.layout.yaxis2.range is None  # nothing to clip
    assert [t.mode for t in fig.data] == ["lines", "lines", "lines+markers"]


def test_one_early_spike_does_not_flatten_the_other_lines_and_the_chart_says_it_is_clipped():
    rng = np.random.default_rng(0)
    mixup = [(s, float(0.5 + 0.05 * rng.random())) for s in range(1, 201)]
    mixup[1] = (2, 80.0)  # an early MixUp spike
    variational = [(s, 1.0 - s / 400) for s in range(1, 201)]
    fig = plots.loss_figure({"adapt": {"mixup": mixup, "variational": variational}})
    low, high = fig.layout.yaxis.range
    assert high < 1.2 and low < 0.5  # every line but the spike fits, and the others fill the panel
    note = fig.layout.annotations[0].text
    assert note.startswith("adaptation") and "clipped" in note and "1 above, up to 80" in note


def test_robust_range_clips_only_the_side_with_outliers():
    assert plots.robust_range([[1.0, 0.9, 0.8, 0.7]]) is None
    assert plots.robust_range([[]]) is None and plots.robust_range([[2.0, 2.0]]) is None
    low, high = plots.robust_range([[0.9] + [1.0 + 0.01 * i for i in range(100)] + [50.0]])
    assert low < 0.9 and high < 2.5  # the low side shows every value, the high side stops at the 98% quantile
    low, high = plots.robust_range([[-40.0] + [1.0 + 0.01 * i for i in range(100)] + [50.0]])
    assert -1.0 < low < 1.0 and high < 2.5  # outliers on both sides: both clipped
