"""The run-directory format, in one place: what ``quark train`` writes and everything else reads.

A run directory holds::

    model_config.json        the ModelConfig (every run kind)
    tokenizer.model          the SentencePiece model the run was trained with
    tokenizer.json           or, for a model imported from Hugging Face, its tokenizers-library tokenizer (or
                             its own SentencePiece tokenizer.model, of any id layout)
    run.json                 facts about the run a reader needs: the trained context length; for an imported
                             tokenizer its backend and ids ({"tokenizer": {"backend", "eos_id", "pad_id", "add_bos"}})
    objective.json           what was trained: {"kind": "lm" | "distill" | "reward" | "dpo" | "ppo" | "lora", ...}
    config.gin               the operative gin bindings
    checkpoints/<step>/      orbax: params, opt_state, meta (training.checkpoint.Checkpointer)
    quantization.json + quantized_params/     a quantized model (written by :func:`save_quantized`)
    merged_from.json         a LoRA run merged into its base (written by :func:`save_merged_lora`)
    pruning.json             a pruned run: method, scope, sparsity measured (written by :func:`save_pruned`)
    imported_from.json       a Hugging Face checkpoint imported as a run (written by :func:`import_hf`)

A run directory may be local or on an object store (``gs://bucket/run``): every file here is reached through
:mod:`quark_jax.run_paths` (``etils.epath`` for URLs), and checkpoints through orbax, which takes the same URLs.
Nothing inside a local run directory is followed or opened unless it is a regular file or directory: readers
and writers go through :func:`safe_path` and :func:`check_tree`, which refuse symbolic links and FIFOs, sockets
and devices (:class:`UnsafeRunDirError`, naming the path); object stores have neither. Checkpoints carry per-shard checksums
(:mod:`quark_jax.training.checkpoint`).

:func:`load` reads any of them -- a training run, a quantized directory, a LoRA run (base + adapters) -- as a
:class:`LoadedRun`; ``qj.load`` wraps it with the generate functions. Training objectives read frozen models
(teachers, references, reward models) with :func:`load_sharded`. The math of quantization and adapters lives
in :mod:`quark_jax.inference.quantize` and :mod:`quark_jax.models.lora` as pure tree transforms; this module
only reads and writes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from quark_jax import run_paths
from quark_jax import sharding as sh
from quark_jax.inference import quantize
from quark_jax.models import lora
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import abstract_model, abstract_params
from quark_jax.training.checkpoint import Checkpointer

from quark_jax.run_paths import (  # noqa: F401 -- the names and checks are part of this module's API
    CHECKPOINTS_DIR,
    GIN_CONFIG_FILE,
    HF_TOKENIZER_FILE,
    IMPORTED_FROM_FILE,
    MERGED_FROM_FILE,
    MODEL_CONFIG_FILE,
    OBJECTIVE_FILE,
    PRUNING_FILE,
    QUANTIZATION_FILE,
    QUANTIZED_PARAMS_DIR,
    RUN_INFO_FILE,
    TOKENIZER_FILE,
    UNREADABLE_CHECKPOINTS_DIR,
    RunDirError,
    UnsafeRunDirError,
    check_tree,
    safe_path,
)


# ---- small files ------------------------------------------------------------------------------------------
def _read_json(run_dir: str, name: str) -> dict:
    path = safe_path(run_dir, name)
    if not run_paths.exists(path):
        return {}
    return json.loads(run_paths.read_text(path))


def _write_json(run_dir: str, name: str, value: dict) -> None:
    run_paths.write_text(safe_path(run_dir, name), json.dumps(value, indent=2))


def resolve(run_dir: str | None, what: str = "run") -> str:
    """A run directory (its ``checkpoints/`` is accepted too) that holds a model config and parameters
    (checkpoints or quantized parameters); ``what`` names the role ("teacher", "--model_dir" ...) in errors."""
    if not run_dir:
        raise RunDirError(f"no {what} directory is set")
    run_dir = str(run_dir).rstrip("/")
    if run_dir.rsplit("/", 1)[-1] == CHECKPOINTS_DIR:
        run_dir = run_dir.rsplit("/", 1)[0]
    usage = f"pass the MODEL_DIR of a `quark train` run (the directory with {MODEL_CONFIG_FILE} and {CHECKPOINTS_DIR}/)"
    if not run_paths.exists(run_dir):
        raise RunDirError(f"{what} {run_dir}: no such directory; {usage}")
    if not run_paths.isdir(run_dir):
        raise RunDirError(f"{what} {run_dir} is a file; {usage}")
    check_tree(run_dir)  # before anything in it is read: links and FIFOs are refused, naming the path
    if not run_paths.exists(run_paths.join(run_dir, MODEL_CONFIG_FILE)):
        parent = run_paths.absolute(run_dir).rsplit("/", 1)[0]
        hint = (f"pass the run directory {parent}" if run_paths.exists(run_paths.join(parent, MODEL_CONFIG_FILE))
                else usage)
        raise RunDirError(f"{what} {run_dir} is not a run directory (no {MODEL_CONFIG_FILE} in it); {hint}")
    if not any(run_paths.exists(run_paths.join(run_dir, d)) for d in (CHECKPOINTS_DIR, QUANTIZED_PARAMS_DIR)):
        raise RunDirError(f"{what} {run_dir} has no {CHECKPOINTS_DIR}/ (has the run saved a checkpoint yet?)")
    return run_dir


def read_model_config(run_dir: str) -> ModelConfig:
    return ModelConfig.from_json(run_paths.read_text(safe_path(run_dir, MODEL_CONFIG_FILE)))


def check_model_config(run_dir: str, config: ModelConfig) -> None:
    """Read-only: refuses a directory whose ``model_config.json`` describes a different model than ``config``
    while it holds checkpoints (naming every differing field)."""
    path = safe_path(run_dir, MODEL_CONFIG_FILE)
    if run_paths.exists(path) and run_paths.isdir(safe_path(run_dir, CHECKPOINTS_DIR)):
        previous = _read_json(run_dir, MODEL_CONFIG_FILE)
        changed = {k: (previous.get(k), v) for k, v in dataclasses.asdict(config).items() if previous.get(k) != v}
        if changed:
            raise ValueError(
                f"MODEL_DIR {run_dir} holds checkpoints of a different model "
                f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in changed.items())}); "
                "use a new MODEL_DIR, or INIT_FROM to warm-start from it"
            )


def write_model_config(run_dir: str, config: ModelConfig) -> None:
    """Writes ``model_config.json``; refuses a directory holding checkpoints of a different model."""
    check_model_config(run_dir, config)
    run_paths.write_text(safe_path(run_dir, MODEL_CONFIG_FILE), config.to_json())


def read_objective_info(run_dir: str) -> dict:
    """``objective.json`` (``{}`` when absent: a language-modelling run)."""
    return _read_json(run_dir, OBJECTIVE_FILE)


def write_objective_info(run_dir: str, info: dict) -> None:
    _write_json(run_dir, OBJECTIVE_FILE, info)


def read_run_info(run_dir: str) -> dict:
    """``run.json``: ``trained_context`` (tokens per training sequence) and other facts for readers."""
    return _read_json(run_dir, RUN_INFO_FILE)


def write_run_info(run_dir: str, **fields: Any) -> None:
    _write_json(run_dir, RUN_INFO_FILE, {**read_run_info(run_dir), **fields})


def write_gin_config(run_dir: str, text: str) -> None:
    run_paths.write_text(safe_path(run_dir, GIN_CONFIG_FILE), text)


def copy_tokenizer(model_file: str, run_dir: str) -> None:
    """Puts the tokenizer beside the checkpoints, so that a run directory needs nothing else to be loaded."""
    run_paths.copy_file(model_file, safe_path(run_dir, TOKENIZER_FILE))


def _local_copy(path: str) -> str:
    """A local file with the bytes of ``path`` (itself when local): SentencePiece and tokenizers read local files only, so
    an object-store tokenizer is staged in the cache, named by its content (a changed tokenizer is a new file)."""
    if run_paths.is_local(path):
        return path
    import hashlib

    data = run_paths.read_bytes(path)
    cache = os.path.join(os.path.expanduser("~"), ".cache", "quark_jax", "tokenizers")
    os.makedirs(cache, exist_ok=True)
    local = os.path.join(cache, hashlib.sha256(data).hexdigest()[:32] + os.path.splitext(path)[1])
    if not os.path.exists(local):
        run_paths.write_bytes(local, data)
    return local


def tokenizer(run_dir: str):
    """The run's tokenizer: an imported ``tokenizer.json`` (:class:`quark_jax.data.hf_tokenizer.HFTokenizer`,
    special ids from ``run.json``), else the seqio vocabulary of ``tokenizer.model``; the project default for
    directories without either."""
    from quark_jax.data.tokenizer import get_vocabulary

    info = read_run_info(run_dir).get("tokenizer")
    if info:  # an imported tokenizer: {"backend", "eos_id", "pad_id", "add_bos"}
        from quark_jax.data.hf_tokenizer import TOKENIZERS, load_hf_tokenizer

        backend = info.get("backend", TOKENIZERS)
        path = safe_path(run_dir, HF_TOKENIZER_FILE if backend == TOKENIZERS else TOKENIZER_FILE)
        if not run_paths.exists(path):
            raise RunDirError(f"{run_dir}: run.json names a {backend} tokenizer but {path} is missing")
        return load_hf_tokenizer(_local_copy(path), info["eos_id"], info.get("pad_id", 0), backend, info.get("add_bos", True))
    path = safe_path(run_dir, TOKENIZER_FILE)
    return get_vocabulary(_local_copy(path) if run_paths.exists(path) else None)


def _copy_run_files(src_dir: str, out_dir: str) -> None:
    """The tokenizer and ``run.json`` of ``src_dir``, copied to a derived directory (quantized, merged)."""
    if run_paths.exists(safe_path(src_dir, TOKENIZER_FILE)):
        copy_tokenizer(safe_path(src_dir, TOKENIZER_FILE), out_dir)
    if run_paths.exists(safe_path(src_dir, HF_TOKENIZER_FILE)):
        run_paths.copy_file(safe_path(src_dir, HF_TOKENIZER_FILE), safe_path(out_dir, HF_TOKENIZER_FILE))
    if read_run_info(src_dir):
        write_run_info(out_dir, **read_run_info(src_dir))


# ---- parameters -------------------------------------------------------------------------------------------
def _on(abstract: Any, sharding: Any) -> Any:
    """``ShapeDtypeStruct``s of ``abstract`` placed on one sharding, or a tree of shardings."""
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding)


def restore_model_params(run_dir: str, config: ModelConfig, shardings: Any, heads_sharding: Any,
                         step: int | None = None) -> tuple[int, Any, Any]:
    """``(step, transformer params, heads or None)`` of a training run's newest readable (or given) checkpoint.

    ``shardings`` is one sharding or a tree of them (the logical rules on a mesh). A post-training run keeps
    scalar heads (reward, value) beside the transformer under ``params["heads"]``; they come back apart."""
    checkpointer = Checkpointer(run_dir, async_save=False)
    try:
        return checkpointer.restore_model_params(_on(abstract_params(config)[1], shardings), heads_sharding, step)
    finally:
        checkpointer.close()


def load_sharded(run_dir: str, mesh: jax.sharding.Mesh, what: str, with_heads: bool = False
                 ) -> tuple[ModelConfig, nnx.GraphDef, Any, Any]:
    """``(config, graphdef, params, shardings)`` of another run's newest checkpoint, sharded on ``mesh`` by the
    logical rules: how objectives read frozen models. With ``with_heads`` the run's scalar heads come along
    under ``params["heads"]`` (replicated)."""
    run_dir = resolve(run_dir, what)
    if read_objective_info(run_dir).get("kind") == "lora":
        raise ValueError(f"the {what} {run_dir} holds LoRA adapters only; merge them into a full run first "
                         "(`quark merge_lora`) and point at the merged directory")
    config = read_model_config(run_dir)
    graphdef, state = nnx.split(abstract_model(config))
    shardings = nnx.to_pure_dict(sh.state_shardings(state, mesh))
    _, params, heads = restore_model_params(run_dir, config, shardings, sh.replicated(mesh))
    if with_heads:
        if heads is None:
            raise ValueError(f"the {what} {run_dir} has no heads (is it a reward-model run?)")
        params["heads"] = heads
        shardings = {**shardings, "heads": jax.tree.map(lambda _: sh.replicated(mesh), heads)}
    return config, graphdef, params, shardings


@dataclasses.dataclass
class LoadedRun:
    """A model read from a run directory, on one device: what ``qj.load`` builds its generate functions on."""

    config: ModelConfig
    params: Any
    tokenizer: Any
    step: int
    trained_context: int | None = None  # tokens per training sequence, when the run recorded it
    quantization: dict | None = None  # {"mode", "group_size"} of quantized parameters
    lora: dict | None = None  # {"config", "adapters", "base_dir", "merged"} of a LoRA run
    heads: dict | None = None  # a post-training run's extra heads (reward, classifier), beside the model
    objective: dict | None = None  # the run's objective.json


def load(run_dir: str, step: int | None = None, merge_adapters: bool = True) -> LoadedRun:
    """Reads the newest readable (or the given) checkpoint of any run directory onto the default device.

    A quantized directory gives its quantized parameters; a LoRA run gives its base with the adapters merged
    into the weights, or applied at run time with ``merge_adapters=False``; any post-training run gives the
    plain language model, with its extra heads apart (``heads``; ``objective`` is its objective.json)."""
    run_dir = resolve(run_dir)
    config = read_model_config(run_dir)
    trained_context = read_run_info(run_dir).get("trained_context")
    if run_paths.exists(safe_path(run_dir, QUANTIZATION_FILE)):
        params, info = _read_quantized(run_dir, config)
        return LoadedRun(config, params, tokenizer(run_dir), int(info.get("step", 0)), trained_context,
                         quantization={"mode": info["mode"], "group_size": info["group_size"]})
    if read_objective_info(run_dir).get("kind") == "lora":
        return _load_lora(run_dir, config, step, merge_adapters)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored_step, params, heads = restore_model_params(run_dir, config, device, device, step)
    return LoadedRun(config, params, tokenizer(run_dir), restored_step, trained_context, heads=heads,
                     objective=read_objective_info(run_dir))


# ---- quantized directories --------------------------------------------------------------------------------
def save_quantized(run_dir: str, out_dir: str, mode: str, group_size: int = 32, step: int | None = None) -> str:
    """Quantizes a run's checkpoint (:func:`quark_jax.inference.quantize.quantize_params`) and writes a
    directory :func:`load` reads: ``model_config.json``, the tokenizer, ``quantization.json`` and the quantized
    parameters as an orbax checkpoint in ``quantized_params/``."""
    model = load(run_dir, step=step)
    out_dir = write_quantized(out_dir, model.config, quantize.quantize_params(model.params, mode, group_size), mode,
                              group_size, step=model.step)
    _copy_run_files(resolve(run_dir), out_dir)
    return out_dir


def write_quantized(out_dir: str, config: ModelConfig, qparams: Any, mode: str, group_size: int, step: int = 0) -> str:
    """Writes already-quantized parameters of a model with ``config`` as a quantized directory."""
    import orbax.checkpoint as ocp

    out_dir = run_paths.absolute(out_dir)
    run_paths.makedirs(out_dir)
    write_model_config(out_dir, config)
    _write_json(out_dir, QUANTIZATION_FILE, {"mode": mode, "group_size": group_size, "step": step})
    path = safe_path(out_dir, QUANTIZED_PARAMS_DIR)
    check_tree(out_dir, QUANTIZED_PARAMS_DIR)
    run_paths.rmtree(path)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(run_paths.as_epath(path), qparams)
    return out_dir


def _read_quantized(run_dir: str, config: ModelConfig) -> tuple[Any, dict]:
    import orbax.checkpoint as ocp

    info = _read_json(run_dir, QUANTIZATION_FILE)
    abstract = abstract_params(config)[1]
    target = jax.eval_shape(lambda p: quantize.quantize_params(p, info["mode"], info["group_size"]), abstract)
    target = _on(target, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    with ocp.StandardCheckpointer() as checkpointer:
        check_tree(run_dir, QUANTIZED_PARAMS_DIR)
        params = checkpointer.restore(run_paths.as_epath(safe_path(run_dir, QUANTIZED_PARAMS_DIR)), target)
    return params, info


# ---- LoRA runs --------------------------------------------------------------------------------------------
def lora_base(run_dir: str) -> tuple[lora.LoRAConfig, str]:
    """``(adapter config, base run directory)`` recorded in a LoRA run's ``objective.json``."""
    info = read_objective_info(run_dir)
    if info.get("kind") != "lora":
        raise ValueError(f"{run_dir!r} is not a LoRA run (objective.json kind {info.get('kind')!r})")
    base_dir = info["base_dir"]
    if run_paths.is_local(base_dir) and not os.path.isabs(base_dir):
        base_dir = run_paths.join(run_dir, base_dir)
    return lora.LoRAConfig.from_dict(info), base_dir


def _load_lora(run_dir: str, config: ModelConfig, step: int | None, merge_adapters: bool) -> LoadedRun:
    adapter_config, base_dir = lora_base(run_dir)
    base = load(base_dir)
    if config != base.config:
        raise ValueError(f"LoRA run {run_dir!r} was trained for another model config than its base {base_dir!r}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.eval_shape(lambda p: lora.init_adapters(p, adapter_config, jax.random.key(0)), base.params)
    checkpointer = Checkpointer(run_dir, async_save=False)
    try:
        restored_step, adapters, _ = checkpointer.restore_params(_on(abstract, device), step)
    finally:
        checkpointer.close()
    combine = lora.merge if merge_adapters else lora.apply
    return LoadedRun(base.config, combine(base.params, adapters, adapter_config), base.tokenizer, restored_step,
                     read_run_info(run_dir).get("trained_context", base.trained_context),
                     lora={"config": adapter_config, "adapters": adapters, "base_dir": base_dir,
                           "merged": merge_adapters})


def save_merged_lora(lora_run_dir: str, out_dir: str, step: int | None = None) -> str:
    """Writes the base model with a LoRA run's adapters merged as a plain run directory (``model_config.json``,
    tokenizer, ``checkpoints/``) that ``qj.load``, ``INIT_FROM``, teachers and reference models read."""
    lora_run_dir = resolve(lora_run_dir, "LoRA run")
    lora_base(lora_run_dir)  # not a LoRA run: the error names its kind
    model = load(lora_run_dir, step, merge_adapters=True)
    out_dir = run_paths.absolute(out_dir)
    run_paths.makedirs(out_dir)
    write_model_config(out_dir, model.config)
    _copy_run_files(lora_run_dir, out_dir)
    _write_json(out_dir, MERGED_FROM_FILE, {"lora_run": run_paths.absolute(lora_run_dir), "step": model.step,
                                            **model.lora["config"].to_dict(), "base_dir": model.lora["base_dir"]})
    checkpointer = Checkpointer(out_dir, async_save=False)
    try:
        checkpointer.save(model.step, model.params, {"empty": jnp.zeros(())},
                          {"step": model.step, "data_position": 0, "merged_lora": True}, force=True)
    finally:
        checkpointer.close()
    return out_dir


# ---- pruned runs ------------------------------------------------------------------------------------------
def read_pruning_info(run_dir: str) -> dict:
    """``pruning.json`` of a pruned run (``{}`` for any other run)."""
    return _read_json(run_dir, PRUNING_FILE)


def write_pruning_info(run_dir: str, info: dict) -> None:
    _write_json(run_dir, PRUNING_FILE, info)


def save_pruned(run_dir: str, out_dir: str, sparsity: float, method: str = "magnitude", scope: str = "layer",
                step: int | None = None) -> str:
    """Prunes a run's checkpoint (:func:`quark_jax.inference.prune.prune_params`) and writes it as a plain run
    directory (``model_config.json``, tokenizer, ``run.json``, ``pruning.json``, the pruned parameters as the
    ``checkpoints/<step>`` of the source) that :func:`load`, ``qj.load`` and ``INIT_FROM`` read.

    A local directory is built beside ``out_dir`` and renamed into place, so a crash leaves no half-written
    run; an ``out_dir`` that already holds checkpoints is refused. A post-training run's heads are kept."""
    from quark_jax.inference import prune

    out_dir = run_paths.absolute(out_dir)
    if run_paths.exists(run_paths.join(out_dir, CHECKPOINTS_DIR)):
        raise RunDirError(f"--out {out_dir} already holds {CHECKPOINTS_DIR}/; write the pruned run to a new directory")
    if run_paths.exists(out_dir) and run_paths.listdir(out_dir):
        raise RunDirError(f"--out {out_dir} is not empty; write the pruned run to a new directory")
    source = resolve(run_dir, "--model_dir")
    if run_paths.exists(safe_path(source, QUANTIZATION_FILE)):
        raise ValueError(f"--model_dir {source} is quantized; prune the float run, then quantize the pruned one")
    model = load(source, step=step)
    pruned = prune.prune_params(model.params, sparsity, method, scope)
    measured = prune.sparsity_of(pruned)
    target = out_dir
    if run_paths.is_local(out_dir):
        import tempfile

        parent = os.path.dirname(out_dir)
        os.makedirs(parent, exist_ok=True)
        target = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        run_paths.makedirs(target)
        write_model_config(target, model.config)
        _copy_run_files(source, target)
        kind = read_objective_info(source).get("kind")
        if kind and kind != "lora":  # a LoRA run comes out merged: a plain language model
            write_objective_info(target, read_objective_info(source))
        write_pruning_info(target, {"source": run_paths.absolute(source), "step": model.step, "method": method,
                                    "scope": scope, "sparsity": sparsity, "measured_sparsity": measured["total"],
                                    "recover_steps": 0})
        saved = dict(pruned) if model.heads is None else {**pruned, "heads": model.heads}
        checkpointer = Checkpointer(target, async_save=False)
        try:
            checkpointer.save(model.step, saved, {"empty": jnp.zeros(())},
                              {"step": model.step, "data_position": 0, "pruned": True}, force=True)
        finally:
            checkpointer.close()
        if target != out_dir:
            os.replace(target, out_dir)
    except BaseException:
        if target != out_dir:
            run_paths.rmtree(target)
        raise
    return out_dir


# ---- Hugging Face checkpoints -----------------------------------------------------------------------------
def import_hf(hf_dir: str, out_dir: str, mesh_shape: str = "data=-1", dtype: str = "float32") -> str:
    """Writes a Hugging Face Llama or Mixtral directory (``config.json``, safetensors, ``tokenizer.json``) as a
    run directory that :func:`load`, ``quark generate`` and ``INIT_FROM`` open.

    The weights are read tensor by tensor onto the mesh of ``mesh_shape``, sharded by the logical rules
    (:func:`quark_jax.inference.hf_import.import_params`), and saved as the step-0 checkpoint; the tokenizer
    comes along (``tokenizer.json`` with its eos id in ``run.json``); ``run.json``'s trained context is the
    model's ``max_position_embeddings``. Every file and tensor is checked before anything is written, and an
    ``out_dir`` that already holds checkpoints is refused."""
    from quark_jax.inference import hf, hf_import
    from quark_jax.inference.safetensors_io import CheckpointReader

    if not os.path.isdir(hf_dir):
        raise RunDirError(f"--hf_dir {hf_dir}: no such directory")
    hf_config = hf.read_hf_config(hf_dir)
    config = hf.config_from_hf(hf_config, dtype)
    tokenizer_info = _hf_tokenizer_info(hf_dir, hf_config, config)
    out_dir = run_paths.absolute(out_dir)
    if run_paths.exists(run_paths.join(out_dir, CHECKPOINTS_DIR)):
        raise RunDirError(f"--out_dir {out_dir} already holds {CHECKPOINTS_DIR}/; import into a new directory")
    reader = CheckpointReader.from_dir(hf_dir)  # every header validated here, before anything is written
    try:
        params = hf_import.import_params(reader, config, sh.make_mesh(mesh_shape))
    finally:
        reader.close()
    run_paths.makedirs(out_dir)
    check_tree(out_dir)
    if jax.process_index() == 0:
        write_model_config(out_dir, config)
        write_objective_info(out_dir, {"kind": "lm"})
        write_run_info(out_dir, trained_context=int(hf.hf_setting(hf_config, "max_position_embeddings")),
                       **({"tokenizer": tokenizer_info} if tokenizer_info else {}))
        if tokenizer_info:
            source, target = ((HF_TOKENIZER_FILE, HF_TOKENIZER_FILE) if tokenizer_info["backend"] == "tokenizers"
                              else (TOKENIZER_FILE, TOKENIZER_FILE))
            run_paths.copy_file(os.path.join(hf_dir, source), safe_path(out_dir, target))
        _write_json(out_dir, IMPORTED_FROM_FILE, {"hf_dir": os.path.abspath(hf_dir), "model_type":
                    hf_config.get("model_type", "llama"), "files": sorted(
                        os.path.basename(p) for p in reader.files()), "mesh_shape": mesh_shape})
    checkpointer = Checkpointer(out_dir, async_save=False)
    try:
        checkpointer.save(0, params, {"empty": jnp.zeros(())}, {"step": 0, "data_position": 0, "imported_hf": True},
                          force=True)
    finally:
        checkpointer.close()
    return out_dir


def _hf_tokenizer_info(hf_dir: str, hf_config: dict, config: ModelConfig) -> dict | None:
    """``{"backend", "eos_id", "pad_id", "add_bos"}`` of the directory's ``tokenizer.json`` (preferred) or
    SentencePiece ``tokenizer.model``; None without either. The eos id is config.json's ``eos_token_id`` (the
    first, where it lists several); the tokenizer is loaded here, so a bad file fails before anything is
    written, and it must fit the model's vocabulary."""
    from quark_jax.data.hf_tokenizer import SENTENCEPIECE, TOKENIZERS, load_hf_tokenizer
    from quark_jax.inference import hf

    if os.path.exists(os.path.join(hf_dir, HF_TOKENIZER_FILE)):
        backend, path = TOKENIZERS, os.path.join(hf_dir, HF_TOKENIZER_FILE)
    elif os.path.exists(os.path.join(hf_dir, TOKENIZER_FILE)):
        backend, path = SENTENCEPIECE, os.path.join(hf_dir, TOKENIZER_FILE)
    else:
        return None
    eos = hf.hf_setting(hf_config, "eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    pad = hf_config.get("pad_token_id")
    add_bos = True
    config_path = os.path.join(hf_dir, "tokenizer_config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                add_bos = bool(json.load(f).get("add_bos_token", True))
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{config_path} is not readable JSON ({e})") from None
    info = {"backend": backend, "eos_id": int(eos), "pad_id": int(pad if pad is not None else 0), "add_bos": add_bos}
    vocabulary = load_hf_tokenizer(path, info["eos_id"], info["pad_id"], backend, add_bos)
    if vocabulary.vocab_size > config.vocab_size:
        raise ValueError(f"{path} has {vocabulary.vocab_size} tokens but config.json vocab_size is "
                         f"{config.vocab_size}: the tokenizer does not belong to this model")
    return info
