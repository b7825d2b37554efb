"""Arithmetic for agents, evaluated from the syntax tree: never ``eval``, ``exec`` or ``numexpr``.

An expression is parsed with ``ast.parse(mode="eval")`` and walked; only these nodes are evaluated:

* numbers (``int`` and ``float`` literals; not ``True``/``False``, strings, complex numbers, ...);
* ``+ - * / // % **`` between two numbers, unary ``+`` and ``-``, parentheses;
* the names ``pi`` and ``e``, and calls by plain name of ``abs``, ``round``, ``min``, ``max``, ``sqrt``
  (positional arguments only).

Anything else (attribute access, subscripts, lambdas, comprehensions, other names or calls, ``<<``, comparisons)
is refused with :class:`~quark_jax.agents.types.ToolError` naming what was found. Sizes are bounded before any
work is done: the text (:data:`MAX_CHARS`), the tree's depth (:data:`MAX_DEPTH`) and node count
(:data:`MAX_NODES`), the exponent of a power (:data:`MAX_EXPONENT`), and every integer result's size
(:data:`MAX_BITS`, checked from the operands' bit lengths *before* a product or power is computed, so
``9**9**9`` is refused at once instead of running for hours). Non-finite float results (overflow, ``inf``,
``nan``) and complex results are refused too.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from quark_jax.agents.types import ToolError

MAX_CHARS = 256
MAX_DEPTH = 32
MAX_NODES = 128
MAX_EXPONENT = 4096
MAX_BITS = 4096  # about 1233 decimal digits
MAX_ROUND_DIGITS = 64

Number = int | float

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _sqrt(x: Number) -> float:
    if x < 0:
        raise ToolError(f"sqrt({x!r}): the square root of a negative number is not a real number")
    return math.sqrt(x)


def _round(x: Number, digits: Number | None = None) -> Number:
    if digits is None:
        return round(x)
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round(x, {digits!r}): digits must be a whole number within ±{MAX_ROUND_DIGITS}")
    return round(x, digits)


FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {  # name -> (function, min args, max args)
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 16),
    "max": (max, 1, 16),
    "sqrt": (_sqrt, 1, 1),
}

_BINARY = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul),
           ast.Div: ("/", operator.truediv), ast.FloorDiv: ("//", operator.floordiv), ast.Mod: ("%", operator.mod),
           ast.Pow: ("**", operator.pow)}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def evaluate(expression: str) -> Number:
    """The value of an arithmetic ``expression`` (see the module docstring); :class:`ToolError` for anything else."""
    if not isinstance(expression, str):
        raise ToolError(f"expression must be a string, not {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise ToolError(f"the expression has {len(expression)} characters; at most {MAX_CHARS}")
    if not expression.strip():
        raise ToolError("the expression is empty; give arithmetic such as '2 * (3 + 4)'")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"not an arithmetic expression ({e.msg}); use numbers, + - * / // % ** and parentheses"
                        ) from None
    except (ValueError, RecursionError, MemoryError):
        raise ToolError("not an arithmetic expression; use numbers, + - * / // % ** and parentheses") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES:
        raise ToolError(f"the expression has {nodes} syntax nodes; at most {MAX_NODES}")
    value = _eval(tree.body, 0)
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"the result is {value} (out of the floating-point range)")
    return value


def format_number(value: Number) -> str:
    """How a result is shown: integers in full, floats as Python's shortest round-tripping ``repr``."""
    return str(value) if isinstance(value, int) else repr(value)


def _eval(node: ast.AST, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise ToolError(f"the expression nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float):
            return node.value
        raise ToolError(f"{node.value!r} is not a number; only int and float literals are allowed")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        return _binary(type(node.op), left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; the names allowed are {', '.join(CONSTANTS)} and the functions "
                        f"{', '.join(FUNCTIONS)}")
    if isinstance(node, ast.Call):
        return _call(node, depth)
    raise ToolError(f"{_describe(node)} is not allowed; use numbers, + - * / // % **, parentheses and "
                    f"{', '.join(FUNCTIONS)}")


def _call(node: ast.Call, depth: int) -> Number:
    if not isinstance(node.func, ast.Name):
        raise ToolError(f"{_describe(node.func)} is not allowed; the only calls are to {', '.join(FUNCTIONS)}")
    if node.func.id not in FUNCTIONS:
        raise ToolError(f"calling {node.func.id} is not allowed; the functions are {', '.join(FUNCTIONS)}")
    name = node.func.id
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ToolError(f"{name}(...): only plain positional arguments are allowed")
    function, low, high = FUNCTIONS[name]
    if not low <= len(node.args) <= high:
        raise ToolError(f"{name} takes {low}{'' if low == high else f' to {high}'} arguments, got {len(node.args)}")
    args = [_eval(a, depth + 1) for a in node.args]
    try:
        value = function(*args)
    except OverflowError:
        raise ToolError(f"{name}(...): the result is out of the floating-point range") from None
    return _check_size(value)


def _binary(op: type, left: Number, right: Number) -> Number:
    symbol, function = _BINARY[op]
    if op is ast.Pow:
        _check_power(left, right)
    elif op is ast.Mult and isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_BITS + 1:
            raise ToolError(f"the product has more than {MAX_BITS} bits; the limit keeps results printable")
    try:
        value = function(left, right)
    except ZeroDivisionError:
        raise ToolError(f"division by zero in {format_number(left)} {symbol} {format_number(right)}") from None
    except OverflowError:
        raise ToolError(f"{format_number(left)} {symbol} {format_number(right)} is out of the floating-point range"
                        ) from None
    if isinstance(value, complex):
        raise ToolError(f"{format_number(left)} {symbol} {format_number(right)} is a complex number; only real "
                        "results are allowed")
    return _check_size(value)


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent {format_number(exponent)} is too large; at most {MAX_EXPONENT} in size")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if (abs(base).bit_length() - 1) * exponent > MAX_BITS:
            raise ToolError(f"{format_number(base)} ** {exponent} has more than {MAX_BITS} bits; the limit keeps "
                            "results printable")


def _check_size(value: Number) -> Number:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"the result {value!r} is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ToolError(f"the result has more than {MAX_BITS} bits; the limit keeps results printable")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"the result is {value} (out of the floating-point range)")
    return value


def _describe(node: ast.AST) -> str:
    names = {ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "a lambda",
             ast.Compare: "a comparison", ast.BoolOp: "and/or", ast.IfExp: "a conditional expression",
             ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict", ast.Set: "a set",
             ast.ListComp: "a comprehension", ast.GeneratorExp: "a generator", ast.SetComp: "a comprehension",
             ast.DictComp: "a comprehension", ast.JoinedStr: "an f-string", ast.NamedExpr: "an assignment (:=)",
             ast.Starred: "unpacking (*)", ast.Await: "await", ast.Yield: "yield"}
    if isinstance(node, ast.BinOp):
        return f"the operator {type(node.op).__name__}"
    if isinstance(node, ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return names.get(type(node), type(node).__name__)
