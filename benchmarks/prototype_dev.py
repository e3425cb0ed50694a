"""Dev check of a tag-prototype head on the source model (no training): per label, the direction from
the unlabeled train documents' mean pooled feature to the tags' mean, added to the head's logit in
standardised units with weight gamma (the score prototype.fold_prototypes folds into the head), the
direction whitened by the train documents' covariance at each shrinkage (prototype.prototype_directions;
1: the plain mean difference). Dev parts of all shared datasets, macro mAP gain over gamma 0.

`--feedback F` adds Rocchio's pseudo-relevance feedback: the round(F x tags) untagged train
documents that the source logit plus the first prototype score ranks highest join the label's tags,
and the direction is fitted again (F 0: off).

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
    parser.add_argument("--feedback", default="0")
    args = parser.parse_args()
    grid = [
        (float(g), float(x), float(f))
        for g in args.gammas.split(",")
        for x in args.shrinkages.split(",")
        for f in args.feedback.split(",")
    ]
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
            for gamma, shrinkage, feedback in grid:
                tags = split.tags
                if feedback > 0:
                    first = prototype_scores(train_f, logits[split.train], tags, gamma, shrinkage, train_f)
                    tags = [
                        with_feedback(logits[split.train, j] + first[:, j], t, feedback) for j, t in enumerate(tags)
                    ]
                scores = logits[split.dev] + prototype_scores(
                    train_f, logits[split.train], tags, gamma, shrinkage, feats[split.dev]
                )
                gains[gamma, shrinkage, feedback].append(ap_report(gold[split.dev], scores, labels).map_macro - base)
            print(name, seed, "source dev mAP", round(base, 4), flush=True)
        for (gamma, shrinkage, feedback), by_seed in gains.items():
            print(
                f"{name} gamma {gamma} shrinkage {shrinkage} feedback {feedback}: mean gain {np.mean(by_seed):+.4f}, "
                f"worst {min(by_seed):+.4f}, by seed {np.round(by_seed, 4).tolist()}",
                flush=True,
            )


def prototype_scores(train_f, train_logits, tags, gamma, shrinkage, features) -> np.ndarray:
    """What fold_prototypes adds to each label's logit of `features` (zero for an untagged label)."""
    directions = prototype_directions(train_f, tags, shrinkage)
    added = np.zeros((len(features), len(tags)))
    for j, label_tags in enumerate(tags):
        if not len(label_tags):
            continue
        proj_train = train_f @ directions[j]
        scale = train_logits[:, j].std() / max(proj_train.std(), 1e-8)
        added[:, j] = gamma * scale * (features @ directions[j] - proj_train.mean())
    return added


def with_feedback(score: np.ndarray, tags, feedback: float) -> list[int]:
    """The label's tags and the round(feedback x tags) untagged documents ranked highest by `score`
    (Rocchio's pseudo-relevance feedback)."""
    tagged = set(int(t) for t in tags)
    order = [int(i) for i in np.argsort(-score, kind="stable") if int(i) not in tagged]
    return sorted(tagged) + order[: int(round(feedback * len(tagged)))]


if __name__ == "__main__":
    main()
