"""Hugging Face interop: Llama and Mixtral weights to and from quark_jax params and ``ModelConfig``.

Reads and writes the on-disk layout that users have: a directory with ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``), read through
:mod:`quark_jax.inference.safetensors_io` (the safetensors library, every header validated first). torch and
transformers are test-only dependencies, used to check parity against ``transformers.LlamaForCausalLM``.

Each quark_jax parameter is described by a :class:`Source` (the HF tensor per layer and expert and how its
layout maps to ours), so a reader can fetch exactly the block of one HF tensor that one device's shard needs
(:mod:`quark_jax.inference.hf_import`); :func:`params_from_state_dict` uses the same table on one host.

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

Imported Mixtral configs use ``moe_dispatch="dropless"``, which, like transformers, never drops a token, and
``renormalize_gates=True``: transformers renormalises the top-k gates for every k, k = 1 included. Exporting a
capacity-dispatch MoE (which drops overflow tokens) or one with Switch gates at k = 1 warns that transformers
will compute something else. A key missing from ``config.json`` takes transformers' default for that model
type (:data:`HF_DEFAULTS`; e.g. Mixtral's rope_theta is 1e6 and rms_norm_eps 1e-5, Llama's 1e4 and 1e-6).
RoPE needs no permutation: quark_jax uses the same "rotate half" layout as HF Llama.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from quark_jax.inference.safetensors_io import (  # noqa: F401 -- re-exported: the readers of this module's layout
    CheckpointReader,
    SafetensorsError,
    StateDictReader,
    read_safetensors,
    write_safetensors,
)
from quark_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

# transformers' defaults for a key that config.json leaves out, per model type (LlamaConfig and MixtralConfig
# of transformers 5.24; tests/inference/test_hf_import.py compares them with the classes). ``None`` for
# num_key_value_heads / head_dim means "derive": num_attention_heads, hidden_size // num_attention_heads.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10_000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    },
    "mixtral": {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": None, "hidden_act": "silu",
        "max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "num_local_experts": 8, "num_experts_per_tok": 2,
    },
}


# ---- config ------------------------------------------------------------------------------------------
def hf_setting(hf: Mapping[str, Any], key: str) -> Any:
    """``config.json``'s value of ``key``, or transformers' default for the file's model type."""
    model_type = hf.get("model_type", "llama")
    if key == "rope_theta":
        rope = hf.get("rope_parameters") or {}
        if "rope_theta" in rope:
            return rope["rope_theta"]
    return hf[key] if key in hf else HF_DEFAULTS[model_type][key]


def config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """A ``ModelConfig`` from a Llama or Mixtral ``config.json`` dict (missing keys take transformers' default
    for the model type); refuses features quark_jax does not implement."""
    model_type = hf.get("model_type", "llama")
    if model_type not in HF_DEFAULTS:
        raise ValueError(f"config.json model_type={model_type!r}: only 'llama' and 'mixtral' are supported")
    if hf.get("sliding_window"):
        raise ValueError(f"config.json sliding_window={hf['sliding_window']}: sliding-window attention is not implemented")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"config.json {flag}=true: quark_jax Llama layers have no biases")
    if hf_setting(hf, "hidden_act") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ValueError(f"config.json rope scaling {hf.get('rope_scaling') or rope}: only default RoPE is supported")
    get = lambda key: hf_setting(hf, key)  # noqa: E731
    heads = get("num_attention_heads")
    moe = {}
    if model_type == "mixtral":
        moe = dict(num_experts=get("num_local_experts"), experts_per_token=get("num_experts_per_tok"), moe_every=1,
                   moe_dispatch="dropless", renormalize_gates=True)
    return ModelConfig(
        vocab_size=get("vocab_size"),
        d_model=get("hidden_size"),
        num_layers=get("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or get("hidden_size") // heads,
        mlp_dim=get("intermediate_size"),
        rope_theta=float(get("rope_theta")),
        norm_eps=float(get("rms_norm_eps")),
        tie_embeddings=bool(get("tie_word_embeddings")),
        dtype=dtype,
        **moe,
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The Llama (or, for an MoE config, Mixtral) ``config.json`` dict for ``config``."""
    if config.num_experts:
        if config.moe_every != 1 or config.num_shared_experts or config.expert_mlp_dim not in (0, config.mlp_dim):
            raise ValueError("only MoE configs with moe_every=1, no shared experts and expert_mlp_dim=mlp_dim "
                             "have a Mixtral equivalent")
        if config.moe_dispatch == "capacity":
            log.warning("exporting an MoE trained with moe_dispatch='capacity' (tokens over an expert's capacity "
                        "are dropped): transformers' Mixtral routes dropless, so its outputs will differ wherever "
                        "this model dropped tokens")
        if config.experts_per_token == 1 and not config.renormalize_gates:
            log.warning("exporting a k=1 MoE with Switch gates (the raw router probability): transformers' "
                        "Mixtral renormalises the top-k gates, so every gate becomes 1 there and outputs differ")
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


# ---- where every parameter comes from ----------------------------------------------------------------
# How one HF tensor (nn.Linear layout [out, in]) becomes our per-layer block. X is the heads axis (N or K).
SAME = "same"            # norms, embedding: identical
TRANSPOSE = "transpose"  # [out, in] -> [in, out]
SPLIT_OUT = "split_out"  # q/k/v: [X·H, D] -> [D, X, H]
SPLIT_IN = "split_in"    # o: [D, N·H] -> [N, H, D]


@dataclasses.dataclass(frozen=True)
class Source:
    """One quark_jax parameter: ``path`` in the params dict, the HF tensor ``name`` (a format string over
    ``layer`` and ``expert``), its HF shape, the layout ``kind``, and the stacked leading axes (``()``, ``(L,)``
    or ``(L, E)``). The parameter's shape is ``stack + our per-tensor shape``."""

    path: tuple[str, ...]
    name: str
    hf_shape: tuple[int, ...]
    kind: str
    stack: tuple[int, ...] = ()
    head_dim: int = 0  # H, for the split kinds

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Our layout of one HF tensor."""
        if self.kind == SAME:
            return self.hf_shape
        (a, b), H = self.hf_shape, self.head_dim
        if self.kind == TRANSPOSE:
            return (b, a)
        return (b, a // H, H) if self.kind == SPLIT_OUT else (b // H, H, a)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stack + self.block_shape

    def tensor_names(self) -> list[str]:
        """Every HF tensor this parameter is made of, in stack order."""
        if not self.stack:
            return [self.name]
        return [self.name.format(layer=i, expert=j[0] if j else None)
                for i in range(self.stack[0]) for j in itertools.product(*(range(n) for n in self.stack[1:]))]

    def block(self, read: Callable[[str, tuple[slice, ...]], np.ndarray], name: str,
              index: tuple[slice, ...]) -> np.ndarray:
        """Our layout's ``index`` block (plain slices over :attr:`block_shape`) of HF tensor ``name``, reading
        only the HF rows and columns it needs through ``read(name, hf_index)``; float32."""
        index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, self.block_shape))
        H = self.head_dim
        if self.kind == SAME:
            out = read(name, index)
        elif self.kind == TRANSPOSE:
            out = read(name, (index[1], index[0])).T
        elif self.kind == SPLIT_OUT:  # ours [D, X, H] from [X·H, D]
            d, x, h = index
            rows = read(name, (slice(x.start * H, x.stop * H), d))
            out = rows.T.reshape(d.stop - d.start, x.stop - x.start, H)[:, :, h]
        else:  # SPLIT_IN: ours [N, H, D] from [D, N·H]
            n, h, d = index
            cols = read(name, (d, slice(n.start * H, n.stop * H)))
            out = cols.T.reshape(n.stop - n.start, H, d.stop - d.start)[:, h, :]
        return np.ascontiguousarray(out, np.float32)


def sources(config: ModelConfig) -> list[Source]:
    """Where each parameter of ``config`` comes from in a Llama or Mixtral checkpoint (see the module doc)."""
    if config.num_experts and (config.moe_every != 1 or config.num_shared_experts):
        raise ValueError("Mixtral import needs moe_every=1 and no shared experts")
    D, N, K, H, F, V, L = (config.d_model, config.num_heads, config.num_kv_heads, config.head_dim, config.mlp_dim,
                           config.vocab_size, config.num_layers)
    E, FE = config.num_experts, config.expert_hidden
    stack = "moe_blocks" if E else "blocks"
    layer = "model.layers.{layer}."
    out = [
        Source(("embed", "embedding"), "model.embed_tokens.weight", (V, D), SAME),
        Source((stack, "attn", "wq"), layer + "self_attn.q_proj.weight", (N * H, D), SPLIT_OUT, (L,), H),
        Source((stack, "attn", "wk"), layer + "self_attn.k_proj.weight", (K * H, D), SPLIT_OUT, (L,), H),
        Source((stack, "attn", "wv"), layer + "self_attn.v_proj.weight", (K * H, D), SPLIT_OUT, (L,), H),
        Source((stack, "attn", "wo"), layer + "self_attn.o_proj.weight", (D, N * H), SPLIT_IN, (L,), H),
        Source((stack, "attn_norm", "scale"), layer + "input_layernorm.weight", (D,), SAME, (L,)),
        Source((stack, "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", (D,), SAME, (L,)),
    ]
    if E:
        expert = layer + "block_sparse_moe.experts.{expert}."
        out += [
            Source((stack, "moe", "router"), layer + "block_sparse_moe.gate.weight", (E, D), TRANSPOSE, (L,)),
            Source((stack, "moe", "w_gate"), expert + "w1.weight", (FE, D), TRANSPOSE, (L, E)),
            Source((stack, "moe", "w_up"), expert + "w3.weight", (FE, D), TRANSPOSE, (L, E)),
            Source((stack, "moe", "w_down"), expert + "w2.weight", (D, FE), TRANSPOSE, (L, E)),
        ]
    else:
        out += [
            Source((stack, "mlp", "w_gate"), layer + "mlp.gate_proj.weight", (F, D), TRANSPOSE, (L,)),
            Source((stack, "mlp", "w_up"), layer + "mlp.up_proj.weight", (F, D), TRANSPOSE, (L,)),
            Source((stack, "mlp", "w_down"), layer + "mlp.down_proj.weight", (D, F), TRANSPOSE, (L,)),
        ]
    out.append(Source(("final_norm", "scale"), "model.norm.weight", (D,), SAME))
    if not config.tie_embeddings:
        out.append(Source(("lm_head",), "lm_head.weight", (V, D), TRANSPOSE))
    return out


# Tensors a checkpoint may hold that carry nothing of the model: RoPE buffers, and the tied copy of the
# embedding that transformers may write.
def _ignorable(name: str, config: ModelConfig) -> bool:
    return name.endswith("rotary_emb.inv_freq") or (config.tie_embeddings and name == "lm_head.weight")


def check_tensors(reader: Any, config: ModelConfig) -> None:
    """Every tensor the model needs is there with its expected shape, and nothing else is (so nothing is
    dropped silently): errors name the tensor and, for a checkpoint, its file."""
    needed = {}
    for source in sources(config):
        for name in source.tensor_names():
            needed[name] = source.hf_shape
    where = (lambda n: f" ({reader.file_of(n)})") if hasattr(reader, "file_of") else (lambda n: "")
    present = set(reader.names())
    for name, shape in needed.items():
        if name not in present:
            raise KeyError(f"Hugging Face state dict has no {name!r}")
        if tuple(reader.shape(name)) != shape:
            raise ValueError(f"{name}{where(name)}: expected shape {shape}, got {tuple(reader.shape(name))}")
    unused = sorted(n for n in present - set(needed) if not _ignorable(n, config))
    if unused:
        raise ValueError(f"unused tensors in the Hugging Face state dict: {unused[:8]}")


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def params_from_state_dict(state: Mapping[str, Any] | Any, config: ModelConfig) -> dict:
    """quark_jax params (a pure dict for ``nnx.merge``, float32, on the default device) from a state dict of
    numpy arrays or torch tensors, or from a :class:`CheckpointReader`. Unused tensors are an error, so
    nothing is dropped silently (``rotary_emb.inv_freq`` buffers are ignored). Holds the whole model on one
    host: :func:`quark_jax.inference.hf_import.import_params` reads onto a mesh shard by shard instead."""
    reader = state if hasattr(state, "read") else StateDictReader(state)
    check_tensors(reader, config)
    params: dict[str, Any] = {}
    for source in sources(config):
        full = tuple(slice(None) for _ in source.block_shape)
        blocks = [source.block(reader.read, name, full) for name in source.tensor_names()]
        value = np.stack(blocks).reshape(source.shape) if source.stack else blocks[0]
        _set(params, source.path, jnp.asarray(value))
    return params


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


def read_hf_config(model_dir: str) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face directory; a missing or malformed file is an error naming it."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: is {model_dir} a Hugging Face model directory?") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path} is not a JSON object")
    return hf


def load_hf(model_dir: str, dtype: str = "float32") -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from a Hugging Face Llama or Mixtral directory (``config.json`` + safetensors),
    on one host; ``quark import_hf`` (:mod:`quark_jax.inference.hf_import`) reads onto a mesh instead."""
    config = config_from_hf(read_hf_config(model_dir), dtype)
    reader = CheckpointReader.from_dir(model_dir)
    try:
        return config, params_from_state_dict(reader, config)
    finally:
        reader.close()


def save_hf(out_dir: str, params: Mapping[str, Any], config: ModelConfig) -> str:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers`` (Llama, or Mixtral for an MoE
    config) ``from_pretrained`` loads. Quantized params are dequantized first (HF Llama has no int4/int8 layout of ours)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_to_hf(config), f, indent=2)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), state_dict_from_params(params, config))
    return out_dir
