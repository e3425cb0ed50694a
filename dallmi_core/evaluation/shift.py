"""Domain-shift measures between source and target: pure functions of arrays and texts, no model.

How far apart are the domains? A 2-D projection to look at, a domain classifier's cross-validated
error turned into the proxy A-distance (Ben-David et al.), and an RBF-kernel MMD with a permutation
p-value. Which words moved? Weighted log-odds with an informative Dirichlet prior (Monroe, Colaresi
and Quinn 2008). Which labels moved? Prevalence per label in each domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dallmi_core.errors import ConfigError, DataError

PROJECTIONS = ("pca", "tsne")


def _matrix(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or not len(arr):
        raise DataError(f"{name} must be a non-empty 2-D array [documents, features]; got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contain NaN or infinite values.")
    return arr


def _pair(source, target) -> tuple[np.ndarray, np.ndarray]:
    xs, xt = _matrix(source, "source embeddings"), _matrix(target, "target embeddings")
    if xs.shape[1] != xt.shape[1]:
        raise DataError(f"source and target embeddings differ in width ({xs.shape[1]} vs {xt.shape[1]}).")
    return xs, xt


def subsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most `limit` of n items, drawn without replacement (all when n <= limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def project_2d(x, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """[n, 2] coordinates: PCA (fast, linear, the default) or t-SNE (local structure; slow past a few thousand)."""
    if method not in PROJECTIONS:
        raise ConfigError(f"projection {method!r} is not one of {', '.join(PROJECTIONS)}.")
    arr = _matrix(x, "embeddings")
    if len(arr) < 3:
        raise DataError(f"a 2-D projection needs at least 3 documents; got {len(arr)}.")
    if method == "pca":
        from sklearn.decomposition import PCA

        out = PCA(n_components=min(2, arr.shape[1]), random_state=seed).fit_transform(arr)
    else:
        from sklearn.manifold import TSNE

        out = TSNE(
            n_components=2, perplexity=float(min(30, (len(arr) - 1) / 3)), init="pca", random_state=seed
        ).fit_transform(arr)
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))).astype(np.float32)


@dataclass(frozen=True)
class DomainClassifier:
    """Cross-validated logistic regression telling source (0) from target (1)."""

    accuracy: float
    folds: int

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    @property
    def a_distance(self) -> float:
        """Proxy A-distance 2(1 - 2 err), in [0, 2]: 0 = indistinguishable, 2 = perfectly separable.
        An error above 0.5 (worse than chance: noise) counts as 0.5. It saturates at 2 once a linear
        classifier separates held-out documents (two corpora of different length and register): then it
        cannot rank two representations, and mmd_rbf's statistic still can."""
        return 2.0 * (1.0 - 2.0 * min(self.error, 0.5))


def domain_classifier(source, target, *, folds: int = 5, seed: int = 0) -> DomainClassifier:
    """Balanced (class-weighted) accuracy of a domain classifier over stratified folds on standardised
    embeddings, so an unbalanced pair of corpora does not pass for a shift."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, xt = _pair(source, target)
    folds = int(min(folds, len(xs), len(xt)))
    if folds < 2:
        raise DataError("a domain classifier needs at least 2 documents in each domain.")
    x = np.vstack([xs, xt])
    y = np.r_[np.zeros(len(xs), dtype=int), np.ones(len(xt), dtype=int)]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced"))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, x, y, cv=cv)
    return DomainClassifier(float(balanced_accuracy_score(y, predicted)), folds)


@dataclass(frozen=True)
class MMDResult:
    mmd2: float  # biased (V-statistic) squared MMD
    bandwidth: float  # the RBF kernel's sigma: the median pairwise distance of the pooled sample
    p_value: float  # (1 + permutations at least as large) / (1 + permutations)
    permutations: int


def _sq_distances(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)


def mmd_rbf(source, target, *, permutations: int = 200, seed: int = 0) -> MMDResult:
    """MMD^2 with an RBF kernel exp(-d^2 / (2 sigma^2)), sigma the median heuristic, and its permutation
    p-value. Every permutation is one column of a weight matrix W (+1/n source, -1/m target), so all
    statistics are diag(W' K W) from one matrix product: O(N^2) memory, keep N to a few thousand."""
    if permutations < 1:
        raise ConfigError(f"permutations must be at least 1, got {permutations!r}.")
    xs, xt = _pair(source, target)
    x = np.vstack([xs, xt])
    n, total = len(xs), len(xs) + len(xt)
    d2 = _sq_distances(x)
    upper = d2[np.triu_indices(total, k=1)]
    median = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    bandwidth = float(np.sqrt(median / 2.0)) if median > 0 else 1.0  # sigma with 2 sigma^2 = median d^2
    kernel = np.exp(-d2 / median).astype(np.float32)  # float32 halves memory and time; plenty for a test
    del d2, upper
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n, dtype=bool), np.zeros(total - n, dtype=bool)]
    columns = [labels] + [rng.permutation(labels) for _ in range(permutations)]
    w = np.stack([np.where(c, 1.0 / n, -1.0 / (total - n)) for c in columns], axis=1).astype(np.float32)
    stats = np.einsum("ij,ij->j", kernel @ w, w, dtype=np.float64)
    observed = float(stats[0])
    p_value = float((1 + np.sum(stats[1:] >= observed - 1e-7)) / (1 + permutations))
    return MMDResult(max(observed, 0.0), bandwidth, p_value, permutations)


def weighted_log_odds(
    target_texts: Sequence[str], source_texts: Sequence[str], *, top: int = 20, min_count: int = 2
) -> pd.DataFrame:
    """The terms that most distinguish target from source: log-odds ratio with an informative Dirichlet
    prior (the pooled counts of both corpora), divided by its standard deviation (a z-score).

    Columns: term, z, log_odds, target_count, source_count; the `top` terms with the highest z
    (most typical of the target) first, then the `top` with the lowest (most typical of the source)."""
    from sklearn.feature_extraction.text import CountVectorizer

    if not len(target_texts) or not len(source_texts):
        raise DataError("log-odds needs at least one target and one source document.")
    vectorizer = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b\w\w+\b", dtype=np.int64)
    try:
        counts = vectorizer.fit_transform(list(target_texts) + list(source_texts))
    except ValueError as exc:  # an empty vocabulary
        raise DataError(f"the texts have no words to compare ({exc}).") from exc
    yt = np.asarray(counts[: len(target_texts)].sum(axis=0)).ravel().astype(np.float64)
    ys = np.asarray(counts[len(target_texts) :].sum(axis=0)).ravel().astype(np.float64)
    keep = (yt + ys) >= min_count
    terms = vectorizer.get_feature_names_out()[keep]
    yt, ys = yt[keep], ys[keep]
    if not len(terms):
        raise DataError(f"no term occurs at least {min_count} times; lower min_count.")
    alpha = yt + ys  # the informative prior: pooled counts
    a0, nt, ns = alpha.sum(), yt.sum(), ys.sum()
    delta = np.log((yt + alpha) / (nt + a0 - yt - alpha)) - np.log((ys + alpha) / (ns + a0 - ys - alpha))
    z = delta / np.sqrt(1.0 / (yt + alpha) + 1.0 / (ys + alpha))
    frame = pd.DataFrame(
        {"term": terms, "z": z, "log_odds": delta, "target_count": yt.astype(int), "source_count": ys.astype(int)}
    )
    frame = frame.sort_values(["z", "term"], ascending=[False, True], kind="stable")
    head, tail = frame.head(top), frame.tail(top).iloc[::-1]
    return pd.concat([head, tail[~tail["term"].isin(head["term"])]], ignore_index=True)


def label_prior_shift(labels: Sequence[str], columns: dict[str, np.ndarray | None]) -> pd.DataFrame:
    """Prevalence per label from named sources (e.g. 'source gold', 'target tagged', 'target predicted'),
    each a 0/1 matrix [documents, labels] (None: not available, left out). One row per label."""
    frame = pd.DataFrame({"label": list(labels)})
    for name, matrix in columns.items():
        if matrix is None:
            continue
        arr = np.asarray(matrix, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(labels):
            raise DataError(f"{name}: expected a [documents, {len(labels)}] matrix, got shape {arr.shape}.")
        frame[name] = arr.mean(axis=0) if len(arr) else np.nan
    return frame
