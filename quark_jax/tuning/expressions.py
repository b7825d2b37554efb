"""Arithmetic over a search space's values, for derived bindings (``num_heads: {derive: "d_model // 64"}``).

The expression is parsed with :mod:`ast` and walked here: only numbers, names of the space's entries,
``+ - * / // %``, unary minus, comparisons, ``a if cond else b`` and the functions ``round``, ``int``, ``float``,
``min``, ``max`` are accepted; anything else (attributes other than a dotted entry name, subscripts, lambdas,
strings, other calls) is refused when the space is loaded. Nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

FUNCTIONS: dict[str, Callable[..., Any]] = {"round": round, "int": int, "float": float, "min": min, "max": max}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}
MAX_CHARS = 500


class ExpressionError(ValueError):
    """An expression uses something outside the allowed arithmetic, or a name that is not defined."""


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a chain of attributes over a name; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def parse(text: str) -> ast.Expression:
    """The checked syntax tree of ``text`` (:class:`ExpressionError` naming what is not allowed)."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("an expression must be a non-empty string, e.g. \"d_model // 64\"")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"an expression of {len(text)} characters is longer than {MAX_CHARS}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"{text!r} is not an expression ({e.msg})") from None
    _check(tree.body, text)
    return tree


def _check(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExpressionError(f"{text!r}: only numbers are allowed as constants, not {node.value!r}")
    elif isinstance(node, (ast.Name, ast.Attribute)):
        if _dotted(node) is None:
            raise ExpressionError(f"{text!r}: {ast.unparse(node)} is not a name of the space")
    elif isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        _check(node.left, text), _check(node.right, text)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check(node.operand, text)
    elif isinstance(node, ast.Compare) and all(type(op) in COMPARE for op in node.ops):
        for part in (node.left, *node.comparators):
            _check(part, text)
    elif isinstance(node, ast.IfExp):
        for part in (node.test, node.body, node.orelse):
            _check(part, text)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
            and not node.keywords:
        for arg in node.args:
            _check(arg, text)
    else:
        allowed = ", ".join(FUNCTIONS)
        raise ExpressionError(f"{text!r}: {ast.unparse(node)} is not allowed (numbers, names, + - * / // %, "
                              f"comparisons, 'a if cond else b' and {allowed} only)")


def names(tree: ast.Expression) -> set[str]:
    """The (dotted) names an expression reads."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and not (isinstance(node, ast.Name) and node.id in FUNCTIONS):
            name = _dotted(node)
            if name is not None:
                found.add(name)
    # a.b.c also yields a.b and a from the inner nodes: keep the longest chains only
    return {n for n in found if not any(other.startswith(n + ".") for other in found)}


def evaluate(tree: ast.Expression, values: Mapping[str, Any]) -> Any:
    """The value of a checked expression with ``values`` for its names."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = _dotted(node)
            if name not in values:
                raise ExpressionError(f"{name} has no value here (known: {', '.join(sorted(values))})")
            return values[name]
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Compare):
            left = walk(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = walk(right_node)
                if not COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return walk(node.body) if walk(node.test) else walk(node.orelse)
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](*(walk(a) for a in node.args))
        raise ExpressionError(f"{ast.unparse(node)} is not allowed")  # parse() refused it already

    try:
        result = walk(tree.body)
    except (ZeroDivisionError, OverflowError, TypeError) as e:
        raise ExpressionError(f"{ast.unparse(tree)}: {e}") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ExpressionError(f"{ast.unparse(tree)} is {result}")
    return result
