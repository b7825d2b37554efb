"""seqio packing into decoder batches: deterministic, resumable by position, shardable."""

import numpy as np
import pytest

from quark_jax.data import pipeline

LENGTHS = {"targets": 128}


def take(n, **kwargs):
    it = pipeline.batch_iterator("stdlib", LENGTHS, 4, **kwargs)
    return [next(it) for _ in range(n)]


def equal(a, b):
    return all(np.array_equal(a[k], b[k]) for k in pipeline.FEATURE_KEYS)


def test_same_seed_same_batches_and_skip_equals_continuation():
    unbroken = take(5, seed=3)
    assert all(equal(a, b) for a, b in zip(unbroken, take(5, seed=3)))
    resumed = take(2, seed=3, start_batch=3)
    assert equal(resumed[0], unbroken[3]) and equal(resumed[1], unbroken[4])
    assert not equal(take(1, seed=4)[0], unbroken[0])


def test_packed_features_are_consistent():
    (batch,) = take(1, seed=0, split="validation", shuffle=False)
    for key in pipeline.FEATURE_KEYS:
        assert batch[key].shape == (4, 128) and batch[key].dtype == np.int32
    seg, pos = batch["decoder_segment_ids"], batch["decoder_positions"]
    tgt, inp, w = batch["decoder_target_tokens"], batch["decoder_input_tokens"], batch["decoder_loss_weights"]
    assert np.array_equal(w > 0, seg > 0) and np.array_equal(tgt > 0, w > 0)
    for row in range(4):
        starts = np.flatnonzero(np.diff(np.concatenate([[0], seg[row]])) != 0)
        for start in starts:
            if seg[row, start] == 0:
                continue
            end = start + np.sum(seg[row] == seg[row, start])
            # Positions restart at 0 for each packed example; inputs are its targets shifted right.
            assert np.array_equal(pos[row, start:end], np.arange(end - start))
            assert inp[row, start] == 0
            assert np.array_equal(inp[row, start + 1:end], tgt[row, start:end - 1])
    assert 0.5 < pipeline.packing_efficiency(batch) <= 1.0


def test_host_shards_are_disjoint_halves():
    full = take(1, seed=0, split="validation", shuffle=False)[0]["decoder_target_tokens"]
    halves = [
        next(pipeline.batch_iterator("stdlib", LENGTHS, 4, split="validation", shuffle=False, shard_index=i,
                                     num_shards=2))["decoder_target_tokens"]
        for i in range(2)
    ]
    assert halves[0].shape == (2, 128)
    rows = {r.tobytes() for h in halves for r in h}
    assert len(rows) == 4 and not equal_rows(halves[0], halves[1])
    assert full.shape == (4, 128)


def equal_rows(a, b):
    return any(np.array_equal(x, y) for x in a for y in b)


def test_bad_requests_name_the_fix():
    with pytest.raises(ValueError, match="unknown seqio task or mixture 'nope'"):
        pipeline.batch_iterator("nope", LENGTHS, 4)
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.batch_iterator("stdlib", LENGTHS, 3, num_shards=2)
