"""Predictions a user can act on: label priors from PU data, a monotone score map, default thresholds.

After a per-label PU objective each label's scores sit on a scale of their own, so a fixed 0.5
threshold marks most documents positive for one label and none for another, and scores pooled
across labels (micro mAP) stop being comparable. Without gold target labels we know two things
per label: the tagged positives (a sample of the label's positives, SCAR) and the unlabeled target
text. From them (DESIGN.md section 5):

1. the label's target prior (share of documents carrying it): the mean of the source model's
   Platt-calibrated posteriors over the target documents, tags counted as positives (right under
   covariate shift), capped by the upper bound the tags give on their own (BBE-style); an 80%
   interval by bootstrap over documents;
2. a strictly increasing map per label, p = sigmoid(slope * logit + intercept): the slope from
   Platt scaling on held-out source rows, re-tempered on the target until the tags' mean probability
   meets what the map predicts for positives, and rescaled for an adapted model by the spread of
   the source model's target logits over its own; the intercept then makes the mean probability over
   the target documents equal the estimated prior. Monotone, so per-label AP is unchanged;
3. a default threshold per label on the calibrated scale: the plug-in expected-F1 optimum.

Each choice was made on the dev parts of all shared datasets at once (benchmarks/prior_estimators.py,
benchmarks/calibration_dev.py; docs/BENCHMARKS.md, "v5: calibrated scores").

Pure numpy: arrays in, small frozen records out. The map, the thresholds and the priors travel in
the model folder's config.json (`dallmi_calibration`, `dallmi_thresholds`), readable without us.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

MIN_TAGS = 3  # fewer tagged positives than this: no estimate, the stated default instead
TAG_FIT_TAGS = 8  # from this many tags on, the tags also cap the prior and re-temper the slope
DEFAULT_THRESHOLD = 0.5
PRIOR_FLOOR = 1e-4  # priors are kept inside (floor, 1 - floor): logits of them stay finite
BOOTSTRAP = 100
BOOTSTRAP_DOCS = 20_000  # documents per bootstrap resample at most (bounded time on any corpus)


def _logit(p: np.ndarray | float) -> np.ndarray | float:
    p = np.clip(p, PRIOR_FLOOR, 1 - PRIOR_FLOOR)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


# ---- Platt scaling on held-out source rows ---------------------------------------------------


def platt(logits: np.ndarray, gold: np.ndarray) -> tuple[float, float] | None:
    """(slope, intercept) of Platt scaling on one label's logits: a 1-D logistic regression on
    Platt's (1999) smoothed targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0, so a
    small held-out set the model separates gives a finite, not a near-infinite, slope. None when the
    rows hold no positive or no negative, or the fit is not increasing."""
    y = np.asarray(gold, dtype=np.int64)
    if y.min(initial=1) == y.max(initial=0):
        return None
    from sklearn.linear_model import LogisticRegression

    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    target = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    x = np.asarray(logits, np.float64)[:, None]
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(
        np.r_[x, x], np.r_[np.ones(len(y)), np.zeros(len(y))], sample_weight=np.r_[target, 1 - target]
    )
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return (slope, intercept) if slope > 0 else None


# ---- priors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorEstimate:
    """A label's estimated share of target documents, with a bootstrap 80% interval."""

    value: float | None
    low: float | None
    high: float | None
    tags: int
    basis: str  # how it was obtained, in words a user reads on the page

    @property
    def estimated(self) -> bool:
        return self.value is not None


def covariate_prior(probabilities: np.ndarray, tagged: np.ndarray) -> np.ndarray:
    """Calibration in the large under covariate shift (P(y|x) kept, P(x) moved): the mean of the
    source-calibrated posteriors over the target documents, tagged ones counted as positives.
    Vectorised over the rows of 2-D inputs (bootstrap resamples)."""
    return np.where(tagged, 1.0, probabilities).mean(axis=-1)


def tag_bound(logits: np.ndarray, tagged: np.ndarray) -> np.ndarray:
    """An upper bound on the prior from the tags alone (SCAR): for any cut c, the untagged share
    scoring at least c is at least prior * (share of positives at least c), so prior <= q_U(c) / q_P(c)
    (Garg et al. 2021's BBE, here without its confidence penalty, over the cuts at the tag scores
    that keep at least half of the tags, where q_P is not a single tag's noise). Counts the tags as
    positives. Vectorised over the rows of 2-D inputs."""
    z, known = np.atleast_2d(logits), np.atleast_2d(tagged)
    k = known.sum(axis=1)
    n_unl = np.maximum(z.shape[1] - k, 1)
    tag_scores = np.sort(np.where(known, z, -np.inf), axis=1)[:, ::-1]  # tags first, highest first
    best = np.ones(z.shape[0])
    for i in range(int(k.max())):
        cut = tag_scores[:, i : i + 1]
        usable = (i + 1 >= np.ceil(k / 2)) & (i < k)
        q_unl = ((z >= cut) & ~known).sum(axis=1) / n_unl
        best = np.where(usable, np.minimum(best, q_unl / ((i + 1) / np.maximum(k, 1))), best)
    bound = (k + best * (z.shape[1] - k)) / z.shape[1]
    return bound if np.ndim(logits) == 2 else bound[0]


def estimate_prior(logits: np.ndarray, tagged: Sequence[int], *, slope: float, intercept: float, seed: int = 0):
    """One label's target prior from the source model's target logits and the label's tags:
    the covariate-shift estimate (`covariate_prior`), capped by the tags' upper bound (`tag_bound`)
    from TAG_FIT_TAGS tags on.

    Chosen on the dev parts of the three shared datasets against Saerens et al.'s EM, the covariate
    estimate alone and the bound alone (benchmarks/prior_estimators.py, docs/BENCHMARKS.md). Below
    MIN_TAGS tags there is no estimate (the caller states its default)."""
    z = np.asarray(logits, np.float64)
    n_tags = len(set(int(t) for t in tagged))
    if n_tags < MIN_TAGS:
        return PriorEstimate(None, None, None, n_tags, f"default: {n_tags} tag(s) < {MIN_TAGS}")
    known = np.zeros(len(z), dtype=bool)
    known[list(tagged)] = True
    p = _sigmoid(slope * z + intercept)
    capped = n_tags >= TAG_FIT_TAGS  # fewer tags: their bound is one or two tags' noise

    def prior(p, z, known):
        covariate = covariate_prior(p, known)
        return np.minimum(covariate, tag_bound(z, known)) if capped else covariate

    value = float(prior(p, z, known))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(z), size=(BOOTSTRAP, min(len(z), BOOTSTRAP_DOCS)))
    has_tags = known[rows].sum(axis=1) >= MIN_TAGS
    resampled = prior(p[rows], z[rows], known[rows])[has_tags]
    low, high = (float(v) for v in np.quantile(resampled, [0.1, 0.9])) if len(resampled) else (value, value)
    value = float(np.clip(value, PRIOR_FLOOR, 1 - PRIOR_FLOOR))
    return PriorEstimate(value, low, high, n_tags, f"estimate: source model and {n_tags} tags")


# ---- the monotone map ----------------------------------------------------------------------------


def mixture_slope(logits: np.ndarray, prior: float, iters: int = 50) -> float | None:
    """Slope of the posterior of a two-component, equal-variance Gaussian mixture of the logits with
    the positive component's weight fixed at `prior` (its posterior is logistic in the logit:
    slope = (mu1 - mu0) / var). None when the components do not separate upwards."""
    z = np.asarray(logits, np.float64)
    if len(z) < 2 or np.ptp(z) == 0:
        return None
    prior = float(np.clip(prior, PRIOR_FLOOR, 1 - PRIOR_FLOOR))
    resp = (z >= np.quantile(z, 1 - prior)).astype(np.float64)  # start: the top prior share
    mu1 = mu0 = var = 0.0
    for _ in range(iters):
        w1, w0 = resp.sum() + 1e-9, (1 - resp).sum() + 1e-9
        mu1, mu0 = float((resp * z).sum() / w1), float(((1 - resp) * z).sum() / w0)
        var = float((resp * (z - mu1) ** 2 + (1 - resp) * (z - mu0) ** 2).sum() / len(z)) + 1e-9
        slope = (mu1 - mu0) / var
        offset = _logit(prior) - (mu1**2 - mu0**2) / (2 * var)
        resp = _sigmoid(slope * z + offset)
    slope = (mu1 - mu0) / var
    return float(slope) if np.isfinite(slope) and slope > 0 else None


def tag_moment_slope(logits: np.ndarray, tagged: np.ndarray, prior: float, start: float) -> float:
    """The slope at which the tags agree with the map: for a calibrated posterior p, E[p | y=1] =
    E[p^2] / E[p], and SCAR tags are a sample of y=1. With the intercept re-solved for the prior at
    each slope, the tags' mean probability minus E[p^2] / E[p] is positive for a flat map and turns
    negative once the map is more confident than the tags bear out (a domain shift blunts the source
    model's ranking, so its source-fitted slope is too steep on the target). Searched on a geometric
    grid from 0.05x to 3x `start` (the Platt slope), the last slope before the first crossing; `start`
    when it never crosses (the tags sit on top), the flattest when the tags score below average.
    On at most BOOTSTRAP_DOCS documents (the tags always kept): bounded time on any corpus."""
    z, known = np.asarray(logits, np.float64), np.asarray(tagged, bool)
    if len(z) > BOOTSTRAP_DOCS:
        keep = np.random.default_rng(0).choice(len(z), BOOTSTRAP_DOCS, replace=False)
        keep = np.union1d(keep, np.flatnonzero(known))
        z, known = z[keep], known[keep]
    grid = start * np.geomspace(0.05, 3, 60)
    signs = []
    for slope in grid:
        p = _sigmoid(slope * z + intercept_for_prior(z, slope, prior))
        signs.append(p[known].mean() - (p**2).mean() / p.mean() > 0)
    for i in range(len(grid) - 1):
        if signs[i] and not signs[i + 1]:
            return float(grid[i])
    return float(start)  # no crossing: the tags give no temperature, keep the source fit


def intercept_for_prior(logits: np.ndarray, slope: float, prior: float) -> float:
    """The intercept b with mean(sigmoid(slope * logits + b)) == prior (bisection; the mean is
    increasing in b)."""
    z = slope * np.asarray(logits, np.float64)
    target = float(np.clip(prior, PRIOR_FLOOR, 1 - PRIOR_FLOOR))
    lo, hi = -60.0 - z.max(), 60.0 - z.min()
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _sigmoid(z + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def expected_f1_threshold(probabilities: np.ndarray) -> float:
    """The cut that maximises the expected F1 if the calibrated probabilities are right (the plug-in
    rule of Jansche 2007 / Lipton et al. 2014): predicting the top k documents positive expects
    2 * sum_{i<=k} p_i / (k + sum_i p_i). Measured on dev against marking the estimated share
    positive: as good or better on every shared dataset (docs/BENCHMARKS.md)."""
    p = np.sort(np.asarray(probabilities, np.float64))[::-1]
    if len(p) == 0:
        return DEFAULT_THRESHOLD
    f1 = 2 * np.cumsum(p) / (np.arange(1, len(p) + 1) + p.sum())
    return float(p[int(np.argmax(f1))])


@dataclass(frozen=True)
class LabelCalibration:
    """One label's map, default threshold and the prior behind them; JSON-ready by `asdict`."""

    slope: float
    intercept: float
    threshold: float  # on the calibrated scale
    prior: float | None  # estimated target share, None when not estimated
    prior_low: float | None
    prior_high: float | None
    tags: int
    basis: str  # what the threshold rests on, in words

    def apply(self, logits: np.ndarray) -> np.ndarray:
        return _sigmoid(self.slope * np.asarray(logits, np.float64) + self.intercept)


def calibrate_label(
    logits: np.ndarray,
    estimate: PriorEstimate,
    *,
    slope: float | None = None,
    fallback_prior: float | None = None,
) -> LabelCalibration:
    """The map and default threshold of one label on its target logits.

    `slope` as the caller derived it from the source fit; None (no source fit) the mixture slope at
    the prior. Without an estimate: `fallback_prior` (the source share) when known, else the identity
    map and the 0.5 threshold, said in `basis`."""
    z = np.asarray(logits, np.float64)
    prior = estimate.value if estimate.estimated else fallback_prior
    if prior is None or len(z) == 0:
        return LabelCalibration(
            1.0, 0.0, DEFAULT_THRESHOLD, None, None, None, estimate.tags,
            f"{estimate.basis}; no prior known: raw scores, threshold {DEFAULT_THRESHOLD}",
        )  # fmt: skip
    slope = slope if slope is not None else mixture_slope(z, prior)
    slope = slope if slope is not None and slope > 0 else 1.0
    intercept = intercept_for_prior(z, slope, prior)
    probabilities = _sigmoid(slope * z + intercept)
    basis = estimate.basis if estimate.estimated else f"{estimate.basis}; the source share {prior:.3f} instead"
    return LabelCalibration(
        float(slope), float(intercept), expected_f1_threshold(probabilities), float(prior),
        estimate.low, estimate.high, estimate.tags, basis,
    )  # fmt: skip


# ---- the set of labels, as it travels in a model folder ------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Per-label calibration of a classifier; `to_config` / `from_config` round-trip config.json."""

    labels: Mapping[str, LabelCalibration]

    def apply(self, logits: np.ndarray, label_names: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities [n, L] (float64: strictly increasing in each logit until the
        sigmoid saturates past |slope * logit + intercept| of about 36) in `label_names` order."""
        z = np.asarray(logits, np.float64)
        out = np.empty(z.shape, dtype=np.float64)
        for j, name in enumerate(label_names):
            item = self.labels.get(name)
            out[:, j] = _sigmoid(z[:, j]) if item is None else item.apply(z[:, j])
        return out

    def thresholds(self) -> dict[str, float]:
        return {name: item.threshold for name, item in self.labels.items()}

    def to_config(self) -> dict:
        return {name: asdict(item) for name, item in self.labels.items()}

    @classmethod
    def from_config(cls, data: Mapping | None) -> Calibration | None:
        if not data:
            return None
        return cls({str(name): LabelCalibration(**item) for name, item in data.items()})


# ---- the two places a calibration is made --------------------------------------------------------


@dataclass(frozen=True)
class SourceFit:
    """A label's Platt map on held-out source rows and its share there: what EM on the target needs."""

    slope: float
    intercept: float
    prior: float
    rows: int


def fit_on_source(logits: np.ndarray, gold: np.ndarray, label_names: Sequence[str]) -> dict[str, SourceFit]:
    """Platt per label on held-out source rows (labels without both classes there keep the identity
    slope and the share seen, floored)."""
    z, y = np.asarray(logits, np.float64), np.asarray(gold, np.float64)
    fits = {}
    for j, name in enumerate(label_names):
        prior = float(np.clip(y[:, j].mean() if len(y) else 0.0, PRIOR_FLOOR, 1 - PRIOR_FLOOR))
        fitted = platt(z[:, j], y[:, j]) if len(y) else None
        if fitted is None:  # one class only in the held-out rows: identity slope, mean at the share
            fitted = (1.0, intercept_for_prior(z[:, j], 1.0, prior) if len(z) else float(_logit(prior)))
        slope, intercept = fitted
        fits[str(name)] = SourceFit(float(slope), float(intercept), prior, int(len(y)))
    return fits


def source_calibration(fits: Mapping[str, SourceFit], logits: np.ndarray, label_names: Sequence[str]) -> Calibration:
    """A source model's own calibration: its Platt maps, thresholds marking each label's source share
    of the held-out rows."""
    z = np.asarray(logits, np.float64)
    labels = {}
    for j, name in enumerate(label_names):
        fit = fits[str(name)]
        threshold = expected_f1_threshold(_sigmoid(fit.slope * z[:, j] + fit.intercept))
        labels[str(name)] = LabelCalibration(
            fit.slope, fit.intercept, threshold, fit.prior, None, None, 0,
            f"source rows: Platt on {fit.rows} held-out rows",
        )  # fmt: skip
    return Calibration(labels)


def calibrate_on_target(
    label_names: Sequence[str],
    logits: np.ndarray,
    tags: Sequence[Sequence[int]],
    *,
    source_fit: Mapping[str, SourceFit] | None = None,
    prior_logits: np.ndarray | None = None,
    same_model: bool = False,
    seed: int = 0,
) -> Calibration:
    """Calibrate a model on its target logits [n, L]; `tags[l]` are row positions tagged for label l.

    Priors come from `prior_logits` (the source model's logits on the same documents; `logits` when
    `same_model`) with the source fit. The slope: the source model's, re-tempered on the target by its
    tags (`tag_moment_slope`; the Platt slope without an estimate); for an adapted model rescaled by
    the spread of the source model's logits over the adapted model's on the same documents, so the
    calibrated log-odds spread as the source's do (chosen on dev over the plain Platt slope, a mixture
    fit and a regression on the source's probabilities: benchmarks/calibration_dev.py). Without a
    source fit: the mixture slope."""
    z = np.asarray(logits, np.float64)
    prior_z = z if same_model else (None if prior_logits is None else np.asarray(prior_logits, np.float64))
    labels = {}
    for j, name in enumerate(label_names):
        fit = (source_fit or {}).get(str(name))
        slope = None
        if fit is not None and prior_z is not None:
            estimate = estimate_prior(prior_z[:, j], tags[j], slope=fit.slope, intercept=fit.intercept, seed=seed + j)
            slope = fit.slope
            if estimate.estimated and estimate.tags >= TAG_FIT_TAGS:
                known = np.zeros(len(prior_z), dtype=bool)
                known[list(tags[j])] = True
                slope = tag_moment_slope(prior_z[:, j], known, estimate.value, fit.slope)
            spread = float(np.std(z[:, j]))
            if not same_model and spread > 0:  # an adapted model: the source's spread of log-odds
                slope *= float(np.std(prior_z[:, j])) / spread
        else:
            reason = "default: the model has no source calibration"
            estimate = PriorEstimate(None, None, None, len(set(tags[j])), reason)
        fallback = fit.prior if fit is not None else None
        labels[str(name)] = calibrate_label(z[:, j], estimate, slope=slope, fallback_prior=fallback)
    return Calibration(labels)
