"""The calculator tool: arithmetic equal to Python's own on the same expressions, and a refusal (with the reason)
for everything that is not arithmetic or would be too big — checked before any work is done."""

from __future__ import annotations

import math
import operator
import random
import time

import pytest

from quark_jax.agents import calculator
from quark_jax.agents.tools import calculator as calculator_tool
from quark_jax.agents.types import ToolError

# Each expression next to the same arithmetic written as Python code (the reference: Python computes it).
CASES = [
    ("2 * (3 + 4) ** 2", 2 * (3 + 4) ** 2),
    ("-7 // 2", -7 // 2),
    ("-7 % 3", -7 % 3),
    ("7 / 2", 7 / 2),
    ("2 ** -2", 2 ** -2),
    ("2 ** 100", 2 ** 100),
    ("0.1 + 0.2", 0.1 + 0.2),
    ("1e3 * 3", 1e3 * 3),
    ("+-+3", +-+3),
    ("sqrt(16) + abs(-2.5)", math.sqrt(16) + abs(-2.5)),
    ("round(2.675, 2)", round(2.675, 2)),
    ("round(7.5)", round(7.5)),
    ("min(3, 1, 2) * max(4, 9)", min(3, 1, 2) * max(4, 9)),
    ("pi * 2", math.pi * 2),
    ("e ** 2", math.e ** 2),
    ("(" * 100 + "1" + ")" * 100, 1),  # parentheses alone add no syntax node
    ("17 * 23", 391),
]


@pytest.mark.parametrize("expression, expected", CASES)
def test_arithmetic_equals_python(expression, expected):
    value = calculator.evaluate(expression)
    assert value == expected and type(value) is type(expected)


def _random_expression(rng: random.Random, depth: int) -> tuple[str, float]:
    """A random expression and its value, computed alongside by the operator functions (not by parsing)."""
    if depth == 0 or rng.random() < 0.3:
        value = rng.choice([rng.randint(-20, 20), round(rng.uniform(-10, 10), 3)])
        return (f"({value})" if value < 0 else str(value)), value
    kind = rng.choice(["+", "-", "*", "/", "//", "%", "neg", "abs"])
    left_text, left = _random_expression(rng, depth - 1)
    if kind == "neg":
        return f"-({left_text})", -left
    if kind == "abs":
        return f"abs({left_text})", abs(left)
    right_text, right = _random_expression(rng, depth - 1)
    if kind in ("/", "//", "%") and right == 0:
        right_text, right = "3", 3
    function = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
                "//": operator.floordiv, "%": operator.mod}[kind]
    return f"({left_text}) {kind} ({right_text})", function(left, right)


def test_random_expressions_match_a_reference_built_alongside():
    rng = random.Random(0)
    for _ in range(300):
        text, expected = _random_expression(rng, 4)
        assert calculator.evaluate(text) == expected, text


def test_the_tool_formats_integers_whole_and_floats_round_trip():
    tool = calculator_tool()
    assert tool.fn(expression="2 ** 100") == "1267650600228229401496703205376"
    assert tool.fn(expression="0.1 + 0.2") == "0.30000000000000004"
    assert tool.spec()["function"]["parameters"]["required"] == ["expression"]


REFUSED = [
    ("__import__('os').system('echo hi')", "attribute access is not allowed"),
    ("__import__('os')", "calling __import__ is not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", "attribute access is not allowed"),
    ("(2).real", "attribute access is not allowed"),
    ("(lambda: 1)()", "a lambda is not allowed"),
    ("lambda x: x", "a lambda is not allowed"),
    ("[x for x in range(10)]", "a comprehension is not allowed"),
    ("open('/etc/passwd')", "calling open is not allowed"),
    ("x", "unknown name 'x'"),
    ("'a' * 10", "'a' is not a number"),
    ("True + 1", "True is not a number"),
    ("1j * 2", "1j is not a number"),
    ("1 << 100000", "the operator LShift is not allowed"),
    ("1 < 2", "a comparison is not allowed"),
    ("9**9**9", "the exponent 387420489 is too large"),
    ("2 ** 5000", "the exponent 5000 is too large"),
    ("3 ** 4000", "has more than 4096 bits"),
    ("(10 ** 1000) * (10 ** 1000) * (10 ** 1000) * (10 ** 1000) * (10 ** 1000)", "more than 4096 bits"),
    ("10.0 ** 400", "out of the floating-point range"),
    ("1e308 * 10", "out of the floating-point range"),
    ("(-8) ** 0.5", "is a complex number"),
    ("1 / 0", "division by zero in 1 / 0"),
    ("5 % 0", "division by zero"),
    ("sqrt(-1)", "square root of a negative number"),
    ("max()", "max takes 1 to 16 arguments, got 0"),
    ("round(1.5, 100)", "digits must be a whole number within ±64"),
    ("abs(x=1)", "only plain positional arguments"),
    ("1 +", "not an arithmetic expression"),
    ("", "the expression is empty"),
    ("1 + " * 100 + "1", "characters; at most 256"),
    ("abs(" * 40 + "1" + ")" * 40, "nests deeper than 32 levels"),
    ("-" * 60 + "1", "nests deeper than 32 levels"),
    ("+".join(["1"] * 100), "syntax nodes; at most 128"),
]


@pytest.mark.parametrize("expression, message", REFUSED)
def test_refuses_what_is_not_bounded_arithmetic(expression, message):
    started = time.monotonic()
    with pytest.raises(ToolError) as refused:
        calculator.evaluate(expression)
    assert message in str(refused.value)
    assert time.monotonic() - started < 0.5  # refused before any large computation


def test_refuses_a_non_string():
    with pytest.raises(ToolError, match="expression must be a string, not int"):
        calculator.evaluate(42)
