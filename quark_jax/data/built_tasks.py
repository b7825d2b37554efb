"""seqio Tasks over the shards that ``quark data build`` wrote: the on-disk format and reading it back.

A built directory holds ``<task>/<split>.tfrecord-0000i-of-0000N`` shards of ``tf.train.Example``
(``text``, ``id``, ``meta``) and ``dataset.json``, the manifest (mixture name, rates, shard patterns,
example counts). :func:`register_built` registers its tasks ``<name>.<task>`` and mixture ``<name>``.

Two ways to make ``quark train`` see a built directory:

* ``QUARK_DATA_DIRS=DIR[:DIR...]`` — ``quark_jax.data.catalogue`` registers each directory with the rest
  of the catalogue;
* ``--gin_file=DIR/data.gin`` — binds ``MIXTURE_OR_TASK_NAME = @quark_jax.data.built_dataset()``, which
  registers the directory when the training config is built.

A built directory may be moved or uploaded as it is (``gs://bucket/data/NAME``, read through
:mod:`quark_jax.run_paths` and TensorFlow's file systems): the shard patterns of the manifest are taken
relative to the directory it was found in (``<task>/<file pattern>``), not where it was built.
"""

from __future__ import annotations

import json
import os
import pathlib

import gin

from quark_jax import run_paths
from quark_jax.data import tasks

MANIFEST = "dataset.json"
FEATURE_NAMES = ("text", "id", "meta")
# mixture name -> the built directory it was registered from (read by quark_jax.lineage for content hashes)
REGISTERED_DIRS: dict[str, str] = {}


def shard_paths(directory: pathlib.Path, split: str, num_shards: int) -> list[pathlib.Path]:
    return [directory / f"{split}.tfrecord-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


def _under(data_dir: str, pattern: str) -> str:
    """The manifest's shard ``pattern`` (``.../<task>/<split>.tfrecord-*-of-N``) re-rooted at ``data_dir``."""
    task, file_pattern = pattern.replace("\\", "/").rstrip("/").split("/")[-2:]
    return run_paths.join(data_dir, task, file_pattern)


def register_built(data_dir: str | os.PathLike, vocabulary=None, chunk_overlap: int = 0) -> str:
    """Registers the tasks and the mixture of a built directory; returns the mixture name.

    Tasks are ``<name>.<task>`` over ``seqio.TFExampleDataSource`` (one file pattern per split, so
    ``shard_info`` gives each host whole, disjoint shard files); the mixture ``<name>`` keeps the rates.
    ``chunk_overlap > 0`` makes consecutive chunks of a long document share that many tokens.
    A missing manifest raises FileNotFoundError, an unreadable one ValueError, both naming the directory.
    """
    import seqio
    import tensorflow as tf

    data_dir = (str(pathlib.Path(data_dir).expanduser().resolve()) if run_paths.is_local(data_dir)
                else run_paths.absolute(data_dir))
    path = run_paths.join(data_dir, MANIFEST)
    if not run_paths.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a built dataset. Build it with "
            f"`quark data build --mixture NAME --output {data_dir}`.")
    try:
        manifest = json.loads(run_paths.read_text(path))
        name = manifest["name"]
        task_infos = manifest["tasks"].items()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a readable manifest ({type(e).__name__}: {e})") from None
    rates = {}
    for task, info in task_infos:
        task_name = f"{name}.{task}"
        seqio.TaskRegistry.remove(task_name)
        seqio.TaskRegistry.add(
            task_name,
            source=seqio.TFExampleDataSource(
                split_to_filepattern={s: _under(data_dir, v["pattern"]) for s, v in info["splits"].items()},
                feature_description={k: tf.io.FixedLenFeature([], tf.string) for k in FEATURE_NAMES},
                num_input_examples={s: v["num_examples"] for s, v in info["splits"].items()},
            ),
            preprocessors=tasks.text_lm_preprocessors(chunk_overlap),
            output_features=tasks.output_features(vocabulary),
        )
        rates[task_name] = info["rate"]
    tasks.register_mixture(name, rates)
    REGISTERED_DIRS[name] = data_dir
    return name


@gin.configurable("built_dataset", module="quark_jax.data")
def built_dataset(data_dir: str = gin.REQUIRED, chunk_overlap: int = 0) -> str:
    """gin: ``MIXTURE_OR_TASK_NAME = @quark_jax.data.built_dataset()`` registers ``data_dir`` and names its mixture."""
    return register_built(data_dir, chunk_overlap=chunk_overlap)
