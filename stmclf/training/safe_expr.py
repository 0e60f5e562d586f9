"""Safe evaluation of small arithmetic expressions from configs (e.g. a learning-rate schedule).

``"lambda epoch, lr: lr * 0.9 if epoch >= 10 else lr"`` or a bare expression of ``epoch`` and
``lr`` is parsed with :mod:`ast` and checked node by node: numbers, the variables, arithmetic,
comparisons, ``and``/``or``/``not``, ``x if c else y``, and calls to ``math`` functions and
``min``/``max``/``abs``/``round``/``float``/``int``. Evaluation walks the checked tree; nothing
is passed to ``eval`` or ``exec``.

Bounded: at most 500 characters, and every operation is checked before it runs (exponents up
to ±64, integers up to 1000 bits, finite floats; :func:`stmclf.config.values.bounded_binop`), so
``((((9**64)**64)**64)**64)`` or ``epoch ** epoch ** epoch`` cannot hang a run. Constant
sub-expressions are evaluated when the schedule is compiled (errors before training starts); an
evaluation error at some epoch (overflow, division by zero, a negative or non-finite rate) is a
one-line :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable

from stmclf.config.values import bounded_binop, check_bounds
from stmclf.errors import ConfigError, one_line

MAX_LENGTH = 500

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCTIONS: dict[str, Callable] = {name: getattr(math, name) for name in (
    "exp", "log", "log2", "log10", "sqrt", "cos", "sin", "tan", "floor", "ceil", "pow", "fabs", "tanh")}
_FUNCTIONS.update(min=min, max=max, abs=abs, round=round, float=float, int=int)
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _check(node: ast.AST, names: set[str], key: str) -> None:
    ok = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Load, ast.And, ast.Or,
          *_BIN, *_UNARY, *_COMPARE)
    for child in ast.walk(node):
        if isinstance(child, ast.Constant):
            if not isinstance(child.value, (int, float)) or isinstance(child.value, complex):
                raise ConfigError(key, f"only numbers are allowed, found {child.value!r}")
        elif isinstance(child, ast.Name):
            if child.id not in names and child.id not in _FUNCTIONS and child.id not in _CONSTANTS \
                    and child.id != "math":
                raise ConfigError(key, f"unknown name {child.id!r}; use {', '.join(sorted(names))}, numbers and "
                                       f"math functions")
        elif isinstance(child, ast.Attribute):
            if not (isinstance(child.value, ast.Name) and child.value.id == "math"
                    and (child.attr in _FUNCTIONS or child.attr in _CONSTANTS)):
                raise ConfigError(key, f"attribute access is not allowed: {ast.unparse(child)}")
        elif isinstance(child, ast.Call):
            func = child.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name not in _FUNCTIONS or child.keywords:
                raise ConfigError(key, f"call not allowed: {ast.unparse(child)}")
        elif not isinstance(child, ok):
            raise ConfigError(key, f"{type(child).__name__} is not allowed in a schedule expression")


def _evaluate(node: ast.AST, env: dict[str, Any]) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else _CONSTANTS.get(node.id, _FUNCTIONS.get(node.id))
    if isinstance(node, ast.Attribute):
        return _FUNCTIONS.get(node.attr, _CONSTANTS.get(node.attr))
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, env), _evaluate(node.right, env)
        return bounded_binop(node.op, left, right)
    if isinstance(node, ast.UnaryOp):
        return check_bounds(_UNARY[type(node.op)](_evaluate(node.operand, env)))
    if isinstance(node, ast.BoolOp):
        values = (_evaluate(v, env) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, env)
        for op, comparator in zip(node.ops, node.comparators):
            right = _evaluate(comparator, env)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _evaluate(node.body if _evaluate(node.test, env) else node.orelse, env)
    if isinstance(node, ast.Call):
        function = _evaluate(node.func, env)
        args = [_evaluate(a, env) for a in node.args]
        if function in (round, math.pow) and len(args) == 2:  # round(x, 10**9), pow(x, y): bounded too
            if function is math.pow:
                return check_bounds(bounded_binop(ast.Pow(), float(args[0]), float(args[1])))
            if abs(args[1]) > 64:
                raise ValueError("round() to more than 64 digits")
        return check_bounds(function(*args))
    raise ValueError(f"unsupported node {type(node).__name__}")  # unreachable after _check


def _constant(node: ast.AST) -> bool:
    return not any(isinstance(n, ast.Name) and n.id not in _CONSTANTS and n.id not in _FUNCTIONS and n.id != "math"
                   for n in ast.walk(node))


def compile_schedule(text: str, key: str, names: tuple[str, ...] = ("epoch", "lr")) -> Callable[..., float]:
    """``"lambda epoch, lr: ..."`` (or the bare expression) → a function of keyword arguments."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(key, f"expecting an expression such as 'lambda epoch, lr: lr * 0.95', "
                               f"got {one_line(repr(text), 80)}")
    source = " ".join(text.split())
    if len(source) > MAX_LENGTH:
        raise ConfigError(key, f"the expression has {len(source)} characters; at most {MAX_LENGTH}")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(key, f"invalid syntax: {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ConfigError(key, f"invalid expression: {one_line(exc)}") from None
    body: ast.AST = tree.body
    params = names
    if isinstance(body, ast.Lambda):
        params = tuple(a.arg for a in body.args.args)
        if not 1 <= len(params) <= 2 or body.args.vararg or body.args.kwarg or body.args.kwonlyargs \
                or body.args.posonlyargs or body.args.defaults:
            raise ConfigError(key, "expecting 'lambda epoch, lr: ...' (one or two arguments)")
        body = body.body
    expression = ast.Expression(body=body)
    _check(expression, set(params), key)
    for node in ast.walk(body):  # constant parts (9**64**64, 1/0) fail now, not at some epoch
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Call)) and _constant(node):
            try:
                _evaluate(node, {})
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise ConfigError(key, f"{one_line(ast.unparse(node), 60)}: {one_line(exc, typed=True)}") from None
    probe = {"epoch": 0, "lr": 1e-3}  # the first epoch, before anything is written (lr / epoch, ...)
    try:
        _evaluate(expression, dict(zip(params, (probe.get(n, 0) for n in names))))
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ConfigError(key, f"evaluating the schedule fails at epoch 0: {one_line(exc, typed=True)}") from None

    def evaluate(**values: float) -> float:
        env = dict(zip(params, (values[n] for n in names)))
        shown = ", ".join(f"{n}={values[n]}" for n in names)
        try:
            result = float(_evaluate(expression, env))
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ConfigError(key, f"evaluating the schedule failed at {shown}: {one_line(exc, typed=True)}") from None
        if not math.isfinite(result) or result < 0:
            raise ConfigError(key, f"the schedule gives {result} at {shown}; a learning rate is a finite number >= 0")
        return result
    return evaluate
