"""Imports Hugging Face directories onto 8-device meshes and compares with the one-host import.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python hf_import_mesh.py HF_DIR:MESH ...``
(``HF_DIR:one:MESH`` uses the first device only); prints one JSON line per (directory, mesh): whether every
parameter equals ``hf.load_hf``'s bit for bit, the smallest fraction of a parameter's elements that one device
holds, the largest block read, and the peak of Python-tracked host memory (``tracemalloc``) during a second
import (the first compiles). A process of its own, so no other test's background threads count.
"""

from __future__ import annotations

import json
import sys
import tracemalloc

import jax
import numpy as np

from quark_jax import sharding as sh
from quark_jax.inference import hf, hf_import
from quark_jax.inference.safetensors_io import CheckpointReader


def main(pairs: list[str]) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    for pair in pairs:
        hf_dir, mesh_shape = pair.split(":", 1)
        one = mesh_shape.startswith("one:")
        mesh = sh.make_mesh(mesh_shape.removeprefix("one:"), devices=jax.devices()[:1] if one else None)
        config, reference = hf.load_hf(hf_dir)
        reader = CheckpointReader.from_dir(hf_dir)
        hf_import.import_params(reader, config, mesh)
        tracemalloc.start()
        params = hf_import.import_params(reader, config, mesh)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sizes = [int(np.prod(reader.shape(n))) * 4 for n in reader.names()]
        ref = dict(jax.tree_util.tree_leaves_with_path(reference))
        equal, fractions = True, {}
        for path, value in jax.tree_util.tree_leaves_with_path(params):
            equal &= bool(np.array_equal(np.asarray(value), np.asarray(ref[path])))
            shard = value.addressable_shards[0].data
            fractions[jax.tree_util.keystr(path)] = shard.size / value.size
        print(json.dumps({"hf_dir": hf_dir, "mesh": mesh_shape, "equal": equal, "num_params": len(ref),
                          "smallest_fraction": min(fractions.values()), "largest_read": reader.largest_read,
                          "peak": peak, "largest_tensor": max(sizes), "model_bytes": sum(sizes)}))


if __name__ == "__main__":
    main(sys.argv[1:])
