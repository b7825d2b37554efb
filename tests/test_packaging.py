"""The built wheel works on its own: the tokenizer, the gin configs and the built data sets are package data.

The wheel is built (offline, with the installed setuptools) from a copy of the files a build needs, unpacked
into a temporary directory, and used from a fresh interpreter whose working directory is another temporary
directory and whose ``PYTHONPATH`` is only the unpacked wheel; the source checkout is not importable there
(checked through ``quark_jax.__file__``), so every file it finds comes from the wheel.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import REPO

# What a build reads: setup.py, its requirement files, the package and the trees shipped as package data.
BUILD_INPUTS = ["setup.py", "requirements.txt", "requirements-test.txt", "quark_jax", "configs", "tokenizers", "data", "evals"]

CHECK = textwrap.dedent("""
    import json, os, pathlib, sys

    unpacked = pathlib.Path(sys.argv[1]).resolve()
    import quark_jax
    package = pathlib.Path(quark_jax.__file__).resolve()
    assert package.is_relative_to(unpacked), f"quark_jax imported from {package}, not from the wheel"

    from quark_jax import gin_utils, resources

    # The default tokenizer.
    from quark_jax.data.tokenizer import get_vocabulary
    vocabulary = get_vocabulary()
    text = "def fib(n):\\n    return n"
    ids = list(vocabulary.encode(text))

    # A run config by its relative name (its includes resolve inside the package too).
    gin_utils.parse(["configs/runs/pretrain_tiny.gin"], ["MODEL_DIR='unused'", "TRAIN_STEPS=3"])
    config = gin_utils.build_train_config()

    found = {name: resources.shipped(name) for name in (
        "tokenizers/quark_stdlib_4k.model", "configs/runs/pretrain_tiny.gin", "data/preferences/train.jsonl",
        "data/instructions", "evals/tasks/stdlib_mc.yaml", "evals/tasks/data/stdlib_mc.jsonl")}
    from quark_jax.evaluation.tasks import find_tasks

    eval_tasks = find_tasks("all")
    print(json.dumps({
        "cwd": os.getcwd(),
        "vocab_size": vocabulary.vocab_size, "num_ids": len(ids), "round_trip": vocabulary.decode(ids) == text,
        "d_model": config.model.d_model, "steps": config.steps, "mixture": config.data.mixture_or_task_name,
        "paths": {name: str(path.resolve()) for name, path in found.items()},
        "inside": {name: path.resolve().is_relative_to(unpacked) for name, path in found.items()},
        "preference_lines": sum(1 for _ in open(found["data/preferences/train.jsonl"])),
        "instruction_files": sorted(p.name for p in found["data/instructions"].iterdir()),
        "eval_tasks_inside": all(pathlib.Path(t.data).resolve().is_relative_to(unpacked) for t in eval_tasks),
        "eval_tasks": len(eval_tasks),
    }))
""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, source / name)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (built,) = out.glob("quark_jax-*.whl")
    return built


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ["quark_jax/_shipped/tokenizers/quark_stdlib_4k.model",
                 "quark_jax/_shipped/configs/runs/pretrain_tiny.gin",
                 "quark_jax/_shipped/configs/models/tiny.gin",
                 "quark_jax/_shipped/data/instructions/train.jsonl",
                 "quark_jax/_shipped/data/instructions/validation.jsonl",
                 "quark_jax/_shipped/data/preferences/train.jsonl",
                 "quark_jax/_shipped/data/preferences/validation.jsonl",
                 "quark_jax/data/resources/stdlib_api_qa.jsonl",
                 "quark_jax/data/resources/toxicity_labelled.jsonl",
                 "quark_jax/resources.py",
                 "quark_jax/serving/static/chat.html",
                 "quark_jax/_shipped/evals/tasks/stdlib_mc.yaml",
                 "quark_jax/_shipped/evals/tasks/data/stdlib_mc.jsonl",
                 "quark_jax/_shipped/evals/baselines/tiny_test.json"]:
        assert name in names, name
    # Every config of the source tree is in the wheel; no development script or test came along.
    configs = {str(p.relative_to(REPO)) for p in pathlib.Path(REPO, "configs").rglob("*.gin")}
    assert {f"quark_jax/_shipped/{c}" for c in configs} <= names and len(configs) > 20
    assert not [n for n in names if n.startswith(("tests/", "quark_jax/_shipped/tokenizers/train_tokenizer"))]
    assert not [n for n in names if n.startswith("quark_jax/_shipped/evals/") and n.endswith(".py")]


def test_the_installed_wheel_finds_its_tokenizer_configs_and_data(wheel, tmp_path):
    unpacked, elsewhere = tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(unpacked)
    script = tmp_path / "check.py"  # run as a file: sys.path[0] is tmp_path, not the checkout
    script.write_text(CHECK)
    result = subprocess.run([sys.executable, str(script), str(unpacked)], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["cwd"] == str(elsewhere)
    assert report["inside"] == {name: True for name in report["paths"]}, report["paths"]
    assert report["vocab_size"] == 4096 and report["num_ids"] > 3 and report["round_trip"]
    # pretrain_tiny.gin includes tiny_base.gin, which includes pretrain.gin and models/tiny.gin (d_model 256): two
    # levels of includes resolve inside the package, and the demo's own binding (128) comes last.
    assert (report["d_model"], report["steps"], report["mixture"]) == (128, 3, "stdlib")
    assert report["preference_lines"] > 100
    assert report["instruction_files"] == ["train.jsonl", "validation.jsonl"]
    assert report["eval_tasks"] >= 7 and report["eval_tasks_inside"]
