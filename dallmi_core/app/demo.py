"""The embedded demo project: support tickets that move from formal e-mails to casual app chat.

`data/make_demo.py` writes the three CSVs (a fixed seed; see its docstring for the story and the
TF-IDF sanity figures). `ensure_demo_project` loads them into a project once and queues the source
fine-tuning; `run_demo` then starts a quick adaptation from the 4 starter tags per label.

    services = open_services()
    project_id = ensure_demo_project(services)      # idempotent: safe to call on every app start
    ...                                             # wait for the finetune-source run
    run_id = run_demo(services, project_id)         # RunStateError until the source model exists

The CSVs are found next to this package (`<repo>/data/`), i.e. in a source checkout or an editable
install; a wheel does not ship them.
"""

from __future__ import annotations

from pathlib import Path

from dallmi_core.app import importer, presence
from dallmi_core.app.services import Services
from dallmi_core.errors import DataError, RunStateError

DEMO_PROJECT = "Demo: support tickets"
DEMO_LABELS = ("billing", "login", "shipping", "returns", "bug", "feature_request")
DEMO_DIR = Path(__file__).resolve().parents[2] / "data"
DEMO_FILES = (("source", "demo_source.csv"), ("target", "demo_target.csv"), ("eval", "demo_eval.csv"))

SOURCE_DEMO = {"max_length": 64, "epochs": 2.0, "batch_size": 16}
"""The demo's source fine-tuning (SourceConfig): 600 e-mails, 2 epochs of 38 steps at 64 tokens, a
few CPU minutes on 2 cores. The e-mails average ~60 tokens; cutting them at 64 loses nothing a
TF-IDF model needs (measured with data/make_demo.py's check)."""

QUICK_CPU_DEMO = {"max_length": 64, "batch_size": 16, "positives_per_label": 4}
"""AdaptConfig settings for a demo on a laptop CPU: the chat messages are short (at most ~45
tokens), so 64 tokens lose nothing; 16 unlabeled + 4 positives per label per step is the batch of
the arxiv_shift prototype (DESIGN.md section 4). No epochs/max_steps: the default step budget tied
to the tags (`tag_passes` over each label's training tags, at least `min_steps`), i.e. ~20 steps
with the 4 starter tags per label. Every other setting is AdaptConfig's default."""

PAPER_SETTINGS = {
    "method": "dallmi",
    "max_length": 128,
    "batch_size": 64,
    "positives_per_label": 4,
    "lr": 5e-5,
    "variational": "log",
    "lambda_mix": 1.0,
}
"""AdaptConfig settings of the DALLMi paper (arXiv 2405.01883) and its official code as DESIGN.md
section 4 records them: the paper's method (`dallmi`, without our source anchor), max length 128,
unlabeled batch 64, AdamW lr 5e-5, the VPU `log` variational term, MixUp weight lambda_mix 1, 4
positives per label per step. Meant for a GPU; MixUp alpha 0.3 and one MixUp pair per label are
AdaptConfig's defaults already."""

# Module globals are shared by every Streamlit session: never change them in place; copy instead,
# e.g. `{**QUICK_CPU_DEMO, "lr": 2e-5}`.


def demo_files() -> tuple[Path, Path, Path]:
    """The demo CSVs: (source e-mails, target chat with starter tags, eval chat with gold labels)."""
    paths = tuple(DEMO_DIR / name for _, name in DEMO_FILES)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"the demo data ({', '.join(missing)}) is missing from {DEMO_DIR}. Run `python data/make_demo.py` "
            "in a source checkout to write it."
        )
    return paths  # type: ignore[return-value]


def ensure_demo_project(services: Services) -> int:
    """The demo project's id; the first call creates it, imports the three files (the target's
    starter tags become annotations, eval labels gold) and queues a quick finetune-source run.

    All of it is one store transaction, so the project exists complete or not at all, and two
    processes racing create it once. Later calls return the existing project and queue nothing
    (whatever became of its runs)."""
    existing = services.store.find_project(DEMO_PROJECT)
    if existing is not None:
        return existing.id
    paths = demo_files()
    quiet = Services(services.store, autostart_worker=False)  # the worker starts after the commit
    with services.store.transaction():
        existing = services.store.find_project(DEMO_PROJECT)  # under the write lock: no race
        if existing is not None:
            return existing.id
        project = quiet.create_project(DEMO_PROJECT, DEMO_LABELS, backbone="default")
        for (domain, _), path in zip(DEMO_FILES, paths, strict=True):
            importer.import_file(quiet.store, project.id, path, domain=domain, label_policy="auto")
        quiet.start_run(project.id, "finetune-source", dict(SOURCE_DEMO))
    if services.autostart_worker:
        presence.ensure_worker(services.data_dir)
    return project.id


def run_demo(services: Services, project_id: int) -> int:
    """Start a quick adaptation (QUICK_CPU_DEMO) of the project's source model; returns the run id.

    RunStateError while the source model is not there yet, saying what the fine-tuning is doing."""
    project = services.store.get_project(project_id)
    if not project.source_model:
        raise RunStateError(_source_not_ready(services, project_id))
    return services.start_run(project_id, "adapt", dict(QUICK_CPU_DEMO))


def _source_not_ready(services: Services, project_id: int) -> str:
    runs = [run for run in services.store.list_runs(project_id) if run.kind == "finetune-source"]  # newest first
    if not runs:
        return "there is no source model yet: start a finetune-source run first, then the demo adaptation."
    run = runs[0]
    if run.status in ("queued", "running", "interrupted"):
        step, total = run.progress.get("step"), run.progress.get("max_steps")
        where = f" (step {step} of {total})" if step is not None and total else ""
        return (
            f"the source model is not ready yet: fine-tuning run {run.id} is {run.status}{where}. "
            "Start the demo adaptation when it is done."
        )
    detail = f": {run.error}" if run.error else ""
    return (
        f"the source fine-tuning (run {run.id}) ended {run.status}{detail}, so there is no source model. "
        "Start a new finetune-source run, then the demo adaptation."
    )
