"""Run configurations: valid defaults, exact dict/JSON round trips, and errors that name the setting."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.errors import ConfigError


def test_defaults_are_valid():
    source, adapt = SourceConfig(), AdaptConfig()
    assert source.kind == "finetune-source" and adapt.kind == "adapt"
    assert adapt.method == "dallmi-anchored" and adapt.anchored and adapt.variational == "log"
    assert not adapt.replace(method="dallmi").anchored and adapt.replace(method="dallmi").uses_mixup
    assert adapt.positives_per_label == 8 and adapt.mixup_alpha == 0.3 and adapt.lambda_mix == 1.0
    assert adapt.lr == 5e-5 and adapt.max_length == 128
    assert adapt.detach_target is False and adapt.mixup_at == "word_embeddings"
    assert adapt.uses_mixup


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AdaptConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "cfg",
    [
        SourceConfig(),
        SourceConfig(lr=1e-4, batch_size=8, epochs=None, max_steps=30, head_lr=1e-3, seed=7),
        AdaptConfig(),
        AdaptConfig(
            method="bce-partial",
            variational="norm",
            max_steps=12,
            detach_target=True,
            mixup_at="embedding_output",
            patience=3,
            selection="last",
            device="cpu",
        ),
        AdaptConfig(epochs=2.5, mixup_pairs=0, lambda_mix=0.0),
    ],
)
def test_round_trip_through_dict_and_json(cfg):
    data = cfg.to_dict()
    assert data["kind"] == cfg.kind
    assert type(cfg).from_dict(data) == cfg
    stored = json.loads(json.dumps(data))
    assert type(cfg).from_dict(stored) == cfg
    assert data == stored  # nothing in it that JSON changes


def test_replace_validates():
    cfg = AdaptConfig().replace(lr=1e-3)
    assert cfg.lr == 1e-3
    with pytest.raises(ConfigError, match="lr"):
        AdaptConfig().replace(lr=-1.0)


def test_from_dict_without_kind_uses_the_class_kind():
    assert AdaptConfig.from_dict({"lr": 1e-3}) == AdaptConfig(lr=1e-3)


def test_uses_mixup_only_for_dallmi_with_pairs_and_weight():
    assert not AdaptConfig(method="bce-partial").uses_mixup
    assert not AdaptConfig(mixup_pairs=0).uses_mixup
    assert not AdaptConfig(lambda_mix=0.0).uses_mixup


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (AdaptConfig, {"method": "vpu"}, "method"),
        (AdaptConfig, {"variational": "l2"}, "variational"),
        (AdaptConfig, {"mixup_at": "pooler"}, "mixup_at"),
        (AdaptConfig, {"selection": "gold"}, "selection"),
        (AdaptConfig, {"device": "tpu"}, "device"),
        (SourceConfig, {"device": "gpu"}, "device"),
        (AdaptConfig, {"precision": "fp8"}, "precision"),
        (AdaptConfig, {"lr": -1e-5}, "lr"),
        (AdaptConfig, {"lr": 0.0}, "lr"),
        (SourceConfig, {"lr": -1.0}, "lr"),
        (SourceConfig, {"head_lr": 0.0}, "head_lr"),
        (AdaptConfig, {"epochs": 2.0, "max_steps": 10}, "epochs or max_steps"),
        (SourceConfig, {"epochs": 2.0, "max_steps": 10}, "epochs or max_steps"),
        (AdaptConfig, {"max_steps": 0}, "max_steps"),
        (AdaptConfig, {"epochs": -1.0}, "epochs"),
        (AdaptConfig, {"batch_size": 0}, "batch_size"),
        (SourceConfig, {"batch_size": -4}, "batch_size"),
        (AdaptConfig, {"positives_per_label": 0}, "positives_per_label"),
        (AdaptConfig, {"mixup_pairs": -1}, "mixup_pairs"),
        (AdaptConfig, {"mixup_alpha": 0.0}, "mixup_alpha"),
        (AdaptConfig, {"lambda_mix": -0.1}, "lambda_mix"),
        (AdaptConfig, {"val_fraction": 1.0}, "val_fraction"),
        (AdaptConfig, {"warmup_ratio": 1.0}, "warmup_ratio"),
        (AdaptConfig, {"max_length": 4}, "max_length"),
        (AdaptConfig, {"max_length": 1024}, "max_length"),
        (AdaptConfig, {"weight_decay": -0.01}, "weight_decay"),
        (AdaptConfig, {"grad_clip": -1.0}, "grad_clip"),
        (AdaptConfig, {"patience": 0}, "patience"),
        (AdaptConfig, {"eval_every": 0}, "eval_every"),
        (AdaptConfig, {"tag_passes": 0.0}, "tag_passes"),
        (AdaptConfig, {"prototype_shrinkage": 0.0}, "prototype_shrinkage"),
        (AdaptConfig, {"prototype_shrinkage": 1.5}, "prototype_shrinkage"),
    ],
)
def test_invalid_values_name_the_setting(cls, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        cls(**kwargs)
    # the same value coming from a stored dict is refused too
    with pytest.raises(ConfigError, match=name):
        cls.from_dict({**cls().to_dict(), "epochs": None, "max_steps": None, **kwargs})


def test_unknown_key_is_refused_and_named():
    with pytest.raises(ConfigError, match="learning_rate") as info:
        AdaptConfig.from_dict({"kind": "adapt", "learning_rate": 1e-3})
    assert "lr" in str(info.value)  # and the known settings are listed


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (AdaptConfig, SourceConfig().to_dict()),
        (SourceConfig, AdaptConfig().to_dict()),
        (AdaptConfig, {"kind": "something"}),
    ],
)
def test_wrong_kind_is_refused(cls, data):
    with pytest.raises(ConfigError, match="config"):
        cls.from_dict(data)
