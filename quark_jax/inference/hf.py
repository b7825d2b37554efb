"""Hugging Face interop: Llama and Mixtral weights to and from quark_jax params and ``ModelConfig``.

Reads and writes the on-disk layout that users have: a directory with ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). safetensors is a JSON header
plus raw little-endian arrays, so this module reads and writes it with numpy alone: neither torch,
transformers nor the safetensors package is needed at run time (they are test-only dependencies, used to
check parity against ``transformers.LlamaForCausalLM``).

Layouts (HF ``nn.Linear`` weights are [out, in]; quark_jax weights are [in, out] with heads split out, and
stacked over layers). Axis legend: L layers · D embed · N query heads · K kv heads · H head dim · F mlp ·
V vocab.

    model.embed_tokens.weight                 [V, D]     → embed.embedding            [V, D]
    model.layers.i.self_attn.q_proj.weight    [N·H, D]   → blocks.attn.wq             [L, D, N, H]
    model.layers.i.self_attn.k_proj/v_proj    [K·H, D]   → blocks.attn.wk / wv        [L, D, K, H]
    model.layers.i.self_attn.o_proj.weight    [D, N·H]   → blocks.attn.wo             [L, N, H, D]
    model.layers.i.mlp.gate_proj/up_proj      [F, D]     → blocks.mlp.w_gate / w_up   [L, D, F]
    model.layers.i.mlp.down_proj.weight       [D, F]     → blocks.mlp.w_down          [L, F, D]
    model.layers.i.input_layernorm.weight     [D]        → blocks.attn_norm.scale     [L, D]
    model.layers.i.post_attention_layernorm   [D]        → blocks.mlp_norm.scale      [L, D]
    model.norm.weight                         [D]        → final_norm.scale           [D]
    lm_head.weight                            [V, D]     → lm_head                    [D, V] (untied only)

Mixtral (``model_type: mixtral``) has the same attention and norms, stacked under ``moe_blocks`` (every
layer is an MoE layer), and per layer (E experts; the hub layout that ``save_pretrained`` writes):

    model.layers.i.block_sparse_moe.gate.weight         [E, D]  → moe_blocks.moe.router   [L, D, E]
    model.layers.i.block_sparse_moe.experts.j.w1.weight [F, D]  → moe_blocks.moe.w_gate   [L, E, D, F]
    model.layers.i.block_sparse_moe.experts.j.w3.weight [F, D]  → moe_blocks.moe.w_up     [L, E, D, F]
    model.layers.i.block_sparse_moe.experts.j.w2.weight [D, F]  → moe_blocks.moe.w_down   [L, E, F, D]

Imported Mixtral configs use ``moe_dispatch="dropless"``, which, like transformers, never drops a token.
RoPE needs no permutation: quark_jax uses the same "rotate half" layout as HF Llama.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from quark_jax.models.config import ModelConfig

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


# ---- safetensors, with numpy -------------------------------------------------------------------------
def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as numpy arrays (memory-mapped, then copied per tensor)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return tensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``tensors`` as one ``.safetensors`` file (readable by the safetensors library and transformers)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset, blobs = 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        blob = array.tobytes()
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


def read_state_dict(model_dir: str) -> dict[str, np.ndarray]:
    """The state dict of a Hugging Face model directory (single file or sharded safetensors)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(model_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"{model_dir} has neither model.safetensors nor model.safetensors.index.json "
            "(PyTorch .bin checkpoints are not read: convert them with transformers' save_pretrained)"
        )
    state: dict[str, np.ndarray] = {}
    for name in files:
        state.update(read_safetensors(os.path.join(model_dir, name)))
    return state


# ---- config ------------------------------------------------------------------------------------------
def config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """A ``ModelConfig`` from a Llama ``config.json`` dict; refuses features quark_jax does not implement."""
    model_type = hf.get("model_type", "llama")
    if model_type not in ("llama", "mixtral"):
        raise ValueError(f"config.json model_type={model_type!r}: only 'llama' and 'mixtral' are supported")
    if hf.get("sliding_window"):
        raise ValueError(f"config.json sliding_window={hf['sliding_window']}: sliding-window attention is not implemented")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"config.json {flag}=true: quark_jax Llama layers have no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ValueError(f"config.json rope scaling {hf.get('rope_scaling') or rope}: only default RoPE is supported")
    heads = hf["num_attention_heads"]
    moe = {}
    if model_type == "mixtral":
        moe = dict(num_experts=hf["num_local_experts"], experts_per_token=hf["num_experts_per_tok"], moe_every=1,
                   moe_dispatch="dropless")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        mlp_dim=hf["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dtype=dtype,
        **moe,
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The Llama (or, for an MoE config, Mixtral) ``config.json`` dict for ``config``."""
    if config.num_experts:
        if config.moe_every != 1 or config.num_shared_experts or config.expert_mlp_dim not in (0, config.mlp_dim):
            raise ValueError("only MoE configs with moe_every=1, no shared experts and expert_mlp_dim=mlp_dim "
                             "have a Mixtral equivalent")
        hf = config_to_hf(dataclasses.replace(config, num_experts=0))
        hf.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=config.num_experts,
                  num_experts_per_tok=config.experts_per_token, sliding_window=None, router_jitter_noise=0.0)
        return hf
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps, "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "max_position_embeddings": 4096, "dtype": "float32",
    }


# ---- weights -----------------------------------------------------------------------------------------
def _take(state: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in state:
        raise KeyError(f"Hugging Face state dict has no {name!r}")
    array = np.asarray(state.pop(name), np.float32)
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    return array


def params_from_state_dict(state: Mapping[str, Any], config: ModelConfig) -> dict:
    """quark_jax params (a pure dict for ``nnx.merge``, float32) from a Llama state dict of numpy arrays
    (or torch tensors: anything ``np.asarray`` takes). Unused tensors are an error, so nothing is dropped
    silently (``rotary_emb.inv_freq`` buffers are ignored)."""
    state = {k: np.asarray(v.float().numpy() if hasattr(v, "float") else v) for k, v in state.items()
             if not k.endswith("rotary_emb.inv_freq")}
    D, N, K, H, F, V = (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim, config.mlp_dim,
                        config.vocab_size)

    def layers(fmt: str, shape: tuple[int, ...], convert) -> np.ndarray:
        return np.stack([convert(_take(state, fmt.format(i), shape)) for i in range(config.num_layers)])

    if config.num_experts and (config.moe_every != 1 or config.num_shared_experts):
        raise ValueError("Mixtral import needs moe_every=1 and no shared experts")
    E, FE = config.num_experts, config.expert_hidden
    block = {
        "attn": {
            "wq": layers("model.layers.{}.self_attn.q_proj.weight", (N * H, D), lambda w: w.T.reshape(D, N, H)),
            "wk": layers("model.layers.{}.self_attn.k_proj.weight", (K * H, D), lambda w: w.T.reshape(D, K, H)),
            "wv": layers("model.layers.{}.self_attn.v_proj.weight", (K * H, D), lambda w: w.T.reshape(D, K, H)),
            "wo": layers("model.layers.{}.self_attn.o_proj.weight", (D, N * H), lambda w: w.T.reshape(N, H, D)),
        },
        "attn_norm": {"scale": layers("model.layers.{}.input_layernorm.weight", (D,), lambda w: w)},
        "mlp_norm": {"scale": layers("model.layers.{}.post_attention_layernorm.weight", (D,), lambda w: w)},
    }
    if E:
        def experts(w: str, shape) -> np.ndarray:  # [L, E, in, out]
            return np.stack([np.stack([_take(state, f"model.layers.{i}.block_sparse_moe.experts.{j}.{w}.weight", shape).T
                                       for j in range(E)]) for i in range(config.num_layers)])

        block["moe"] = {
            "router": layers("model.layers.{}.block_sparse_moe.gate.weight", (E, D), lambda w: w.T),
            "w_gate": experts("w1", (FE, D)), "w_up": experts("w3", (FE, D)), "w_down": experts("w2", (D, FE)),
        }
    else:
        block["mlp"] = {
            "w_gate": layers("model.layers.{}.mlp.gate_proj.weight", (F, D), lambda w: w.T),
            "w_up": layers("model.layers.{}.mlp.up_proj.weight", (F, D), lambda w: w.T),
            "w_down": layers("model.layers.{}.mlp.down_proj.weight", (D, F), lambda w: w.T),
        }
    params: dict[str, Any] = {
        "embed": {"embedding": _take(state, "model.embed_tokens.weight", (V, D))},
        "moe_blocks" if E else "blocks": block,
        "final_norm": {"scale": _take(state, "model.norm.weight", (D,))},
    }
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # transformers may write the tied copy
    else:
        params["lm_head"] = _take(state, "lm_head.weight", (V, D)).T
    if state:
        raise ValueError(f"unused tensors in the Hugging Face state dict: {sorted(state)[:8]}")
    return _contiguous(params)


def _contiguous(tree):
    if isinstance(tree, dict):
        return {k: _contiguous(v) for k, v in tree.items()}
    return jnp.asarray(np.ascontiguousarray(tree, np.float32))


def state_dict_from_params(params: Mapping[str, Any], config: ModelConfig) -> dict[str, np.ndarray]:
    """The Llama state dict (float32 numpy, HF names and [out, in] layouts) of quark_jax ``params``."""
    from quark_jax.inference.quantize import dequantize_params

    p = dequantize_params(params)
    get = lambda *path: np.asarray(_dig(p, path), np.float32)  # noqa: E731
    D, N, K, H = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
    state = {"model.embed_tokens.weight": get("embed", "embedding"), "model.norm.weight": get("final_norm", "scale")}
    stack = "moe_blocks" if config.num_experts else "blocks"
    per_layer = {
        "self_attn.q_proj.weight": ((stack, "attn", "wq"), lambda w: w.reshape(D, N * H).T),
        "self_attn.k_proj.weight": ((stack, "attn", "wk"), lambda w: w.reshape(D, K * H).T),
        "self_attn.v_proj.weight": ((stack, "attn", "wv"), lambda w: w.reshape(D, K * H).T),
        "self_attn.o_proj.weight": ((stack, "attn", "wo"), lambda w: w.reshape(N * H, D).T),
        "input_layernorm.weight": ((stack, "attn_norm", "scale"), lambda w: w),
        "post_attention_layernorm.weight": ((stack, "mlp_norm", "scale"), lambda w: w),
    }
    if config.num_experts:
        per_layer["block_sparse_moe.gate.weight"] = ((stack, "moe", "router"), lambda w: w.T)
        for j in range(config.num_experts):
            for hf_name, ours in (("w1", "w_gate"), ("w3", "w_up"), ("w2", "w_down")):
                per_layer[f"block_sparse_moe.experts.{j}.{hf_name}.weight"] = (
                    (stack, "moe", ours), lambda w, j=j: w[j].T)
    else:
        per_layer.update({
            "mlp.gate_proj.weight": ((stack, "mlp", "w_gate"), lambda w: w.T),
            "mlp.up_proj.weight": ((stack, "mlp", "w_up"), lambda w: w.T),
            "mlp.down_proj.weight": ((stack, "mlp", "w_down"), lambda w: w.T),
        })
    for suffix, (path, convert) in per_layer.items():
        stacked = get(*path)
        for i in range(config.num_layers):
            state[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(convert(stacked[i]))
    if not config.tie_embeddings:
        state["lm_head.weight"] = np.ascontiguousarray(get("lm_head").T)
    return state


def _dig(tree, path):
    for key in path:
        tree = tree[key]
    return tree[...] if hasattr(tree, "get_value") else tree


def load_hf(model_dir: str, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from a Hugging Face Llama or Mixtral directory (``config.json`` + safetensors)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = config_from_hf(json.load(f), dtype)
    return config, params_from_state_dict(read_state_dict(model_dir), config)


def save_hf(out_dir: str, params: Mapping[str, Any], config: ModelConfig) -> str:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers`` (Llama, or Mixtral for an MoE
    config) ``from_pretrained`` loads. Quantized params are dequantized first (HF Llama has no int4/int8 layout of ours)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_to_hf(config), f, indent=2)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), state_dict_from_params(params, config))
    return out_dir
