"""Every pod configuration quark_jax ships is checked against XLA's TPU compiler (libtpu, on this CPU
machine): it compiles for a TPU slice, the planner is within 20% of that compile's memory_analysis, and it
fits its chip's HBM; `quark plan --topology` and `quark train --compile_only` print the same and fail when it
does not fit.

Budget: compiling a pod configuration takes minutes here, even shortened (as shipped: 1B on v5e:4x4 318 s,
7B on v5e:16x16 237 s, Mixtral on v5p:4x4x8 403 s; at 2 layers on a 4- or 8-chip slice still 200-340 s on
the shared 2-core machine). So the suite runs:
  * that every shipped JobSet is one of `POD_CONFIGS` (so what is shipped is what is checked);
  * that each configuration, at full size on its slice, splits its batch and fits HBM by the planner with a
    20% margin;
  * that the planner is within 20% of the TPU compiles recorded in `TPU_COMPILES` (measured with
    `python tests/plan/pod_compile_run.py NAME[:SLICE:LAYERS]`; the README's table);
  * a real TPU compile through `quark plan --topology` that does not fit (exit 1, one line), and the one-line
    mistakes;
and (unless `QUARK_POD_COMPILES=0`; minutes here) compiles every configuration again through the helper
and `quark train --compile_only`: each with its mesh axes, sequence length and rows per device, 2 layers deep
(the stack is scanned: depth does not change what is compiled, and the planner counts it) on a small slice of
its chip kind (v5e:2x2, v5p:2x2x2), holding the planner within 20% of the fresh compiles of 7B and Mixtral
(1B at 2 layers is a known planner gap, see its test).
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from pod_configs import POD_CONFIGS, RUN
from quark_jax import gin_utils
from quark_jax.plan import plan
from quark_jax.topology import HBM_BYTES, parse_name

HELPER = os.path.join(os.path.dirname(__file__), "pod_compile_run.py")
POD_COMPILES = os.environ.get("QUARK_POD_COMPILES", "1") != "0"  # on in CI; QUARK_POD_COMPILES=0 skips them locally
needs_pod_compiles = pytest.mark.skipif(not POD_COMPILES, reason="QUARK_POD_COMPILES=0: TPU compiles skipped")
GIB = 2**30
# XLA's peak bytes per device (arguments + unaliased outputs + temporaries), measured on 2026-12-01 with
# libtpu 0.0.42.1 by tests/plan/pod_compile_run.py: (NAME, SLICE, LAYERS) -> bytes. Rows per device as shipped.
TPU_COMPILES = {
    ("1b", "v5e:4x4", 20): int(11.5067 * GIB),
    ("7b", "v5e:16x16", 32): int(3.3909 * GIB),
    ("mixtral_8x7b", "v5p:4x4x8", 32): int(18.5284 * GIB),
    ("7b", "v5e:2x2", 2): 4882894848,
    ("mixtral_8x7b", "v5p:2x2x2", 2): 17322903776,
}
# NAME:SLICE:LAYERS compiled by the helper (the 1B configuration compiles through `quark train` below).
COMPILED_HERE = ["7b:v5e:2x2:2", "mixtral_8x7b:v5p:2x2x2:2"]
GKE_ACCELERATORS = {"tpu-v5-lite-podslice": "v5e", "tpu-v5p-slice": "v5p", "tpu-v4-podslice": "v4",
                    "tpu-v6e-slice": "v6e"}


def _jobset_command(path):
    """(topology, gin files, bindings other than MODEL_DIR / TRAIN_STEPS) of a shipped JobSet."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    pod = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    selector = pod["nodeSelector"]
    topology = f"{GKE_ACCELERATORS[selector['cloud.google.com/gke-tpu-accelerator']]}:" \
               f"{selector['cloud.google.com/gke-tpu-topology']}"
    words = shlex.split(pod["containers"][0]["command"][-1])
    files = [w.split("=", 1)[1] for w in words if w.startswith("--gin_file=")]
    bindings = [w[len("--gin."):] for w in words if w.startswith("--gin.")]
    return topology, files, [b for b in bindings if b.split("=")[0] not in ("MODEL_DIR", "TRAIN_STEPS")]


def test_every_shipped_jobset_is_a_tested_pod_config():
    jobsets = sorted(f for f in os.listdir(os.path.join(REPO, "launch", "gke")) if f.endswith(".yaml"))
    assert jobsets
    for name in jobsets:
        shipped = _jobset_command(os.path.join(REPO, "launch", "gke", name))
        assert shipped in [tuple(c) for c in POD_CONFIGS.values()], (name, shipped)


def _full_config(name):
    _, files, bindings = POD_CONFIGS[name]
    gin_utils.parse([os.path.join(REPO, f) for f in files], [*bindings, "MODEL_DIR='/tmp/x'", "TRAIN_STEPS=1"])
    return gin_utils.build_train_config()


@pytest.mark.parametrize("name", sorted(POD_CONFIGS))
def test_pod_config_fits_its_slice_with_the_planners_margin(name):
    topology = POD_CONFIGS[name][0]
    config = _full_config(name)
    chip, devices = _devices(topology)
    estimate = plan(config.model, config.mesh_shape, devices, config.data.batch_size,
                    config.data.task_feature_lengths["targets"])  # refuses a batch the slice cannot split
    assert estimate.total_bytes * 1.2 <= HBM_BYTES[chip], (name, estimate.total_bytes / 2**30)


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}


def _devices(topology):
    chip, dims = parse_name(topology)
    count = 1
    for d in dims:
        count *= d
    return chip, count


@pytest.mark.parametrize("key", sorted(TPU_COMPILES))
def test_planner_within_20_percent_of_recorded_tpu_compiles(key):
    name, topology, layers = key
    config = _full_config(name)
    target = _devices(POD_CONFIGS[name][0])[1]
    devices = _devices(topology)[1]
    model = dataclasses.replace(config.model, num_layers=layers)
    estimate = plan(model, config.mesh_shape, devices, config.data.batch_size * devices // target,
                    config.data.task_feature_lengths["targets"])
    ratio = estimate.total_bytes / TPU_COMPILES[key]
    assert 0.8 <= ratio <= 1.2, (key, ratio)


@pytest.fixture(scope="module")
def compiled():
    result = subprocess.run([sys.executable, HELPER, *COMPILED_HERE], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT "))
    return {row["name"]: row for row in json.loads(line[len("REPORT "):])}


@needs_pod_compiles
def test_pod_configs_compile_for_tpu_and_the_planner_is_within_20_percent(compiled):
    assert sorted(compiled) == sorted(c.split(":")[0] for c in COMPILED_HERE)
    for name, row in compiled.items():
        assert "error" not in row, row
        assert row["fits"] and row["layers"] == 2, row
        ratio = row["plan_bytes"] / row["xla_bytes"]
        print(f"{name} on {row['topology']}: planner {row['plan_bytes'] / 2**30:.3f} GiB, XLA "
              f"{row['xla_bytes'] / 2**30:.3f} GiB ({ratio:.2f})")
        assert 0.8 <= ratio <= 1.2, (name, ratio, row)
        assert row["flops"] > 0


def _quark(*args):
    return subprocess.run([sys.executable, "-m", "quark_jax.cli", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)


@needs_pod_compiles
def test_train_compile_only_prints_xla_beside_the_planner():
    # The 1B launch command, compiled instead of run: nothing is written to MODEL_DIR.
    # On v5e:2x2 instead of v5e:4x4: a quarter of the batch keeps the rows per device as shipped.
    _, files, bindings = POD_CONFIGS["1b"]
    assert "BATCH_SIZE=64" in bindings
    result = _quark("train", "--compile_only", "--topology=v5e:2x2", *[f"--gin_file={f}" for f in files],
                    *[f"--gin.{b}" for b in bindings], "--gin.MODEL_DIR='gs://bucket/runs/1b'",
                    "--gin.TRAIN_STEPS=10000", "--gin.quark_jax.ModelConfig.num_layers=2", "--gin.BATCH_SIZE=16")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "compiled for v5e:2x2 (4 devices)" in out and "fits: peak is" in out, out
    peak = next(l for l in out.splitlines() if l.strip().startswith("peak "))
    xla = float(peak.split()[1])
    planned = float(peak.split("planner: ")[1].split()[0])
    # Not held to 20% at 2 layers: the planner's one layer of save_dots attention scores (f32 + bf16) weighs
    # as much as the whole 2-layer stack, and XLA holds less of it (measured: 6.48 planned, 4.45 compiled).
    # At its full 20 layers on v5e:4x4 the planner is within 4% (TPU_COMPILES).
    assert 0 < xla < 16 and 0 < planned, peak
    assert "FLOPs per device per step" in out
    assert "Failed to find host bounds" not in result.stderr, result.stderr  # libtpu's start-up noise


def test_plan_topology_that_does_not_fit_exits_1_in_one_line():
    # 2M tokens per chip: the float32 logits alone need 32 GiB of a v5e's 16.
    result = _quark("plan", f"--gin_file={RUN}", "--gin_file=configs/models/tiny.gin", "--topology=v5e:2x2",
                    "--mesh_shape=data=-1", "--batch_size=4096", "--seq_len=2048")
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("quark plan: does not fit on v5e:2x2") and "HBM" in last, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["plan", "--gin_file=configs/models/7b.gin", "--topology=v5x:4x4"], "expected CHIP:SHAPE"),
    (["plan", "--gin_file=configs/models/7b.gin", "--topology=v5e:3x3"], "libtpu cannot describe this slice"),
    (["plan", "--gin_file=configs/models/7b.gin", "--topology=v5e:2x2", "--mesh_shape=fsdp=8"],
     "asks for 8 devices but 4 are available"),
    (["plan", "--gin_file=configs/models/7b.gin", "--topology=v5e:2x2", "--batch_size=6"],
     "BATCH_SIZE=6 cannot be split over the 4 data-parallel devices"),
    (["train", "--gin_file=configs/runs/pretrain_tiny.gin", "--compile_only"], "--compile_only needs --topology"),
    (["train", "--gin_file=configs/runs/pretrain_tiny.gin", "--topology=v5e:2x2"], "add --compile_only"),
])
def test_topology_mistakes_are_one_line_exit_2(args, message, capsys):
    from quark_jax import cli

    assert cli.main(args) == cli.EXIT_CONFIG_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_missing_libtpu_names_the_pin(monkeypatch):
    import importlib.util

    from quark_jax import topology

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else find_spec(name, *a))
    with pytest.raises(topology.TopologyError, match=r"pip install libtpu==0\.0\.42\.1"):
        topology.topology("v5e:4x4")
