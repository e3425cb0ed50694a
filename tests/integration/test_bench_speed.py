"""`dallmi bench-speed` on the tiny model: the JSON keeps its shape and every figure is positive."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts

from dallmi_core.cli import main


def test_bench_speed_writes_step_pipeline_and_scoring_figures(tmp_path, tiny_backbone, capsys):
    texts, y = make_texts(40, seed=4)
    data = tmp_path / "texts.csv"
    labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) for row in y]
    pd.DataFrame({"text": texts, "labels": labels, "domain": "target"}).to_csv(data, index=False)
    out = tmp_path / "speed.json"
    argv = ["bench-speed", "--labels", "2,5", "--data", str(data), "--backbone", tiny_backbone]
    argv += ["--batch-size", "4", "--steps", "2", "--max-length", "32", "--device", "cpu", "--json", str(out)]
    argv += ["--precision", "bf16"]  # our pipeline under CPU bf16 autocast: must run too
    argv += ["--peak-tflops", "0.5"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["step"]) == {"2", "5"}
    assert result["step"]["2"]["synthesised_labels"] == 0
    assert result["step"]["5"]["synthesised_labels"] == 5 - len(LABELS)
    assert result["step"]["5"]["reference_forwards_per_step"] == 16
    rows = [*result["step"].values(), result["pipeline"], result["scoring"]]
    for row in rows:
        for key, value in row.items():
            if key.endswith(("_s", "_per_s", "ratio", "_mib")):
                assert value > 0, key
    assert result["pipeline"]["labels"] == len(LABELS)
    assert result["pipeline"]["ours_precision"] == "bf16"
    assert result["pipeline"]["ratio_float32"] > 0  # ours in float32 too, in the same run
    assert result["pipeline"]["ours_float32_docs_per_s"] > 0
    assert result["step"]["2"]["precision"] == "bf16"  # both steps alike
    for row, paths in ((result["step"]["5"], ("reference", "vectorised")), (result["pipeline"], ("official", "ours"))):
        for name in paths:  # model FLOPs from the forwards' shapes, and utilisation of the given peak
            assert row[f"{name}_mfu"] == pytest.approx(row[f"{name}_tflops"] / 0.5, rel=1e-3)
    # the per-label loop forwards the unlabeled batch again and pads to 128: more FLOPs per step
    assert result["pipeline"]["official_tflop_per_step"] > result["pipeline"]["ours_tflop_per_step"]
    assert result["scoring"]["documents"] == 40
    assert "ratio" in capsys.readouterr().out


def test_bench_speed_refuses_a_missing_file_and_bad_label_counts(tmp_path, capsys):
    assert main(["bench-speed", "--data", str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench-speed", "--labels", "5,x", "--data", str(tmp_path / "none.csv")]) == 2
    assert "label counts" in capsys.readouterr().err
    data = tmp_path / "some.csv"
    data.write_text("text,labels\na,b\n")
    assert main(["bench-speed", "--data", str(data), "--peak-tflops", "0"]) == 2
    assert "--peak-tflops 0.0: give the device's peak" in capsys.readouterr().err
