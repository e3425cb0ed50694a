"""The dependency direction of DESIGN.md: nothing in dallmi_core imports streamlit."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import dallmi_core


def _core_modules() -> list[str]:
    return sorted(f"dallmi_core.{m.name}" for m in pkgutil.iter_modules(dallmi_core.__path__))


def test_core_modules_exist():
    expected = {"config", "errors", "data", "modeling", "method", "training", "evaluation", "cli"}
    expected |= {"store", "app", "bench"}
    assert expected <= {name.split(".")[1] for name in _core_modules()}


def test_core_never_imports_streamlit():
    code = (
        "import importlib, sys\n"
        f"for name in {_core_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit')\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
