"""Dev check of a tag-prototype head on the source model (no training): per label, the direction from
the unlabeled train documents' mean pooled feature to the tags' mean, added to the head's logit in
standardised units with weight gamma (the score prototype.fold_prototypes folds into the head), the
direction whitened by the train documents' covariance at each shrinkage (prototype.prototype_directions;
1: the plain mean difference). Dev parts of all shared datasets, macro mAP gain over gamma 0.

    python benchmarks/prototype_dev.py --work-dir /tmp/bench --seeds 0,1,2,3,4 --shrinkages 1,0.5,0.2,0.05
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dallmi_core.bench.quality import source_model, split_target
from dallmi_core.config import SourceConfig
from dallmi_core.data.corpus import read_corpus
from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.modeling.model import load_classifier
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.prototype import features_and_logits, prototype_directions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--gammas", default="0.25,0.5,1,2")
    parser.add_argument("--shrinkages", default="1")
    args = parser.parse_args()
    grid = [(float(g), float(x)) for g in args.gammas.split(",") for x in args.shrinkages.split(",")]
    for name in ("arxiv_shift", "movies_shift", "pubmed_shift"):
        corpus = read_corpus(Path("../shared/data") / f"{name}.csv")
        labels = corpus.label_names()
        cache = Path(args.work_dir) / name.split("_")[0]
        src = source_model(corpus, labels, "default", SourceConfig(max_length=96), cache)
        clf = load_classifier(src)
        target = corpus.where_domain("target")
        gold = target.label_matrix(labels)
        feats, logits = features_and_logits(clf.model, TokenizedCorpus.build(clf.tokenizer, target.texts, 96))
        gains = {cell: [] for cell in grid}
        for seed in (int(s) for s in args.seeds.split(",")):
            split = split_target(gold, seed, positives_per_label=10)
            train_f = feats[split.train]
            base = ap_report(gold[split.dev], logits[split.dev], labels).map_macro
            for gamma, shrinkage in grid:
                directions = prototype_directions(train_f, split.tags, shrinkage)
                scores = logits[split.dev].copy()
                for j, tags in enumerate(split.tags):
                    if not tags:
                        continue
                    proj_train = train_f @ directions[j]
                    scale = logits[split.train, j].std() / max(proj_train.std(), 1e-8)
                    scores[:, j] += gamma * scale * (feats[split.dev] @ directions[j] - proj_train.mean())
                gains[gamma, shrinkage].append(ap_report(gold[split.dev], scores, labels).map_macro - base)
            print(name, seed, "source dev mAP", round(base, 4), flush=True)
        for (gamma, shrinkage), by_seed in gains.items():
            print(
                f"{name} gamma {gamma} shrinkage {shrinkage}: mean gain {np.mean(by_seed):+.4f}, "
                f"worst {min(by_seed):+.4f}, by seed {np.round(by_seed, 4).tolist()}",
                flush=True,
            )


if __name__ == "__main__":
    main()
