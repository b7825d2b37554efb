"""Chunking with overlap: every token covered, consecutive chunks share exactly `overlap` tokens."""

import pytest
import seqio
import tensorflow as tf

from quark_jax.data import chunking

FEATURES = {"targets": seqio.Feature(vocabulary=seqio.PassThroughVocabulary(100), add_eos=True, dtype=tf.int32)}


@pytest.mark.parametrize("count,overlap", [(0, 2), (1, 2), (7, 2), (8, 2), (9, 2), (30, 2), (30, 0), (30, 6)])
def test_chunks_match_reference(count, overlap):
    ds = tf.data.Dataset.from_tensors({"targets": tf.range(1, count + 1, dtype=tf.int32)})
    out = [ex["targets"].tolist() for ex in chunking.split_with_overlap(overlap)(ds, {"targets": 9}, FEATURES).as_numpy_iterator()]
    chunk = 8  # length 9 minus the EOS slot
    starts = chunking.chunk_starts(count, chunk, overlap)
    assert out == [list(range(s + 1, min(s + chunk, count) + 1)) for s in starts]
    assert sorted({t for c in out for t in c}) == list(range(1, count + 1))
    for a, b in zip(out, out[1:]):
        assert a[-overlap:] == b[:overlap] if overlap else a[-1] + 1 == b[0]


def test_bad_overlap_names_the_limit():
    ds = tf.data.Dataset.from_tensors({"targets": tf.range(5)})
    with pytest.raises(ValueError, match="smaller than the chunk of 8 tokens"):
        chunking.split_with_overlap(8)(ds, {"targets": 9}, FEATURES)


def test_text_tasks_chunk_with_this_module():
    from quark_jax.data import tasks

    assert chunking.split_to_feature_lengths in tasks.text_lm_preprocessors()
    assert [p.__name__ for p in tasks.text_lm_preprocessors(chunk_overlap=3) if hasattr(p, "__name__")][-2:] == [
        "split_with_overlap_3", "append_eos_after_trim"]


def test_back_to_back_chunks_copy_other_features():
    ds = tf.data.Dataset.from_tensors({"targets": tf.range(1, 21, dtype=tf.int32), "id": tf.constant("doc")})
    out = list(chunking.split_to_feature_lengths(ds, {"targets": 9}, FEATURES).as_numpy_iterator())
    assert [ex["targets"].tolist() for ex in out] == [list(range(1, 9)), list(range(9, 17)), list(range(17, 21))]
    assert [ex["id"] for ex in out] == [b"doc"] * 3
    two = {**FEATURES, "inputs": FEATURES["targets"]}
    pair = tf.data.Dataset.from_tensors({"targets": tf.range(5), "inputs": tf.range(5)})
    with pytest.raises(ValueError, match="one token feature"):
        chunking.split_to_feature_lengths(pair, {"targets": 9, "inputs": 9}, two)


def test_lengths_and_features_that_cannot_be_chunked():
    ds = tf.data.Dataset.from_tensors({"targets": tf.range(5), "inputs": tf.range(3)})
    two = {**FEATURES, "inputs": FEATURES["targets"]}
    with pytest.raises(ValueError, match="overlap=-1 must be >= 0"):
        chunking.split_to_feature_lengths(ds, {"targets": 9}, FEATURES, overlap=-1)
    with pytest.raises(ValueError, match="one token feature"):  # inputs and targets would be cut out of step
        chunking.split_to_feature_lengths(ds, {"targets": 9, "inputs": 9}, two)
    with pytest.raises(ValueError, match="leaves no room for tokens"):  # length 1 is only the EOS slot
        chunking.split_to_feature_lengths(ds, {"targets": 1}, FEATURES)
    # No lengths (inspection) or no length for a token feature: the dataset passes through unchanged.
    assert chunking.split_to_feature_lengths(ds, None, FEATURES) is ds
    assert chunking.split_to_feature_lengths(ds, {"other": 4}, FEATURES) is ds
