"""Dev check of a tag-prototype head on the source model (no training): per label, the direction from
the unlabeled train documents' mean pooled feature to the tags' mean, added to the head's logit in
standardised units with weight gamma (the score prototype.fold_prototypes folds into the head). Dev
parts of all shared datasets, macro mAP gain over gamma 0.

    python benchmarks/prototype_dev.py --work-dir /tmp/bench --seeds 0,1,2
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
from dallmi_core.training.prototype import features_and_logits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--gammas", default="0,0.25,0.5,1,2")
    args = parser.parse_args()
    gammas = [float(g) for g in args.gammas.split(",")]
    for name in ("arxiv_shift", "movies_shift", "pubmed_shift"):
        corpus = read_corpus(Path("../shared/data") / f"{name}.csv")
        labels = corpus.label_names()
        cache = Path(args.work_dir) / name.split("_")[0]
        src = source_model(corpus, labels, "default", SourceConfig(max_length=96), cache)
        clf = load_classifier(src)
        target = corpus.where_domain("target")
        gold = target.label_matrix(labels)
        feats, logits = features_and_logits(clf.model, TokenizedCorpus.build(clf.tokenizer, target.texts, 96))
        gains = {g: [] for g in gammas}
        for seed in (int(s) for s in args.seeds.split(",")):
            split = split_target(gold, seed, positives_per_label=10)
            train_f = feats[split.train]
            base = ap_report(gold[split.dev], logits[split.dev], labels).map_macro
            for g in gammas:
                scores = logits[split.dev].copy()
                for j, tags in enumerate(split.tags):
                    if not tags:
                        continue
                    d = train_f[list(tags)].mean(0) - train_f.mean(0)
                    proj_train = train_f @ d
                    z_train = logits[split.train, j]
                    scale = z_train.std() / max(proj_train.std(), 1e-8)
                    scores[:, j] = logits[split.dev, j] + g * scale * (feats[split.dev] @ d - proj_train.mean())
                gains[g].append(ap_report(gold[split.dev], scores, labels).map_macro - base)
            print(name, seed, "source dev mAP", round(base, 4), flush=True)
        for g in gammas:
            by_seed = np.round(gains[g], 4).tolist()
            print(f"{name} gamma {g}: mean gain {np.mean(gains[g]):+.4f}  by seed {by_seed}", flush=True)


if __name__ == "__main__":
    main()
