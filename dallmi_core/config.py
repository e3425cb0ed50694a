"""Frozen, validated run configurations that round-trip through plain dicts (stored as JSON).

Every run (source fine-tuning, adaptation, baselines) is described by one of these, so any run
can be reproduced from its stored config alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from dallmi_core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "no", "bf16", "fp16")
DEFAULT_METHOD = "dallmi-anchored"
METHODS = (DEFAULT_METHOD, "dallmi", "bce-partial", "aad", "target-oracle")
DALLMI_LOSS = (DEFAULT_METHOD, "dallmi")  # the methods trained with DALLMi's PU loss and MixUp
VARIATIONAL = ("log", "norm")
MIXUP_AT = ("word_embeddings", "embedding_output")
SELECTIONS = ("val_variational", "val_pu_ap", "last")
CHOICES = {  # the settings with a fixed set of values: validated here, offered by the CLI and the app
    "device": DEVICES,
    "precision": PRECISIONS,
    "method": METHODS,
    "variational": VARIATIONAL,
    "mixup_at": MIXUP_AT,
    "selection": SELECTIONS,
}


def precision_words(precision: str | None) -> str:
    """How a run's resolved precision reads to a user ("no" is accelerate's word for float32)."""
    return "float32" if precision in (None, "no") else f"{precision} autocast"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}.")


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}.")


@dataclass(frozen=True)
class _Config:
    """Shared to/from dict; subclasses validate in __post_init__."""

    kind: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"Expected a {cls.kind!r} config, got {kind!r}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown {cls.kind} settings: {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        return cls(**data)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainingBase(_Config):
    """Settings every training run shares."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    max_length: int = 128
    epochs: float | None = None
    max_steps: int | None = None
    seed: int = 13
    device: str = "auto"
    precision: str = "auto"
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("lr", self.lr)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"max_length must be between 8 and 512 tokens, got {self.max_length!r}.")
        if self.epochs is not None and self.max_steps is not None:
            raise ConfigError("Give either epochs or max_steps, not both.")
        if self.epochs is not None:
            _check_positive("epochs", self.epochs)
        if self.max_steps is not None:
            _check_positive("max_steps", self.max_steps)
        _check_positive("grad_clip", self.grad_clip, allow_zero=True)
        _check_choice("device", self.device, DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class SourceConfig(TrainingBase):
    """BCE fine-tuning of a backbone on labelled source-domain rows."""

    kind: ClassVar[str] = "finetune-source"
    lr: float = 2e-5
    batch_size: int = 16
    head_lr: float | None = None  # None: the same as lr (the probe has trained the head already)
    probe_epochs: float = 8.0  # head-only epochs on frozen features first (probe.py); 0 turns it off
    probe_lr: float = 1e-3
    calibration_fraction: float = 0.1  # source rows held out for the calibration fit (calibration.py)
    default_epochs: ClassVar[float] = 1.0  # when neither epochs nor max_steps is given
    min_calibration_rows: ClassVar[int] = 20  # fewer held-out rows: calibrate on the training rows

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("batch_size", self.batch_size)
        if self.head_lr is not None:
            _check_positive("head_lr", self.head_lr)
        _check_positive("probe_epochs", self.probe_epochs, allow_zero=True)
        _check_positive("probe_lr", self.probe_lr)
        if not 0 <= self.calibration_fraction < 1:
            raise ConfigError(f"calibration_fraction must be in [0, 1), got {self.calibration_fraction!r}.")


@dataclass(frozen=True)
class AdaptConfig(TrainingBase):
    """Adaptation of a source model on target text (DESIGN.md section 4).

    `max_steps=None and epochs=None` means the step budget tied to the tags: `tag_passes`
    passes over each label's training tags. Measured on arxiv_shift (docs/BENCHMARKS.md): test
    AP peaks within 5-20 steps and then decays while the PU variational loss keeps falling, so
    selecting on that loss keeps late, worse steps; a short fixed budget ("last") wins.
    """

    kind: ClassVar[str] = "adapt"
    method: str = DEFAULT_METHOD
    variational: str = "log"
    batch_size: int = 16
    positives_per_label: int = 8  # per label per step; all 8 training tags at K=10 (docs/BENCHMARKS.md)
    mixup_pairs: int = 1
    mixup_alpha: float = 0.3
    lambda_mix: float = 1.0
    mixup_at: str = "word_embeddings"
    detach_target: bool = False
    tag_passes: float = 10.0
    min_steps: int = 20
    selection: str = "last"
    val_fraction: float = 0.2
    val_unlabeled: int = 256
    eval_every: int = 10
    patience: int | None = None
    # dallmi-anchored only (docs/METHOD.md): the source model's predictions on the target text as a
    # KL anchor, the final weights interpolated back toward the source model's (WiSE-FT), then the
    # tags' prototypes folded into the head.
    anchor_weight: float = 1.0
    wise_alpha: float = 0.5  # final = alpha * adapted + (1 - alpha) * source; 1 keeps the adapted weights
    prototype_weight: float = 0.5  # the tags' prototype folded into the head (prototype.py); 0: off
    prototype_shrinkage: float = 0.2  # the prototypes' covariance shrinkage; 1: the plain mean difference
    # aad only: knowledge-distillation temperature and weight (Ryu & Lee 2020), discriminator lr.
    aad_temperature: float = 20.0
    aad_kd_weight: float = 1.0
    aad_disc_lr: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("method", self.method, METHODS)
        _check_positive("anchor_weight", self.anchor_weight, allow_zero=True)
        _check_positive("prototype_weight", self.prototype_weight, allow_zero=True)
        if not 0 < self.prototype_shrinkage <= 1:
            raise ConfigError(f"prototype_shrinkage must be in (0, 1], got {self.prototype_shrinkage!r}.")
        if not 0 <= self.wise_alpha <= 1:
            raise ConfigError(f"wise_alpha must be in [0, 1], got {self.wise_alpha!r}.")
        for name in ("aad_temperature", "aad_disc_lr"):
            _check_positive(name, getattr(self, name))
        _check_positive("aad_kd_weight", self.aad_kd_weight, allow_zero=True)
        _check_choice("variational", self.variational, VARIATIONAL)
        _check_choice("mixup_at", self.mixup_at, MIXUP_AT)
        _check_choice("selection", self.selection, SELECTIONS)
        for name in ("batch_size", "positives_per_label", "eval_every", "min_steps"):
            _check_positive(name, getattr(self, name))
        _check_positive("mixup_pairs", self.mixup_pairs, allow_zero=True)
        _check_positive("mixup_alpha", self.mixup_alpha)
        _check_positive("lambda_mix", self.lambda_mix, allow_zero=True)
        _check_positive("tag_passes", self.tag_passes)
        _check_positive("val_unlabeled", self.val_unlabeled, allow_zero=True)
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}.")
        if self.patience is not None:
            _check_positive("patience", self.patience)

    @property
    def uses_mixup(self) -> bool:
        return self.method in DALLMI_LOSS and self.mixup_pairs > 0 and self.lambda_mix > 0

    @property
    def anchored(self) -> bool:
        """The source anchor and WiSE-FT apply (dallmi-anchored; a no-op at weight 0 and alpha 1)."""
        return self.method == DEFAULT_METHOD
