"""The decoder-only transformer: embed → L scanned blocks (RMSNorm → GQA attention, RMSNorm → SwiGLU) → norm → logits.

Axis legend: B batch · T query length · S key (cache) length · D embed · K kv heads · H head dim ·
V vocab · L layers · E experts · G groups of ``moe_every`` layers.

The L blocks are built once with ``nnx.vmap`` (every parameter gains a leading ``layers`` axis) and applied
with ``jax.lax.scan``, so compile time does not grow with depth. A block is rematerialized according to
``ModelConfig.remat``.

With ``num_experts > 0`` every ``moe_every``-th layer is an MoE layer. The layers then form G groups of
``moe_every`` (``moe_every - 1`` dense blocks, then one MoE block); two stacks hold the parameters
(``blocks`` for dense, ``moe_blocks`` for MoE) and one scan runs over the groups, with an inner scan over a
group's dense blocks, so compile time stays flat in depth here too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Float, Int

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.layers import MLP, Attention, Embed, RMSNorm, param, write_at
from quark_jax.models.moe import MoE

_REMAT_POLICIES = {
    "full": None,  # save nothing but the block's inputs
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


@struct.dataclass
class KVCache:
    """Keys and values of every layer plus the positions and segment ids of the cached tokens.

    Slots not yet written have segment id 0 and are never attended to. ``index`` is the next slot to write:
    a scalar shared by the batch (prompts right-padded to one length, padding masked by segment id), or a
    ``[B]`` vector, one per row, for the decode slots of a continuous batch (``quark_jax.serving.engine``).
    """

    k: Float[Array, "L B S K H"]
    v: Float[Array, "L B S K H"]
    positions: Int[Array, "B S"]
    segment_ids: Int[Array, "B S"]
    index: Int[Array, ""] | Int[Array, "B"]

    @classmethod
    def init(cls, config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> KVCache:
        shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
        dtype = dtype or config.compute_dtype
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            positions=jnp.zeros((batch_size, max_length), jnp.int32),
            segment_ids=jnp.zeros((batch_size, max_length), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.k.shape[2]

    def row(self, slot: Int[Array, ""], index: Int[Array, ""]) -> KVCache:
        """Row ``slot`` of this batched cache as a one-row cache that writes at ``index``."""
        return KVCache(k=jax.lax.dynamic_slice_in_dim(self.k, slot, 1, axis=1),
                       v=jax.lax.dynamic_slice_in_dim(self.v, slot, 1, axis=1),
                       positions=jax.lax.dynamic_slice_in_dim(self.positions, slot, 1, axis=0),
                       segment_ids=jax.lax.dynamic_slice_in_dim(self.segment_ids, slot, 1, axis=0), index=index)

    def with_row(self, slot: Int[Array, ""], row: KVCache) -> KVCache:
        """This cache with row ``slot``'s keys, values, positions and segment ids replaced by the one-row ``row``'s
        (this cache's ``index`` is kept)."""
        return self.replace(k=jax.lax.dynamic_update_slice_in_dim(self.k, row.k, slot, axis=1),
                            v=jax.lax.dynamic_update_slice_in_dim(self.v, row.v, slot, axis=1),
                            positions=jax.lax.dynamic_update_slice_in_dim(self.positions, row.positions, slot, axis=0),
                            segment_ids=jax.lax.dynamic_update_slice_in_dim(self.segment_ids, row.segment_ids, slot,
                                                                            axis=0))


class Block(nnx.Module):
    """One pre-norm decoder layer."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, segment_ids, kv=None, kv_index=None, key_positions=None, key_segment_ids=None):
        h, kv = self.attn(self.attn_norm(x), positions, segment_ids, kv, kv_index, key_positions, key_segment_ids)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)), kv


class MoEBlock(nnx.Module):
    """One pre-norm decoder layer whose feed-forward part is a Mixture-of-Experts."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config)
        self.moe = MoE(config, rngs=rngs)

    def __call__(self, x, positions, segment_ids, kv=None, kv_index=None, key_positions=None, key_segment_ids=None):
        h, kv = self.attn(self.attn_norm(x), positions, segment_ids, kv, kv_index, key_positions, key_segment_ids)
        x = x + h
        y, aux = self.moe(self.mlp_norm(x), segment_ids != 0)
        return sh.constrain(x + y, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)), kv, aux


class Transformer(nnx.Module):
    """A Llama-style decoder-only language model."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = Embed(config, rngs=rngs)

        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: sh.LAYERS})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(config, rngs=rngs)

        if config.num_dense_layers:
            self.blocks = make_blocks(rngs.split(config.num_dense_layers))
        if config.num_moe_layers:

            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: sh.LAYERS})
            def make_moe_blocks(rngs: nnx.Rngs) -> MoEBlock:
                return MoEBlock(config, rngs=rngs)

            self.moe_blocks = make_moe_blocks(rngs.split(config.num_moe_layers))
        self.final_norm = RMSNorm(config)
        if not config.tie_embeddings:
            self.lm_head = param(rngs, (config.d_model, config.vocab_size), (sh.EMBED, sh.VOCAB), config.init_std)

    def __call__(
        self,
        tokens: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        segment_ids: Int[Array, "B T"],
        cache: KVCache | None = None,
        return_aux: bool = False,
        return_hidden: bool = False,
    ) -> tuple[Float[Array, "B T V"], KVCache | None]:
        """Logits for every position (float32), and the updated cache when one is given.

        Training passes packed sequences (``segment_ids`` 0 on padding, ``positions`` restarting per
        segment); decoding passes a chunk (the prompt, then one token at a time) and a :class:`KVCache`.
        With ``return_aux`` a third value is returned: the MoE auxiliary values averaged over MoE layers
        (``load_balance_loss``, ``router_z_loss``, ``dropped_fraction``, ``expert_load`` [E]); ``{}`` for a
        dense model. With ``return_hidden`` the final-normed hidden states ``[B, T, D]`` come last (for
        scalar heads, and for losses that project to the vocabulary chunk by chunk with :meth:`logits`).
        """
        cfg = self.config
        if tokens.shape != positions.shape or tokens.shape != segment_ids.shape:
            raise ValueError(
                f"tokens {tokens.shape}, positions {positions.shape} and segment_ids {segment_ids.shape} "
                "must have the same [batch, length] shape"
            )
        x = self.embed(tokens)

        if cache is None:
            kv, kv_index, key_positions, key_segment_ids = None, None, None, None
        else:
            kv_index = cache.index
            key_positions = write_at(cache.positions, positions, kv_index)
            key_segment_ids = write_at(cache.segment_ids, segment_ids, kv_index)
            kv = (cache.k, cache.v)

        block_args = (positions, segment_ids, kv_index, key_positions, key_segment_ids)
        aux = {}
        if cfg.num_experts:
            x, kv, aux = self._moe_layers(x, kv, block_args)
        else:
            graphdef, layer_params = nnx.split(self.blocks)
            x, kv = jax.lax.scan(_dense_step(graphdef, cfg, block_args), x, (layer_params, kv), unroll=cfg.scan_unroll)

        x = self.final_norm(x)
        logits = self.logits(x)

        if cache is not None:
            cache = KVCache(
                k=kv[0], v=kv[1], positions=key_positions, segment_ids=key_segment_ids,
                index=cache.index + tokens.shape[1],
            )
        outputs = (logits, cache)
        if return_aux:
            outputs += (aux,)
        if return_hidden:
            outputs += (x,)
        return outputs

    def logits(self, x: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        """Vocabulary logits (float32) of final-normed hidden states."""
        if self.config.tie_embeddings:
            logits = self.embed.attend(x)
        else:
            logits = jnp.einsum("BTD,DV->BTV", x, self.lm_head[...].astype(x.dtype))
            logits = sh.constrain(logits, (sh.BATCH, sh.LENGTH, sh.ACT_VOCAB))
        return logits.astype(jnp.float32)

    def _moe_layers(self, x, kv, block_args):
        """Scans over G groups of ``moe_every`` layers: the group's dense blocks (inner scan), then its MoE block."""
        cfg = self.config
        G, N = cfg.num_moe_layers, cfg.moe_every
        moe_graphdef, moe_params = nnx.split(self.moe_blocks)
        positions, segment_ids, kv_index, key_positions, key_segment_ids = block_args
        dense_step = None
        dense_params = dense_kv = moe_kv = None
        if N > 1:
            dense_graphdef, dense_params = nnx.split(self.blocks)
            dense_params = jax.tree.map(lambda a: a.reshape(G, N - 1, *a.shape[1:]), dense_params)
            dense_step = _dense_step(dense_graphdef, cfg, block_args)
        if kv is not None:  # [L ...] -> [G N ...]: the last layer of each group is the MoE one
            grouped = [a.reshape(G, N, *a.shape[1:]) for a in kv]
            dense_kv = tuple(a[:, : N - 1] for a in grouped) if N > 1 else None
            moe_kv = tuple(a[:, N - 1] for a in grouped)

        def moe_step(x, layer):
            params, layer_kv = layer
            block = nnx.merge(moe_graphdef, params)
            x, layer_kv, aux = block(x, positions, segment_ids, layer_kv, kv_index, key_positions, key_segment_ids)
            return x, (layer_kv, aux)

        if cfg.remat != "none":
            moe_step = jax.checkpoint(moe_step, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)

        def group_step(x, group):
            d_params, m_params, d_kv, m_kv = group
            if dense_step is not None:
                x, d_kv = jax.lax.scan(dense_step, x, (d_params, d_kv))
            x, (m_kv, aux) = moe_step(x, (m_params, m_kv))
            return x, (d_kv, m_kv, aux)

        x, (dense_kv, moe_kv, aux) = jax.lax.scan(
            group_step, x, (dense_params, moe_params, dense_kv, moe_kv), unroll=min(cfg.scan_unroll, G)
        )
        if kv is not None:
            parts = [(m[:, None],) if d is None else (d, m[:, None]) for d, m in zip(dense_kv or (None, None), moe_kv)]
            kv = tuple(jnp.concatenate(p, axis=1).reshape(cfg.num_layers, *p[-1].shape[2:]) for p in parts)
        return x, kv, jax.tree.map(lambda a: jnp.mean(a, axis=0), aux)


def _dense_step(graphdef, cfg: ModelConfig, block_args):
    """The scan body applying one dense :class:`Block` (rematerialized per ``cfg.remat``)."""
    positions, segment_ids, kv_index, key_positions, key_segment_ids = block_args

    def apply_block(x, layer):
        params, layer_kv = layer
        block = nnx.merge(graphdef, params)
        return block(x, positions, segment_ids, layer_kv, kv_index, key_positions, key_segment_ids)

    if cfg.remat != "none":
        apply_block = jax.checkpoint(apply_block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    return apply_block


def init_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A freshly initialised model on the default device (use the trainer for sharded initialisation)."""
    return Transformer(config, rngs=nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig) -> Transformer:
    """The model with ``jax.ShapeDtypeStruct`` leaves (nothing allocated): for graph definitions, parameter
    shapes and shardings. The one place the project evaluates a model's shapes."""
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def abstract_params(config: ModelConfig) -> tuple[nnx.GraphDef, dict]:
    """``(graphdef, abstract parameters as a pure dict)`` of ``config``."""
    graphdef, state = nnx.split(abstract_model(config))
    return graphdef, nnx.to_pure_dict(state)
