"""Adapt: the method's settings (presets, device), start / cancel / resume, live progress, run history."""

import streamlit as st

from dallmi_core.app import presence
from dallmi_core.app.services import PENDING
from dallmi_core.app.system import system_info
from ui import gate, run_views, session, widgets

svc = gate.start()
project = gate.current_project()
st.title("Adapt")

with st.spinner("Checking this machine's devices…"):
    machine = system_info()
st.caption(f"This machine: {machine.summary}." + (f" ({machine.note})" if machine.note else ""))


@st.fragment(run_every=5)
def worker_line() -> None:
    """Whether a worker serves this data folder and when it last reported, refreshed every 5 s."""
    status = widgets.attempt(presence.worker_status, svc.store)
    if status is None:
        return
    report = status.report
    if not status.alive:
        start = (
            "one starts when a run is queued"
            if session.worker_autostart()
            else f"start one with `dallmi worker --data-dir {session.data_dir()}`"
        )
        last = ""
        if report is not None:
            how = "exited" if report.state == "exited" else "stopped reporting"
            last = f" The last one (pid {report.pid}) {how} {run_views.duration(status.report_age_s)} ago."
        st.caption(f":material/power_off: No worker is running for this data folder: {start}.{last}")
        return
    bits = [f"pid {status.pid}"]
    if report is not None and report.pid == status.pid and report.state != "exited":
        bits.append(f"running run {report.run_id}" if report.state == "running" else report.state)
        bits.append(f"last reported {run_views.duration(status.report_age_s)} ago")
        if status.rss_mb is not None:
            bits.append(f"{status.rss_mb:,.0f} MB resident")
        idle = report.app_idle_exit
        bits.append(f"exits {run_views.duration(idle)} after the app closes" if idle else "runs until stopped")
    else:
        bits.append("starting, no report yet")
    st.caption(f":material/memory: A worker serves this data folder: {' · '.join(bits)}.")


worker_line()

coverage = svc.coverage(project.id)
counts = svc.store.count_documents(project.id)
empty = [c.label for c in coverage if not c.positives]
if not counts.get("target"):
    st.warning("No target documents yet: import the target text on the Data page first.")
elif len(empty) == len(coverage):
    st.warning("No label has a tagged positive yet: tag a few per label on the Annotate page first.")
elif empty:
    st.info(
        f"{len(empty)} of {len(coverage)} labels have no tagged positive and are skipped by adaptation: "
        f"{widgets.md_escape(widgets.shorten(', '.join(empty), 300))}."
    )
start_from = (
    f"the source model `{project.source_model}`"
    if project.source_model
    else f"the backbone `{project.settings.get('backbone', 'default')}` with a fresh head (pure positive-unlabeled)"
)
st.caption(f"Adaptation starts from {start_from}.")
finetuning = svc.pending_finetune(project.id)
if finetuning:
    st.info(
        f"The source model is still being fine-tuned (run {finetuning.id}): an adaptation started now would "
        "start from the backbone. Wait for that run to finish (below)."
    )

# ---- the settings form ---------------------------------------------------------------------------

defaults, choices = svc.adapt_settings()
presets = session.demo_presets()
preset = st.selectbox(
    "Preset",
    list(presets),
    key="preset",
    help="Defaults: the default method (dallmi-anchored) with settings chosen on dev data. Quick CPU demo: a few "
    "steps on short texts. Paper settings: the paper's method (dallmi), batch size and lengths (slow without a GPU).",
)
values = {**defaults, **presets[preset]}
LABELS = {
    "method": (
        "Method",
        "dallmi-anchored (default): DALLMi held to the source model's predictions, its weights then "
        "interpolated back toward the source model, and the tags' prototypes folded into the head "
        "(docs/METHOD.md); dallmi: the paper's variational PU + "
        "MixUp; bce-partial: untagged = negative (baseline); aad: adversarial adaptation with distillation, "
        "no tags (baseline; needs source documents); target-oracle: BCE on gold target labels (upper bound).",
    ),
    "anchor_weight": ("Source anchor weight", "dallmi-anchored: KL to the source model's predictions; 0 = off."),
    "wise_alpha": ("Keep of the adapted weights (WiSE-FT α)", "dallmi-anchored: 1 = adapted only, 0 = source."),
    "variational": ("Variational term", "log (VPU) or norm (the paper's code)."),
    "lambda_mix": ("MixUp weight λ", "0 turns MixUp off."),
    "lr": ("Learning rate", None),
    "batch_size": ("Unlabeled batch size", "Target documents per step."),
    "positives_per_label": ("Positives per label per step", None),
    "max_steps": ("Max steps (0 = from the tags)", "0: tag_passes passes over each label's tags, at least min_steps."),
    "epochs": ("Epochs over the target (0 = unused)", "Give max steps or epochs, not both."),
    "device": ("Device", "auto picks cuda, then mps, then cpu."),
    "mixup_pairs": ("MixUp pairs per label", None),
    "mixup_alpha": ("MixUp Beta α", None),
    "mixup_at": ("MixUp at", "word_embeddings (DALLMi) or embedding_output (the official code)."),
    "detach_target": ("Detach the MixUp target", None),
    "tag_passes": ("Tag passes (automatic budget)", None),
    "min_steps": ("Min steps (automatic budget)", None),
    "selection": ("Checkpoint selection", "last: the final step; val_*: the best held-out PU score."),
    "val_fraction": ("Held-out share of tags", None),
    "val_unlabeled": ("Held-out unlabeled documents", None),
    "eval_every": ("Validate every N steps", None),
    "patience": ("Early-stop patience (0 = off)", None),
    "max_length": ("Max tokens", None),
    "weight_decay": ("Weight decay", None),
    "warmup_ratio": ("Warmup share", None),
    "grad_clip": ("Gradient clip (0 = off)", None),
    "precision": (
        "Precision",
        "auto: bf16 on GPUs and on CPUs with native bf16 (avx512_bf16 or AMX), fp16 on older GPUs, else float32;"
        " no: float32 everywhere.",
    ),
    "seed": ("Seed", None),
}
MAIN = [
    "method",
    "variational",
    "lambda_mix",
    "lr",
    "batch_size",
    "positives_per_label",
    "max_steps",
    "epochs",
    "device",
]
OPTIONAL = ("max_steps", "epochs", "patience")  # None in the config, 0 in the form


def field(name: str):
    """One setting's widget, typed by its default; keyed by preset so a new preset resets the form."""
    label, help = LABELS.get(name, (name, None))
    value, key = values.get(name), f"{preset}-{name}"
    if name == "device":
        options = [d for d in choices["device"] if d in machine.devices]
        return st.selectbox(label, options, index=options.index(value) if value in options else 0, key=key, help=help)
    if name in choices:
        options = list(choices[name])
        return st.selectbox(label, options, index=options.index(value) if value in options else 0, key=key, help=help)
    if isinstance(defaults.get(name), bool):
        return st.checkbox(label, value=bool(value), key=key, help=help)
    if name in ("epochs", "tag_passes") or isinstance(defaults.get(name), float):
        fmt = "%.1e" if name == "lr" else "%.3f" if name != "epochs" else "%.2f"
        step = 1e-5 if name == "lr" else 0.5 if name in ("epochs", "tag_passes") else 0.05
        return st.number_input(
            label, min_value=0.0, value=float(value or 0.0), step=step, format=fmt, key=key, help=help
        )
    return st.number_input(label, min_value=0, value=int(value or 0), step=1, key=key, help=help)


with st.form("adapt_form"):
    settings = {}
    cols = st.columns(3)
    for i, name in enumerate(MAIN):
        with cols[i % 3]:
            settings[name] = field(name)
    with st.expander("Advanced settings"):
        cols = st.columns(3)
        rest = [name for name in defaults if name not in MAIN and name != "kind"]
        for i, name in enumerate(rest):
            with cols[i % 3]:
                settings[name] = field(name)
    submitted = st.form_submit_button(
        "Start adaptation", type="primary", icon=":material/play_arrow:", key="start_adapt"
    )
if submitted:
    config = {name: (None if name in OPTIONAL and not value else value) for name, value in settings.items()}
    with widgets.shown_errors():
        run_id = svc.start_run(project.id, "adapt", config)
        st.session_state["run_id"] = run_id
        widgets.flash(f"Run {run_id} is queued: the worker picks it up shortly.")
        st.rerun()

if session.is_demo(project):
    if st.button("Run the demo adaptation (quick CPU preset)", key="run_demo"):
        with widgets.shown_errors():
            run_id = session.run_demo(project.id)
            st.session_state["run_id"] = run_id
            widgets.flash(f"Demo run {run_id} is queued.")
            st.rerun()

# ---- progress and history ------------------------------------------------------------------------

runs = svc.store.list_runs(project.id)  # again: a run started above is in it
if runs:
    st.divider()
    by_id = {run.id: run for run in runs}
    pending = [run.id for run in runs if run.status in PENDING]
    shown = st.session_state.get("run_id")
    if shown not in by_id:
        shown = pending[0] if pending else runs[0].id
    ids = list(by_id)
    run_id = st.selectbox(
        "Run",
        ids,
        index=ids.index(shown),
        key=f"run-picker-{shown}-{by_id[shown].status}",  # a new status: a new widget, else it shows the old one
        format_func=lambda rid: f"run {rid} · {by_id[rid].kind} · {by_id[rid].status}",
    )
    st.session_state["run_id"] = run_id
    run_views.run_panel(run_id)
    st.subheader("Run history")
    run_views.run_table(runs)
