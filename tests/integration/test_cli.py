"""The `dallmi` command end to end on a tiny model: fine-tune -> adapt -> score -> evaluate -> bench."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts

from dallmi_core.cli.main import main
from dallmi_core.modeling.model import load_classifier


def _frame(n: int, domain: str, seed: int, keep_labels=True) -> pd.DataFrame:
    texts, y = make_texts(n, seed=seed)
    labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) if keep_labels else "" for row in y]
    return pd.DataFrame({"id": [f"{domain}-{i}" for i in range(n)], "text": texts, "labels": labels, "domain": domain})


@pytest.fixture()
def files(tmp_path):
    source = _frame(48, "source", seed=1)
    target = _frame(40, "target", seed=2)
    tagged = target.copy()
    tagged.loc[8:, "labels"] = ""  # only the first rows carry tags: the rest are unlabeled
    paths = {
        "source": tmp_path / "source.csv",
        "tagged": tmp_path / "tagged.csv",
        "gold": tmp_path / "gold.csv",
        "both": tmp_path / "both.csv",
    }
    source.to_csv(paths["source"], index=False)
    tagged.to_csv(paths["tagged"], index=False)
    target.to_csv(paths["gold"], index=False)
    pd.concat([source, _frame(60, "target", seed=3)]).to_csv(paths["both"], index=False)
    return paths


def test_finetune_adapt_score_evaluate(files, tmp_path, tiny_backbone, capsys):
    src, out = tmp_path / "src", tmp_path / "adapted"
    assert (
        main(
            [
                "finetune-source",
                "--data",
                str(files["source"]),
                "--out",
                str(src),
                "--backbone",
                tiny_backbone,
                "--max-steps",
                "4",
                "--max-length",
                "32",
                "--labels",
                ",".join(LABELS),
            ]
        )
        == 0
    )
    source = load_classifier(src)
    assert source.label_names == LABELS
    assert set(source.source_fit()) == set(LABELS) and set(source.calibration().labels) == set(LABELS)
    assert (
        main(
            [
                "adapt",
                "--model",
                str(src),
                "--target",
                str(files["tagged"]),
                "--out",
                str(out),
                "--max-steps",
                "3",
                "--max-length",
                "32",
                "--eval-every",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "documents, float32) written to" in printed  # the suite keeps CPUs in float32 (conftest)
    assert "Adapted model written" in printed and "steps (float32)" in printed

    adapted = load_classifier(out)
    assert adapted.source_fit() is None  # an adapted model's logits no longer match the source fit
    calibration = adapted.calibration()
    assert all(item.basis.startswith(("estimate", "default")) for item in calibration.labels.values())

    preds = tmp_path / "preds.parquet"
    assert main(["score", "--model", str(out), "--data", str(files["gold"]), "--out", str(preds)]) == 0
    frame = pd.read_parquet(preds)
    assert list(frame.columns) == ["id"] + [f"score_{n}" for n in LABELS] + [f"pred_{n}" for n in LABELS]
    assert len(frame) == 40 and frame[[f"score_{n}" for n in LABELS]].stack().between(0, 1).all()
    # thresholds and the map travel in config.json, readable without our code
    config = json.loads((out / "config.json").read_text())
    assert config["dallmi_thresholds"] == pytest.approx(calibration.thresholds())
    for name in LABELS:
        assert (frame[f"pred_{name}"] == (frame[f"score_{name}"] >= config["dallmi_thresholds"][name])).all()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = AutoModelForSequenceClassification.from_pretrained(out)
    batch = AutoTokenizer.from_pretrained(out)(
        list(pd.read_csv(files["gold"])["text"][:5]), padding=True, truncation=True, max_length=128, return_tensors="pt"
    )
    logits = plain(**batch).logits.detach().numpy()
    by_hand = np.stack(
        [
            1
            / (
                1
                + np.exp(
                    -(
                        config["dallmi_calibration"][n]["slope"] * logits[:, j]
                        + config["dallmi_calibration"][n]["intercept"]
                    )
                )
            )
            for j, n in enumerate(LABELS)
        ],
        axis=1,
    )
    np.testing.assert_allclose(by_hand, frame[[f"score_{n}" for n in LABELS]].to_numpy()[:5], atol=1e-5)

    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(out), "--data", str(files["gold"]), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert set(data["per_label_ap"]) == set(LABELS) and 0 < data["map_macro"] <= 1 and 0 < data["map_micro"] <= 1
    assert "map_macro" in data and "| billing |" in capsys.readouterr().out


def test_bench_quality_writes_the_documented_json(files, tmp_path, tiny_backbone):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench-quality",
            "--data",
            str(files["both"]),
            "--positives-per-label",
            "3",
            "--seeds",
            "2",
            "--backbone",
            tiny_backbone,
            "--max-steps",
            "2",
            "--max-length",
            "24",
            "--source-epochs",
            "1",
            "--eval-every",
            "1",
            "--work-dir",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "--dump-scores",
            str(tmp_path / "dump"),
        ]
    )
    assert code == 0
    dumped = np.load(tmp_path / "dump" / "dallmi-seed1-test.npz")
    assert dumped["eval_logits"].shape == dumped["eval_gold"].shape == (24, 3)  # 40% of the 60 target rows
    assert dumped["tag_lengths"].tolist() == [3, 3, 3] and len(dumped["train_logits"]) == 24
    data = json.loads(out.read_text())
    assert set(data["methods"]) == {
        "tfidf-source", "source-only", "bce-partial", "aad", "dallmi", "dallmi-anchored", "target-oracle"
    }  # fmt: skip
    assert data["eval_on"] == "test" and data["default_method"] == "dallmi-anchored"
    seeds = [s["seeds"] for s in data["methods"].values()]
    assert all(order == [0, 1] for order in seeds)  # the same seed order for every method
    prediction_keys = {"map_micro_mean", "f1_macro_default_mean", "f1_macro_best_mean", "prior_abs_error_mean"}
    for summary in data["methods"].values():
        assert {"map_macro_mean", "map_macro_std", "per_label_ap"} | prediction_keys <= set(summary)
        assert set(summary["per_label_ap"]) == set(LABELS)
    dallmi_runs = [r for r in data["runs"] if r["method"] == "dallmi"]
    assert [r["steps"] for r in dallmi_runs] == [2, 2] and all(r["tags"] == [3, 3, 3] for r in dallmi_runs)
    # the source model is fine-tuned once and reused by the next run
    assert len(list((tmp_path / "work").glob("source-*"))) == 1


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("id;body\n1;hello\n", encoding="utf-8")
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    assert main(["score", "--model", str(not_a_model), "--data", str(bad), "--out", str(tmp_path / "p.csv")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["finetune-source", "--data", str(bad), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "text" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "command",
    ["", "finetune-source", "adapt", "score", "evaluate", "bench-quality", "bench-speed", "worker", "projects"],
)
def test_every_command_has_help(command):
    args = [sys.executable, "-m", "dallmi_core.cli", *([command] if command else []), "--help"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: dallmi" in result.stdout


def test_adapt_writes_checkpoints_and_resumes(files, tmp_path, tiny_backbone, capsys):
    import torch

    src = tmp_path / "src"
    assert (
        main(
            [
                "finetune-source",
                "--data",
                str(files["source"]),
                "--out",
                str(src),
                "--backbone",
                tiny_backbone,
                "--max-steps",
                "2",
                "--max-length",
                "32",
            ]
        )
        == 0
    )
    ckpt = tmp_path / "ckpt"
    args = [
        "adapt",
        "--model",
        str(src),
        "--target",
        str(files["tagged"]),
        "--out",
        str(tmp_path / "a"),
        "--max-steps",
        "5",
        "--max-length",
        "32",
        "--checkpoint-dir",
        str(ckpt),
        "--checkpoint-every",
        "2",
    ]
    assert main(args) == 0
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["step"] == 4  # the last checkpoint before the end
    assert main(args) == 0  # resumes at step 4 and runs the last step
    assert "after 5 steps" in capsys.readouterr().out


def test_source_options_reach_the_config():
    from dallmi_core.cli.main import build_parser
    from dallmi_core.cli.options import config_kwargs
    from dallmi_core.config import SourceConfig

    argv = ["finetune-source", "--data", "x.csv", "--out", "m"]
    assert config_kwargs(build_parser().parse_args(argv), SourceConfig) == {}  # the config's defaults apply
    tuned = SourceConfig(
        **config_kwargs(build_parser().parse_args([*argv, "--probe-epochs", "0", "--head-lr", "1e-3"]), SourceConfig)
    )
    assert (tuned.probe_epochs, tuned.head_lr) == (0.0, 1e-3)


@pytest.mark.parametrize("command", ["adapt", "bench-quality"])
def test_adapt_options_take_their_type_choices_and_default_from_the_config(command):
    """Every AdaptConfig setting the CLI offers parses to the field's type, offers exactly the config's
    choices, and shows the config's default in its help."""
    import dataclasses

    from dallmi_core.cli.main import build_parser
    from dallmi_core.config import CHOICES, AdaptConfig

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    actions = {a.dest: a for a in sub._actions}
    defaults = AdaptConfig()
    offered = [f for f in dataclasses.fields(AdaptConfig) if f.name in actions and f.name != "method"]
    assert {
        "lr",
        "variational",
        "selection",
        "anchor_weight",
        "wise_alpha",
        "prototype_weight",
        "prototype_shrinkage",
    } <= {f.name for f in offered}
    for field in offered:
        action = actions[field.name]
        assert action.default is None, field.name  # left out: the config's default, not a copy
        assert tuple(action.choices or ()) == tuple(CHOICES.get(field.name, ())), field.name
        value = getattr(defaults, field.name)
        if value is not None and field.name not in ("epochs", "max_steps", "head_lr"):
            assert f"(default {value})" in " ".join(action.help.split()), (field.name, action.help)


def test_bench_quality_remove_ratios_give_the_papers_table(files, tmp_path, tiny_backbone, capsys):
    out = tmp_path / "ratios.json"
    code = main(["bench-quality", "--data", str(files["both"]), "--remove-ratio", "0.5,0.9", "--seeds", "1,",
                 "--methods", "source-only,default", "--backbone", tiny_backbone, "--max-steps", "1",
                 "--max-length", "24", "--source-epochs", "1", "--work-dir", str(tmp_path / "work"),
                 "--json", str(out)])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data["by_ratio"]) == {"0.5", "0.9"}
    assert {r["remove_ratio"] for r in data["runs"]} == {0.5, 0.9}
    assert {r["seed"] for r in data["runs"]} == {1}  # "1," is the one seed 1, not a count of one
    tags = {r["remove_ratio"]: r["tags"] for r in data["runs"] if r["method"] == "dallmi-anchored"}
    assert all(a >= b >= 1 for a, b in zip(tags[0.5], tags[0.9], strict=True))  # more hidden, fewer tags
    table = capsys.readouterr().out
    assert "thresholded AP (paper)" in table and "+19.9%" in table and "+52.2%" in table
    assert main(["bench-quality", "--data", str(files["both"]), "--remove-ratio", "1.5"]) == 2


@pytest.mark.parametrize(("text", "seeds"), [("3", [0, 1, 2]), ("3,4", [3, 4]), ("4,", [4])])
def test_bench_seeds_are_a_count_or_a_list(text, seeds):
    from dallmi_core.cli.bench import _seeds

    assert _seeds(text) == seeds


@pytest.mark.parametrize("text", ["x", "0", "1,1", "-1,"])
def test_bench_seeds_refuse_what_names_no_seed(text):
    import argparse

    from dallmi_core.cli.bench import _seeds

    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        _seeds(text)
