"""`quark plan`: exact parameter counts, per-device memory within 20% of XLA's memory_analysis on several
configs and meshes, and the CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import REPO
from quark_jax import cli, gin_utils
from quark_jax.models.transformer import abstract_model
from quark_jax.plan import plan

HELPER = os.path.join(os.path.dirname(__file__), "memory_run.py")
MODELS = ["tiny.gin", "moe_tiny.gin", "moe_small.gin", "7b.gin", "mixtral_8x7b.gin"]


def model_config(name):
    gin_utils.parse([os.path.join(REPO, "configs/runs/pretrain.gin"), os.path.join(REPO, "configs/models", name)],
                    ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=1"])
    return gin_utils.build_train_config().model


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_is_exact(name):
    config = model_config(name)
    abstract = abstract_model(config)
    built = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    result = plan(config, "data=1", 1)
    assert result.total_params == built
    assert result.param_bytes == 4 * built  # one device holds everything
    assert result.active_params <= result.total_params
    # Sharding divides the per-device parameters (up to the replicated norms and routers).
    sharded = plan(config, "fsdp=4,tensor=2", 8)
    assert 4 * built / 8 <= sharded.param_bytes < 4 * built / 8 * 1.05


@pytest.fixture(scope="module")
def memory_report():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, HELPER], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def test_state_bytes_match_xla_exactly(memory_report):
    for row in memory_report:  # parameters + AdamW moments + the batch are the step's arguments
        assert abs(row["plan_state_bytes"] - row["xla_argument_bytes"]) <= 64, row


def test_memory_estimate_within_20_percent_of_xla(memory_report):
    ratios = {}
    for row in memory_report:
        actual = row["xla_argument_bytes"] + row["xla_temp_bytes"]
        ratios[row["name"]] = row["plan_total_bytes"] / actual
    print("planner / XLA peak bytes:", json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    assert all(0.8 <= r <= 1.2 for r in ratios.values()), ratios


def test_cli_plan_prints_the_mixtral_plan(capsys):
    code = cli.main(["plan", "--gin_file=configs/runs/pretrain.gin", "--gin_file=configs/models/mixtral_8x7b.gin",
                     "--mesh_shape=fsdp=-1,expert=8", "--num_devices=256", "--batch_size=256", "--seq_len=4096",
                     "--peak_flops_per_s=1e15", "--mfu=0.5", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mesh"] == {"data": 1, "fsdp": 32, "tensor": 1, "expert": 8}
    assert round(result["total_params"] / 1e9, 1) == 46.7 and round(result["active_params"] / 1e9, 1) == 12.9
    expected_time = result["flops_per_token"] * 256 * 4096 / (1e15 * 0.5 * 256)
    assert result["step_time_s"] == pytest.approx(expected_time)
    assert set(result["activation_bytes"]) == {"none", "save_dots", "full"}
    assert result["activation_bytes"]["full"] < result["activation_bytes"]["save_dots"] < result["activation_bytes"]["none"]


def test_cli_plan_needs_num_devices_for_a_wildcard_mesh(capsys):
    code = cli.main(["plan", "--gin_file=configs/runs/pretrain.gin", "--gin_file=configs/models/tiny.gin",
                     "--mesh_shape=fsdp=-1"])
    assert code == cli.EXIT_CONFIG_ERROR
    assert "--num_devices" in capsys.readouterr().err


def test_plan_refuses_a_batch_the_mesh_cannot_split(capsys):
    with pytest.raises(ValueError, match=r"BATCH_SIZE=8 cannot be split over the 256 data-parallel devices.*"
                                         r"BATCH_SIZE=256"):
        plan(model_config("7b.gin"), "fsdp=-1", 256, batch_size=8, seq_len=2048)
    with pytest.raises(ValueError, match=r"per micro-batch \(4 of them\).*multiple of 16"):
        plan(model_config("tiny.gin"), "data=2,fsdp=2", 4, batch_size=8, grad_accum_steps=4)
    assert plan(model_config("tiny.gin"), "data=2,fsdp=2", 4, batch_size=16, grad_accum_steps=4).batch_size == 16
    code = cli.main(["plan", "--gin_file=configs/models/7b.gin", "--mesh_shape=fsdp=-1", "--num_devices=256"])
    assert code == cli.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "BATCH_SIZE=8 cannot be split" in err, err


def test_plan_takes_a_model_file_alone_with_run_defaults(capsys):
    # configs/models/7b.gin binds no run: the plan uses configs/runs/pretrain.gin's defaults (sequence 256).
    code = cli.main(["plan", "--gin_file=configs/models/7b.gin", "--mesh_shape=fsdp=-1", "--num_devices=256",
                     "--batch_size=256", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["seq_len"] == 256 and result["batch_size"] == 256
    assert round(result["total_params"] / 1e9, 2) == 6.74


def test_fsdp_gathers_on_tpu_are_a_few_layers_not_the_model():
    # A layer-scanned model on TPU gathers one layer at a time (XLA's TPU memory_analysis: 3.39 GiB peak for
    # 7B on fsdp=256, batch 256 x 2048); charging the whole model (12.55 GiB) was the CPU's behaviour.
    config = model_config("7b.gin")
    tpu = plan(config, "fsdp=-1", 256, batch_size=256, seq_len=2048)
    cpu = plan(config, "fsdp=-1", 256, batch_size=256, seq_len=2048, platform="cpu")
    layer = 4 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096)  # one layer's float32 weights and norms
    head = 4 * 4096 * 32000  # the output projection
    assert tpu.fsdp_gather_bytes == 2 * layer + head
    assert cpu.fsdp_gather_bytes > 6 * tpu.fsdp_gather_bytes
    assert plan(config, "tensor=8", 8, batch_size=8).fsdp_gather_bytes == 0  # no fsdp axis, nothing gathered
