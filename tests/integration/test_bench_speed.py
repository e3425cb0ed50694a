"""`dallmi bench-speed` on the tiny model: the JSON keeps the layout tools read, with counted forwards."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts

from dallmi_core.cli.main import main
from dallmi_core.modeling import fast_inference


def _data(tmp_path, n=40):
    texts, y = make_texts(n, seed=4)
    data = tmp_path / "texts.csv"
    labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) for row in y]
    pd.DataFrame({"text": texts, "labels": labels, "domain": "target"}).to_csv(data, index=False)
    return data


def test_bench_speed_writes_step_pipeline_and_scoring_figures(tmp_path, tiny_backbone, capsys):
    out = tmp_path / "speed.json"
    argv = ["bench-speed", "--labels", "2,5", "--data", str(_data(tmp_path)), "--backbone", tiny_backbone]
    argv += ["--batch-size", "4", "--steps", "2", "--max-length", "32", "--device", "cpu", "--json", str(out)]
    argv += ["--precision", "bf16"]  # ours under CPU bf16 autocast: must run too, on its own line
    argv += ["--peak-tflops", "0.5"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    step = result["step"]
    assert set(step) == {"2", "5"}
    assert step["2"]["synthesised_labels"] == 0 and step["5"]["synthesised_labels"] == 5 - len(LABELS)
    assert step["5"]["forwards"]["reference"] == 1 + 3 * 5  # counted by the hook
    assert 1 <= step["5"]["forwards"]["ours"] < step["5"]["forwards"]["reference"]
    assert step["2"]["precision"] == "bf16"  # both steps alike
    assert step["5"]["ratio"] == pytest.approx(step["5"]["reference"]["step_s"] / step["5"]["ours"]["step_s"], rel=0.01)

    pipeline = result["pipeline"]
    official = pipeline["official"]
    assert official["tokenised_once"] is True and official["tokeniser_calls"] == 1
    assert (official["padding"], official["max_length"], official["precision"]) == ("max_length", 32, "float32")
    assert official["trainer"]["forwards_per_step"] == 1 + 3 * len(LABELS)
    assert official["cycle"]["forwards_per_step"] == 1 + 2 * len(LABELS)
    assert pipeline["ours"]["precision"] == "float32" and pipeline["ours_bf16"]["precision"] == "bf16"
    ours = pipeline["ours"]["docs_per_s"]
    assert pipeline["ratio_trainer"] == pytest.approx(ours / official["trainer"]["docs_per_s"], rel=0.01)
    assert pipeline["ratio_cycle"] == pytest.approx(ours / official["cycle"]["docs_per_s"], rel=0.01)
    assert pipeline["ratio"] == min(pipeline["ratio_trainer"], pipeline["ratio_cycle"])  # the faster official
    assert pipeline["ratio_bf16"] > 0
    for row in (official["trainer"], official["cycle"], pipeline["ours"], step["5"]["reference"], step["5"]["ours"]):
        assert row["mfu"] == pytest.approx(row["model_tflops"] / 0.5, rel=1e-3)
        assert row["hfu"] == pytest.approx(row["hardware_tflops"] / 0.5, rel=1e-3)
        assert 0 < row["model_tflop_per_step"] < row["hardware_tflop_per_step"]  # padding is not model work
    # padded to max_length and, in the trainer structure, the unlabeled documents forwarded again
    assert official["trainer"]["hardware_tflop_per_step"] > pipeline["ours"]["hardware_tflop_per_step"]

    scoring = result["scoring"]
    assert scoring["documents"] == 40 and scoring["ratio"] > 0
    if fast_inference.engine() is None:
        assert scoring["fast"] == {"engine": None, "ratio": None, "ap_delta": None}
    else:
        assert scoring["fast"]["engine"] == fast_inference.ENGINE
        assert scoring["fast"]["ratio"] > 0 and 0 <= scoring["fast"]["ap_delta"] < 0.2
    assert "ratio" in capsys.readouterr().out


def test_bench_speed_runs_only_the_parts_asked_for(tmp_path, tiny_backbone):
    out = tmp_path / "speed.json"
    argv = ["bench-speed", "--parts", "scoring", "--data", str(_data(tmp_path, 20)), "--backbone", tiny_backbone]
    assert main([*argv, "--max-length", "32", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "scoring" in result and "step" not in result and "pipeline" not in result


def test_bench_speed_refuses_a_missing_file_and_bad_options(tmp_path, capsys):
    assert main(["bench-speed", "--data", str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench-speed", "--labels", "5,x", "--data", str(tmp_path / "none.csv")]) == 2
    assert "label counts" in capsys.readouterr().err
    data = tmp_path / "some.csv"
    data.write_text("text,labels\na,b\n")
    assert main(["bench-speed", "--data", str(data), "--peak-tflops", "0"]) == 2
    assert "--peak-tflops 0.0: give the device's peak" in capsys.readouterr().err
    assert main(["bench-speed", "--data", str(data), "--parts", "step,speed"]) == 2
    assert "--parts 'step,speed'" in capsys.readouterr().err
