"""The catalogue registers the project's tasks and mixtures on request; the toolkit modules register nothing."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest
import seqio

from quark_jax.data import catalogue, pipeline
from tests.conftest import REPO, run_quark

DATA_DIR = pathlib.Path(REPO) / "quark_jax" / "data"
# The modules that resolve names through the catalogue; every other module of quark_jax/data is a toolkit.
CATALOGUE_USERS = {"catalogue", "pipeline", "build", "tokenizer_training", "teacher_samples"}

_PROBE = """
import json, seqio
from quark_jax.data import (build, built_tasks, chat, chat_tasks, chunking, corpus, filters, mixtures, pipeline,
                            sources, splits, tasks, tokenizer, tokenizer_training, catalogue)
names = lambda: sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
after_import = names()
try:
    catalogue.register_all()
    error = None
except catalogue.DataDirError as e:
    error = str(e)
print(json.dumps({"after_import": after_import, "after_register_all": names(), "error": error}))
"""


def _probe(data_dirs: str) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, catalogue.DATA_DIRS_ENV: data_dirs}
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_registers_nothing_and_register_all_registers_the_catalogue(tmp_path):
    # A bad $QUARK_DATA_DIRS entry does not break any import: it is reported when the catalogue is asked for.
    probe = _probe(str(tmp_path / "not_built"))
    assert probe["after_import"] == []
    registered = set(probe["after_register_all"])
    assert set(catalogue.BUILTIN_TASKS) | set(catalogue.BUILTIN_MIXTURES) <= registered
    assert {"sft_stdlib", "stdlib", "quark_demo", "quark_demo.api_qa"} <= registered
    assert probe["error"].startswith(f"${catalogue.DATA_DIRS_ENV} names {str(tmp_path / 'not_built')!r}")
    assert "quark data build" in probe["error"] and "\n" not in probe["error"]


def _imports(path: pathlib.Path) -> set[str]:
    """quark_jax.data modules imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "quark_jax.data":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quark_jax.data."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("quark_jax.data.")}
    return found - {path.stem}


def test_imports_point_down():
    graph = {p.stem: _imports(p) for p in DATA_DIR.glob("*.py") if p.stem != "__init__"}
    users = {m for m, deps in graph.items() if "catalogue" in deps}
    assert users <= CATALOGUE_USERS, f"toolkit modules importing the catalogue: {sorted(users - CATALOGUE_USERS)}"

    def visit(module, path):
        for dep in graph.get(module, ()):
            assert dep not in path, f"import cycle: {' -> '.join([*path, dep])}"
            visit(dep, [*path, dep])

    for module in graph:
        visit(module, [module])


def test_register_all_is_idempotent():
    catalogue.register_all()
    before = {n: seqio.TaskRegistry.get(n) for n in catalogue.BUILTIN_TASKS}
    catalogue.register_all()
    assert all(seqio.TaskRegistry.get(n) is task for n, task in before.items())
    seqio.TaskRegistry.remove("sft_stdlib")  # a missing entry is registered again
    catalogue.register_all()
    assert "sft_stdlib" in seqio.TaskRegistry.names()


def test_bad_data_dir_fails_when_data_is_read(tmp_path, monkeypatch):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset.json").write_text("{not json")
    monkeypatch.setenv(catalogue.DATA_DIRS_ENV, str(tmp_path / "broken"))
    with pytest.raises(catalogue.DataDirError, match="broken.*not a built dataset.*quark data build"):
        pipeline.batch_iterator("stdlib", {"targets": 32}, 2)


def test_quark_data_list_names_every_task_and_mixture():
    listed = run_quark("data", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = {line.split()[1]: line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert rows["sft_stdlib"] == rows["stdlib_code"] == rows["quark_demo.api_qa"] == "task"
    assert rows["stdlib"] == rows["quark_demo"] == "mixture"


def test_quark_data_list_reports_a_bad_data_dir_in_one_line(tmp_path):
    bogus = str(tmp_path / "no_such_build")
    result = run_quark("data", "list", env={catalogue.DATA_DIRS_ENV: bogus})
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"quark data list: ${catalogue.DATA_DIRS_ENV} names {bogus!r}, which is not a built dataset")
    assert f"--output {bogus}" in last and f"remove it from ${catalogue.DATA_DIRS_ENV}" in last
