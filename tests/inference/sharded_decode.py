"""Helper for test_sharded_decode: greedy and sampled decoding of a tiny random model on this process's
devices, printed as JSON. Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=N python
sharded_decode.py MESH_SHAPE``."""

import json
import os
import sys

import jax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_helpers import EOS, tiny_config  # noqa: E402

from quark_jax import sharding as sh  # noqa: E402
from quark_jax.inference.generate import Generator, Request  # noqa: E402
from quark_jax.models.transformer import Transformer  # noqa: E402


def main(mesh_shape: str) -> None:
    mesh = sh.make_mesh(mesh_shape)
    # 4 kv heads so that tensor=2 really splits the heads.
    model = Transformer(tiny_config(num_kv_heads=4, vocab_size=96), rngs=nnx.Rngs(params=0))
    graphdef, state = nnx.split(model, nnx.Param)
    params = jax.device_put(state, sh.state_shardings(state, mesh))
    per_device = {}
    for x in jax.tree.leaves(params):
        for shard in x.addressable_shards:
            per_device[str(shard.device)] = per_device.get(str(shard.device), 0) + shard.data.nbytes
    gen = Generator(graphdef, params, eos_id=EOS, mesh=mesh, compilation_cache=False)
    prompts = [[5 + i] * (1 + 2 * i) for i in range(8)]
    greedy = gen.generate_requests([Request(p, 10) for p in prompts])
    sampled = gen.generate_requests([Request(p, 10, temperature=1.0, top_p=0.9, seed=i) for i, p in enumerate(prompts)])
    beams = gen.beam_search(prompts[:4], num_beams=3, max_new_tokens=6)
    print("REPORT " + json.dumps({
        "devices": jax.device_count(),
        "greedy": [c.tokens for c in greedy], "logprobs": [c.logprobs for c in greedy],
        "sampled": [c.tokens for c in sampled], "beams": beams, "per_device_param_bytes": per_device,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
