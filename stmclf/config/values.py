"""Safe conversion of the text values ST configs carry (``1/127.5``, ``(224, 224, 3)``, ``None``).

The reference passes every string through Python ``eval``. We parse the string with
:mod:`ast` and evaluate only number literals, ``True``/``False``/``None``, unary ``+``/``-``,
the arithmetic operators ``+ - * / // % **`` and tuples/lists of those. Anything else is kept
as text, which is what the reference ends up doing for strings that are not numbers, booleans
or tuples. Nothing from a config is ever executed.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 64  # 10**64 is plenty for a config; refuse 9**9**9-style bombs
_MAX_TEXT = 200


class _NotAValue(Exception):
    pass


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float))):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _evaluate(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _UNARY[type(node.op)](value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise _NotAValue
            try:
                result = _BINOPS[type(node.op)](left, right)
            except (ZeroDivisionError, OverflowError) as exc:
                raise _NotAValue from exc
            if isinstance(result, float) and not math.isfinite(result):
                raise _NotAValue
            return result
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_evaluate(element) for element in node.elts]
    raise _NotAValue


def parse_value(text: str) -> Any:
    """Return the number, bool, None or list that ``text`` spells, else ``text`` unchanged.

    Tuples come back as lists (YAML's sequence type); ``"None"`` becomes ``None`` (the
    reference keeps the truthy string ``"None"`` for most keys: a quirk we do not copy).
    """
    stripped = text.strip()
    if not stripped or len(stripped) > _MAX_TEXT or stripped.startswith("lambda"):
        return text
    try:
        tree = ast.parse(stripped, mode="eval")
    except (SyntaxError, ValueError):
        return text
    try:
        return _evaluate(tree.body)
    except (_NotAValue, RecursionError):
        return text


# Keys whose values are names or paths: text that merely looks numeric ("1/2", "007") stays text.
TEXT_KEYS = frozenset({"project_name", "name", "class_names", "uri", "dir", "version", "board",
                       "function_name", "custom_model", "serie", "IDE", "ip_address",
                       "stlink_serial_number", "monitor", "mode"})
TEXT_SUFFIXES = ("_path", "_dir", "_name")


def is_text_key(key: str) -> bool:
    return key in TEXT_KEYS or key.endswith(TEXT_SUFFIXES)


def convert_values(data: Any, key: str = "") -> Any:
    """Apply :func:`parse_value` to every string in ``data``, except under name/path keys."""
    if isinstance(data, dict):
        return {k: convert_values(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [convert_values(v, key) for v in data]
    if isinstance(data, str):
        if is_text_key(key):
            return None if data.strip() == "None" else data
        return parse_value(data)
    return data
