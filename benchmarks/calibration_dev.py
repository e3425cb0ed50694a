"""Choose the calibration recipe on DEV, offline, from the logits `bench-quality --dump-scores` saved.

For each dataset and seed: the source-only dump's train logits estimate the label priors (the source
model has not seen the tags), the source fit comes from the cached source model's config.json, and
each recipe calibrates source-only (Platt slope) and dallmi (its slope rule) on their train logits,
then scores the dev logits: macro F1 of the 0/1 columns vs the best per-label F1, micro mAP.
Nothing here reads a test part: the dumps come from `--eval-on dev` runs.

    dallmi bench-quality --data ../shared/data/arxiv_shift.csv --positives-per-label 10 --seeds 3 \\
        --methods source-only,dallmi --max-length 96 --eval-on dev --work-dir W --dump-scores D/arxiv_shift
    python benchmarks/calibration_dev.py --dumps D --work-dir W
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from dallmi_core.evaluation.metrics import ap_report, f1_macro, f1_macro_best
from dallmi_core.modeling import calibration as cal

sys.path.insert(0, str(Path(__file__).parent))
from prior_estimators import estimate, rate_threshold  # noqa: E402


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _load(path: Path) -> dict:
    data = np.load(path)
    lengths, flat = data["tag_lengths"], data["tags"]
    tags = np.split(flat, np.cumsum(lengths)[:-1])
    return {k: data[k] for k in ("train_logits", "eval_logits", "eval_gold", "labels")} | {"tags": tags}


def slope_for(rule: str, z_adapted, z_source, fit: cal.SourceFit, prior: float) -> float:
    if rule == "mixture":
        return cal.mixture_slope(z_adapted, prior) or 1.0
    if rule == "std":  # the source slope, rescaled by the spread of the logits on the same documents
        return fit.slope * float(np.std(z_source) / max(np.std(z_adapted), 1e-9))
    if rule == "regress":  # the logistic fit of the source model's calibrated probabilities
        target = _sigmoid(fit.slope * z_source + fit.intercept)
        a, b = 1.0, 0.0
        for _ in range(200):  # Newton on the cross-entropy with soft targets
            p = _sigmoid(a * z_adapted + b)
            g = np.array([np.sum((p - target) * z_adapted), np.sum(p - target)])
            w = p * (1 - p) + 1e-9
            h = np.array([[np.sum(w * z_adapted**2), np.sum(w * z_adapted)], [np.sum(w * z_adapted), np.sum(w)]])
            step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
            a, b = a - step[0], b - step[1]
            if np.abs(step).max() < 1e-8:
                break
        return a if a > 0 else 1.0
    raise ValueError(rule)


THRESHOLD_RULE = "rate"


def evaluate(z_train, z_eval, gold, priors, slopes):
    thresholds, probs = [], np.empty(z_eval.shape)
    for j, (prior, slope) in enumerate(zip(priors, slopes, strict=True)):
        b = cal.intercept_for_prior(z_train[:, j], slope, prior)
        train_p = _sigmoid(slope * z_train[:, j] + b)
        rule = cal.expected_f1_threshold if THRESHOLD_RULE == "ef1" else lambda q, prior=prior: rate_threshold(q, prior)
        thresholds.append(rule(train_p))
        probs[:, j] = _sigmoid(slope * z_eval[:, j] + b)
    names = [str(j) for j in range(gold.shape[1])]
    return f1_macro(gold, probs, thresholds), f1_macro_best(gold, probs), ap_report(gold, probs, names).map_micro


def library_row(folder: Path, fits_by_labels: dict) -> None:
    """The recipe as dallmi_core.modeling.calibration implements it (calibrate_on_target), for the record."""
    rows = []
    for path in sorted(folder.glob("dallmi-seed*-dev.npz")):
        src, ada = _load(path.with_name(path.name.replace("dallmi-", "source-only-"))), _load(path)
        labels = [str(x) for x in src["labels"]]
        fits, figures = fits_by_labels[tuple(labels)], []
        for run, same in ((src, True), (ada, False)):
            calibration = cal.calibrate_on_target(labels, run["train_logits"], src["tags"], source_fit=fits,
                                                  prior_logits=src["train_logits"], same_model=same)  # fmt: skip
            probs = calibration.apply(run["eval_logits"], labels)
            cuts = [calibration.labels[name].threshold for name in labels]
            gold = run["eval_gold"]
            figures.append(
                (f1_macro(gold, probs, cuts), f1_macro_best(gold, probs), ap_report(gold, probs, labels).map_micro)
            )
        rows.append([*figures[0], *figures[1]])
    if rows:
        m = np.mean(rows, axis=0)
        print(f"| {folder.name} | library | library | {m[0]:.3f} / {m[1]:.3f} ({m[0] / m[1]:.2f}) | "
              f"{m[3]:.3f} / {m[4]:.3f} ({m[3] / m[4]:.2f}) | {m[2]:.3f} / {m[5]:.3f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dumps", required=True, help="folder with one subfolder of dumps per dataset")
    parser.add_argument("--work-dir", required=True, help="bench-quality's work dir (the cached source models)")
    parser.add_argument("--estimators", default="em,mean,ratio,median,capped,capped_median")
    parser.add_argument("--slopes", default="mixture,std,regress")
    parser.add_argument("--threshold-rule", default="rate", choices=["rate", "ef1"])
    args = parser.parse_args()
    global THRESHOLD_RULE
    THRESHOLD_RULE = args.threshold_rule
    fits_by_labels = {}
    for folder in Path(args.work_dir).glob("source-*"):
        config = json.loads((folder / "config.json").read_text())
        labels = tuple(config["id2label"][str(i)] for i in range(len(config["id2label"])))
        fits_by_labels[labels] = {k: cal.SourceFit(**v) for k, v in config["dallmi_source_fit"].items()}
    print("| dataset | estimator | slope | source-only F1 default / best | dallmi F1 default / best "
          "| micro mAP src / dallmi |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for folder in sorted(Path(args.dumps).iterdir()):
        library_row(folder, fits_by_labels)
        seeds = sorted({p.name.split("-seed")[1].split("-")[0] for p in folder.glob("dallmi-seed*-dev.npz")})
        runs = [
            (_load(folder / f"source-only-seed{s}-dev.npz"), _load(folder / f"dallmi-seed{s}-dev.npz")) for s in seeds
        ]
        if not runs:
            continue
        fits = fits_by_labels[tuple(str(x) for x in runs[0][0]["labels"])]
        for name in args.estimators.split(","):
            for rule in args.slopes.split(","):
                rows = []
                for src, ada in runs:
                    labels = [str(x) for x in src["labels"]]
                    priors = [estimate(name, src["train_logits"][:, j].astype(float), src["tags"][j], fits[lab])
                              for j, lab in enumerate(labels)]  # fmt: skip
                    src_fig = evaluate(src["train_logits"], src["eval_logits"], src["eval_gold"], priors,
                                       [fits[lab].slope for lab in labels])  # fmt: skip
                    slopes = [slope_for(rule, ada["train_logits"][:, j].astype(float),
                                        src["train_logits"][:, j].astype(float), fits[lab], priors[j])
                              for j, lab in enumerate(labels)]  # fmt: skip
                    ada_fig = evaluate(ada["train_logits"], ada["eval_logits"], ada["eval_gold"], priors, slopes)
                    rows.append((*src_fig, *ada_fig))
                m = np.mean(rows, axis=0)
                print(f"| {folder.name} | {name} | {rule} | {m[0]:.3f} / {m[1]:.3f} ({m[0] / m[1]:.2f}) | "
                      f"{m[3]:.3f} / {m[4]:.3f} ({m[3] / m[4]:.2f}) | {m[2]:.3f} / {m[5]:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
