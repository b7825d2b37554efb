"""Resource planner behind ``quark plan``: parameters, FLOPs, per-device memory and implied step time.

Everything is computed from the ``ModelConfig``, the mesh *shape* (no devices needed) and the rules table:

* parameters: total, active per token (MoE), and the matmul parameters of the FLOP count;
* FLOPs per token (``ModelConfig.flops_per_token``: 6·N_matmul plus causal attention);
* bytes per device: parameters and AdamW moments (each leaf sharded exactly as ``sharding.state_shardings``
  would), gradients, the input batch, and activations kept for the backward pass under each remat policy;
* the step time implied by a peak FLOP/s per device and an MFU.

The activation model counts the tensors a block keeps for its backward pass (per remat policy) plus the
logits; tests hold the total within 20% of XLA's ``compiled.memory_analysis()`` on several configs and
meshes.
"""

from __future__ import annotations

import dataclasses
import math
import types

import jax
import numpy as np
from flax import nnx

from quark_jax import sharding as sh
from quark_jax.models.config import ModelConfig
from quark_jax.models.moe import expert_capacity
from quark_jax.models.transformer import abstract_model

REMAT_POLICIES = ("none", "save_dots", "full")

# Calibration of the activation model, fitted to XLA's memory_analysis on the CPU over 8 MoE cases (MoE
# every layer and every 2nd layer, 3 remat policies, 1 and 8 devices; worst case 14% off).
MOE_BUFFER_COPIES = {"all": 1.25, "dots": 1.0}  # live copies of an expert buffer row per MoE layer
# FSDP all-gathers live at the peak (see fsdp_gather_bytes): on TPU, layers of the scanned stack; on the CPU,
# a fraction of the whole model.
FSDP_GATHER = {"tpu": 2.0, "cpu": 0.5}
# The dense layers scanned inside an MoE group keep their residuals twice: the inner scan stacks them and the
# outer scan stacks that stack again.
NESTED_SCAN_COPIES = 2.0


def _sharded_elements(shape, names, sizes: dict[str, int], rules: sh.Rules) -> int:
    fake_mesh = types.SimpleNamespace(shape=sizes)
    spec = sh.logical_to_spec(names, rules, fake_mesh, shape)
    count = 1
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        count *= math.ceil(dim / math.prod(sizes[a] for a in axes))
    return count


def param_elements_per_device(config: ModelConfig, sizes: dict[str, int], rules: sh.Rules = sh.DEFAULT_RULES) -> int:
    """Parameter elements on the busiest device, each leaf sharded by its logical names (nothing allocated)."""
    abstract = nnx.state(abstract_model(config), nnx.Param)
    total = 0
    for variable in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        shape = np.shape(variable.get_value())
        names = variable.get_metadata().get("out_sharding") or (None,) * len(shape)
        total += _sharded_elements(shape, tuple(names), sizes, rules)
    return total


def _batch_shards(sizes: dict[str, int], rules: sh.Rules, batch_size: int) -> int:
    fake_mesh = types.SimpleNamespace(shape=sizes)
    spec = sh.logical_to_spec((sh.BATCH,), rules, fake_mesh, (batch_size,))[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(sizes[a] for a in axes)


def activation_bytes(config: ModelConfig, sizes: dict[str, int], batch_size: int, seq_len: int,
                     remat: str, rules: sh.Rules = sh.DEFAULT_RULES) -> int:
    """Bytes per device of activations kept for the backward pass (plus one layer's working set).

    Per token and layer, with a = bytes of the compute dtype and heads/MLP split ``tp`` ways:
    ``none`` keeps every block intermediate (norms, q/k/v, attention scores and probabilities, MLP gate/up/
    hidden); ``save_dots`` keeps the outputs of weight matmuls (``dots_with_no_batch_dims_saveable``: the
    score einsums have batch dimensions, so scores are recomputed, one layer at a time); ``full`` keeps only
    each block's input and recomputes one block at a time. The logits (float32) and their gradient come on
    top. Attention is the plain (not flash) kernel, so scores cost B·N·T² per layer.

    Known gap: ``moe_dispatch='dropless'`` sorts all tokens of the global batch, which GSPMD cannot split
    over the data axes; the grouped matmuls then run replicated and the estimate (per-device tokens) is low.
    """
    a = np.dtype(config.compute_dtype).itemsize
    shards = _batch_shards(sizes, rules, batch_size)
    b = math.ceil(batch_size / shards)  # rows per device
    t = b * seq_len  # tokens per device
    tp = sizes[sh.TENSOR]
    D, H, T = config.d_model, config.head_dim, seq_len
    N, K = max(config.num_heads // tp, 1), max(config.num_kv_heads // tp, 1)
    F = math.ceil(config.mlp_dim / tp)

    def attention(kind):
        if kind == "dots":  # q, k, v and output projections (the score einsums carry batch dims: not saved)
            return t * ((N + 2 * K) * H + D) * a
        scores = b * N * T * T
        return t * (4 * D + 2 * (N + 2 * K) * H + N * H) * a + scores * (8 + a)  # + norms, scores, probs

    def dense_mlp(kind):
        return t * (2 * F + D) * a if kind == "dots" else t * (3 * F + 3 * D) * a

    def moe_mlp(kind):
        E, R = config.num_experts, config.experts_per_token
        Fe = math.ceil(config.expert_hidden / tp)
        if config.moe_dispatch == "capacity":
            slots = E * b * expert_capacity(config, T)  # expert buffer rows (all experts)
            routing = 2 * b * T * E * expert_capacity(config, T) * a + t * E * 4 * 2  # dispatch, combine, router
        else:
            slots = t * R
            routing = t * R * 16 + t * E * 4 * 2
        slots = math.ceil(slots / sizes[sh.EXPERT])  # experts split over the expert axis
        shared = config.num_shared_experts * t * 3 * Fe * a
        # Expert buffer rows: dispatched input, gate/up/hidden, output (MOE_BUFFER_COPIES calibrates).
        if kind == "dots":
            return slots * MOE_BUFFER_COPIES["dots"] * (2 * Fe + D) * a + shared
        return slots * MOE_BUFFER_COPIES["all"] * (3 * Fe + 2 * D) * a + routing + shared + t * 3 * D * a

    def layer(kind, moe):
        if moe and not config.num_experts:
            return 0
        return attention(kind) + (moe_mlp(kind) if moe else dense_mlp(kind))

    L_dense, L_moe = config.num_dense_layers, config.num_moe_layers
    if L_moe and config.moe_every > 1:
        L_dense *= NESTED_SCAN_COPIES
    logits = t * math.ceil(config.vocab_size / tp) * 4 * 2  # float32 logits and their gradient
    if remat == "none":
        kept = L_dense * layer("all", False) + L_moe * layer("all", True)
    elif remat == "save_dots":  # + one layer's attention scores, recomputed during its backward pass
        kept = L_dense * layer("dots", False) + L_moe * layer("dots", True) + b * N * T * T * (8 + a)
    elif remat == "full":  # block inputs, plus the working set of recomputing one block
        kept = config.num_layers * t * D * a + max(layer("dots", False), layer("all", True))
    else:
        raise ValueError(f"remat policy {remat!r} must be one of {REMAT_POLICIES}")
    return int(kept + logits)


@dataclasses.dataclass
class Plan:
    """The planner's answer for one model, mesh and batch (bytes are per device)."""

    mesh: dict[str, int]
    batch_size: int
    seq_len: int
    total_params: int
    active_params: int
    matmul_params: int
    flops_per_token: float
    param_bytes: int
    optimizer_bytes: int
    gradient_bytes: int
    batch_bytes: int
    fsdp_gather_bytes: int  # parameters all-gathered over the fsdp axis for compute
    activation_bytes: dict[str, int]  # per remat policy
    remat: str
    peak_flops_per_s: float
    mfu: float

    @property
    def total_bytes(self) -> int:
        """Peak bytes per device under the configured remat policy: state, gradients, batch, activations."""
        return (self.param_bytes + self.optimizer_bytes + self.gradient_bytes + self.batch_bytes
                + self.fsdp_gather_bytes + self.activation_bytes[self.remat])

    @property
    def step_flops(self) -> float:
        return self.flops_per_token * self.batch_size * self.seq_len

    @property
    def step_time_s(self) -> float:
        devices = math.prod(self.mesh.values())
        return self.step_flops / (self.peak_flops_per_s * self.mfu * devices)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(total_bytes=self.total_bytes, step_flops=self.step_flops, step_time_s=self.step_time_s,
                 tokens_per_s=self.batch_size * self.seq_len / self.step_time_s)
        return d

    def describe(self) -> str:
        gib = lambda n: f"{n / 2**30:10.3f} GiB"
        lines = [
            f"mesh {self.mesh} ({math.prod(self.mesh.values())} devices), batch {self.batch_size} x {self.seq_len} tokens",
            f"parameters: total {self.total_params:,}  active/token {self.active_params:,}  matmul {self.matmul_params:,}",
            f"FLOPs/token (train): {self.flops_per_token:.4g}   per step: {self.step_flops:.4g}",
            "bytes per device:",
            f"  parameters (f32)      {gib(self.param_bytes)}",
            f"  optimizer (AdamW)     {gib(self.optimizer_bytes)}",
            f"  gradients             {gib(self.gradient_bytes)}",
            f"  batch                 {gib(self.batch_bytes)}",
            f"  FSDP all-gathers      {gib(self.fsdp_gather_bytes)}",
        ]
        for policy in REMAT_POLICIES:
            mark = " <- configured" if policy == self.remat else ""
            lines.append(f"  activations remat={policy:<9} {gib(self.activation_bytes[policy])}{mark}")
        lines.append(f"  total (remat={self.remat})  {gib(self.total_bytes)}")
        lines.append(f"step time at {self.peak_flops_per_s:.3g} FLOP/s/device and MFU {self.mfu:.0%}: "
                     f"{self.step_time_s:.4g} s ({self.batch_size * self.seq_len / self.step_time_s:,.0f} tokens/s)")
        return "\n".join(lines)


def fsdp_gather_bytes(config: ModelConfig, sizes: dict[str, int], rules: sh.Rules = sh.DEFAULT_RULES,
                      platform: str = "tpu") -> int:
    """Bytes per device of weights all-gathered over the ``fsdp`` axis and live at the step's peak.

    FSDP gathers each weight before its matmul and reduce-scatters its gradient after. XLA's TPU scheduler
    gathers the scanned layer stack one layer at a time inside the loop, prefetching the next: about
    ``FSDP_GATHER["tpu"]`` layers' weights (float32, split only over the other mesh axes) are live, plus the
    output projection for the logits. XLA's CPU scheduler instead hoists the gathers and keeps about half of
    the gathered model live. Both measured with ``memory_analysis()`` (``tests/plan``)."""
    if platform not in FSDP_GATHER:
        raise ValueError(f"platform {platform!r} must be one of {sorted(FSDP_GATHER)}")
    unsharded = {**sizes, sh.FSDP: 1}
    if platform == "cpu":
        return int(4 * param_elements_per_device(config, unsharded, rules) * FSDP_GATHER["cpu"])
    layer = head = 0
    abstract = nnx.state(abstract_model(config), nnx.Param)
    for variable in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        shape = np.shape(variable.get_value())
        names = tuple(variable.get_metadata().get("out_sharding") or (None,) * len(shape))
        elements = _sharded_elements(shape, names, unsharded, rules)
        if sh.LAYERS in names:  # one layer of the stack
            layer += elements // shape[names.index(sh.LAYERS)]
        else:  # embedding, output projection, final norm: the largest is gathered for the logits
            head = max(head, elements)
    return int(4 * (FSDP_GATHER["tpu"] * layer + head))


def check_batch_split(sizes: dict[str, int], batch_size: int, grad_accum_steps: int = 1,
                      rules: sh.Rules = sh.DEFAULT_RULES) -> None:
    """Raises ``ValueError`` unless every micro-batch splits evenly over the mesh's data-parallel axes.

    The rules drop a mesh axis that does not divide an array, so a batch of 8 on ``fsdp=256`` would compile
    with the batch *replicated*: every device computing all 8 rows, 256 times the work the plan assumes."""
    table = dict(rules)[sh.BATCH]
    axes = (table,) if isinstance(table, str) else tuple(table or ())
    ways = math.prod(sizes[a] for a in axes)
    if batch_size % grad_accum_steps:
        raise ValueError(f"BATCH_SIZE={batch_size} does not split into grad_accum_steps={grad_accum_steps} "
                         "micro-batches; use a multiple of it")
    if (batch_size // grad_accum_steps) % ways:
        split = " x ".join(f"{a}={sizes[a]}" for a in axes if sizes[a] > 1)
        micro = f" per micro-batch ({grad_accum_steps} of them)" if grad_accum_steps > 1 else ""
        raise ValueError(f"BATCH_SIZE={batch_size} cannot be split{micro} over the {ways} data-parallel devices "
                         f"of the mesh ({split}); use a multiple of {ways * grad_accum_steps}, "
                         f"e.g. BATCH_SIZE={max(1, round(batch_size / (ways * grad_accum_steps))) * ways * grad_accum_steps}")


def plan(config: ModelConfig, mesh_shape: str | dict[str, int], num_devices: int | None = None,
         batch_size: int = 8, seq_len: int = 256, peak_flops_per_s: float = 1e12, mfu: float = 0.4,
         rules: sh.Rules = sh.DEFAULT_RULES, grad_accum_steps: int = 1, platform: str = "tpu") -> Plan:
    """Plans ``config`` on a mesh shape (``"fsdp=-1,tensor=4"`` with ``num_devices``, or a dict of sizes)
    for XLA's ``platform`` (``"tpu"``, or ``"cpu"``: see :data:`FSDP_GATHER`). A batch the mesh cannot split
    raises ``ValueError`` (see :func:`check_batch_split`)."""
    if isinstance(mesh_shape, str):
        if num_devices is None:
            raise ValueError("plan: a MESH_SHAPE string needs num_devices (how many devices the job has)")
        sizes = sh.parse_mesh_shape(mesh_shape, num_devices)
    else:
        sizes = {axis: int(mesh_shape.get(axis, 1)) for axis in sh.MESH_AXES}
    check_batch_split(sizes, batch_size, grad_accum_steps, rules)
    param_bytes = 4 * param_elements_per_device(config, sizes, rules)
    rows = math.ceil(batch_size / _batch_shards(sizes, rules, batch_size))
    gathered = fsdp_gather_bytes(config, sizes, rules, platform) if sizes[sh.FSDP] > 1 else 0
    return Plan(
        mesh=sizes, batch_size=batch_size, seq_len=seq_len, total_params=config.num_params(),
        active_params=config.active_params(), matmul_params=config.matmul_params(),
        flops_per_token=config.flops_per_token(seq_len), param_bytes=param_bytes,
        optimizer_bytes=2 * param_bytes,  # AdamW first and second moments, sharded like the parameters
        gradient_bytes=param_bytes, batch_bytes=5 * 4 * rows * seq_len, fsdp_gather_bytes=gathered,
        activation_bytes={p: activation_bytes(config, sizes, batch_size, seq_len, p, rules) for p in REMAT_POLICIES},
        remat=config.remat, peak_flops_per_s=peak_flops_per_s, mfu=mfu,
    )
