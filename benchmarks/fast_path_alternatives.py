"""The shipped int8 scoring path against the alternatives tried for its AP change (issue 17).

For one source model and dataset, score each part of the rows with the encoder in float32 (length-sorted
batches of 16, the int8 path's batch) and with each alternative. Report three figures per part:
- the speed against that float32 loop;
- the absolute change of macro AP;
- the mean absolute score change.

The alternatives:
- `int8`: `fast_inference.quantise`, as shipped: per-channel weights, dynamic per-tensor activations.
- `int8-smooth`: SmoothQuant-style smoothing before the same quantisation (Xiao et al. 2023). Each
  encoder linear's input channel j is divided by s_j = max|X_j|^a / max|W_j|^(1-a), and its weight
  column is multiplied by s_j. a = 0.5 is the paper's default, fixed before measuring. max|X_j| comes
  from 64 random rows of the reported part. BERT is post-LN: a LayerNorm's output also feeds the
  residual, so the division cannot fold into it and stays an elementwise multiply.
- `int8-per-token`: int8 weights with a scale per output channel, int8 activations with a scale per
  token rather than one per batch, multiplied by `torch._int_mm`.
- `int8-outlier`: LLM.int8()'s mixed-precision decomposition (Dettmers et al. 2022) over the shipped int8
  linears. Per batch, the input columns with a value beyond the paper's threshold 6.0 (MiniLM's
  LayerNorm outputs carry a few such channels, up to 30 against a median channel peak of 2) are taken
  out before the activations are quantised and multiplied in float32 instead.
- `bf16`: the weights cast to bfloat16. The CPU needs native bf16, as this one has (avx512_bf16).
- `bf16-autocast`: float32 weights under bf16 autocast.

The parts:
- `reported`: the first 1,000 target rows, which `bench-speed` scores.
- `held-out target`: target rows 1,000-2,500, where the file has them.
- `held-out source`: the first 1,000 source rows.

    OMP_NUM_THREADS=1 python benchmarks/fast_path_alternatives.py \\
        --data ../shared/data/movies_shift.csv --model SOURCE_MODEL_DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import numpy as np
import torch
from torch import nn

from dallmi_core.data.corpus import read_corpus
from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.modeling import fast_inference
from dallmi_core.modeling.model import forward_logits, load_classifier, unwrap
from dallmi_core.modeling.tokens import TokenizedCorpus

BATCH = fast_inference.FAST_BATCH_SIZE


class _Smoothed(nn.Module):
    """x -> inner(x * inv_scale): the input half of SmoothQuant's equivalent rescaling."""

    def __init__(self, inner: nn.Linear, inv_scale: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("inv_scale", inv_scale)

    def forward(self, x):
        return self.inner(x * self.inv_scale)


class PerTokenInt8Linear(nn.Module):
    """int8 x int8 -> int32 (torch._int_mm) with a scale per output channel of the weight and, unlike
    torch's dynamic quantisation (one scale per batch), a scale per token of the activations."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=1e-8) / 127
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1]).float()
        scale = flat.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127
        out = torch._int_mm(torch.round(flat / scale).to(torch.int8), self.weight_t).float()
        out = out * scale * self.weight_scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


class OutlierSplitLinear(nn.Module):
    """An int8 linear whose outlier input columns (|x| > threshold anywhere in the batch) bypass it in float32."""

    def __init__(self, int8: nn.Module, weight: torch.Tensor, threshold: float):
        super().__init__()
        self.int8, self.threshold = int8, threshold
        self.register_buffer("weight_t", weight.detach().float().t().contiguous())

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        low, high = torch.aminmax(flat, dim=0)
        outliers = ((high > self.threshold) | (low < -self.threshold)).nonzero().squeeze(1)
        if outliers.numel() == 0:
            return self.int8(x)
        out = self.int8(flat.index_fill(1, outliers, 0.0)) + flat[:, outliers] @ self.weight_t[outliers]
        return out.reshape(*x.shape[:-1], out.shape[-1])


def outlier_quantise(model: nn.Module, threshold: float = 6.0) -> nn.Module:
    """`fast_inference.quantise`, each encoder linear wrapped in an OutlierSplitLinear."""
    fast = fast_inference.quantise(model)
    for name, linear in _encoder_linears(unwrap(model)).items():
        parent, _, leaf = name.rpartition(".")
        holder = fast.get_submodule(parent)
        setattr(holder, leaf, OutlierSplitLinear(getattr(holder, leaf), linear.weight, threshold))
    return fast


def per_token_quantise(model: nn.Module) -> nn.Module:
    """Every encoder linear replaced by a PerTokenInt8Linear."""
    with torch.inference_mode(False):
        bare = copy.deepcopy(unwrap(model)).float().eval()
        for name, linear in _encoder_linears(bare).items():
            parent, _, leaf = name.rpartition(".")
            setattr(bare.get_submodule(parent), leaf, PerTokenInt8Linear(linear))
    return bare


def _encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not fast_inference._is_head(n)}


def _scores(module: nn.Module, tokens: TokenizedCorpus, n_labels: int) -> np.ndarray:
    order = np.argsort(tokens.lengths, kind="stable")
    out = np.zeros((len(tokens), n_labels), np.float32)
    with torch.inference_mode():
        for rows in np.array_split(order, max(1, len(order) // BATCH)):
            ids, mask = tokens.collate(rows)
            out[rows] = torch.sigmoid(forward_logits(module, input_ids=ids, attention_mask=mask)).float().numpy()
    return out


def smooth_quantise(model: nn.Module, calibration: TokenizedCorpus, alpha: float) -> nn.Module:
    """`fast_inference.quantise` after SmoothQuant's per-input-channel rescaling of every encoder linear."""
    with torch.inference_mode(False):
        bare = copy.deepcopy(unwrap(model)).float().eval()
        linears = _encoder_linears(bare)
        peak: dict[str, torch.Tensor] = {}

        def record(name):
            def hook(_module, inputs):
                x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
                peak[name] = torch.maximum(peak[name], x) if name in peak else x

            return hook

        handles = [m.register_forward_pre_hook(record(n)) for n, m in linears.items()]
        _scores(bare, calibration, bare.config.num_labels)
        for handle in handles:
            handle.remove()
        for name, linear in linears.items():
            weight_peak = linear.weight.detach().abs().amax(0).clamp(min=1e-5)
            scale = peak[name].clamp(min=1e-5) ** alpha / weight_peak ** (1 - alpha)
            with torch.no_grad():
                linear.weight.mul_(scale)
            parent, _, leaf = name.rpartition(".")
            setattr(bare.get_submodule(parent), leaf, _Smoothed(linear, (1 / scale).clone()))
    return fast_inference.quantise(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="a source model folder (dallmi finetune-source --out)")
    parser.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--variants", default="int8,int8-smooth,int8-per-token,int8-outlier,bf16,bf16-autocast")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)

    clf = load_classifier(args.model)
    labels = list(clf.label_names)
    model = clf.model.float().eval()
    corpus = read_corpus(args.data)
    target, source = corpus.where_domain("target"), corpus.where_domain("source")
    parts = {"reported": (target, np.arange(min(len(target), 1000)))}
    if len(target) > 1000:
        parts["held-out target"] = (target, np.arange(1000, min(len(target), 2500)))
    parts["held-out source"] = (source, np.arange(min(len(source), 1000)))

    def tokens(part, rows):
        return TokenizedCorpus.build(clf.tokenizer, [part.texts[i] for i in rows], args.max_length)

    reported = tokens(*parts["reported"])
    sample = np.sort(np.random.default_rng(0).choice(len(reported), size=min(64, len(reported)), replace=False))
    calibration = tokens(parts["reported"][0], parts["reported"][1][sample])
    build = {
        "int8": lambda: fast_inference.quantise(model),
        "int8-smooth": lambda: smooth_quantise(model, calibration, args.alpha),
        "int8-per-token": lambda: per_token_quantise(model),
        "int8-outlier": lambda: outlier_quantise(model),
        "bf16": lambda: copy.deepcopy(model).to(torch.bfloat16),
        "bf16-autocast": lambda: model,
    }
    variants = {"float32": model} | {name: build[name]() for name in args.variants.split(",")}
    out: dict = {"data": args.data, "model": args.model, "alpha": args.alpha, "threads": torch.get_num_threads()}
    for name, (part, rows) in parts.items():
        toks, gold = tokens(part, rows), part.label_matrix(labels)[rows]
        runs = {}
        for variant, module in variants.items():
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16-autocast")
            with autocast:
                _scores(module, tokens(part, rows[:BATCH]), len(labels))  # warm-up
                start = time.perf_counter()
                scores = _scores(module, toks, len(labels))
                runs[variant] = (time.perf_counter() - start, scores)
        seconds32, scores32 = runs["float32"]
        ap32 = ap_report(gold, scores32, labels).map_macro
        out[name] = {"documents": len(rows), "macro_ap_float32": round(ap32, 4)} | {
            variant: {
                "speed": round(seconds32 / seconds, 2),
                "ap_delta": round(abs(ap_report(gold, scores, labels).map_macro - ap32), 5),
                "mean_abs_score_delta": round(float(np.abs(scores - scores32).mean()), 5),
            }
            for variant, (seconds, scores) in runs.items()
            if variant != "float32"
        }
        print(name, json.dumps(out[name]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
