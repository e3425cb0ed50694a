"""`dallmi bench-speed`: our fast paths against the official code's shape, side by side in one run.

Shared machines make absolute times noise; ratios measured in the same run, on the same batches
and random draws, interleaved step by step, are not. Three measurements:

- step: the per-label reference step (1 + 3L forwards) against the vectorised step, both with
  dynamic padding on the same batches and MixUp draws, both in the same precision; each time
  includes backward and the optimizer step. Labels beyond those of the data are synthesised:
  each gets `tags_per_label` documents drawn at random as its tags (speed depends on how many
  sequences there are and how long, not on which documents carry a label).
- pipeline: adaptation throughput in target documents/s on real texts: the official shape
  (per-label loop, every text tokenised per forward and padded to max_length, float32, as the
  official code runs on a CPU) against ours (vectorised step with its length groups, dynamic
  padding, the corpus tokenised once, in the precision `dallmi adapt` would pick here). When that
  is not float32, ours also runs in float32, so both ratios come from the same run.
- scoring: the `dallmi score` path (`score_texts`) against the limit, a bare `model(**batch)`
  loop over pre-tokenised, length-sorted, dynamically padded batches in inference mode.
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

from dallmi_core.config import AdaptConfig
from dallmi_core.data import Corpus
from dallmi_core.flops import ShapeRecorder, flop_model
from dallmi_core.model import eager_attention, new_classifier
from dallmi_core.precision import cpu_bf16, resolve_precision
from dallmi_core.sampling import LabelBalancedSampler
from dallmi_core.scoring import autocast_for, score_texts
from dallmi_core.step import draw_mixup, reference_dallmi_step, vectorised_dallmi_step
from dallmi_core.tokens import TokenizedCorpus, length_sorted_batches


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
    precision: str = "auto"  # ours (and both steps): auto as `dallmi adapt` resolves it, or no / bf16
    peak_tflops: float | None = None  # the device's peak for that precision: model FLOP utilisation


class OnTheFlyTokens:
    """The official shape: texts tokenised again for every forward and padded to a fixed length."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int):
        self.tokenizer, self.texts, self.max_length = tokenizer, texts, max_length

    def collate(self, indices, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            [self.texts[int(i)] for i in indices],
            truncation=True,
            max_length=self.max_length,
            padding="max_length" if pad_to else "longest",
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]


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


class _Path:
    """One model copy with its optimizer and one step function; times each training step."""

    def __init__(self, model, step: Callable, tokens, device: torch.device, precision: str = "no", **step_kw):
        self.model, self.step, self.tokens, self.device, self.kw = model, step, tokens, device, step_kw
        self.precision = precision
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
        self.times: list[float] = []
        self.flop_model, self.shapes = flop_model(model), ShapeRecorder(model)
        self.flops: list[float] = []  # training FLOPs of each timed step, from its forwards' shapes

    def run(self, batch, mix, cfg: AdaptConfig, *, timed: bool = True) -> None:
        self.shapes.reset()
        _sync(self.device)
        start = time.perf_counter()
        eager = cpu_bf16(self.device.type, self.precision)  # as the trainer decides
        with _autocast(self.device, self.precision), eager_attention(self.model, enabled=eager):
            loss, _ = self.step(self.model, self.tokens, batch, mix, cfg, self.device, **self.kw)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - start)
            self.flops.append(self.shapes.training_flops(self.flop_model))

    def flop_figures(self, name: str, peak_tflops: float | None) -> dict[str, float]:
        """TFLOP per step, achieved TFLOP/s and, given the device's peak, model FLOP utilisation."""
        tflops = sum(self.flops) / sum(self.times) / 1e12
        out = {f"{name}_tflop_per_step": float(np.mean(self.flops)) / 1e12, f"{name}_tflops": tflops}
        if peak_tflops:
            out[f"{name}_mfu"] = tflops / peak_tflops
        return {key: _significant(value) for key, value in out.items()}


def _significant(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _autocast(device: torch.device, precision: str):
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return torch.autocast(device.type, dtype=dtypes[precision]) if precision in dtypes else contextlib.nullcontext()


def _interleaved(paths: dict[str, _Path], sampler, cfg: AdaptConfig, steps: int, seed: int) -> int:
    """One warm-up step, then `steps` timed steps; every path gets the same batch and draws, and
    which path goes first alternates, so load from other jobs falls on both alike."""
    rng = np.random.default_rng(seed)
    names = list(paths)
    sequences = 0
    for i in range(steps + 1):
        batch = sampler.next()
        mix = draw_mixup(rng, batch, cfg.mixup_pairs, cfg.mixup_alpha)
        active = int(batch.active.sum())
        sequences = len(batch.unlabeled) + active * (cfg.positives_per_label + cfg.mixup_pairs)
        for name in names if i % 2 == 0 else names[::-1]:
            paths[name].run(batch, mix, cfg, timed=i > 0)
    return sequences


def _adapt_cfg(s: SpeedSettings) -> AdaptConfig:
    return AdaptConfig(batch_size=s.batch_size, positives_per_label=s.positives_per_label, max_length=s.max_length)


def bench_step(backbone: str, texts: Sequence[str], gold: np.ndarray, n_labels: int, s: SpeedSettings, device):
    """Reference vs vectorised step at `n_labels` labels: median seconds, sequences/s, ratio."""
    tags, synthesised = _tags(gold, n_labels, s.tags_per_label, np.random.default_rng(s.seed))
    torch.manual_seed(s.seed)
    clf = new_classifier(backbone, [f"label_{i}" for i in range(n_labels)])
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, s.max_length)
    model = clf.model.to(device).train()
    precision = resolve_precision(s.precision, device.type)
    paths = {
        "reference": _Path(copy.deepcopy(model), reference_dallmi_step, tokens, device, precision),
        "vectorised": _Path(model, vectorised_dallmi_step, tokens, device, precision),
    }
    cfg = _adapt_cfg(s)
    sampler = LabelBalancedSampler(
        np.arange(len(tokens)), tags, batch_size=s.batch_size, positives_per_label=s.positives_per_label, seed=s.seed
    )
    sequences = _interleaved(paths, sampler, cfg, s.steps, s.seed)
    out = {"labels": n_labels, "synthesised_labels": synthesised, "sequences_per_step": sequences}
    out["precision"] = precision
    for name, path in paths.items():
        median = float(np.median(path.times))
        out[f"{name}_step_s"] = round(median, 4)
        out[f"{name}_sequences_per_s"] = round(sequences / median, 2)
        out |= path.flop_figures(name, s.peak_tflops)
    out["reference_forwards_per_step"] = 1 + 3 * n_labels
    out["ratio"] = round(out["reference_step_s"] / out["vectorised_step_s"], 3)
    return out | _memory(device)


def bench_pipeline(backbone: str, corpus: Corpus, gold: np.ndarray, labels: Sequence[str], s: SpeedSettings, device):
    """Target documents/s: official shape (per-label loop, padded to max_length, float32) vs ours."""
    tags, _ = _tags(gold, len(labels), s.tags_per_label, np.random.default_rng(s.seed))
    torch.manual_seed(s.seed)
    clf = new_classifier(backbone, labels)
    model = clf.model.to(device).train()
    start = time.perf_counter()
    tokens = TokenizedCorpus.build(clf.tokenizer, corpus.texts, s.max_length)
    tokenise_s = time.perf_counter() - start
    official = OnTheFlyTokens(clf.tokenizer, corpus.texts, s.max_length)
    precision = resolve_precision(s.precision, device.type)
    paths = {
        "official": _Path(copy.deepcopy(model), reference_dallmi_step, official, device, pad_to=s.max_length),
        "ours": _Path(model, vectorised_dallmi_step, tokens, device, precision),
    }
    if precision != "no":
        paths["ours_float32"] = _Path(copy.deepcopy(model), vectorised_dallmi_step, tokens, device)
    cfg = _adapt_cfg(s)
    sampler = LabelBalancedSampler(
        np.arange(len(tokens)), tags, batch_size=s.batch_size, positives_per_label=s.positives_per_label, seed=s.seed
    )
    _interleaved(paths, sampler, cfg, s.steps, s.seed)
    documents = s.steps * sampler.unlabeled.batch_size
    out = {"documents": len(corpus), "labels": len(labels), "steps": s.steps, "tokenise_corpus_s": round(tokenise_s, 3)}
    out["ours_precision"] = precision
    for name, path in paths.items():
        out[f"{name}_docs_per_s"] = round(documents / sum(path.times), 2)
        out |= path.flop_figures(name, s.peak_tflops)
    out["ratio"] = round(out["ours_docs_per_s"] / out["official_docs_per_s"], 3)
    if "ours_float32_docs_per_s" in out:
        out["ratio_float32"] = round(out["ours_float32_docs_per_s"] / out["official_docs_per_s"], 3)
    return out | _memory(device)


def bench_scoring(backbone: str, corpus: Corpus, labels: Sequence[str], s: SpeedSettings, device, repeats: int = 2):
    """Docs/s of the `dallmi score` path against a bare forward loop with the best padding."""
    torch.manual_seed(s.seed)
    clf = new_classifier(backbone, labels)
    model = clf.model.to(device).eval()
    texts = list(corpus.texts)
    tokens = TokenizedCorpus.build(clf.tokenizer, texts, s.max_length)
    batches = [
        clf.tokenizer(
            [texts[i] for i in rows], truncation=True, max_length=s.max_length, padding=True, return_tensors="pt"
        ).to(device)
        for rows in length_sorted_batches(tokens.lengths, s.score_batch_size)
    ]

    def ours() -> None:
        score_texts(clf, texts, max_length=s.max_length, batch_size=s.score_batch_size, device=device)

    def bare() -> None:
        with torch.inference_mode(), autocast_for(device):
            for batch in batches:
                model(**batch)

    score_texts(clf, texts[: s.score_batch_size], max_length=s.max_length, device=device)  # warm-up
    best = {"ours": float("inf"), "bare": float("inf")}
    for r in range(repeats):
        for name, fn in (("ours", ours), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("ours", ours)):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    out = {"documents": len(texts), "repeats": repeats}
    for name, seconds in best.items():
        out[f"{name}_docs_per_s"] = round(len(texts) / seconds, 2)
    out["ratio"] = round(out["ours_docs_per_s"] / out["bare_docs_per_s"], 3)
    return out | _memory(device)


def run_speed(
    corpus: Corpus, backbone: str, s: SpeedSettings, device: torch.device, log: Callable[[str], None] = print
) -> dict:
    """All three measurements on the target rows of `corpus` (all rows when none is marked target)."""
    target = corpus.where_domain("target")
    corpus = target if len(target) else corpus
    if s.docs is not None:
        corpus = corpus.subset(range(min(s.docs, len(corpus))))
    labels = corpus.label_names()
    gold = corpus.label_matrix(labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result: dict = {"settings": asdict(s), "device": str(device), "backbone": backbone, "step": {}}
    for n_labels in s.labels:
        row = bench_step(backbone, corpus.texts, gold, n_labels, s, device)
        result["step"][str(n_labels)] = row
        log(f"step L={n_labels}: ratio {row['ratio']}x ({row['vectorised_step_s']} s vs {row['reference_step_s']} s)")
    result["pipeline"] = bench_pipeline(backbone, corpus, gold, labels, s, device)
    pipeline = result["pipeline"]
    line = f"pipeline: ratio {pipeline['ratio']}x ({pipeline['ours_docs_per_s']} docs/s, {pipeline['ours_precision']})"
    if "ratio_float32" in pipeline:
        line += f"; ours in float32: {pipeline['ratio_float32']}x"
    log(line)
    result["scoring"] = bench_scoring(backbone, corpus, labels, s, device)
    scoring = result["scoring"]
    log(f"scoring: {scoring['ratio']} of the bare forward's speed ({scoring['ours_docs_per_s']} docs/s)")
    return result
