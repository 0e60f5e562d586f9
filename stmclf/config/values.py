"""Safe conversion of the text values ST configs carry (``1/127.5``, ``(224, 224, 3)``, ``None``).

The reference passes every string through Python ``eval``. We parse the string with
:mod:`ast` and evaluate only number literals, ``True``/``False``/``None``, unary ``+``/``-``,
the arithmetic operators ``+ - * / // % **`` and tuples/lists of those. Anything else is kept
as text, which is what the reference ends up doing for strings that are not numbers, booleans
or tuples. Nothing from a config is ever executed, and the arithmetic is bounded (at most 200
characters, exponents up to ±64, integers up to ``MAX_INT_BITS`` bits, finite floats), so no
value can hang the parser: ``((((9**64)**64)**64)**64)`` is refused with its key.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any, Optional

from stmclf.errors import ConfigError, one_line

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
MAX_INT_BITS = 1000  # no config number needs more; bounds every intermediate result
_MAX_TEXT = 200
_LIMITS = (f"numbers are limited to {MAX_INT_BITS}-bit integers and finite floats, exponents to "
           f"±{_MAX_EXPONENT}, expressions to {_MAX_TEXT} characters")


class NumberTooLarge(ArithmeticError):
    """An arithmetic result beyond the bounds (also used by :mod:`stmclf.training.safe_expr`)."""


class _NotAValue(Exception):
    pass


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_bounds(value: Any) -> Any:
    """``value`` when it is a finite float or an integer of at most ``MAX_INT_BITS`` bits."""
    if isinstance(value, float) and not math.isfinite(value):
        raise NumberTooLarge("a float overflow")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise NumberTooLarge(f"a result of more than {MAX_INT_BITS} bits")
    return value


def bounded_binop(op: ast.operator, left: Any, right: Any) -> Any:
    """``left op right`` for one of ``+ - * / // % **``, refusing (:class:`NumberTooLarge`)
    before computing anything that would exceed the bounds: an exponent beyond ±64 or an
    integer of more than ``MAX_INT_BITS`` bits (what makes ``((9**64)**64)**64`` hang)."""
    if isinstance(left, int) and isinstance(right, int):
        if isinstance(op, ast.Mult) and abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS + 1:
            raise NumberTooLarge(f"a result of more than {MAX_INT_BITS} bits")
        if isinstance(op, ast.Pow) and right > 0 and (abs(left).bit_length() - 1) * right > MAX_INT_BITS:
            raise NumberTooLarge(f"a result of more than {MAX_INT_BITS} bits")  # |left| >= 2**(bits-1)
    if isinstance(op, ast.Pow) and abs(right) > _MAX_EXPONENT:
        raise NumberTooLarge(f"an exponent beyond ±{_MAX_EXPONENT}")
    try:
        result = _BINOPS[type(op)](left, right)
    except OverflowError as exc:
        raise NumberTooLarge("a float overflow") from exc
    if isinstance(result, complex):  # (-8) ** 0.5
        raise ValueError("a complex number")
    return check_bounds(result)


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float))):
        return check_bounds(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _evaluate(node.operand)
        if _is_number(value):
            return _UNARY[type(node.op)](value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if _is_number(left) and _is_number(right):
            try:
                return bounded_binop(node.op, left, right)
            except (ZeroDivisionError, ValueError) as exc:
                raise _NotAValue from exc
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_evaluate(element) for element in node.elts]
    raise _NotAValue


def parse_value(text: str, key: Optional[str] = None) -> Any:
    """Return the number, bool, None or list that ``text`` spells, else ``text`` unchanged.

    Tuples come back as lists (YAML's sequence type); ``"None"`` becomes ``None`` (the
    reference keeps the truthy string ``"None"`` for most keys: a quirk we do not copy).
    Arithmetic is bounded (integers of at most ``MAX_INT_BITS`` bits, finite floats, exponents
    up to ±64, 200 characters), so no value can hang the parser: beyond the bounds the text is
    refused with a :class:`ConfigError` naming ``key`` when ``key`` is given, else kept as text.
    """
    stripped = text.strip()
    if not stripped or len(stripped) > _MAX_TEXT or stripped.startswith("lambda"):
        return text
    try:
        tree = ast.parse(stripped, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return text
    try:
        return _evaluate(tree.body)
    except NumberTooLarge as exc:
        if key is None:
            return text
        raise ConfigError(key, f"{one_line(stripped, 60)!r} is out of bounds ({exc}): {_LIMITS}") from None
    except (_NotAValue, RecursionError, MemoryError):
        return text


# Keys whose values are names or paths: text that merely looks numeric ("1/2", "007") stays text.
TEXT_KEYS = frozenset({"project_name", "name", "class_names", "uri", "dir", "version", "board",
                       "function_name", "custom_model", "serie", "IDE", "ip_address",
                       "stlink_serial_number", "monitor", "mode"})
TEXT_SUFFIXES = ("_path", "_dir", "_name")


def is_text_key(key: str) -> bool:
    return key in TEXT_KEYS or key.endswith(TEXT_SUFFIXES)


def convert_values(data: Any, key: str = "", path: str = "") -> Any:
    """Apply :func:`parse_value` to every string in ``data``, except under name/path keys
    (``path``: the dotted key path, named in errors)."""
    if isinstance(data, dict):
        return {k: convert_values(v, str(k), f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [convert_values(v, key, path) for v in data]
    if isinstance(data, float) and not math.isfinite(data):  # YAML's own .inf / .nan / 1.0e+400
        raise ConfigError(path or key or "value", f"{data!r} is out of bounds (not a finite number): {_LIMITS}")
    if isinstance(data, str):
        if is_text_key(key):
            return None if data.strip() == "None" else data
        return parse_value(data, path or key or "value")
    return data
