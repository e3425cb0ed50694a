"""The process's one Services handle (per data directory) and the demo project it prepares on the
first start. `st.session_state` holds only ids; the store is the source of truth."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import streamlit as st

from dallmi_core import DallmiError, Services, open_services
from dallmi_core.app import demo

if TYPE_CHECKING:
    from dallmi_core import Project

T = TypeVar("T")
_TRUTHY = ("1", "true", "yes", "on")


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
