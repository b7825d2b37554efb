"""seqio Tasks and Mixtures over in-memory text corpora.

Registered at import:

* Tasks ``stdlib_code`` and ``stdlib_docstrings`` (splits ``train`` and ``validation``), each yielding
  ``{"targets": int32 token ids}``;
* Mixture ``stdlib`` of the two.

Every task runs: rekey ``text`` -> ``targets``, tokenize, (cache point), split into chunks that fit
the ``targets`` length, append EOS. Chunking instead of trimming matters for code: a 2,000-line module
would otherwise contribute only its first few hundred tokens.

Adding a corpus is one call: ``register_text_task("my_corpus", lambda split: [...strings...])``.
Registration is idempotent: re-registering a name replaces the previous definition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import logging

import seqio
import tensorflow as tf

from quark_jax.data import corpus, vocab


class _DropUncachedWarning(logging.Filter):
    """seqio warns that uncached FunctionDataSources shuffle poorly on restart. Ours hold the whole corpus in
    memory, shuffle it completely with a seed, and resume by batch position, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUncachedWarning())

DocumentsFn = Callable[[str], Sequence[str]]

SPLITS = ("train", "validation")
# Share of examples drawn from each stdlib task. At 1k-token sequences the code/docstring chunk counts
# are roughly 83/17, so 0.8/0.2 is near-proportional while keeping the only English prose in the mix
# clearly visible.
STDLIB_RATES = {"stdlib_code": 0.8, "stdlib_docstrings": 0.2}


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
    """Decoder-only features: a single ``targets`` stream that ends in EOS."""
    return {
        "targets": seqio.Feature(
            vocabulary=vocabulary or vocab.get_vocabulary(), add_eos=True, dtype=tf.int32
        )
    }


def split_to_feature_lengths(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """Cuts each token sequence into consecutive chunks that fit its feature length.

    seqio injects ``sequence_length`` and ``output_features`` by argument name. A chunk is one token
    shorter than the length when the feature appends EOS, so ``append_eos_after_trim`` that follows
    never trims. Chunk order is kept; the task's shuffle buffer mixes chunks later. A sequence with no
    tokens yields no examples. Other features of the example are copied to every chunk.
    """
    if not sequence_length:
        return dataset  # No lengths given (e.g. inspection): nothing to fit.
    keys = [k for k in output_features if sequence_length.get(k) is not None and k in dataset.element_spec]
    if not keys:
        return dataset
    if len(keys) > 1:
        # Chunking two streams independently would misalign them (inputs vs targets).
        raise ValueError(f"split_to_feature_lengths handles one token feature, got {keys}.")
    (key,) = keys
    chunk = sequence_length[key] - int(output_features[key].add_eos)
    if chunk < 1:
        raise ValueError(f"Length {sequence_length[key]} for feature {key!r} leaves no room for tokens.")

    def to_rows(example):
        tokens = example[key]
        count = tf.size(tokens)
        rows = (count + chunk - 1) // chunk
        padded = tf.pad(tokens, [[0, rows * chunk - count]])
        out = {k: tf.repeat(v[tf.newaxis], rows, axis=0) for k, v in example.items() if k != key}
        out[key] = tf.reshape(padded, [rows, chunk])
        out["_chunk_length"] = tf.minimum(chunk, count - tf.range(rows) * chunk)
        return out

    def strip_padding(example):
        # Padding with a dense [rows, chunk] block (rather than a RaggedTensor) keeps the element spec
        # a plain TensorSpec, which seqio's validation expects.
        length = example.pop("_chunk_length")
        example[key] = example[key][:length]
        return example

    return (
        dataset.map(to_rows, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .map(strip_padding, num_parallel_calls=tf.data.AUTOTUNE)
    )


def text_lm_preprocessors(chunk_overlap: int = 0, before: Sequence = ()) -> list:
    """The preprocessors of every text language-modelling task: ``before`` (e.g. filters on the raw text),
    rekey ``text`` -> ``targets``, tokenize, (cache point), chunk to the feature length (consecutive chunks
    share ``chunk_overlap`` tokens when > 0), append EOS."""
    from quark_jax.data import chunking  # lazy: keeps the two modules free of an import cycle

    return [
        *before,
        functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
        # No "_pretokenized" copy: it would be duplicated into every chunk and then dropped.
        functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
        # Everything above is length-independent and could be cached offline with seqio tools.
        seqio.CacheDatasetPlaceholder(),
        chunking.split_with_overlap(chunk_overlap) if chunk_overlap else split_to_feature_lengths,
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


def register_tasks() -> None:
    """Registers the stdlib tasks and their mixture; safe to call any number of times."""
    for kind in corpus.KINDS:
        register_text_task(kind, functools.partial(corpus.stdlib_documents, kind))
    # Mixtures hold Task objects, so the mixture is re-registered after its tasks are replaced.
    register_mixture("stdlib", STDLIB_RATES)


register_tasks()

# Issue 4: the demo mixture of local sources, and data built by `quark data build` that $QUARK_DATA_DIRS names.
# Imported at the bottom because both modules call back into this one.
from quark_jax.data import build as _build, mixtures as _mixtures  # noqa: E402

_mixtures.register_demo()
_build.register_from_env()
