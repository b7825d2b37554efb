"""Imports Hugging Face directories onto 8-device meshes and compares with the one-host import.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python hf_import_mesh.py HF_DIR:MESH ...``; prints
one JSON line per (directory, mesh): whether every parameter equals ``hf.load_hf``'s bit for bit, and the
largest fraction of a parameter's bytes that one device holds.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from quark_jax import sharding as sh
from quark_jax.inference import hf, hf_import
from quark_jax.inference.safetensors_io import CheckpointReader


def main(pairs: list[str]) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    for pair in pairs:
        hf_dir, mesh_shape = pair.rsplit(":", 1)
        config, reference = hf.load_hf(hf_dir)
        reader = CheckpointReader.from_dir(hf_dir)
        params = hf_import.import_params(reader, config, sh.make_mesh(mesh_shape))
        ref = dict(jax.tree_util.tree_leaves_with_path(reference))
        equal, fractions = True, {}
        for path, value in jax.tree_util.tree_leaves_with_path(params):
            equal &= bool(np.array_equal(np.asarray(value), np.asarray(ref[path])))
            shard = value.addressable_shards[0].data
            fractions[jax.tree_util.keystr(path)] = shard.size / value.size
        print(json.dumps({"hf_dir": hf_dir, "mesh": mesh_shape, "equal": equal, "num_params": len(ref),
                          "smallest_fraction": min(fractions.values()), "largest_read": reader.largest_read}))


if __name__ == "__main__":
    main(sys.argv[1:])
