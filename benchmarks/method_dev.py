"""Choose the default adaptation on the dev parts of all shared datasets at once (issue 13).

Every candidate (a method and its settings) trains once per dataset and seed for the largest step
budget of the grid; at each budget of the grid its dev macro mAP is measured for each WiSE-FT
alpha (the weights interpolated toward the source model's, then restored), so one run gives the
whole grid. Every method gets the same grid of budgets and alphas (the same tuning budget). The
learning rate decays linearly to the largest budget, so a shorter budget's figure is read mid-decay;
the frozen default then runs with its own budget (`dallmi bench-quality`, test part).

    python benchmarks/method_dev.py --work-dir /tmp/bench --seeds 0,1 --json /tmp/bench/method_dev.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dallmi_core.bench.quality import source_logits_on, source_model, split_target
from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.data.corpus import read_corpus
from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.modeling.model import load_classifier
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.adapt import adapt, interpolate_weights
from dallmi_core.training.callbacks import Callback
from dallmi_core.training.prototype import features_and_logits, fold_prototypes, head_linear

DATASETS = ("arxiv_shift", "movies_shift", "pubmed_shift")
CANDIDATES = {
    "dallmi": {"method": "dallmi"},
    "dallmi-anchored": {"method": "dallmi-anchored", "anchor_weight": 1.0, "wise_alpha": 1.0, "prototype_weight": 0.0},
    "bce-partial": {"method": "bce-partial", "selection": "last"},
    "aad": {"method": "aad"},
}


class DevGrid(Callback):
    """At each budget of the grid: dev macro mAP of the current weights at every alpha, and with the
    tags' prototypes (fitted on the train part's features of those weights) folded in at every gamma
    and covariance shrinkage. The folded head changes only the last linear layer, so each prototype
    setting is applied to the dev features of one pass instead of another forward."""

    def __init__(
        self, clf, start, tokens, gold, labels, budgets, alphas, rows, tag, train=None, prototypes=((0.0, 1.0),)
    ):
        self.clf, self.start, self.tokens, self.gold, self.labels = clf, start, tokens, gold, labels
        self.budgets, self.alphas, self.rows, self.tag = set(budgets), alphas, rows, tag
        self.train, self.prototypes = train, prototypes  # (train tokens, tags); (gamma, shrinkage) pairs

    def on_evaluate(self, state, metrics):
        if state.step not in self.budgets and state.step != 0:
            return
        model = self.clf.model  # on one device the trainer trains this very module
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        alphas = self.alphas if state.step else [1.0]  # step 0: the source model itself
        for alpha in alphas:
            interpolate_weights(model, self.start, alpha)
            dev_features, dev_logits = features_and_logits(model, self.tokens)  # eval mode inside
            train_features, train_logits = features_and_logits(model, self.train[0])
            linear = head_linear(model)
            for gamma, shrinkage in self.prototypes:
                before = (linear.weight.detach().clone(), linear.bias.detach().clone())
                if gamma > 0:
                    fold_prototypes(model, train_features, train_logits, self.train[1], gamma, shrinkage)
                delta_w = (linear.weight.detach() - before[0]).double().numpy()
                delta_b = (linear.bias.detach() - before[1]).double().numpy()
                with torch.no_grad():
                    linear.weight.copy_(before[0])
                    linear.bias.copy_(before[1])
                scores = dev_logits + dev_features @ delta_w.T + delta_b
                ap = ap_report(self.gold, scores, self.labels).map_macro
                row = {**self.tag, "step": state.step, "alpha": alpha, "gamma": gamma, "shrinkage": shrinkage}
                self.rows.append({**row, "map_macro": ap})
                print(f"  {row}: dev mAP {ap:.4f}", flush=True)
            model.load_state_dict(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budgets", default="20,40,60")
    parser.add_argument("--alphas", default="1.0,0.7,0.5")
    parser.add_argument("--gammas", default="0", help="prototype weights (prototype.py) evaluated at each alpha")
    parser.add_argument("--shrinkages", default="1", help="prototype covariance shrinkages, each with every gamma")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
    gammas = [float(g) for g in args.gammas.split(",")]
    shrinkages = [float(x) for x in args.shrinkages.split(",")]
    prototypes = [(0.0, 1.0)] + [(g, x) for g in gammas if g > 0 for x in shrinkages]
    out = Path(args.json)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["dataset"], r["seed"], r["candidate"]) for r in rows}
    for name in args.datasets.split(","):
        corpus = read_corpus(Path(args.data_dir) / f"{name}.csv")
        labels = corpus.label_names()
        source_cfg = SourceConfig(max_length=args.max_length)
        src_dir = source_model(corpus, labels, "default", source_cfg, Path(args.work_dir) / name.split("_")[0])
        target = corpus.where_domain("target")
        source_texts = corpus.where_domain("source").texts
        gold = target.label_matrix(labels)
        start_logits = source_logits_on(src_dir, target.texts, AdaptConfig(max_length=args.max_length))
        for seed in (int(s) for s in args.seeds.split(",")):
            split = split_target(gold, seed, positives_per_label=10)
            train_texts = [target.texts[i] for i in split.train]
            dev_texts = [target.texts[i] for i in split.dev]
            for candidate in args.candidates.split(","):
                tag = {"dataset": name, "seed": seed, "candidate": candidate}
                if (name, seed, candidate) in done:
                    continue
                torch.manual_seed(seed)
                clf = load_classifier(src_dir)
                start = {k: v.detach().clone() for k, v in clf.model.state_dict().items()}
                dev_tokens = TokenizedCorpus.build(clf.tokenizer, dev_texts, args.max_length)
                cfg = AdaptConfig(max_length=args.max_length, seed=seed).replace(
                    **CANDIDATES[candidate], max_steps=max(budgets), eval_every=min(budgets)
                )
                train = (TokenizedCorpus.build(clf.tokenizer, train_texts, args.max_length), split.tags)
                grid = DevGrid(
                    clf, start, dev_tokens, gold[split.dev], labels, budgets, alphas, rows, tag, train, prototypes
                )
                began = time.perf_counter()
                adapt(clf, train_texts, split.tags, cfg, callbacks=[grid], source_texts=source_texts,
                      start_logits=start_logits[split.train])  # fmt: skip
                rows.append({**tag, "seconds": time.perf_counter() - began})
                out.write_text(json.dumps({"rows": rows}, indent=1))
    print(summary(rows))


def summary(rows: list[dict]) -> str:
    """Mean dev mAP gain over source-only (step 0) per candidate, budget and alpha, per dataset and
    on average over the datasets (each dataset weighs the same)."""
    base = {
        (r["dataset"], r["seed"]): r["map_macro"] for r in rows if r.get("step") == 0 and not r.get("gamma", 0.0)
    }  # the source model as it is
    cells: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        if "step" not in r or (r["step"] == 0 and not r.get("gamma", 0.0)):
            continue
        key = (r["candidate"], r["step"], r["alpha"], r.get("gamma", 0.0), r.get("shrinkage", 1.0))
        cells.setdefault(key, {}).setdefault(r["dataset"], []).append(r["map_macro"] - base[(r["dataset"], r["seed"])])
    datasets = sorted({r["dataset"] for r in rows})
    lines = [
        "| candidate | steps | alpha | gamma | shrinkage | " + " | ".join(datasets) + " | mean | worst seed |",
        "|---" * (len(datasets) + 7) + "|",
    ]
    for key in sorted(cells):
        per = cells[key]
        means = [float(np.mean(per[d])) if d in per else float("nan") for d in datasets]
        worst = min(min(v) for v in per.values())
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | "
            + " | ".join(f"{m:+.3f}" for m in means)
            + f" | {np.nanmean(means):+.3f} | {worst:+.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
