"""Tokenise once, pad per batch: truncation, dynamic padding, masks, and batch orders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from dallmi_core.modeling.tokens import TokenizedCorpus, length_sorted_batches


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    return AutoTokenizer.from_pretrained(tiny_backbone)


TEXTS = [
    "short",
    "a somewhat longer text with several words in it",
    " ".join(["word"] * 200),
    "",
    "two words",
]


def test_build_truncates_to_max_length_and_keeps_special_tokens(tokenizer):
    corpus = TokenizedCorpus.build(tokenizer, TEXTS, max_length=16)
    assert len(corpus) == len(TEXTS)
    assert corpus.max_length == 16
    assert corpus.lengths.max() == 16
    assert corpus.lengths[2] == 16  # the long text was cut
    assert corpus.lengths[0] < 16
    for row in corpus.ids:
        assert row[0] == tokenizer.cls_token_id and row[-1] == tokenizer.sep_token_id
    assert corpus.pad_id == tokenizer.pad_token_id
    expected = tokenizer(TEXTS[1])["input_ids"]
    assert corpus.ids[1].tolist() == expected


def test_build_in_chunks_equals_one_pass(tokenizer):
    one = TokenizedCorpus.build(tokenizer, TEXTS, max_length=32)
    chunked = TokenizedCorpus.build(tokenizer, TEXTS, max_length=32, chunk=2)
    assert [r.tolist() for r in one.ids] == [r.tolist() for r in chunked.ids]


def test_collate_pads_to_longest_row_of_the_batch(tokenizer):
    corpus = TokenizedCorpus.build(tokenizer, TEXTS, max_length=64)
    lengths = corpus.lengths
    indices = [4, 0, 1]
    ids, mask = corpus.collate(indices)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.shape == mask.shape == (3, int(lengths[indices].max()))
    assert ids.shape[1] < 64  # dynamic, not padded to max_length
    for r, i in enumerate(indices):
        n = int(lengths[i])
        assert ids[r, :n].tolist() == corpus.ids[i].tolist()
        assert (ids[r, n:] == corpus.pad_id).all()
        assert mask[r, :n].tolist() == [1] * n
        assert (mask[r, n:] == 0).all()
    # only one row is as long as the batch: the others carry padding
    assert int(mask.sum()) == int(lengths[indices].sum())


def test_collate_pad_to_a_fixed_width(tokenizer):
    corpus = TokenizedCorpus.build(tokenizer, TEXTS, max_length=64)
    ids, mask = corpus.collate([0, 4], pad_to=64)
    assert ids.shape == mask.shape == (2, 64)
    assert mask.sum(dim=1).tolist() == corpus.lengths[[0, 4]].tolist()


def test_collated_batch_equals_the_tokenizers_own_padding(tokenizer):
    corpus = TokenizedCorpus.build(tokenizer, TEXTS, max_length=32)
    ids, mask = corpus.collate(range(len(TEXTS)))
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert torch.equal(ids, enc["input_ids"]) and torch.equal(mask, enc["attention_mask"])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=0, max_size=80), st.integers(1, 17))
def test_length_sorted_batches_cover_every_index_in_length_order(lengths, batch_size):
    lengths = np.asarray(lengths, dtype=np.int64)
    batches = list(length_sorted_batches(lengths, batch_size))
    flat = np.concatenate(batches) if batches else np.empty(0, np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(len(b) == batch_size for b in batches[:-1])
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert (np.diff(lengths[flat]) >= 0).all()
