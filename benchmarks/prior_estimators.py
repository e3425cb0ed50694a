"""Which label-prior estimator holds up with K tags? (dev diagnostic behind calibration.py's choice)

For every shared dataset and seed, the bench-quality split (train / dev / test): the cached source
model (the one `dallmi bench-quality` fine-tuned, same work dir and settings) scores the train part;
each candidate estimates every label's target prior from those scores and the K tags; the source
model is then calibrated with it (Platt slope from the source rows, intercept for the prior,
threshold marking that share, the rule the estimators were compared under) and scored on the DEV
part only: prior error against the dev gold
share, macro F1 of the 0/1 columns against the best per-label F1, micro mAP. The test part is never
read. Candidates:

- em:     Saerens et al. (2002) EM on the source-calibrated probabilities, tags clamped to 1
- mean:   calibration in the large: (K + sum of the untagged documents' probabilities) / N
- ratio:  min over the tag scores c with at least half the tags at or above c of
          q_U(c) / q_P(c) (the BBE bound of Garg et al. 2021 without its confidence penalty)
- median: the bound at one cut only, the tags' median score
- capped_median: min(mean, median)
- capped: min(mean, ratio): the covariate-shift estimate, capped by the tags' upper bound
- source: the label's share in the source rows (no re-estimation)
- gold:   the dev gold share itself (not an estimator: the ceiling of the map and threshold rule)

    python benchmarks/prior_estimators.py --work-dir /tmp/bench/work --max-length 96 --json priors.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dallmi_core.bench.quality import source_model, split_target
from dallmi_core.config import SourceConfig
from dallmi_core.data.corpus import read_corpus
from dallmi_core.evaluation.metrics import ap_report, f1_macro, f1_macro_best
from dallmi_core.modeling import calibration as cal
from dallmi_core.modeling.model import load_classifier
from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def em_prior(probabilities: np.ndarray, source_prior: float, tagged: np.ndarray, iters: int = 100) -> float:
    """Saerens et al. (2002): re-estimate a prior on new data from posteriors calibrated at
    `source_prior` (right under pure label shift); tagged documents are known positives."""
    p = np.clip(probabilities, 1e-9, 1 - 1e-9)
    prior = source_prior
    for _ in range(iters):
        w1, w0 = prior / source_prior, (1 - prior) / (1 - source_prior)
        new = float(np.where(tagged, 1.0, w1 * p / (w1 * p + w0 * (1 - p))).mean())
        if abs(new - prior) < 1e-7:
            return new
        prior = new
    return prior


def rate_threshold(probabilities: np.ndarray, prior: float) -> float:
    """The calibrated score at which the share of documents at or above it is the prior."""
    p = np.sort(probabilities)[::-1]
    return float(p[int(np.clip(round(prior * len(p)), 1, len(p))) - 1])


def estimate(name: str, z: np.ndarray, tags, fit: cal.SourceFit) -> float:
    p = _sigmoid(fit.slope * z + fit.intercept)
    known = np.zeros(len(z), bool)
    known[list(tags)] = True
    if name == "em":
        return em_prior(p, fit.prior, known)
    if name == "mean":
        return float(cal.covariate_prior(p, known))
    if name == "ratio":
        return float(cal.tag_bound(z, known))
    if name in ("median", "capped_median"):  # the bound at one cut, the tags' median score
        cut = np.median(z[known])
        q_unl = float(np.mean(z[~known] >= cut)) / float(np.mean(z[known] >= cut))
        bound = (known.sum() + q_unl * (~known).sum()) / len(z)
        return bound if name == "median" else min(bound, estimate("mean", z, tags, fit))
    if name == "capped":  # what calibration.estimate_prior does
        return min(estimate("mean", z, tags, fit), estimate("ratio", z, tags, fit))
    if name == "source":
        return fit.prior
    raise ValueError(name)


ESTIMATORS = (
    "em",
    "mean",
    "ratio",
    "median",
    "capped",
    "capped_median",
    "source",
    "gold",
)  # gold: the dev share itself, a ceiling for the map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--work-dir", default="bench_out")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--datasets", help="comma-separated names (default: every *_shift.csv)")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    wanted = set(args.datasets.split(",")) if args.datasets else None
    for path in sorted(Path(args.data_dir).glob("*_shift.csv")):
        if wanted is not None and path.stem not in wanted:
            continue
        corpus = read_corpus(path)
        labels = corpus.label_names()
        cfg = SourceConfig(max_length=args.max_length)
        clf = load_classifier(source_model(corpus, labels, "default", cfg, Path(args.work_dir)))
        fits = clf.source_fit()
        target = corpus.where_domain("target")
        gold = target.label_matrix(labels)
        for seed in range(args.seeds):
            split = split_target(gold, seed, positives_per_label=args.k)
            tokens = TokenizedCorpus.build(clf.tokenizer, [target.texts[i] for i in split.train], args.max_length)
            z_train = logits_for(clf.model, tokens)
            dev = TokenizedCorpus.build(clf.tokenizer, [target.texts[i] for i in split.dev], args.max_length)
            z_dev, y_dev = logits_for(clf.model, dev), gold[split.dev]
            for name in ESTIMATORS:
                priors, thresholds, probs = [], [], np.empty(z_dev.shape)
                for j, label in enumerate(labels):
                    fit = fits[label]
                    if name == "gold":
                        prior = float(np.clip(y_dev[:, j].mean(), cal.PRIOR_FLOOR, 1 - cal.PRIOR_FLOOR))
                    else:
                        prior = estimate(name, z_train[:, j].astype(np.float64), split.tags[j], fit)
                    b = cal.intercept_for_prior(z_train[:, j], fit.slope, prior)
                    thresholds.append(rate_threshold(_sigmoid(fit.slope * z_train[:, j] + b), prior))
                    probs[:, j] = _sigmoid(fit.slope * z_dev[:, j] + b)
                    priors.append(prior)
                errors = np.abs(np.array(priors) - y_dev.mean(axis=0))
                row = {
                    "dataset": path.stem,
                    "seed": seed,
                    "estimator": name,
                    "prior_abs_error": float(errors.mean()),
                    "f1_default": f1_macro(y_dev, probs, thresholds),
                    "f1_best": f1_macro_best(y_dev, probs),
                    "map_micro": ap_report(y_dev, probs, labels).map_micro,
                    "map_micro_raw": ap_report(y_dev, _sigmoid(z_dev), labels).map_micro,
                }
                rows.append(row)
                print(json.dumps(row))
    print("\n| dataset | estimator | prior error | F1 default / best (ratio) | micro mAP (raw) |")
    print("|---|---|---|---|---|")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for name in ESTIMATORS:
            sel = [r for r in rows if r["dataset"] == dataset and r["estimator"] == name]
            mean = {k: float(np.mean([r[k] for r in sel])) for k in sel[0] if k not in ("dataset", "seed", "estimator")}
            print(
                f"| {dataset} | {name} | {mean['prior_abs_error']:.3f} | {mean['f1_default']:.3f} / "
                f"{mean['f1_best']:.3f} ({mean['f1_default'] / mean['f1_best']:.2f}) | "
                f"{mean['map_micro']:.3f} ({mean['map_micro_raw']:.3f}) |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
