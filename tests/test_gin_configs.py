"""gin: every shipped config builds; bad input fails at once naming the file, line and binding."""

import glob
import os

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, RUN_CONFIG, run_quark
from quark_jax import gin_utils
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import abstract_model

MODEL_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "models", "*.gin")))
MESH_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "mesh", "*.gin")))
REQUIRED = ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=10"]


@pytest.mark.parametrize("model_gin", MODEL_CONFIGS, ids=os.path.basename)
def test_every_model_config_builds(model_gin):
    gin_utils.parse([os.path.join(REPO, "configs/runs/pretrain.gin"), model_gin], REQUIRED)
    config = gin_utils.build_train_config()
    assert isinstance(config.model, ModelConfig) and config.steps == 10
    abstract = abstract_model(config.model)
    built = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert built == config.model.num_params()
    low, high = SIZE_RANGES.get(os.path.basename(model_gin), (0, float("inf")))
    assert low < built < high


# Configs shaped like published models: their parameter counts.
SIZE_RANGES = {"7b.gin": (6.6e9, 6.8e9), "mixtral_8x7b.gin": (46.6e9, 46.8e9)}  # Llama-2-7B 6.74B; Mixtral 46.7B


def test_the_published_shapes_are_among_the_configs():
    assert set(SIZE_RANGES) <= {os.path.basename(path) for path in MODEL_CONFIGS}


@pytest.mark.parametrize("mesh_gin", MESH_CONFIGS, ids=os.path.basename)
def test_every_mesh_config_parses(mesh_gin):
    gin_utils.parse([RUN_CONFIG, mesh_gin], REQUIRED)
    assert "=" in gin_utils.build_train_config().mesh_shape


def test_cli_overrides_reach_the_config():
    gin_utils.parse([RUN_CONFIG], [*REQUIRED, "BATCH_SIZE=4", "SEED=7", "MESH_SHAPE='data=2,fsdp=-1'",
                                   "TASK_FEATURE_LENGTHS={'targets': 64}", "MIXTURE_OR_TASK_NAME='stdlib_code'"])
    config = gin_utils.build_train_config()
    assert (config.data.batch_size, config.seed, config.mesh_shape) == (4, 7, "data=2,fsdp=-1")
    assert config.data.task_feature_lengths == {"targets": 64}
    assert config.data.mixture_or_task_name == "stdlib_code"
    assert "BATCH_SIZE = 4" in gin_utils.config_text() or "batch_size = 4" in gin_utils.config_text()


def write(tmp_path, text):
    path = tmp_path / "bad.gin"
    path.write_text(f"include '{RUN_CONFIG}'\n" + text)
    return str(path)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("\nquark_jax.TrainConfig.stepz = 3\n", ["bad.gin", "line 3", "stepz"]),
        ("quark_jax.Nope.x = 3\n", ["bad.gin", "line 2", "quark_jax.Nope"]),
        ("BATCH_SIZE = (\n", ["bad.gin", "unclosed"]),
        ("include 'configs/runs/nothere.gin'\n", ["bad.gin", "line 2", "nothere.gin"]),
    ],
    ids=["unknown-parameter", "unknown-configurable", "syntax", "missing-include"],
)
def test_bad_gin_files_name_file_and_line(tmp_path, body, expected):
    with pytest.raises(gin_utils.GinConfigError) as error:
        gin_utils.parse([write(tmp_path, body)], REQUIRED)
    for fragment in expected:
        assert fragment in str(error.value)


def test_bad_bindings_and_missing_files():
    with pytest.raises(gin_utils.GinConfigError, match="--gin.quark_jax.TrainConfig.stepz=1"):
        gin_utils.parse([RUN_CONFIG], ["quark_jax.TrainConfig.stepz=1"])
    with pytest.raises(gin_utils.GinConfigError, match="'nope.gin' not found"):
        gin_utils.parse(["nope.gin"])
    gin_utils.parse([os.path.join(REPO, "configs/runs/pretrain.gin")])
    with pytest.raises(gin_utils.GinConfigError, match="MODEL_DIR is not set"):
        gin_utils.build_train_config()


def test_cli_fails_fast_with_exit_code_2(tmp_path):
    result = run_quark("train", f"--gin_file={write(tmp_path, 'quark_jax.Nope.x = 3')}", "--gin.TRAIN_STEPS=1")
    assert result.returncode == 2
    assert "quark_jax.Nope" in result.stderr and "line 2" in result.stderr
    assert "compiled" not in result.stderr


RUN_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "runs", "*.gin")))
SWITCHES = {"lora.gin": "sft.gin"}  # a switch file goes after the run it modifies
RUN_DIRS = ["INIT_FROM='/tmp/unused_init'", "TEACHER_DIR='/tmp/unused_teacher'"]


def _samples_dir(tmp_path) -> str:
    """A teacher-samples directory of two made-up token sequences (configs/runs/distill_spec.gin needs one)."""
    from quark_jax.data import teacher_samples

    record = {"prompt": "def", "prompt_ids": [300, 301], "completion_ids": [302], "finish_reason": "eos"}
    teacher_samples.write_samples(tmp_path / "samples", {"train": [record], "validation": [record]},
                                  {"mixture": "stdlib"})
    return str(tmp_path / "samples")


@pytest.mark.parametrize("run_gin", RUN_CONFIGS, ids=os.path.basename)
def test_every_run_config_builds(run_gin, tmp_path):
    """Every configs/runs/*.gin (post-training objectives included) builds its TrainConfig from the macros its
    header documents; objectives load nothing until the run starts."""
    name = os.path.basename(run_gin)
    files = [os.path.join(REPO, "configs", "runs", SWITCHES[name]), run_gin] if name in SWITCHES else [run_gin]
    samples = [f"SAMPLES_DIR={_samples_dir(tmp_path)!r}"] if name == "distill_spec.gin" else []
    # The run directories go in as defaults: each run file uses at most one of them, and a bound macro that no
    # file uses is an error (gin_utils.check_macro_bindings).
    gin_utils.parse(files, REQUIRED + samples, defaults=RUN_DIRS)
    config = gin_utils.build_train_config()
    assert config.steps == 10 and config.model_dir == "/tmp/unused"
    kind = getattr(config.objective, "kind", "lm")
    expected = {"distill.gin": "distill", "distill_spec.gin": "distill", "lora.gin": "lora",
                "reward.gin": "reward_model", "dpo.gin": "dpo", "ppo.gin": "ppo", "embed.gin": "contrastive_embedding",
                "intent.gin": "sequence_classifier"}
    assert kind == expected.get(name, "lm")
    if samples:  # the data is the samples directory's task
        assert config.data.mixture_or_task_name.startswith("teacher_samples_")
