"""LoRA on SFT: held-out loss drops, only adapters are trained and saved, merged == unmerged logits,
bad targets fail naming them, and a LoRA run resumes from its (adapter-only) checkpoint exactly."""

import json
import os
import re
import shutil
import time

import jax
import numpy as np
import pytest
from flax import nnx

import quark_jax as qj
from conftest import REPO, read_metrics, run_quark, tiny_overrides, train_losses
from quark_jax.evaluation.perplexity import perplexity
from quark_jax import runs
from quark_jax.models import lora
from quark_jax.training.checkpoint import Checkpointer

SFT_CONFIG = f"{REPO}/configs/runs/sft.gin"
LORA_CONFIG = f"{REPO}/configs/runs/lora.gin"
STEPS = 40
FIGURES = {}


def lora_overrides(model_dir, base_dir, steps=STEPS, **extra):
    return tiny_overrides(model_dir, steps, INIT_FROM=repr(str(base_dir)), **{
        "quark_jax.OptimizerConfig.warmup_steps": 5, "quark_jax.TrainConfig.eval_batches": 0,
        "quark_jax.TrainConfig.sample_prompts": "()", "quark_jax.TrainConfig.log_every": 1,
        "CHECKPOINT_PERIOD": 10, **extra,
    })


def flat(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    return {".".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def lora_run(trained_run, tmp_path_factory):
    base_dir = trained_run["model_dir"]
    base_before = {k: np.asarray(v) for k, v in flat(qj.load(base_dir).params).items()}
    model_dir = tmp_path_factory.mktemp("lora") / "sft_lora"
    start = time.perf_counter()
    summary = qj.Trainer.from_gin([SFT_CONFIG, LORA_CONFIG], lora_overrides(model_dir, base_dir)).run()
    FIGURES["lora_run_seconds"] = round(time.perf_counter() - start, 1)
    return {"base_dir": base_dir, "model_dir": str(model_dir), "base_before": base_before, "summary": summary}


def test_lora_sft_lowers_held_out_response_loss(lora_run):
    kwargs = dict(sequence_length=128, batch_size=8, max_batches=4, progress_bar=False)
    before = perplexity(qj.load(lora_run["base_dir"]), "sft_stdlib", **kwargs)["loss"]
    after = perplexity(qj.load(lora_run["model_dir"]), "sft_stdlib", **kwargs)["loss"]
    FIGURES.update(held_out_response_loss_before=before, held_out_response_loss_after=after, lora_steps=STEPS)
    print(json.dumps({"held_out_response_loss_before": before, "after": after, "steps": STEPS}))
    assert after < before - 0.5


def test_only_adapters_are_trained_and_saved(lora_run):
    base_dir, model_dir = lora_run["base_dir"], lora_run["model_dir"]
    # The base run's checkpoint is untouched.
    base_after = flat(qj.load(base_dir).params)
    assert base_after.keys() == lora_run["base_before"].keys()
    for name, value in base_after.items():
        np.testing.assert_array_equal(np.asarray(value), lora_run["base_before"][name], err_msg=name)
    with open(os.path.join(model_dir, "objective.json")) as f:
        info = json.load(f)
    assert info["kind"] == "lora" and info["base_dir"] == os.path.abspath(base_dir) and info["rank"] == 8
    # The LoRA checkpoint holds exactly one (A, B) pair per targeted projection, nothing else.
    checkpointer = Checkpointer(model_dir, async_save=False)
    try:
        step, meta = checkpointer.param_metadata()
    finally:
        checkpointer.close()
    saved = flat(meta)
    names = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    projections = [n for n in base_after if n.rsplit(".", 1)[-1] in names]
    assert step == STEPS and len(projections) == 7
    assert sorted(saved) == sorted(f"{n}.{ab}" for n in projections for ab in ("a", "b"))
    # ... and is a small fraction of the base's.
    base_steps = [int(s) for s in os.listdir(os.path.join(base_dir, "checkpoints")) if s.isdigit()]
    base_disk = dir_bytes(os.path.join(base_dir, "checkpoints", str(max(base_steps)), "params"))
    adapter_disk = dir_bytes(os.path.join(model_dir, "checkpoints", str(STEPS), "params"))
    model = qj.load(model_dir)
    adapter_params = lora.adapter_bytes(model.lora["adapters"])
    base_params = lora.adapter_bytes(model.params)
    # Training moved the adapters (B starts at zero) and the merged weights differ only where adapted.
    assert all(float(np.abs(np.asarray(ab["b"])).max()) > 0 for _, ab in lora.adapter_items(model.lora["adapters"]))
    merged = flat(model.params)
    for name, value in merged.items():
        same = np.array_equal(np.asarray(value), np.asarray(base_after[name]))
        assert same == (name not in projections), name
    FIGURES.update(adapter_param_bytes=adapter_params, base_param_bytes=base_params,
                   adapter_ckpt_params_disk_bytes=adapter_disk, base_ckpt_params_disk_bytes=base_disk)
    print(json.dumps({"adapter_param_bytes": adapter_params, "base_param_bytes": base_params,
                      "adapter_ckpt_params_disk_bytes": adapter_disk, "base_ckpt_params_disk_bytes": base_disk}))
    assert adapter_params < 0.15 * base_params and adapter_disk < 0.25 * base_disk


def test_merged_equals_unmerged_logits(lora_run, tmp_path):
    merged = qj.load(lora_run["model_dir"])
    unmerged = qj.load(lora_run["model_dir"], merge_adapters=False)
    base = qj.load(lora_run["base_dir"])
    assert any(isinstance(x, lora.LoRAArray) for x in
               jax.tree.leaves(unmerged.params, is_leaf=lambda x: isinstance(x, lora.LoRAArray)))
    text = "<|user|>What is 12 + 30?<|end|><|assistant|>12 + 30 = 42."
    tokens = np.asarray([merged.tokenizer.encode(text)], np.int32)
    positions = np.arange(tokens.shape[1], dtype=np.int32)[None]
    forward = lambda m: np.asarray(m.model(tokens, positions, np.ones_like(tokens))[0], np.float32)
    a, b, c = forward(merged), forward(unmerged), forward(base)
    assert a.dtype == np.float32 and merged.config.dtype == "float32"
    # Unmerged, the dense layers add x·A·B to x·W (the product A·B is never formed). Compiled too.
    compiled = jax.jit(lambda p: nnx.merge(merged.graphdef, p)(tokens, positions, np.ones_like(tokens))[0])
    jitted_diff = float(np.abs(np.asarray(compiled(merged.params)) - np.asarray(compiled(unmerged.params))).max())
    diff = max(float(np.abs(a - b).max()), jitted_diff)
    # `quark merge_lora` (runs.save_merged_lora) writes a plain run directory that loads to the same logits.
    out = str(tmp_path / "merged")
    result = run_quark("merge_lora", f"--model_dir={lora_run['model_dir']}", f"--out_dir={out}")
    assert result.returncode == 0 and "written to" in result.stdout, result.stderr[-2000:]
    with pytest.raises(ValueError, match="is not a LoRA run"):
        runs.save_merged_lora(lora_run["base_dir"], str(tmp_path / "not_lora"))
    assert not os.path.exists(os.path.join(out, "objective.json"))
    saved_diff = float(np.abs(forward(qj.load(out)) - a).max())
    adapter_effect = float(np.abs(a - c).max())
    FIGURES.update(max_abs_merged_minus_unmerged=diff, max_abs_saved_merged_minus_merged=saved_diff,
                   max_abs_lora_minus_base=adapter_effect)
    print(json.dumps({"max_abs_merged_minus_unmerged": diff, "max_abs_saved_merged_minus_merged": saved_diff,
                      "max_abs_lora_minus_base": adapter_effect}))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert saved_diff == 0.0
    assert adapter_effect > 0.1  # the comparison is between genuinely adapted models


def test_target_that_matches_nothing_is_named(trained_run, tmp_path):
    overrides = lora_overrides(tmp_path / "bad", trained_run["model_dir"], 2,
                               LORA_TARGETS=r"(r'.*attn\.w[qv]', r'blocks\.attn\.w_query')")
    expected = re.escape(r"LoRA target regex(es) 'blocks\.attn\.w_query' match no parameter")
    with pytest.raises(ValueError, match=expected):
        qj.Trainer.from_gin([SFT_CONFIG, LORA_CONFIG], overrides).run()
    with pytest.raises(ValueError, match="LoRA rank=0"):
        lora.LoRAConfig(rank=0)


def test_lora_run_resumes_from_its_adapter_checkpoint(lora_run, tmp_path):
    """The state of a run killed after step 30: its files and checkpoint 30; re-running continues exactly."""
    unbroken = lora_run["model_dir"]
    killed = tmp_path / "killed"
    os.makedirs(killed / "checkpoints")
    for name in ("model_config.json", "objective.json", "tokenizer.model"):
        shutil.copy(os.path.join(unbroken, name), killed / name)
    shutil.copytree(os.path.join(unbroken, "checkpoints", "30"), killed / "checkpoints" / "30")
    qj.Trainer.from_gin([SFT_CONFIG, LORA_CONFIG], lora_overrides(killed, lora_run["base_dir"])).run()
    resumed, reference = train_losses(killed), train_losses(unbroken)
    assert min(resumed) == 31 and max(resumed) == STEPS
    np.testing.assert_allclose([resumed[s] for s in range(31, STEPS + 1)],
                               [reference[s] for s in range(31, STEPS + 1)], rtol=1e-5)
    FIGURES.update(resumed_losses_match_from_step=31)
    print(json.dumps(FIGURES))
    assert read_metrics(killed)
