"""Shared widgets of the app: with ui_page.py, the only modules besides app.py and pages/ that import streamlit.

Pages call `services()` for the one Services handle of this process and draw with the helpers
here. `st.session_state` holds only ids (the current project, the run on display) and the label
name being annotated; the store is the source of truth for everything else.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import plotly.graph_objects as go
import streamlit as st

from dallmi_core.app import demo
from dallmi_core.app.services import PENDING, PRECISION_WORDS, Services, open_services
from dallmi_core.app.services import SOURCE_EPOCHS as SOURCE_EPOCHS  # re-exported for the Data page
from dallmi_core.errors import DallmiError

if TYPE_CHECKING:
    from dallmi_core.app.services import LabelCoverage, RunStatus
    from dallmi_core.store import Document, Project, Run

T = TypeVar("T")
_FLASH_KEY = "_flash"
_TRUTHY = ("1", "true", "yes", "on")


# ---- the services handle -------------------------------------------------------------------------


def data_dir() -> Path:
    """$DALLMI_DATA_DIR, else ./dallmi_data (the same rule as the CLI and the worker)."""
    return Path(os.environ.get("DALLMI_DATA_DIR") or "dallmi_data").resolve()


def worker_autostart() -> bool:
    """False with DALLMI_NO_WORKER=1: runs are queued but no worker process is started (tests, or a
    machine where `dallmi worker` is run by hand)."""
    return os.environ.get("DALLMI_NO_WORKER", "").strip().lower() not in _TRUTHY


@st.cache_resource(show_spinner="Opening the project store…")
def _open(directory: str, autostart: bool) -> Services:
    """The process's handle; it beats into the store (app_heartbeats) while the server lives, so the
    worker it starts exits once no app uses the data folder ($DALLMI_WORKER_IDLE_EXIT)."""
    return open_services(directory, autostart_worker=autostart, app_heartbeat=True)


def services() -> Services:
    """One Services per process and data directory (its Store is safe to share between sessions)."""
    return _open(str(data_dir()), worker_autostart())


# ---- the demo project (dallmi_core.app.demo) ------------------------------------------------------


@st.cache_resource(show_spinner="Preparing the demo project…")
def _ensure_demo(directory: str) -> tuple[int | None, str | None]:
    """(demo project id, None) or (None, why not); once per process and data directory."""
    try:
        return int(demo.ensure_demo_project(services())), None
    except DallmiError as exc:
        return None, str(exc)


def ensure_demo() -> int | None:
    """Create and seed the demo project on the first start (skipped with DALLMI_NO_DEMO=1)."""
    if os.environ.get("DALLMI_NO_DEMO", "").strip().lower() in _TRUTHY:
        return None
    project_id, problem = _ensure_demo(str(data_dir()))
    if problem:
        st.sidebar.warning(f"The demo project could not be prepared: {problem}")
    return project_id


def demo_presets() -> dict[str, dict]:
    """Adaptation presets by display name: AdaptConfig's defaults, then the demo's two presets."""
    return {"Defaults": {}, "Quick CPU demo": dict(demo.QUICK_CPU_DEMO), "Paper settings": dict(demo.PAPER_SETTINGS)}


def run_demo(project_id: int) -> int:
    """Queue the demo's adaptation run (dallmi_core.app.demo.run_demo); returns the run id."""
    return int(demo.run_demo(services(), project_id))


def is_demo(project: Project) -> bool:
    return project.name == demo.DEMO_PROJECT


# ---- user errors and messages -------------------------------------------------------------------


@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a DallmiError as a message (never a traceback); anything else is a bug and propagates."""
    try:
        yield
    except DallmiError as exc:
        st.error(plain(str(exc)), icon=":material/error:")


def attempt(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """fn(*args, **kwargs), or None after showing its DallmiError."""
    try:
        return fn(*args, **kwargs)
    except DallmiError as exc:
        st.error(plain(str(exc)), icon=":material/error:")
        return None


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, at the top of the next run (use before st.rerun())."""
    st.session_state.setdefault(_FLASH_KEY, []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop(_FLASH_KEY, []):
        getattr(st, kind, st.info)(message)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~<$])")


def md_escape(text: str) -> str:
    """Text shown through a Markdown element, literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


_MARKUP = re.compile(r"([\\<>\[\]])")


def plain(message: str) -> str:
    """A message that quotes user text (file names, labels, ids) shown through Markdown: no HTML tag,
    autolink or link can form, while the message's own `code` spans still render."""
    return _MARKUP.sub(r"\\\1", str(message))


# ---- labels and documents -----------------------------------------------------------------------


def coverage_text(c: LabelCoverage) -> str:
    mark = "✓" if c.enough else ("·" if c.positives else "✗")
    return f"{c.label}  {mark} {c.positives}/{c.minimum} tagged"


def label_picker(project: Project, coverage: Sequence[LabelCoverage], *, key: str = "label_picker") -> str:
    """A searchable selectbox over the project's labels (type to filter: usable with 50+ labels), each
    option showing its tagged positives against the recommended minimum. Remembers the label per project."""
    labels = list(project.labels)
    remembered = f"_label:{project.id}"
    if st.session_state.get(key) not in labels:
        st.session_state.pop(key, None)
        if st.session_state.get(remembered) in labels:
            st.session_state[key] = st.session_state[remembered]
    by_label = {c.label: c for c in coverage}
    label = st.selectbox(
        "Label",
        labels,
        key=key,
        format_func=lambda name: coverage_text(by_label[name]) if name in by_label else name,
        help="Type to search the labels. ✓: enough positives tagged; ✗: none yet (adaptation skips it).",
    )
    st.session_state[remembered] = label
    return label


def coverage_meter(coverage: Sequence[LabelCoverage], highlight: str | None = None) -> None:
    """The selected label's meter, a summary, and every label's meter in a compact table."""
    if not coverage:
        return
    by_label = {c.label: c for c in coverage}
    if highlight in by_label:
        c = by_label[highlight]
        st.progress(
            min(1.0, c.positives / max(c.minimum, 1)),
            text=f"**{md_escape(c.label)}**: {c.positives} of the recommended {c.minimum} positives tagged",
        )
    enough = sum(c.enough for c in coverage)
    empty = [c.label for c in coverage if not c.positives]
    summary = f"{enough} of {len(coverage)} labels have enough positives."
    if empty:
        shown = ", ".join(map(md_escape, empty[:8])) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        summary += f" No positive yet (skipped by adaptation): {shown}."
    with st.expander(f"Coverage of all labels — {summary}"):
        st.dataframe(
            {
                "label": [c.label for c in coverage],
                "positives": [c.positives for c in coverage],
                "coverage": [min(1.0, c.positives / max(c.minimum, 1)) for c in coverage],
            },
            hide_index=True,
            column_config={
                "coverage": st.column_config.ProgressColumn(
                    "of recommended minimum", min_value=0.0, max_value=1.0, format="percent"
                )
            },
        )


def document_card(doc: Document, *, caption: str = "", limit: int = 600, tags: Sequence[str] = ()) -> None:
    """One document in a bordered box; texts longer than `limit` characters are collapsed."""
    with st.container(border=True):
        line = f"`{doc.ext_id}` · {doc.domain}"
        if tags:
            line += " · tagged: " + ", ".join(md_escape(t) for t in tags)
        if caption:
            line += f" · {caption}"
        st.caption(line)
        text = doc.text
        if len(text) <= limit:
            st.text(text)
        else:
            st.text(text[:limit].rstrip() + " …")
            with st.expander(f"Show all ({len(text):,} characters)"):
                st.text(text)


def shorten(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ---- uploads -------------------------------------------------------------------------------------


def uploaded_path(uploaded) -> Path:
    """An st.file_uploader file on disk under its own name (the importer's messages name the file),
    in a folder per upload that `forget_upload` removes; written once per upload."""
    file_id = re.sub(r"[^A-Za-z0-9_-]", "", str(uploaded.file_id)) or "unnamed"
    folder = Path(tempfile.gettempdir()) / "dallmi-uploads" / file_id
    name = re.sub(r"[\x00-\x1f\x7f]", "", Path(str(uploaded.name).replace("\\", "/")).name).strip()
    while len(name.encode()) > 200:  # file systems allow 255 bytes; keep the end, where the suffix is
        name = name[1:]
    path = folder / (name if name.strip(".") else "upload")  # never a path: no separator, NUL, '.' or '..'
    if not path.is_file() or path.stat().st_size != uploaded.size:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(uploaded.getvalue())
    return path


def forget_upload(path: Path) -> None:
    shutil.rmtree(Path(path).parent, ignore_errors=True)


# ---- exports ---------------------------------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "project"


def exported(export: Callable[..., Path], *args: Any, file_name: str, **options: Any) -> Callable[[], bytes]:
    """A st.download_button callable: runs services.export_*(..., path=<temp dir>/file_name) on click and
    returns the file's bytes, so nothing is built on page load and nothing piles up under exports/."""

    def build() -> bytes:
        with tempfile.TemporaryDirectory(prefix="dallmi-export-") as tmp:
            return Path(export(*args, path=Path(tmp) / file_name, **options)).read_bytes()

    return build


def download(
    label: str, export: Callable[..., Path], *args: Any, file_name: str, mime: str, key: str, **options: Any
) -> None:
    """A download button whose file services.export_* writes when it is clicked."""
    st.download_button(
        label,
        data=exported(export, *args, file_name=file_name, **options),
        file_name=file_name,
        mime=mime,
        on_click="ignore",
        key=key,
        icon=":material/download:",
    )


def has_model(run: Run) -> bool:
    return bool(run.model_path) and Path(run.model_path).is_dir()


# ---- runs ------------------------------------------------------------------------------------------


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


def run_table(runs: Sequence[Run]) -> None:
    """The run history: one row per run, newest first."""
    if not runs:
        st.caption("No run yet.")
        return
    rows = {
        "run": [],
        "kind": [],
        "status": [],
        "created": [],
        "took": [],
        "steps": [],
        "macro AP before": [],
        "macro AP after": [],
        "note": [],
    }
    for run in runs:
        end = run.finished_at or (None if run.started_at is None else datetime.now().timestamp())
        metrics = run.metrics or {}
        rows["run"].append(run.id)
        rows["kind"].append(run.kind)
        rows["status"].append(run.status)
        rows["created"].append(when(run.created_at))
        rows["took"].append(duration(None if run.started_at is None or end is None else end - run.started_at))
        rows["steps"].append(metrics.get("steps", run.progress.get("step")))
        rows["macro AP before"].append(_macro(metrics, "before"))
        rows["macro AP after"].append(_macro(metrics, "after"))
        note = run.error or ("estimated from held-out tags" if metrics.get("estimate") else "")
        rows["note"].append(shorten(note or "", 120))
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "macro AP before": st.column_config.NumberColumn(format="%.3f"),
            "macro AP after": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def loss_figure(series: dict[str, list[tuple[int, float]]]) -> go.Figure:
    """Training loss parts as lines, validation metrics (val_*) as lines with markers, by step."""
    fig = go.Figure()
    for name, points in sorted(series.items(), key=lambda item: (item[0].startswith("val_"), item[0])):
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        validation = name.startswith("val_") or name == "selection_score"
        fig.add_trace(go.Scatter(x=steps, y=values, name=name, mode="lines+markers" if validation else "lines"))
    fig.update_layout(
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis_title="step",
        legend={"orientation": "h", "y": -0.3},
        title="Loss parts and validation metrics",
    )
    return fig


STAGE_NAMES = {"probe-head": "training the new head on frozen features", "finetune-source": "fine-tuning on source"}
"""Stages whose internal names mean little to a domain expert; the others read well as they are."""


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
    icons = {"queued": "⏳", "running": "▶️", "interrupted": "⏸️", "done": "✅", "failed": "❌", "cancelled": "⏹️"}
    st.markdown(
        f"**Run {status.run_id}** · {status.kind} · {icons.get(status.status, '')} {status.status}"
        + (f" · attempt {status.attempts}" if status.attempts > 1 else "")
    )
    fraction, text = _progress_line(status)
    if fraction is not None:
        st.progress(fraction, text=text)
    elif status.status in PENDING:
        st.caption(text)
    if status.status in PENDING:
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
    series = svc.run_series(status.run_id)
    if series:
        st.plotly_chart(loss_figure(series), key=f"loss-chart-{status.run_id}", width="stretch")
    if live and not status.worker_alive:
        st.warning(
            "No worker process is serving the queue, so this run waits. Start one with "
            f"`dallmi worker --data-dir {data_dir()}` (or restart the app without DALLMI_NO_WORKER)."
        )
    if status.error:
        st.error(status.error)


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
            flash(
                f"Run {run_id}: {services().cancel_run(run_id)} (a running run stops after its current step).", "info"
            )
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


# ---- insight pages ---------------------------------------------------------------------------------


def insight_run(project: Project, *, key: str) -> Run:
    """The finished adaptation run an insight page looks at (newest first), or stop the page with a pointer
    to the Adapt page. The choice is shared by the three insight pages."""
    runs = services().insights.runs(project.id)
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
