"""`dallmi bench-speed`: our fast paths against the official code's shape, side by side in one run.

Shared machines make absolute times noise; ratios measured in the same run, on the same batches
and random draws, interleaved step by step, are not. Every path counts its forwards with a hook on
the model, and its FLOPs from the shapes those forwards ran on: hardware FLOPs over the padded
tokens, model FLOPs over the real ones (flops.py). Three measurements:

- step: the per-label reference step (1 + 3L forwards) against ours (one forward per length group
  on a CPU, one on a GPU), both with dynamic padding on the same batches and MixUp draws, in the
  same precision; each time includes backward and the optimizer step. Labels beyond those of the
  data are synthesised: each gets `tags_per_label` documents drawn at random as its tags (speed
  depends on how many sequences there are and how long, not on which documents carry a label).
- pipeline: adaptation throughput in target documents/s on real texts: the official shape rebuilt
  faithfully in both its structures (speed_reference.py: tokenised once, padded to max_length,
  float32) against ours in float32 (the headline ratio: same precision on both sides), and ours in
  the precision `dallmi adapt` picks here when that is not float32 (`ratio_bf16`, on its own).
- scoring: the `dallmi score` path (`score_texts`, float32) and its int8 CPU path
  (fast_inference.py) against a bare `model(**batch)` loop over pre-tokenised, length-sorted,
  dynamically padded batches in inference mode, with the int8 path's macro AP change.
"""

from __future__ import annotations

import contextlib
import copy
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dallmi_core.bench.flops import ShapeRecorder, flop_model
from dallmi_core.bench.speed_reference import CountingTokenizer, PaddedCorpus, cycle_reference_step
from dallmi_core.config import AdaptConfig
from dallmi_core.data.corpus import Corpus
from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.method.mixup import draw_mixup
from dallmi_core.method.sampling import LabelBalancedSampler
from dallmi_core.method.step import StepContext, reference_dallmi_step, vectorised_dallmi_step
from dallmi_core.modeling import fast_inference
from dallmi_core.modeling.model import eager_attention, load_classifier, new_classifier
from dallmi_core.modeling.precision import cpu_bf16, resolve_precision
from dallmi_core.modeling.scoring import autocast_for, score_texts
from dallmi_core.modeling.tokens import TokenizedCorpus, length_sorted_batches

PARTS = ("step", "pipeline", "scoring")


@dataclass(frozen=True)
class SpeedSettings:
    labels: tuple[int, ...] = (5, 14, 40)
    batch_size: int = 16
    positives_per_label: int = 4
    tags_per_label: int = 10
    steps: int = 5
    max_length: int = 128
    score_batch_size: int = 64
    seed: int = 0
    docs: int | None = None  # the first N target rows only (all by default)
    precision: str = "auto"  # both steps, and ours' second pipeline run: auto as `dallmi adapt` resolves it
    peak_tflops: float | None = None  # the device's peak for that precision: FLOP utilisation
    parts: tuple[str, ...] = PARTS
    score_model: str | None = None  # a trained classifier folder for scoring (else a fresh head)


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (monotonic)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mib": round(peak_rss_mib(), 1)}
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _tags(gold: np.ndarray, n_labels: int, k: int, rng: np.random.Generator) -> tuple[list[list[int]], int]:
    """k tags per label: gold positives for the data's labels, random documents for the rest."""
    n_docs, real = gold.shape
    tags = []
    for label in range(n_labels):
        pool = np.flatnonzero(gold[:, label]) if label < real else np.arange(n_docs)
        tags.append(sorted(rng.choice(pool, size=min(k, len(pool)), replace=False).tolist()))
    return tags, max(0, n_labels - real)


def _significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _autocast(device: torch.device, precision: str):
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return torch.autocast(device.type, dtype=dtypes[precision]) if precision in dtypes else contextlib.nullcontext()


class _Path:
    """One step function on its own model copy (the context's), with its optimizer; times each
    training step and counts its forwards and FLOPs by a hook on the model."""

    def __init__(self, step: Callable, context: StepContext, precision: str = "no"):
        self.step, self.context, self.precision = step, context, precision
        self.model, self.device = context.model, context.device
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-5)
        self.flop_model, self.shapes = flop_model(self.model), ShapeRecorder(self.model)
        self.times: list[float] = []
        self.forwards: list[int] = []
        self.hardware_flops: list[float] = []  # padded tokens, per timed step
        self.model_flops: list[float] = []  # real tokens, per timed step

    def run(self, batch, mix, *, timed: bool = True) -> None:
        self.shapes.reset()
        _sync(self.device)
        start = time.perf_counter()
        eager = cpu_bf16(self.device.type, self.precision)  # as the trainer decides
        with _autocast(self.device, self.precision), eager_attention(self.model, enabled=eager):
            loss, _ = self.step(self.context, batch, mix)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - start)
            self.forwards.append(self.shapes.forwards)
            self.hardware_flops.append(self.shapes.training_flops(self.flop_model))
            self.model_flops.append(self.shapes.model_training_flops(self.flop_model))

    def figures(self, peak_tflops: float | None) -> dict[str, float]:
        """Forwards per step (counted), TFLOP per step and TFLOP/s, hardware and model; with the
        device's peak, model FLOP utilisation (mfu) and hardware FLOP utilisation (hfu)."""
        seconds = sum(self.times)
        out: dict[str, float] = {"forwards_per_step": _count(self.forwards)}
        for kind, flops in (("hardware", self.hardware_flops), ("model", self.model_flops)):
            out[f"{kind}_tflop_per_step"] = _significant(float(np.mean(flops)) / 1e12)
            out[f"{kind}_tflops"] = _significant(sum(flops) / seconds / 1e12)
            if peak_tflops:
                out["mfu" if kind == "model" else "hfu"] = _significant(sum(flops) / seconds / 1e12 / peak_tflops)
        return out


def _count(values: Sequence[int]) -> float | int:
    """A per-step count: an int when every step had the same, else the mean."""
    mean = float(np.mean(values))
    return int(values[0]) if min(values) == max(values) else round(mean, 2)


def _interleaved(paths: dict[str, _Path], sampler, cfg: AdaptConfig, steps: int, seed: int) -> int:
    """One warm-up step, then `steps` timed steps; every path gets the same batch and draws, and
    the order of the paths rotates, so load from other jobs falls on all alike."""
    rng = np.random.default_rng(seed)
    names = list(paths)
    sequences = 0
    for i in range(steps + 1):
        batch = sampler.next()
        mix = draw_mixup(rng, batch, cfg.mixup_pairs, cfg.mixup_alpha)
        active = int(batch.active.sum())
        sequences = len(batch.unlabeled) + active * (cfg.positives_per_label + cfg.mixup_pairs)
        for name in names[i % len(names) :] + names[: i % len(names)]:
            paths[name].run(batch, mix, timed=i > 0)
    return sequences


def _adapt_cfg(s: SpeedSettings) -> AdaptConfig:
    return AdaptConfig(batch_size=s.batch_size, positives_per_label=s.positives_per_label, max_length=s.max_length)


def _sampler(n_docs: int, tags, s: SpeedSettings) -> LabelBalancedSampler:
    return LabelBalancedSampler(
        np.arange(n_docs), tags, batch_size=s.batch_size, positives_per_label=s.positives_per_label, seed=s.seed
    )


def bench_step(backbone: str, texts: Sequence[str], gold: np.ndarray, n_labels: int, s: SpeedSettings, device):
    """Reference (1 + 3L forwards) vs our step at `n_labels` labels: median seconds, sequences/s, ratio."""
    tags, synthesised = _tags(gold, n_labels, s.tags_per_label, np.random.default_rng(s.seed))
    torch.manual_seed(s.seed)
    clf = new_classifier(backbone, [f"label_{i}" for i in range(n_labels)])
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, s.max_length)
    model = clf.model.to(device).train()
    precision, cfg = resolve_precision(s.precision, device.type), _adapt_cfg(s)
    paths = {
        "reference": _Path(reference_dallmi_step, StepContext(copy.deepcopy(model), tokens, cfg, device), precision),
        "ours": _Path(vectorised_dallmi_step, StepContext(model, tokens, cfg, device), precision),
    }
    sequences = _interleaved(paths, _sampler(len(tokens), tags, s), cfg, s.steps, s.seed)
    out = {"labels": n_labels, "synthesised_labels": synthesised, "sequences_per_step": sequences}
    out["precision"] = precision
    for name, path in paths.items():
        median = float(np.median(path.times))
        figures = path.figures(s.peak_tflops)
        out[name] = {"step_s": round(median, 4), "sequences_per_s": round(sequences / median, 2), **figures}
    out["forwards"] = {name: out[name]["forwards_per_step"] for name in paths}
    out["ratio"] = round(out["reference"]["step_s"] / out["ours"]["step_s"], 3)
    return out | _memory(device)


def bench_pipeline(backbone: str, corpus: Corpus, gold: np.ndarray, labels: Sequence[str], s: SpeedSettings, device):
    """Target documents/s: the official shape in both structures (tokenised once, padded to
    max_length, float32) against ours in float32, and ours in the precision `adapt` picks."""
    tags, _ = _tags(gold, len(labels), s.tags_per_label, np.random.default_rng(s.seed))
    torch.manual_seed(s.seed)
    clf = new_classifier(backbone, labels)
    model = clf.model.to(device).train()
    counting = CountingTokenizer(clf.tokenizer)
    start = time.perf_counter()
    padded = PaddedCorpus.build(counting, corpus.texts, s.max_length)
    official_tokenise_s = time.perf_counter() - start
    start = time.perf_counter()
    tokens = TokenizedCorpus.build(clf.tokenizer, corpus.texts, s.max_length)
    ours_tokenise_s = time.perf_counter() - start
    cfg = _adapt_cfg(s)

    def context(table, own_copy: bool = True) -> StepContext:
        """The step context of one path: `table` (padded or ours) and a copy of the model of its own."""
        return StepContext(copy.deepcopy(model) if own_copy else model, table, cfg, device)

    paths = {
        "trainer": _Path(reference_dallmi_step, context(padded)),
        "cycle": _Path(cycle_reference_step, context(padded)),
        "ours": _Path(vectorised_dallmi_step, context(tokens)),
    }
    low = resolve_precision(s.precision, device.type)
    if low != "no":
        paths[f"ours_{low}"] = _Path(vectorised_dallmi_step, context(tokens, own_copy=False), low)
    sampler = _sampler(len(tokens), tags, s)
    _interleaved(paths, sampler, cfg, s.steps, s.seed)
    documents = s.steps * sampler.unlabeled.batch_size
    rows = {}
    for name, path in paths.items():
        rows[name] = {"docs_per_s": round(documents / sum(path.times), 3), **path.figures(s.peak_tflops)}
    official = {
        "tokenised_once": counting.calls == 1,
        "tokeniser_calls": counting.calls,
        "padding": "max_length",
        "max_length": s.max_length,
        "precision": "float32",
        "tokenise_corpus_s": round(official_tokenise_s, 3),
        "trainer": rows["trainer"],
        "cycle": rows["cycle"],
    }
    against = max(("trainer", "cycle"), key=lambda name: rows[name]["docs_per_s"])  # the faster one
    ours = rows["ours"]["docs_per_s"]
    out = {"documents": len(corpus), "labels": len(labels), "steps": s.steps}
    out["ratio"] = round(ours / rows[against]["docs_per_s"], 3)
    out["ratio_against"] = against
    out["ratio_trainer"] = round(ours / rows["trainer"]["docs_per_s"], 3)
    out["ratio_cycle"] = round(ours / rows["cycle"]["docs_per_s"], 3)
    if low != "no":
        out[f"ratio_{low}"] = round(rows[f"ours_{low}"]["docs_per_s"] / rows[against]["docs_per_s"], 3)
    out["official"] = official
    out["ours"] = {"precision": "float32", "tokenise_corpus_s": round(ours_tokenise_s, 3), **rows["ours"]}
    if low != "no":
        out[f"ours_{low}"] = {"precision": low, **rows[f"ours_{low}"]}
    return out | _memory(device)


def _macro_ap(gold: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> float | None:
    return ap_report(gold, scores, labels).map_macro


def bench_scoring(backbone: str, corpus: Corpus, labels: Sequence[str], s: SpeedSettings, device, repeats: int = 2):
    """Docs/s of the `dallmi score` path (float32) and of its int8 CPU path against a bare float32
    forward loop with the best padding; the int8 path's macro AP change on the corpus's gold."""
    torch.manual_seed(s.seed)
    clf = load_classifier(s.score_model) if s.score_model else new_classifier(backbone, labels)
    model = clf.model.to(device).eval()
    texts = list(corpus.texts)
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, s.max_length)
    batches = [
        clf.tokenizer(
            [texts[i] for i in rows], truncation=True, max_length=s.max_length, padding=True, return_tensors="pt"
        ).to(device)
        for rows in length_sorted_batches(tokens.lengths, s.score_batch_size)
    ]
    engine = fast_inference.engine() if device.type == "cpu" else None
    scores: dict[str, np.ndarray] = {}

    def scorer(name: str, fast: bool) -> Callable[[], None]:
        def run() -> None:
            kw = {"max_length": s.max_length, "batch_size": s.score_batch_size, "device": device}
            scores[name] = score_texts(clf, texts, fast=fast, **kw)

        return run

    def bare() -> None:
        with torch.inference_mode(), autocast_for(device):
            for batch in batches:
                model(**batch)

    runs = {"ours": scorer("ours", False), "bare": bare}
    prepare_s = None
    if engine is not None:
        start = time.perf_counter()
        fast_inference.quantise(model)
        prepare_s = round(time.perf_counter() - start, 3)
        runs["fast"] = scorer("fast", True)
    for fast in (False, True) if engine else (False,):  # warm-up (and the int8 copy, cached)
        score_texts(clf, texts[: s.score_batch_size], max_length=s.max_length, device=device, fast=fast)
    best = dict.fromkeys(runs, float("inf"))
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            _sync(device)
            start = time.perf_counter()
            runs[name]()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    out: dict = {"documents": len(texts), "repeats": repeats, "model": s.score_model or "fresh head"}
    for name, seconds in best.items():
        out[f"{name}_docs_per_s"] = round(len(texts) / seconds, 2)
    out["ratio"] = round(out["ours_docs_per_s"] / out["bare_docs_per_s"], 3)
    out["fast"] = {"engine": engine, "ratio": None, "ap_delta": None}
    if engine is not None:
        gold = corpus.label_matrix(clf.label_names)
        ap32, ap8 = (_macro_ap(gold, scores[name], clf.label_names) for name in ("ours", "fast"))
        auto = fast_inference.inference_model(model, tokens, device, s.score_batch_size).engine
        out["fast"] = {
            "engine": engine,
            "ratio": round(out["fast_docs_per_s"] / out["bare_docs_per_s"], 3),
            "ap_delta": None if ap32 is None else round(abs(ap8 - ap32), 5),
            "macro_ap_float32": ap32,
            "macro_ap_fast": ap8,
            "max_abs_score_delta": round(float(np.abs(scores["fast"] - scores["ours"]).max()), 5),
            "prepare_s": prepare_s,
            "chosen_by_auto": auto is not None,
        }
    return out | _memory(device)


def run_speed(
    corpus: Corpus, backbone: str, s: SpeedSettings, device: torch.device, log: Callable[[str], None] = print
) -> dict:
    """The chosen measurements on the target rows of `corpus` (all rows when none is marked target)."""
    target = corpus.where_domain("target")
    corpus = target if len(target) else corpus
    if s.docs is not None:
        corpus = corpus.subset(range(min(s.docs, len(corpus))))
    labels = corpus.label_names()
    gold = corpus.label_matrix(labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result: dict = {"settings": asdict(s), "device": str(device), "backbone": backbone}
    if "step" in s.parts:
        result["step"] = {}
        for n_labels in s.labels:
            row = bench_step(backbone, corpus.texts, gold, n_labels, s, device)
            result["step"][str(n_labels)] = row
            counted = row["forwards"]
            log(
                f"step L={n_labels} ({row['precision']} both): ratio {row['ratio']}x"
                f" ({row['ours']['step_s']} s vs {row['reference']['step_s']} s;"
                f" forwards {counted['ours']} vs {counted['reference']})"
            )
    if "pipeline" in s.parts:
        p = result["pipeline"] = bench_pipeline(backbone, corpus, gold, labels, s, device)
        line = f"pipeline, float32 both: ratio {p['ratio']}x against the faster official ({p['ratio_against']});"
        log(f"{line} trainer {p['ratio_trainer']}x, cycle {p['ratio_cycle']}x")
        for key in ("ratio_bf16", "ratio_fp16"):
            if key in p:
                log(f"pipeline, ours in {key[6:]} vs official float32: {p[key]}x")
    if "scoring" in s.parts:
        sc = result["scoring"] = bench_scoring(backbone, corpus, labels, s, device)
        log(f"scoring: {sc['ratio']} of the bare float32 forward's speed ({sc['ours_docs_per_s']} docs/s)")
        fast = sc["fast"]
        if fast["engine"]:
            line = f"scoring, {fast['engine']}: {fast['ratio']}x the bare float32 forward"
            log(f"{line}, macro AP delta {fast['ap_delta']}")
    return result
