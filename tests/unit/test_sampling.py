"""Label-balanced sampling: every label with tags in every step, the unlabeled pool epoch by epoch,
and a stream that resumes exactly from its state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dallmi_core.method.sampling import LabelBalancedSampler, PositiveCycler, UnlabeledStream

POOL = list(range(100, 140))  # 40 documents
TAGS = [[100, 101, 102, 103, 104, 105, 106], [], [120], [130, 131, 132]]


def make_sampler(tags=TAGS, pool=POOL, batch_size=8, k=4, seed=3) -> LabelBalancedSampler:
    return LabelBalancedSampler(pool, tags, batch_size=batch_size, positives_per_label=k, seed=seed)


def test_every_batch_holds_k_positives_of_every_tagged_label_and_only_its_tags():
    sampler = make_sampler()
    for _ in range(25):
        batch = sampler.next()
        assert batch.positives.shape == (len(TAGS), 4)
        assert batch.active.tolist() == [True, False, True, True]
        for label, tags in enumerate(TAGS):
            row = batch.positives[label]
            if tags:
                assert set(row.tolist()) <= set(tags)
            else:
                assert row.tolist() == [-1] * 4


def test_label_without_tags_is_skipped_and_reported():
    sampler = make_sampler()
    assert sampler.skipped_labels == [1]
    assert sampler.active.tolist() == [True, False, True, True]


def test_label_with_one_tag_appears_in_every_step():
    sampler = make_sampler()
    for _ in range(10):
        assert sampler.next().positives[2].tolist() == [120] * 4


def test_each_pass_of_a_positive_cycler_visits_every_tag_once_and_reshuffles():
    tags = list(range(10))
    cycler = PositiveCycler(tags, np.random.default_rng(0))
    passes = [cycler.take(10) for _ in range(6)]
    for p in passes:
        assert sorted(p.tolist()) == tags
    # reshuffled: not every pass in the same order
    assert len({tuple(p.tolist()) for p in passes}) > 1


def test_positive_cycler_take_wraps_across_passes_without_losing_tags():
    tags = list(range(7))
    cycler = PositiveCycler(tags, np.random.default_rng(1))
    stream = np.concatenate([cycler.take(3) for _ in range(14)])  # 42 = 6 passes of 7
    for start in range(0, 42, 7):
        assert sorted(stream[start : start + 7].tolist()) == tags
    assert cycler.passes == 5  # the 6th pass was drawn but not yet wrapped past


def test_positive_batches_cover_all_tags_over_a_pass():
    sampler = make_sampler(k=7)
    seen = sampler.next().positives[0]
    assert sorted(seen.tolist()) == TAGS[0]


def test_unlabeled_stream_covers_pool_once_per_epoch_without_repeats():
    sampler = make_sampler(batch_size=8)  # 40 / 8 = 5 batches per epoch
    epochs = []
    progress = [sampler.unlabeled.progress]
    for _ in range(3):
        epoch = []
        for _ in range(5):
            batch = sampler.next()
            assert len(batch.unlabeled) == 8
            epoch.extend(batch.unlabeled.tolist())
            progress.append(sampler.unlabeled.progress)
        assert sorted(epoch) == POOL  # every document once, no repeats
        epochs.append(epoch)
    assert epochs[0] != epochs[1]  # reshuffled between epochs
    assert progress[0] == 0.0
    assert progress[5] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(progress[1:5], progress[2:6], strict=True))
    # the first batch of an epoch starts the next epoch's count
    assert progress[6] == pytest.approx(1.2)
    assert progress[15] == pytest.approx(3.0)


def test_unlabeled_stream_without_repeats_when_pool_is_not_a_multiple_of_batch():
    stream = UnlabeledStream(list(range(10)), 4, np.random.default_rng(0))
    first_epoch = np.concatenate([stream.next(), stream.next()])
    assert len(set(first_epoch.tolist())) == 8
    assert stream.epoch == 0
    stream.next()
    assert stream.epoch == 1


def test_unlabeled_batch_is_capped_by_pool_size():
    stream = UnlabeledStream([5, 6, 7], 16, np.random.default_rng(0))
    assert sorted(stream.next().tolist()) == [5, 6, 7]


def _batches(sampler, n):
    return [(b.unlabeled.tolist(), b.positives.tolist(), b.active.tolist()) for b in (sampler.next() for _ in range(n))]


def test_state_dict_resume_continues_the_identical_sequence():
    reference = make_sampler(seed=11)
    expected = _batches(reference, 23)

    first = make_sampler(seed=11)
    head = _batches(first, 9)
    state = json.loads(json.dumps(first.state_dict()))  # plain data: survives JSON

    resumed = make_sampler(seed=11)
    resumed.load_state_dict(state)
    assert head + _batches(resumed, 14) == expected


def test_resume_restores_the_random_generator_not_just_positions():
    # a sampler with another seed, once loaded, must follow the saved stream
    a = make_sampler(seed=1)
    _batches(a, 12)  # past an epoch boundary and several positive passes
    state = a.state_dict()
    b = make_sampler(seed=999)
    b.load_state_dict(state)
    assert _batches(b, 20) == _batches(a, 20)


def test_no_label_with_a_tag_is_an_error():
    with pytest.raises(ValueError, match="tag"):
        make_sampler(tags=[[], [], []])


def test_empty_unlabeled_pool_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        make_sampler(pool=[])


def test_same_seed_same_stream_other_seed_other_stream():
    assert _batches(make_sampler(seed=5), 6) == _batches(make_sampler(seed=5), 6)
    assert _batches(make_sampler(seed=5), 6) != _batches(make_sampler(seed=6), 6)


@settings(max_examples=60, deadline=None)
@given(
    n_docs=st.integers(1, 40),
    tag_sets=st.lists(st.sets(st.integers(0, 39), max_size=8), min_size=1, max_size=6),
    batch_size=st.integers(1, 12),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 15),
)
def test_property_random_tag_sets(n_docs, tag_sets, batch_size, k, seed, steps):
    tags = [sorted(t for t in s if t < n_docs) for s in tag_sets]
    pool = list(range(n_docs))
    if not any(tags):
        with pytest.raises(ValueError):
            LabelBalancedSampler(pool, tags, batch_size=batch_size, positives_per_label=k, seed=seed)
        return
    sampler = LabelBalancedSampler(pool, tags, batch_size=batch_size, positives_per_label=k, seed=seed)
    assert sampler.skipped_labels == [i for i, t in enumerate(tags) if not t]
    width = min(batch_size, n_docs)
    drawn_positives: list[list[int]] = [[] for _ in tags]
    epoch_docs: list[int] = []
    for _ in range(steps):
        before = sampler.unlabeled.epoch
        batch = sampler.next()
        if sampler.unlabeled.epoch != before:
            epoch_docs = []
        assert batch.positives.shape == (len(tags), k)
        assert batch.active.tolist() == [bool(t) for t in tags]
        assert len(batch.unlabeled) == width
        assert set(batch.unlabeled.tolist()) <= set(pool)
        epoch_docs.extend(batch.unlabeled.tolist())
        assert len(epoch_docs) == len(set(epoch_docs))  # no repeat within an epoch
        for label, t in enumerate(tags):
            row = batch.positives[label].tolist()
            if t:
                assert set(row) <= set(t)
                drawn_positives[label].extend(row)
            else:
                assert row == [-1] * k
    for label, t in enumerate(tags):
        if not t:
            continue
        drawn = drawn_positives[label]
        # every complete pass over a label's tags visits each tag exactly once
        for start in range(0, len(drawn) - len(t) + 1, len(t)):
            assert sorted(drawn[start : start + len(t)]) == t
