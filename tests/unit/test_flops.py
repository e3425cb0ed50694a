"""Model FLOPs from forward shapes match what torch's FlopCounterMode counts in the same step."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification

from dallmi_core.bench.flops import ShapeRecorder, flop_model


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    return BertForSequenceClassification(config).train()


def test_per_token_and_per_sequence_weights_are_read_off_the_model():
    fm = flop_model(_bert())
    assert fm.per_token == 2 * (4 * 32 * 32 + 2 * 32 * 64)  # q, k, v, out + the two feed-forward layers
    assert fm.per_sequence == 32 * 32 + 32 * 3  # pooler + classifier, once per sequence
    assert (fm.layers, fm.hidden) == (2, 32)


def test_training_flops_of_id_and_embedding_forwards_equal_the_flop_counter():
    model = _bert()
    fm = flop_model(model)
    ids = torch.randint(5, 500, (4, 24))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # padding still costs: the hardware computes padded positions
    shapes = ShapeRecorder(model)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        embedded = model.bert.embeddings.word_embeddings(ids[:2, :7])  # a MixUp-style forward
        model(inputs_embeds=embedded, attention_mask=mask[:2, :7]).logits.sum().backward()
    shapes.close()
    assert shapes.shapes == [(4, 24), (2, 7)]
    assert shapes.training_flops(fm) == counter.get_total_flops()
    model(input_ids=ids, attention_mask=mask)
    assert shapes.shapes == [(4, 24), (2, 7)]  # closed: no longer recording
