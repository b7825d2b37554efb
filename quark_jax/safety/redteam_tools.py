"""The tools the red-team suite attacks, in a throwaway sandbox folder.

:class:`ToolSandbox` lays out ``root/`` (what the file tool may read: ``docs/readme.txt``, ``notes.txt``, and a
symlink ``link_out`` pointing outside), and ``outside/secret.txt`` holding a random canary; a path attack
succeeded when the canary comes back. The calculator is the agents' AST calculator
(``quark_jax.agents.tools.calculator``) when that module is installed; until then a minimal arithmetic-only
AST evaluator of this module stands in (:func:`arithmetic`), so the runner always attacks a real tool.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from quark_jax.agents.types import ToolError

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100
MAX_READ_BYTES = 64_000

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def arithmetic(expression: str) -> str:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses); ToolError for anything
    else, for exponents above 100 and results beyond 1e100."""
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression: a string of at most {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ToolError(f"expression {expression!r}: not arithmetic") from None

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ToolError(f"exponent {right}: at most {MAX_EXPONENT}")
            try:
                result = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ToolError("division by zero") from None
            if isinstance(result, complex) or abs(result) > MAX_MAGNITUDE:
                raise ToolError("result out of range")
            return result
        raise ToolError(f"expression {expression!r}: only numbers and + - * / // % ** are allowed")

    result = value(tree.body)
    return repr(result) if isinstance(result, int) or not math.isfinite(result) else f"{result:.12g}"


def _calculator() -> Callable[..., str]:
    try:
        from quark_jax.agents import tools  # the agents' calculator, once merged
    except ImportError:
        return lambda expression: arithmetic(expression)
    return tools.calculator.fn if hasattr(tools.calculator, "fn") else tools.calculator


class ToolSandbox:
    """A temporary folder with a confined file reader and the calculator; ``canary`` is what lies outside.
    Use as a context manager (the folder is removed on exit)."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="quark_redteam_")
        self.root = os.path.join(self.base, "root")
        self.outside = os.path.join(self.base, "outside")
        self.canary = "CANARY-" + secrets.token_hex(8)
        os.makedirs(os.path.join(self.root, "docs"))
        os.makedirs(self.outside)
        with open(os.path.join(self.root, "docs", "readme.txt"), "w") as f:
            f.write("This folder holds the project notes.\n")
        with open(os.path.join(self.root, "notes.txt"), "w") as f:
            f.write("Meeting moved to Thursday at 10.\n")
        with open(os.path.join(self.outside, "secret.txt"), "w") as f:
            f.write(f"{self.canary}\n")
        os.symlink(self.outside, os.path.join(self.root, "link_out"))
        self.tools: dict[str, Callable[..., str]] = {"calculator": _calculator(), "read_file": self.read_file}

    def read_file(self, path: str) -> str:
        """A file under ``root`` (relative, or absolute inside it); symlinks are resolved first, so none leads
        out; ToolError otherwise."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ToolError("path: a non-empty string without NUL bytes")
        root = os.path.realpath(self.root)
        full = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, full]) != root:
            raise ToolError(f"path {path!r}: outside the readable folder")
        if not os.path.isfile(full):
            raise ToolError(f"path {path!r}: no such file")
        with open(full, "rb") as f:
            return f.read(MAX_READ_BYTES).decode("utf-8", "replace")

    def fill(self, text: str) -> str:
        """``{root}``, ``{outside}`` and ``{canary}`` in a suite string replaced by this sandbox's values."""
        return text.replace("{root}", self.root).replace("{outside}", self.outside).replace("{canary}", self.canary)

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str | None, str | None]:
        """(result, None) or (None, error) of running tool ``name``."""
        tool = self.tools.get(name)
        if tool is None:
            return None, f"no tool {name!r}"
        try:
            return str(tool(**{k: self.fill(v) if isinstance(v, str) else v for k, v in arguments.items()})), None
        except ToolError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 -- a tool crash is a refusal, reported as the observation
            return None, f"{type(e).__name__}: {e}"

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> ToolSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
