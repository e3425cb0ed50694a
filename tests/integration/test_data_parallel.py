"""`dallmi adapt` and `dallmi score` under torchrun with 2 CPU processes (gloo): disjoint unlabeled
shards, one model folder written by rank 0, an adapted model that ranks the target labels better
than the source, and sharded scoring that gives every document's scores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import LABELS, make_texts

from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.modeling.model import load_classifier, new_classifier, save_classifier
from dallmi_core.modeling.scoring import score_texts
from dallmi_core.training.distributed import sharded


def _macro_ap(model_dir, texts, gold) -> float:
    return ap_report(gold, score_texts(load_classifier(model_dir), texts, max_length=32), LABELS).map_macro


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapt_with_two_ranks(tmp_path, tiny_backbone, launcher: list[str]):
    """Adapt a never-adapted source model under `launcher`; checks shards, the one writer, and AP."""
    torch.manual_seed(1)
    source = tmp_path / "source"
    save_classifier(new_classifier(tiny_backbone, LABELS), source)  # has never seen a target keyword
    texts, y = make_texts(160, seed=7)
    tagged = np.zeros_like(y)
    for j in range(len(LABELS)):
        tagged[np.flatnonzero(y[:, j])[:8], j] = 1  # 8 tagged positives per label, the rest unlabeled
    labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) for row in tagged]
    target = tmp_path / "target.csv"
    pd.DataFrame({"text": texts, "labels": labels, "domain": "target"}).to_csv(target, index=False)
    out, shards = tmp_path / "adapted", tmp_path / "shards.json"

    adapt = ["-m", "dallmi_core.cli.main", "adapt", "--model", str(source), "--target", str(target), "--out", str(out)]
    adapt += ["--max-steps", "30", "--lr", "1e-3", "--batch-size", "8", "--max-length", "32", "--device", "cpu"]
    done = subprocess.run([*launcher, *adapt, "--shards-json", str(shards)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads(shards.read_text())
    first, second = (set(s) for s in report["unlabeled_shards"])
    assert report["world_size"] == 2 and first and second
    assert not first & second, "both ranks drew from the same unlabeled documents"
    assert abs(len(first) - len(second)) <= 1
    assert done.stdout.count("Adapted model written") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in tmp_path.iterdir() if (p / "config.json").exists()) == ["adapted", "source"]
    assert _macro_ap(out, texts, y) > _macro_ap(source, texts, y) + 0.1
    return out, target, texts


@pytest.mark.slow
def test_torchrun_two_ranks_adapt_on_disjoint_shards_write_one_model_and_score_in_shards(tmp_path, tiny_backbone):
    out, target, texts = _adapt_with_two_ranks(tmp_path, tiny_backbone, TORCHRUN)
    scores = tmp_path / "scores.csv"
    score = ["-m", "dallmi_core.cli.main", "score", "--model", str(out), "--data", str(target), "--out", str(scores)]
    done = subprocess.run([*TORCHRUN, *score, "--device", "cpu"], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded_scores = pd.read_csv(scores)[[f"score_{label}" for label in LABELS]].to_numpy()
    expected = score_texts(load_classifier(out), texts)
    np.testing.assert_allclose(sharded_scores, expected, atol=1e-5)  # each rank scored half, rank 0 wrote all


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_two_rank_adaptation(tmp_path, tiny_backbone):
    """accelerate's own launcher (its `--multi_gpu` mode is torchrun underneath, gloo on a CPU;
    `--cpu --num_processes 2` would start one process: README)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(_free_port())]
    _adapt_with_two_ranks(tmp_path, tiny_backbone, launcher)


def test_shards_of_all_ranks_are_disjoint_and_cover_everything(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        parts.append(sharded(10))
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert [len(p) for p in parts] == [4, 3, 3]
