"""Command-line options read from the config dataclasses, so a flag's type, default and choices
are the config's own and cannot drift from it (the help text is the only thing written here).

A flag's argparse default is None: an option left out is not passed, and the config applies its
default, which the help shows.
"""

from __future__ import annotations

import argparse
import dataclasses

from dallmi_core.config import CHOICES, DEFAULT_METHOD, AdaptConfig, SourceConfig, TrainingBase

TRAINING_HELP = {
    "lr": "learning rate",
    "batch_size": "documents per batch (the unlabeled batch for DALLMi)",
    "max_length": "max tokens per document",
    "seed": "random seed",
    "device": "where to train",
    "precision": "auto: bf16 autocast on GPUs and CPUs with native bf16, else float32 (no)",
}
SOURCE_HELP = {
    "head_lr": "learning rate of the head while fine-tuning (default: --lr)",
    "probe_epochs": "first train the head alone on frozen features for this many epochs (0: off)",
}
ADAPT_HELP = {
    "variational": "variational PU loss variant",
    "positives_per_label": "tagged positives per label in every step",
    "mixup_pairs": "MixUp pairs per label per step",
    "lambda_mix": "weight of the MixUp regulariser",
    "mixup_at": "where MixUp interpolates",
    "detach_target": "stop the MixUp target's gradient",
    "tag_passes": "step budget: passes over each label's tags",
    "selection": "last: keep the final step; val_variational or val_pu_ap: the best step on held-out PU data",
    "eval_every": "validate every N steps",
    "anchor_weight": f"{DEFAULT_METHOD}: weight of the KL anchor to the source model's predictions (0: off)",
    "wise_alpha": f"{DEFAULT_METHOD}: final weights = alpha * adapted + (1 - alpha) * source (1: off)",
    "prototype_weight": f"{DEFAULT_METHOD}: weight of the tags' prototypes folded into the head (0: off)",
    "prototype_shrinkage": f"{DEFAULT_METHOD}: covariance shrinkage of the prototypes (1: plain mean difference)",
}
FLAGS = {"positives_per_label": "--step-positives"}  # where the flag's name is not the field's


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _kind(annotation: str) -> type:
    """The Python type of a config field from its (string) annotation: bool, int, float or str."""
    for kind in (bool, int, float, str):
        if kind.__name__ in annotation.split(" | "):
            return kind
    raise TypeError(f"no command-line type for a field annotated {annotation!r}")


def add_option(parser, cls: type, name: str, help_text: str, *, no_default: str | None = None) -> None:
    """One flag for config field `name` of `cls`; `no_default` says what a None default means."""
    field = _field(cls, name)
    kind = _kind(str(field.type))
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    default = field.default if field.default is not None else no_default
    text = help_text if default is None or "default" in help_text else f"{help_text} (default {default})"
    if kind is bool:
        parser.add_argument(flag, dest=name, action="store_true", default=None, help=text)
        return
    parser.add_argument(flag, dest=name, type=kind, choices=CHOICES.get(name), default=None, help=text)


def add_training_options(parser, cls: type[TrainingBase], *, epochs_default: str) -> None:
    """Budget (epochs or steps), optimiser and device settings of `cls` (SourceConfig or AdaptConfig)."""
    budget = parser.add_mutually_exclusive_group()
    add_option(budget, cls, "epochs", "passes over the training data", no_default=epochs_default)
    add_option(budget, cls, "max_steps", "optimizer steps (instead of --epochs)")
    for name, text in TRAINING_HELP.items():
        add_option(parser, cls, name, text)


def add_source_options(parser) -> None:
    epochs = f"{SourceConfig.default_epochs:g}, after the head warm-up"
    add_training_options(parser, SourceConfig, epochs_default=epochs)
    for name, text in SOURCE_HELP.items():
        add_option(parser, SourceConfig, name, text)


def add_adapt_options(parser, *, epochs_default: str = "a step budget of --tag-passes over the tags") -> None:
    add_training_options(parser, AdaptConfig, epochs_default=epochs_default)
    for name, text in ADAPT_HELP.items():
        add_option(parser, AdaptConfig, name, text)


def config_kwargs(args: argparse.Namespace, cls: type) -> dict:
    """The settings of `cls` the user gave on the command line (the config fills in the rest)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
