"""Helper for test_multihost: one process that trains exactly like an N-process job.

Run as ``python reference_run.py NUM_SHARDS -- GIN_BINDINGS...``. A multi-host job's global batch is the
concatenation of every host's shard (``shard_index=i, num_shards=N``); this process reads all N shards and
concatenates them, so its losses must equal the job's. Everything else is the ordinary Trainer.
"""

import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # tests/ for conftest helpers
from conftest import RUN_CONFIG  # noqa: E402

import quark_jax as qj  # noqa: E402
from quark_jax.data import pipeline  # noqa: E402

_original = pipeline.batch_iterator


def main(hosts: int, bindings: list[str]) -> None:
    def all_shards(*args, shard_index=0, num_shards=1, **kwargs):
        assert (shard_index, num_shards) == (0, 1), "the reference run is a single process"
        shards = [_original(*args, shard_index=i, num_shards=hosts, **kwargs) for i in range(hosts)]
        for parts in zip(*shards):
            yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    pipeline.batch_iterator = all_shards
    gin_files = [RUN_CONFIG, "configs/models/moe_tiny.gin"]
    qj.Trainer.from_gin(gin_files, bindings).run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[3:] if sys.argv[2] == "--" else sys.argv[2:])
