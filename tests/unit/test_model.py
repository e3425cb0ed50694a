"""The classifier folder: exact save/load round trip, plain-HF loadability, refused folders, and the
forwards over (mixed) embeddings that MixUp relies on."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import LABELS, make_texts

from dallmi_core.errors import ConfigError
from dallmi_core.modeling.model import (
    check_model_dir,
    default_backbone_dir,
    embeddings_module,
    forward_from_embedding_output,
    forward_logits,
    load_classifier,
    new_classifier,
    resolve_backbone,
    save_classifier,
    word_embedding_matrix,
)


def encode(clf, texts):
    enc = clf.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def batch():
    texts, _ = make_texts(6, seed=3)
    return texts


def test_new_classifier_has_a_multilabel_head(tiny_clf):
    assert tiny_clf.label_names == LABELS
    assert tiny_clf.num_labels == 3
    cfg = tiny_clf.model.config
    assert cfg.problem_type == "multi_label_classification"
    assert {int(k): v for k, v in cfg.id2label.items()} == dict(enumerate(LABELS))
    assert tiny_clf.thresholds() == {name: 0.5 for name in LABELS}


def test_new_classifier_rejects_bad_labels(tiny_backbone):
    with pytest.raises(ConfigError, match="unique"):
        new_classifier(tiny_backbone, ["a", "a"])
    with pytest.raises(ConfigError, match="at least one"):
        new_classifier(tiny_backbone, [])


def test_save_load_round_trip_is_exact(tiny_clf, tmp_path, batch):
    ids, mask = encode(tiny_clf, batch)
    tiny_clf.model.eval()
    with torch.no_grad():
        before = forward_logits(tiny_clf.model, input_ids=ids, attention_mask=mask)
    out = save_classifier(tiny_clf, tmp_path / "clf")
    assert any(out.glob("*.safetensors"))
    assert not (out / "pytorch_model.bin").exists()

    loaded = load_classifier(out)
    loaded.model.eval()
    with torch.no_grad():
        after = forward_logits(loaded.model, input_ids=ids, attention_mask=mask)
    assert loaded.label_names == LABELS
    assert after.shape == (len(batch), len(LABELS))
    assert torch.equal(before, after)
    # the tokenizer travelled too
    assert torch.equal(encode(loaded, batch)[0], ids)


def test_saved_folder_loads_with_plain_transformers(tiny_clf, tmp_path, batch):
    from transformers import AutoModelForSequenceClassification

    out = save_classifier(tiny_clf, tmp_path / "clf", thresholds={"login": 0.3})
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert [model.config.id2label[i] for i in range(len(LABELS))] == LABELS
    assert model.config.label2id == {name: i for i, name in enumerate(LABELS)}
    assert model.config.problem_type == "multi_label_classification"
    ids, mask = encode(tiny_clf, batch)
    tiny_clf.model.eval()
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).logits, tiny_clf.model(input_ids=ids, attention_mask=mask).logits
        )


def test_thresholds_round_trip(tiny_clf, tmp_path):
    out = save_classifier(tiny_clf, tmp_path / "clf", thresholds={"billing": 0.25, "shipping": 0.8})
    loaded = load_classifier(out)
    assert loaded.thresholds() == {"billing": 0.25, "login": 0.5, "shipping": 0.8}
    stored = json.loads((out / "config.json").read_text())
    assert stored["dallmi_thresholds"] == {"billing": 0.25, "shipping": 0.8}


def test_load_refuses_a_single_label_model(tiny_clf, tmp_path):
    tiny_clf.model.config.problem_type = "single_label_classification"
    tiny_clf.model.save_pretrained(tmp_path / "single")
    tiny_clf.tokenizer.save_pretrained(tmp_path / "single")
    with pytest.raises(ConfigError, match="not a multi-label"):
        load_classifier(tmp_path / "single")


def test_save_classifier_writes_its_own_label_metadata(tiny_clf, tmp_path):
    from transformers import AutoModelForSequenceClassification

    # a plain HF classifier folder: default LABEL_i names and no problem_type
    plain = tmp_path / "plain"
    model = tiny_clf.model
    model.config.problem_type = None
    model.config.id2label = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(plain)
    tiny_clf.tokenizer.save_pretrained(plain)
    loaded = load_classifier(plain)
    assert loaded.label_names == ["LABEL_0", "LABEL_1", "LABEL_2"]

    loaded.label_names = ["x", "y", "z"]
    out = save_classifier(loaded, tmp_path / "named")
    again = AutoModelForSequenceClassification.from_pretrained(out)
    assert again.config.problem_type == "multi_label_classification"
    assert [again.config.id2label[i] for i in range(3)] == ["x", "y", "z"]
    assert load_classifier(out).label_names == ["x", "y", "z"]


# -- refused folders -----------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bert_config() -> str:
    return json.dumps(
        {
            "model_type": "bert",
            "architectures": ["BertForSequenceClassification"],
            "vocab_size": 100,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "intermediate_size": 8,
        }
    )


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("empty", "config.json is missing"),
        ("bad_json", "not valid JSON"),
        ("not_utf8", "not valid JSON"),
        ("json_list", "no model_type"),
        ("no_model_type", "no model_type"),
        ("no_weights", "no \\*.safetensors"),
    ],
)
def test_bad_model_folders_are_refused(tmp_path, setup, message):
    folder = tmp_path / "m"
    if setup == "file":
        folder.write_text("hello")
    elif setup != "missing":
        folder.mkdir()
    config = folder / "config.json"
    contents = {
        "bad_json": "{not json",
        "json_list": "[1, 2]",
        "no_model_type": '{"hidden_size": 8}',
        "no_weights": _bert_config(),
    }
    if setup in contents:
        config.write_text(contents[setup])
    if setup == "not_utf8":
        config.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(ConfigError, match=message):
        check_model_dir(folder)
    with pytest.raises(ConfigError, match=message):
        load_classifier(folder)
    with pytest.raises(ConfigError, match=message):
        resolve_backbone(str(folder))


@pytest.mark.parametrize("with_config", [True, False])
def test_pickle_weights_are_refused_without_unpickling(tmp_path, with_config):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    if with_config:
        (folder / "config.json").write_text(_bert_config())
    # sanity: this pickle really does create the marker when unpickled
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()

    message = "pickle" if with_config else "config.json is missing"
    with pytest.raises(ConfigError, match=message):
        check_model_dir(folder)
    with pytest.raises(ConfigError, match=message):
        load_classifier(folder)
    with pytest.raises(ConfigError, match=message):
        new_classifier(str(folder), LABELS)
    assert not marker.exists()


def test_pickle_refusal_message_says_what_to_do(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(_bert_config())
    (folder / "pytorch_model.bin").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="safetensors") as info:
        check_model_dir(folder)
    assert "pytorch_model.bin" in str(info.value)


# -- backbone resolution -------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "default"])
def test_default_backbone_resolves_to_packaged_folder(name, monkeypatch):
    import transformers

    def boom(*_a, **_k):
        raise AssertionError("resolve_backbone must not load the model")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", boom)
    path = Path(resolve_backbone(name))
    assert path == default_backbone_dir()
    assert path.is_dir() and (path / "config.json").is_file()


def test_hub_ids_pass_through_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert resolve_backbone("bert-base-uncased") == "bert-base-uncased"
    assert resolve_backbone("org/name") == "org/name"


@pytest.mark.parametrize("name", ["./nope", "/definitely/not/here", "a/b/c"])
def test_missing_local_folder_is_an_error(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_backbone(name)


def test_local_folder_is_resolved(tiny_backbone):
    assert resolve_backbone(tiny_backbone) == tiny_backbone


# -- forwards over embeddings --------------------------------------------------------------


def test_forward_from_word_embeddings_equals_forward_from_ids(tiny_clf, batch):
    model = tiny_clf.model.eval()
    ids, mask = encode(tiny_clf, batch)
    with torch.no_grad():
        from_ids = forward_logits(model, input_ids=ids, attention_mask=mask)
        w = word_embedding_matrix(model)
        from_embeds = forward_logits(model, inputs_embeds=w[ids], attention_mask=mask)
    assert from_ids.shape == (len(batch), len(LABELS))
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=1e-6)


def test_forward_from_embedding_output_equals_plain_forward(tiny_clf, batch):
    model = tiny_clf.model.eval()
    ids, mask = encode(tiny_clf, batch)
    with torch.no_grad():
        plain = forward_logits(model, input_ids=ids, attention_mask=mask)
        hidden = embeddings_module(model)(input_ids=ids)
        hooked = forward_from_embedding_output(model, hidden, mask)
        # the hook is removed afterwards: a later plain forward is unaffected
        again = forward_logits(model, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=1e-6)
    assert torch.equal(again, plain)
    assert not embeddings_module(model)._forward_hooks


def test_forward_from_embedding_output_really_uses_the_given_hidden_states(tiny_clf, batch):
    model = tiny_clf.model.eval()
    ids, mask = encode(tiny_clf, batch)
    torch.manual_seed(0)
    with torch.no_grad():
        hidden = embeddings_module(model)(input_ids=ids)
        plain = forward_from_embedding_output(model, hidden, mask)
        moved = forward_from_embedding_output(model, hidden + torch.randn_like(hidden), mask)
    assert (moved - plain).abs().max() > 1e-3


def test_mixed_word_embeddings_carry_gradient_to_the_embedding_matrix(tiny_clf, batch):
    model = tiny_clf.model.train()
    ids, mask = encode(tiny_clf, batch[:2])
    w = word_embedding_matrix(model)
    mixed = 0.3 * w[ids[:1]] + 0.7 * w[ids[1:2]]
    logits = forward_logits(model, inputs_embeds=mixed, attention_mask=torch.maximum(mask[:1], mask[1:2]))
    logits.sum().backward()
    assert w.grad is not None and w.grad[ids[0]].abs().sum() > 0


def test_resolve_device_auto_and_refusals(monkeypatch):
    from dallmi_core.modeling import model as model_module

    monkeypatch.setattr(model_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model_module.torch.backends.mps, "is_available", lambda: False)
    assert model_module.resolve_device("auto") == "cpu"
    for name, message in (("cuda", "not available"), ("tpu", "Unknown device")):
        with pytest.raises(ConfigError, match=message):
            model_module.resolve_device(name)
    monkeypatch.setattr(model_module.torch.cuda, "is_available", lambda: True)
    assert model_module.resolve_device("auto") == "cuda"
