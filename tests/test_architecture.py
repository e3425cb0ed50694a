"""The dependency direction of docs/ARCHITECTURE.md, checked on the source of every module.

Layers: pages, ui -> dallmi_core.app -> {store, training, evaluation, data} -> {method, modeling}
-> {config, errors}; store may read data's types; bench may use training; cli may use anything.
Imports inside functions count too (a lazy import is still a dependency). Nothing in dallmi_core
imports streamlit; the UI reaches the core only through dallmi_core.app and the public API
(dallmi_core.__all__); tests never import benchmarks/.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import dallmi_core

REPO = Path(__file__).resolve().parents[1]
BASE = {"config", "errors"}
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "modeling": BASE,
    "method": BASE | {"modeling"},
    "evaluation": BASE | {"modeling"},
    "data": BASE,
    "store": BASE | {"data"},
    "training": BASE | {"method", "modeling", "evaluation", "data"},
    "app": BASE | {"method", "modeling", "evaluation", "data", "store", "training"},
    "bench": BASE | {"method", "modeling", "evaluation", "data", "training"},
    "cli": BASE | {"method", "modeling", "evaluation", "data", "store", "training", "app", "bench"},
}
UI_FILES = [REPO / "app.py", *sorted((REPO / "ui").glob("*.py")), *sorted((REPO / "pages").glob("*.py"))]


def core_modules() -> list[str]:
    """Every module of dallmi_core, subpackages included (not the `python -m` entry point)."""
    names = [m.name for m in pkgutil.walk_packages(dallmi_core.__path__, "dallmi_core.")]
    return sorted(n for n in names if not n.endswith(".__main__"))


def module_file(name: str) -> Path:
    path = REPO.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported(source: str, module: str = "") -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import statement, relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join(parent + ([base] if base else []))
            out += [(base, alias.name) for alias in node.names]
    return out


def layer(module: str) -> str | None:
    """The layer of a dallmi_core module: its subpackage or top-level module; None for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(module: str, source: str) -> list[str]:
    """Imports of `module` (a dallmi_core module) that go against the allowed arrows."""
    own = layer(module)
    bad = []
    for target, name in imported(source, module):
        top = target.split(".")[0]
        if top == "streamlit":
            bad.append(f"{module} imports streamlit")
        if top != "dallmi_core" or own is None:
            continue
        to = layer(target) if layer(target) is not None else name  # `from dallmi_core import config`
        if to is None or to == own:
            continue
        if to not in ALLOWED.get(own, set()):
            bad.append(f"{module} -> {target}{'.' + name if name and layer(target) is None else ''}")
    return bad


def test_every_layer_is_a_subpackage_or_a_base_module():
    layers = {layer(name) for name in core_modules()}
    assert layers == set(ALLOWED), sorted(layers ^ set(ALLOWED))


def test_imports_follow_the_allowed_arrows():
    bad = [v for name in core_modules() for v in violations(name, module_file(name).read_text(encoding="utf-8"))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "line", "allowed"),
    [
        ("dallmi_core.method.losses", "from dallmi_core.app.services import Services", False),
        ("dallmi_core.modeling.model", "from dallmi_core.training import adapt", False),
        ("dallmi_core.modeling.model", "from dallmi_core import bench", False),
        ("dallmi_core.store.db", "from ..training.adapt import adapt", False),
        ("dallmi_core.training.adapt", "def f():\n    import dallmi_core.app.jobs", False),
        ("dallmi_core.data.corpus", "import streamlit as st", False),
        ("dallmi_core.app.jobs", "from dallmi_core.training.adapt import adapt", True),
        ("dallmi_core.bench.quality", "from dallmi_core.training.adapt import adapt", True),
        ("dallmi_core.store.documents", "from dallmi_core.data.corpus import Corpus", True),
    ],
)
def test_the_checker_catches_a_forbidden_import(module, line, allowed):
    assert (not violations(module, line)) is allowed


def test_every_module_imports_alone_in_a_fresh_interpreter_without_streamlit():
    """Each module imports by itself (no hidden order or cycle), and none pulls in streamlit."""
    code = (
        "import importlib, sys; importlib.import_module(sys.argv[1]);"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'); assert not bad, bad"
    )

    def check(name: str) -> str | None:
        result = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=300)
        return None if result.returncode == 0 else f"{name}: {result.stderr.strip().splitlines()[-1]}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [f for f in pool.map(check, core_modules()) if f]
    assert not failed, "\n".join(failed)


def test_the_ui_reaches_the_core_only_through_app_and_the_public_api():
    assert (REPO / "ui" / "__init__.py").exists() and not (REPO / "ui.py").exists()  # the UI's one package
    bad = []
    for path in UI_FILES:
        for target, name in imported(path.read_text(encoding="utf-8")):
            if target.split(".")[0] in ("torch", "transformers", "sqlite3", "sqlite_utils"):
                bad.append(f"{path.name} imports {target}")
            if target.split(".")[0] != "dallmi_core":
                continue
            if target == "dallmi_core" and name not in (*dallmi_core.__all__, None):
                bad.append(f"{path.name}: from dallmi_core import {name} (not in dallmi_core.__all__)")
            elif target != "dallmi_core" and layer(target) != "app":
                bad.append(f"{path.name} -> {target}")
    assert not bad, "\n".join(bad)


def test_the_public_api_resolves():
    for name in dallmi_core.__all__:
        assert getattr(dallmi_core, name) is not None
    with pytest.raises(AttributeError):
        dallmi_core.no_such_name  # noqa: B018


def test_tests_never_import_benchmarks():
    bad = []
    for path in sorted(p for p in (REPO / "tests").rglob("*.py") if p != Path(__file__).resolve()):
        text = path.read_text(encoding="utf-8")
        if any(target.split(".")[0] == "benchmarks" for target, _ in imported(text)) or '"benchmarks"' in text:
            bad.append(str(path.relative_to(REPO)))
    assert not bad, bad
