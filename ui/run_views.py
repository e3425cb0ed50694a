"""Runs on a page: the history table, the loss chart, live progress polled from the store, outcomes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import streamlit as st

from dallmi_core.app import plots
from dallmi_core.app.services import PENDING, PRECISION_WORDS
from ui.session import data_dir, services
from ui.widgets import attempt, flash, shorten, shown_errors

if TYPE_CHECKING:
    from dallmi_core import Project, Run
    from dallmi_core.app.services import RunStatus

T = TypeVar("T")
STAGE_NAMES = {"probe-head": "training the new head on frozen features", "finetune-source": "fine-tuning on source"}
"""Stages whose internal names mean little to a domain expert; the others read well as they are."""
ANALYSIS_KINDS = ("shift",)
"""Run kinds that analyse a finished run rather than train: their progress is a stage and a count."""


def has_model(run: Run) -> bool:
    return bool(run.model_path) and Path(run.model_path).is_dir()


def when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _macro(metrics: dict, which: str) -> float | None:
    table = metrics.get(which)
    value = table.get("map_macro") if isinstance(table, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _figure(value: float | None) -> str:
    """A table cell for an AP figure: three decimals, or a dash where the run measured none."""
    return "–" if value is None else f"{value:.3f}"


def history_rows(runs: Sequence[Run], *, now: float | None = None) -> dict[str, list]:
    """The run history's columns, newest first: text cells, so a missing figure (a fine-tuning
    measures no AP; a queued run has no steps) reads as a dash, not None. "took" is the run's
    active time, without the time it sat paused or queued between attempts."""
    columns = ("run", "kind", "status", "created", "took", "steps", "macro AP before", "macro AP after", "note")
    rows: dict[str, list] = {name: [] for name in columns}
    for run in runs:
        metrics = run.metrics or {}
        steps = metrics.get("steps", run.progress.get("step"))
        rows["run"].append(run.id)
        rows["kind"].append(run.kind)
        rows["status"].append(run.status)
        rows["created"].append(when(run.created_at))
        rows["took"].append(duration(run.active_seconds(now)))
        rows["steps"].append("–" if steps is None else str(steps))
        rows["macro AP before"].append(_figure(_macro(metrics, "before")))
        rows["macro AP after"].append(_figure(_macro(metrics, "after")))
        note = run.error or ("estimated from held-out tags" if metrics.get("estimate") else "")
        rows["note"].append(shorten(note or "", 120))
    return rows


def run_table(runs: Sequence[Run]) -> None:
    """The run history: one row per run, newest first."""
    if not runs:
        st.caption("No run yet.")
        return
    st.dataframe(
        history_rows(runs),
        hide_index=True,
        column_config={
            "took": st.column_config.TextColumn(help="Time the run worked; time paused or queued is not counted."),
            "macro AP before": st.column_config.TextColumn(help="– : the run measured no AP (e.g. a fine-tuning)."),
        },
    )


def _progress_line(status: RunStatus) -> tuple[float | None, str]:
    p = status.progress or {}
    stage = p.get("stage") or status.status
    stage = STAGE_NAMES.get(stage, stage)
    if status.status == "done":  # its last stage's progress ("score: 900 of 900") would read as unfinished
        return 1.0, "done"
    if p.get("total"):
        done = int(p.get("scored") or 0)
        return min(1.0, done / max(int(p["total"]), 1)), f"{stage}: {done:,} of {int(p['total']):,} documents"
    if p.get("max_steps"):
        step = int(p.get("step") or 0)
        return min(1.0, step / max(int(p["max_steps"]), 1)), f"{stage}: step {step} of {int(p['max_steps'])}"
    return None, str(stage)


def _run_outcome(metrics: dict) -> None:
    """A finished run's figures: steps, and macro AP before and after adaptation where it was measured."""
    before, after = _macro(metrics, "before"), _macro(metrics, "after")
    if metrics.get("steps") is None and after is None:
        return
    cols = st.columns(4)
    trained_in = f"Trained in {PRECISION_WORDS(metrics['precision'])}." if "precision" in metrics else None
    cols[0].metric("Steps", metrics.get("steps", "–"), help=trained_in)
    if after is not None:
        cols[1].metric("Macro AP before", f"{before:.3f}" if before is not None else "–")
        delta = None if before is None else f"{after - before:+.3f}"
        cols[2].metric("Macro AP after", f"{after:.3f}", delta=delta)
        cols[3].metric(
            "Measured on",
            "held-out tags" if metrics.get("estimate") else "gold labels",
            help="Gold labels: the project's evaluation documents. Without them: a PU estimate from the "
            "tagged positives held out of training (noisy with few tags).",
        )


def run_details(status: RunStatus, *, live: bool) -> None:
    """Status, progress (step/max_steps, epoch, ETA), the latest loss parts and the loss chart."""
    svc = services()
    p = status.progress or {}
    icons = {  # the app's Material icons: an emoji needs a colour-emoji font the browser may lack
        "queued": ":material/hourglass_top:",
        "running": ":material/play_circle:",
        "interrupted": ":material/pause_circle:",
        "done": ":material/check_circle:",
        "failed": ":material/error:",
        "cancelled": ":material/stop_circle:",
    }
    st.markdown(
        f"**Run {status.run_id}** · {status.kind} · {icons.get(status.status, '')} {status.status}"
        + (f" · attempt {status.attempts}" if status.attempts > 1 else "")
    )
    fraction, text = _progress_line(status)
    if fraction is not None:
        st.progress(fraction, text=text)
    elif status.status in PENDING:
        st.caption(text)
    if status.status == "queued" and live:
        ahead = [r for r in svc.store.list_runs(status="running") if r.id != status.run_id]
        if ahead:
            st.caption(f"Waits for run {ahead[0].id} ({ahead[0].kind}) to finish: the worker runs one job at a time.")
    if status.status in PENDING and status.kind in ANALYSIS_KINDS:  # no epochs, loss or ETA to show
        age = status.heartbeat_age_s
        st.caption(f"Last report {duration(age)} ago." if age is not None else "Not started yet.")
    elif status.status in PENDING:
        cols = st.columns(4)
        cols[0].metric("Epoch", f"{p['epoch']:.2f}" if isinstance(p.get("epoch"), int | float) else "–")
        cols[1].metric("ETA", duration(p.get("eta_s")) if status.status == "running" else "–")
        cols[2].metric("Loss", f"{p['loss']:.4f}" if isinstance(p.get("loss"), int | float) else "–")
        cols[3].metric(
            "Last report", duration(status.heartbeat_age_s) + " ago" if status.heartbeat_age_s is not None else "–"
        )
    else:
        _run_outcome(status.metrics or {})
    parts = {k: v for k, v in p.items() if k in ("variational", "mixup") and isinstance(v, int | float)}
    if parts:
        st.caption(" · ".join(f"{k} {v:.4f}" for k, v in parts.items()))
    stages = svc.run_stages(status.run_id)
    if stages:
        st.plotly_chart(plots.loss_figure(stages), key=f"loss-chart-{status.run_id}", width="stretch")
    if live and not status.worker_alive:
        st.warning(
            "No worker process is serving the queue, so this run waits. Start one with "
            f"`dallmi worker --data-dir {data_dir()}` (or restart the app without DALLMI_NO_WORKER)."
        )
    if status.error:
        st.error(status.error)
        if status.traceback:
            with st.expander("Traceback (for a bug report)"):
                st.code(status.traceback, language="text")


@st.fragment(run_every=2)
def live_run(run_id: int) -> None:
    """Polls the run every 2 s while it is queued or running; a full rerun once it has finished."""
    status = attempt(services().run_status, run_id)
    if status is None:
        return
    if status.status not in PENDING:
        st.rerun()
    run_details(status, live=True)
    if status.can_cancel and st.button("Cancel run", key=f"cancel-{run_id}", icon=":material/stop:"):
        with shown_errors():
            outcome = services().store.request_cancel(run_id)
            flash(f"Run {run_id}: {outcome} (a running run stops after its current step).", "info")
            st.rerun()


def run_panel(run_id: int) -> None:
    """A run's progress: live while it is pending, else its final state with a Resume button."""
    status = attempt(services().run_status, run_id)
    if status is None:
        return
    if status.status in PENDING:
        live_run(run_id)
        return
    run_details(status, live=False)
    if status.can_resume and st.button(
        "Resume from the last checkpoint", key=f"resume-{run_id}", icon=":material/play_arrow:"
    ):
        with shown_errors():
            services().resume_run(run_id)
            flash(f"Run {run_id} is queued again and resumes from its checkpoint.")
            st.rerun()


def insight_run(project: Project, *, key: str) -> Run:
    """The finished adaptation run an insight page looks at (newest first), or stop the page with a pointer
    to the Adapt page. The choice is shared by the three insight pages."""
    from dallmi_core.app import insights  # sklearn and pandas: loaded only by the pages that show insights

    runs = insights.insight_runs(services().store, project.id)
    if not runs:
        st.info("No finished adaptation run yet: start one on the Adapt page, then come back here.")
        st.stop()
    by_id = {run.id: run for run in runs}
    remembered = f"_insight_run:{project.id}"
    if st.session_state.get(key) not in by_id:
        previous = st.session_state.get(remembered)
        st.session_state[key] = previous if previous in by_id else runs[0].id
    run_id = st.selectbox(
        "Run",
        list(by_id),
        key=key,
        format_func=lambda rid: (
            f"run {rid} · {(by_id[rid].config.get('config') or {}).get('method', 'adapt')} · "
            f"{when(by_id[rid].finished_at)}"
        ),
    )
    st.session_state[remembered] = run_id
    return by_id[run_id]
