"""Toolkit for seqio text tasks: output features, the preprocessors of every text task, and registration helpers.

Importing this module registers nothing; the project's tasks and mixtures are registered by
``quark_jax.data.catalogue``. Every text task runs: rekey ``text`` -> ``targets``, tokenize, (cache point),
cut into chunks that fit the ``targets`` length (``chunking.py``), append EOS.

Adding a corpus is one call: ``register_text_task("my_corpus", lambda split: [...strings...])``.
Registration is idempotent: re-registering a name replaces the previous definition.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from quark_jax.data import chunking, tokenizer
from quark_jax.data.splits import SPLITS


class _DropUncachedWarning(logging.Filter):
    """seqio warns that uncached FunctionDataSources shuffle poorly on restart. Ours hold the whole corpus in
    memory, shuffle it completely with a seed, and resume by batch position, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedWarning())

DocumentsFn = Callable[[str], Sequence[str]]


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
    """Decoder-only features: a single ``targets`` stream that ends in EOS."""
    return {
        "targets": seqio.Feature(
            vocabulary=vocabulary or tokenizer.get_vocabulary(), add_eos=True, dtype=tf.int32
        )
    }


def text_lm_preprocessors(chunk_overlap: int = 0, before: Sequence = ()) -> list:
    """The preprocessors of every text language-modelling task: ``before`` (e.g. filters on the raw text),
    rekey ``text`` -> ``targets``, tokenize, (cache point), chunk to the feature length (consecutive chunks
    share ``chunk_overlap`` tokens when > 0), append EOS."""
    return [
        *before,
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
        # No "_pretokenized" copy: it would be duplicated into every chunk and then dropped.
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
        # Everything above is length-independent and could be cached offline with seqio tools.
        seqio.CacheDatasetPlaceholder(),
        chunking.split_with_overlap(chunk_overlap) if chunk_overlap else chunking.split_to_feature_lengths,
        seqio.preprocessors.append_eos_after_trim,
    ]


class _DocumentSource(seqio.FunctionDataSource):
    """A FunctionDataSource over a Python list of strings, counted lazily.

    ``num_input_examples`` is computed on first request rather than at registration so that importing
    this module does not read and parse the corpus.
    """

    def __init__(self, documents_fn: DocumentsFn, splits: Sequence[str]):
        self._documents_fn = documents_fn
        super().__init__(
            dataset_fn=functools.partial(_documents_dataset, documents_fn),
            splits=splits,
            num_input_examples=None,
        )

    def num_input_examples(self, split: str) -> int:
        return len(self._documents_fn(split))


def _documents_dataset(
    documents_fn: DocumentsFn, split: str, shuffle_files: bool, seed: int | None = None
) -> tf.data.Dataset:
    """``{"text": document}`` examples; when shuffling, a full, seeded permutation per epoch.

    The whole corpus is in memory, so a buffer the size of the corpus is cheap and gives a true
    shuffle; ``reshuffle_each_iteration`` makes each repeat a different (but seeded) order.
    """
    documents = list(documents_fn(split))
    ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(documents, dtype=tf.string)})
    if shuffle_files and documents:
        ds = ds.shuffle(len(documents), seed=seed, reshuffle_each_iteration=True)
    return ds


def register_text_task(
    name: str,
    documents_fn: DocumentsFn,
    splits: Sequence[str] = SPLITS,
    vocabulary: seqio.Vocabulary | None = None,
) -> seqio.Task:
    """Registers (or replaces) a language-modelling Task over ``documents_fn(split) -> [str]``."""
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=_DocumentSource(documents_fn, splits),
        preprocessors=text_lm_preprocessors(),
        output_features=output_features(vocabulary),
    )


def register_mixture(name: str, rates: Mapping[str, float]) -> seqio.Mixture:
    """Registers (or replaces) a Mixture of registered tasks with the given example rates.

    Unlike seqio's default, the mixture keeps going when one task runs out, so a finite
    (``num_epochs=1``) evaluation pass covers every task completely instead of stopping at the first
    exhausted one. With infinite repetition, as in training, the two behave the same.
    """
    seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(
        name,
        list(rates.items()),
        sample_fn=functools.partial(
            tf.data.Dataset.sample_from_datasets, stop_on_empty_dataset=False
        ),
    )
