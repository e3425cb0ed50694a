"""A faster CPU inference path for whole corpora: dynamic int8 quantisation of the encoder's linears.

Scoring and the Domain-shift embeddings spend their CPU time in the encoder's linear layers;
PyTorch's dynamic int8 quantisation (weights int8 once, a scale per output channel, activations
quantised per batch, x86/fbgemm kernels with VNNI) made scoring 2.6x faster than the bare float32
forward on 2 cores and moved macro AP by 0.0004-0.0054 on the shared datasets (docs/BENCHMARKS.md,
Speed v3, which also measures bf16 weights and SmoothQuant-smoothed int8, neither shipped). It
runs in batches of `FAST_BATCH_SIZE`, whose activations stay small enough for the allocator to
reuse instead of mapping fresh pages per op. ONNX Runtime's int8 measured about as fast, so it is
not a dependency. The pooler and the classifier head stay float32: they cost nothing.

`DALLMI_FAST_INFERENCE`: `0` never; `1` on every CPU where the engine exists; unset (auto) only on
a CPU with VNNI, and there only when a probe on the corpus's own median-length documents measures
the int8 copy faster. Without VNNI (AVX2 alone) the activations keep 7 bits, and on such a CPU
(2 AMD EPYC cores) int8 moved movies' macro AP by 0.016-0.017 at 1.35-1.44x the speed: five times
the 0.003 the scores may move, so auto keeps float32 there. The copy and the decision are cached
per model, thread count and batch size until the weights change.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from dallmi_core.modeling.model import forward_logits, unwrap
from dallmi_core.modeling.tokens import TokenizedCorpus

FAST_INFERENCE_ENV = "DALLMI_FAST_INFERENCE"
ENGINE = "torch-int8-dynamic"
# int8 must beat float32 by this factor on the probe: a tie keeps the exact path
MIN_SPEEDUP = 1.15
# below this many documents the copy and the probe cost more than they save
AUTO_MIN_DOCS = 256
# documents per int8 batch: measured best on this CPU (docs/BENCHMARKS.md)
FAST_BATCH_SIZE = 16
_HEAD_NAMES = ("pooler", "classifier", "score", "pre_classifier")


def engine() -> str | None:
    """The quantised engine's name where this torch can run it, else None."""
    quantize = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantize is None or not hasattr(quantize, "quantize_dynamic"):
        return None
    supported = set(torch.backends.quantized.supported_engines)
    return ENGINE if supported & {"x86", "fbgemm", "onednn"} else None


def mode(fast: bool | None = None) -> str:
    """`off`, `on` or `auto`: `fast` when given (a CLI flag, a caller), else DALLMI_FAST_INFERENCE."""
    if fast is not None:
        return "on" if fast else "off"
    value = os.environ.get(FAST_INFERENCE_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "on" if value in ("1", "true", "yes", "on") else "auto"


def quantise(model: nn.Module) -> nn.Module:
    """An int8 copy of `model` for inference: every encoder nn.Linear dynamically quantised, with a
    weight scale per output channel (one per matrix moved macro AP by up to 0.017) and, on CPUs with
    VNNI, activations over the full 8 bits (torch's default keeps 7 against int16 saturation)."""
    with torch.inference_mode(False), warnings.catch_warnings():  # plain tensors, even when called in
        warnings.simplefilter("ignore")  # inference mode; torch.ao.quantization announces its move to torchao
        quantization = torch.ao.quantization
        bare = copy.deepcopy(unwrap(model)).float().eval()
        spec = {
            name: quantization.per_channel_dynamic_qconfig
            for name, m in bare.named_modules()
            if isinstance(m, nn.Linear) and not _is_head(name)
        }
        fast = quantization.quantize_dynamic(bare, spec, dtype=torch.qint8)
    if _cpu_has_vnni():
        for module in fast.modules():  # version 3 calls linear_dynamic without reduce_range=True: 8-bit
            if type(module).__name__ == "Linear" and hasattr(module, "_packed_params"):  # not 7-bit
                module.version = 3  # activations, half the error; VNNI's int32 sums cannot saturate
    return fast


@functools.cache  # the flags of a running machine do not change; auto asks on every scoring call
def _cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def _is_head(name: str) -> bool:
    return any(part in _HEAD_NAMES for part in name.split("."))


class Inference(NamedTuple):
    """What to score with: the module, the fast engine's name (None: the model as given), the batch."""

    model: nn.Module
    engine: str | None
    batch_size: int


@dataclass
class _Choice:
    fingerprint: tuple
    fast: nn.Module | None  # the int8 copy, or None where it was not measured faster


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[int, _Choice]] = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a weight is replaced or updated in place (an optimizer step bumps _version)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def inference_model(
    model: nn.Module,
    tokens: TokenizedCorpus,
    device: torch.device | str,
    batch_size: int = 64,
    fast: bool | None = None,
) -> Inference:
    """The module (and batch size) to score `tokens` with on `device`."""
    plain = Inference(model, None, batch_size)
    choice = mode(fast)
    if torch.device(device).type != "cpu" or choice == "off" or engine() is None:
        return plain
    if choice == "auto" and (len(tokens) < AUTO_MIN_DOCS or not _cpu_has_vnni()):
        return plain
    fast_batch = min(batch_size, FAST_BATCH_SIZE)
    per_model = _CACHE.setdefault(unwrap(model), {})
    key, fingerprint = (torch.get_num_threads(), choice, batch_size), _fingerprint(model)
    cached = per_model.get(key)
    if cached is None or cached.fingerprint != fingerprint:
        int8 = quantise(model)
        if choice == "auto" and not _measured_faster(int8, fast_batch, model, batch_size, tokens):
            int8 = None
        cached = per_model[key] = _Choice(fingerprint, int8)
    return Inference(cached.fast, ENGINE, fast_batch) if cached.fast is not None else plain


def _measured_faster(int8: nn.Module, int8_batch: int, model: nn.Module, batch: int, tokens: TokenizedCorpus) -> bool:
    """Time the corpus's median-length documents through both, each in its own batch size, best of two."""
    order = np.argsort(tokens.lengths, kind="stable")
    middle = order[max(0, len(order) // 2 - batch // 2) :][:batch]
    best = {}
    for name, module, size in (("float32", model, batch), ("int8", int8, int8_batch)):
        with _eval(module), torch.inference_mode():
            times = []
            for _ in range(2):
                start = time.perf_counter()
                for rows in np.array_split(middle, max(1, len(middle) // size)):
                    ids, mask = tokens.collate(rows)
                    forward_logits(module, input_ids=ids, attention_mask=mask)
                times.append(time.perf_counter() - start)
        best[name] = min(times)
    return best["float32"] >= MIN_SPEEDUP * best["int8"]


@contextlib.contextmanager
def _eval(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
