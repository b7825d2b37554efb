"""The package's import graph, read from the source (every ``import`` statement, also those inside functions):
no cycles, and the layers only point down (models never import training or inference, ...)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[2] / "quark_jax"


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the quark_jax modules it imports (``from pkg import name`` resolves to the submodule
    ``pkg.name`` when there is one)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return components


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "quark_jax.models.config" in graph["quark_jax.models.transformer"]
    assert "quark_jax.runs" in graph["quark_jax.api"]  # `from quark_jax import runs` is the submodule


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Lower layers never import higher ones (DESIGN.md: arrows point from user to used).
FORBIDDEN = {
    "quark_jax.models": ("quark_jax.training", "quark_jax.inference", "quark_jax.data", "quark_jax.runs",
                         "quark_jax.api", "quark_jax.cli", "quark_jax.evaluation", "quark_jax.serving"),
    "quark_jax.data": ("quark_jax.models", "quark_jax.training", "quark_jax.inference", "quark_jax.runs",
                       "quark_jax.api", "quark_jax.cli", "quark_jax.evaluation", "quark_jax.serving",
                       "quark_jax.retrieval", "quark_jax.knowledge"),
    "quark_jax.inference": ("quark_jax.training", "quark_jax.runs", "quark_jax.api", "quark_jax.cli",
                            "quark_jax.evaluation", "quark_jax.serving", "quark_jax.agents", "quark_jax.safety"),
    "quark_jax.training.config": ("quark_jax.training.trainer", "quark_jax.training.objectives"),
    "quark_jax.evaluation": ("quark_jax.training.trainer", "quark_jax.training.steps", "quark_jax.cli",
                             "quark_jax.registry"),
    # A run's lineage is part of the run-directory format: light, below training, evaluation and the registry.
    "quark_jax.lineage": ("quark_jax.training", "quark_jax.evaluation", "quark_jax.registry", "quark_jax.runs",
                          "quark_jax.api", "quark_jax.cli", "quark_jax.models", "quark_jax.inference"),
    # The registry drives training and evaluation; only the command line sits above it, and training never
    # reaches up into it.
    "quark_jax.registry": ("quark_jax.cli",),
    "quark_jax.training": ("quark_jax.registry",),
    # Serving uses a loaded model; nothing below it knows it exists, and it never reaches into training.
    "quark_jax.serving": ("quark_jax.training", "quark_jax.cli", "quark_jax.evaluation"),
    # The knowledge graph reads data and answers retrievers; it never reaches up into serving or the command line.
    "quark_jax.knowledge": ("quark_jax.serving", "quark_jax.cli", "quark_jax.api", "quark_jax.evaluation",
                            "quark_jax.training"),
    # Retrieval uses loaded models and the data layer; serving, evaluation and the command line sit above it.
    "quark_jax.retrieval": ("quark_jax.serving", "quark_jax.cli", "quark_jax.evaluation", "quark_jax.training"),
    # Agents use models, retrieval, safety and (in-process) the serving engine; the command line sits above them.
    "quark_jax.agents": ("quark_jax.cli", "quark_jax.training.trainer"),
    "quark_jax.runs": ("quark_jax.training.trainer", "quark_jax.training.objectives", "quark_jax.api",
                       "quark_jax.cli"),
}


# Guardrails sit below the agents and the server that call them; only the red-team runner drives agents.
SAFETY_FORBIDDEN = ("quark_jax.agents", "quark_jax.serving", "quark_jax.cli", "quark_jax.evaluation")


def test_safety_rails_sit_below_agents_and_serving():
    bad = [f"{module} imports {target}" for module, targets in import_graph().items()
           if module.startswith("quark_jax.safety") and not module.startswith("quark_jax.safety.redteam")
           for target in targets if any(target == f or target.startswith(f + ".") for f in SAFETY_FORBIDDEN)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_point_down(layer):
    bad = [f"{module} imports {target}" for module, targets in import_graph().items()
           if module == layer or module.startswith(layer + ".")
           for target in targets if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer])]
    assert not bad, "\n".join(bad)


def test_test_file_names_are_unique():
    """pytest imports test files by their base name (rootdir-relative, no packages): two `test_x.py` in two
    folders make the second fail to collect, so every test file name is unique across tests/."""
    names: dict[str, list[str]] = {}
    for path in (PACKAGE_DIR.parent / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(PACKAGE_DIR.parent)))
    assert not {n: p for n, p in names.items() if len(p) > 1}
