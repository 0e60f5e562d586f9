"""What a TorchScript or torch.export file may run before ``--trust-model-file``.

Neither kind needs Python unpickling, but both hold code that runs when the model does (and a
TorchScript ``__setstate__`` runs while ``torch.jit.load`` reads the file). Without the flag that code
is read, never run, before anything else is done with the file:

* :func:`check_archive` — the zip's records, before anything is inflated: a record that inflates past
  ``MAX_RECORD_BYTES`` at more than ``MAX_RATIO``:1, or records that inflate past the memory
  available, are refused (a zip bomb); then each record's CRC-32 (a damaged file).
* :func:`check_torchscript_source` — the archive's TorchScript source (``code/``) defines no
  ``__setstate__`` (code ``torch.jit.load`` would run).
* :func:`check_torchscript` — every node of every method and hook graph of the module and its
  submodules (calls inlined, blocks walked) and :func:`check_export` — every ``call_function`` node
  of a torch.export program and its nested graphs: only ``aten`` / ``prim`` / ``quantized`` compute
  ops, no op that reads or writes files (``aten::from_file``, ``aten::save``) or reaches the network
  (``prim::rpc_*``), no thread (``prim::fork``), no loop without a small static bound (a
  ``prim::Loop`` over a constant or a tensor's rank passes; a ``while``, a computed range and
  ``torch.ops.higher_order.while_loop`` do not: an unbounded loop would hang stmclf where Ctrl-C
  cannot stop it), no call that cannot be inlined, and in a torch.export graph no Python function
  beyond ``operator``/``math`` and a few pure builtins (none that reaches attributes or calls a value).

The first refused op is named in one line ending with the flag; with ``--trust-model-file`` none of
these checks runs. Compute ops themselves are trusted: a bug in one of PyTorch's kernels is not
something this check can see.
"""
from __future__ import annotations

import operator
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stmclf.models.importers.base import file_error, zip_problem

TRUST_HINT = "a model file that runs such code loads only with --trust-model-file"

ALLOWED_NAMESPACES = ("aten", "prim", "prims", "quantized", "_quantized")
"""Op namespaces of plain tensor compute (custom ``torch.ops.*`` namespaces are refused)."""
REFUSED_OPS = {
    "aten::from_file": "file access",
    "aten::save": "file access",
    "prim::rpc_async": "network access",
    "prim::rpc_sync": "network access",
    "prim::rpc_remote": "network access",
    "prim::fork": "a thread",
    "prim::awaitable": "a thread",
    "prim::CallFunction": "a call that cannot be inspected",
    "prim::CallMethod": "a call that cannot be inspected",
    "prim::PythonOp": "Python code",
}
_ALLOWED_HIGHER_ORDER = {"cond"}  # both branches are nested graphs, checked like the rest
_PYTHON_MODULES = {"_operator", "operator", "math"}
_SAFE_BUILTINS = {"len", "min", "max", "abs", "int", "float", "bool", "round", "pow", "divmod", "slice", "range",
                  "tuple", "list", "sum", "all", "any"}
_UNSAFE_PYTHON = {"call", "attrgetter", "methodcaller", "getattr", "setattr", "delattr"}
"""Functions that reach an object's attributes or call a value: with them a graph could walk from
a tensor to any Python object (``getattr(x, "__class__")`` …) and call it."""


def check_archive(path: Path, key: str) -> None:
    """Refuse, before torch reads it, a zip that inflates without bound (a zip bomb) or holds a
    damaged record (:func:`~stmclf.models.importers.base.zip_problem`)."""
    problem = zip_problem(path)
    if problem:
        raise file_error(key, path, problem)


def check_torchscript_source(path: Path, key: str) -> None:
    """Refuse a TorchScript archive whose code defines ``__setstate__``: ``torch.jit.load`` runs it.
    Call after :func:`check_archive` (the records read here are bounded)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/code/" in f"/{info.filename}" and not info.filename.endswith(".debug_pkl") \
                    and b"__setstate__" in archive.read(info):
                raise file_error(key, path, f"its TorchScript code defines __setstate__ ({info.filename}), which "
                                            f"runs while the file loads; {TRUST_HINT}")


MAX_LOOP_TRIPS = 10_000
"""A TorchScript ``for`` loop (nested loops: their product) may run at most this many times."""
_RANK_BOUND = 64  # len(x.shape), x.dim(): at most the number of dimensions of a tensor
_LIST_MUTATIONS = {"aten::append", "aten::extend", "aten::insert", "aten::add_", "aten::_set_item", "aten::mul_"}


def _trip_bound(value: Any, depth: int = 0) -> int | None:
    """The most times a ``prim::Loop`` with this trip count can run, when the code shows a bound
    (a small constant, a tensor's rank, ``len`` of its shape), else None (a ``while``, ``range(n)``
    of a computed ``n``)."""
    node = value.node()
    kind = node.kind()
    if depth > 8:
        return None
    if kind == "prim::Constant":
        constant = value.toIValue()
        return constant if isinstance(constant, int) and 0 <= constant <= MAX_LOOP_TRIPS else None
    if kind == "aten::dim":
        return _RANK_BOUND
    if kind == "aten::len":
        shape = next(iter(node.inputs()))  # a tensor's shape, not changed since
        mutated = any(use.user.kind() in _LIST_MUTATIONS for use in shape.uses())
        return _RANK_BOUND if shape.node().kind() == "aten::size" and not mutated else None
    inputs = list(node.inputs())
    if kind in ("aten::sub", "aten::floordiv") and len(inputs) == 2 and inputs[1].node().kind() == "prim::Constant":
        return _trip_bound(inputs[0], depth + 1)
    if kind in ("prim::min", "aten::min") and inputs:
        bounds = [b for b in (_trip_bound(v, depth + 1) for v in inputs) if b is not None]
        return min(bounds) if bounds else None
    return None


def _graph_nodes(block: Any, trips: int = 1) -> Iterator[tuple[Any, str | None]]:
    """Every node of a graph (into blocks and subgraphs), with the reason a loop is refused."""
    for node in block.nodes():
        inner_trips = trips
        reason = None
        if node.kind() == "prim::Loop":
            bound = _trip_bound(next(iter(node.inputs())))
            inner_trips = trips * (bound or 0)
            reason = None if bound is not None and inner_trips <= MAX_LOOP_TRIPS else "a loop without a small bound"
        yield node, reason
        for inner in node.blocks():
            yield from _graph_nodes(inner, max(inner_trips, 1))
        for name in node.attributeNames():
            if node.kindOf(name) == "g":
                yield from _graph_nodes(node.g(name), trips)


def _script_graphs(module: nn.Module) -> Iterator[Any]:
    for sub in module.modules():
        c = getattr(sub, "_c", None)
        if c is None:
            continue
        functions = [c._get_method(name) for name in c._method_names()]
        functions += list(c._get_forward_hooks()) + list(c._get_forward_pre_hooks())
        for function in functions:
            graph = function.graph.copy()
            torch._C._jit_pass_inline(graph)
            yield graph


def _reason(kind: str) -> str | None:
    """Why a TorchScript node kind (``ns::name``) is refused, or None."""
    if kind in REFUSED_OPS:
        return REFUSED_OPS[kind]
    namespace = kind.split("::", 1)[0]
    if namespace not in ALLOWED_NAMESPACES:
        return f"an op outside {'/'.join(ALLOWED_NAMESPACES)}"
    return None


def _refuse(path: Path, key: str, what: str, op: str, reason: str) -> None:
    raise file_error(key, path, f"its {what} code calls {op} ({reason}); {TRUST_HINT}")


def check_torchscript(module: nn.Module, path: Path, key: str) -> None:
    """Refuse (one line naming the first op) TorchScript code that could touch files, the network or
    loop; see the module's text."""
    for graph in _script_graphs(module):
        for node, loop in _graph_nodes(graph):
            reason = loop or _reason(node.kind())
            if reason is not None:
                _refuse(path, key, "TorchScript", node.kind(), reason)


def _export_reason(target: Any) -> tuple[str, str | None]:
    if isinstance(target, torch._ops.HigherOrderOperator):
        name = f"torch.ops.higher_order.{target.name()}"
        if target.name() in _ALLOWED_HIGHER_ORDER:
            return name, None
        return name, "a loop" if "loop" in target.name() else "a higher-order op"
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        schema = target._schema.name if isinstance(target, torch._ops.OpOverload) else f"{target._qualified_op_name}"
        return schema, _reason(schema)
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if name in _UNSAFE_PYTHON:
        return f"{module}.{name}", "Python code"
    if module in _PYTHON_MODULES or target in vars(operator).values() or (module == "builtins" and name in _SAFE_BUILTINS) \
            or (module.startswith("torch") and name.startswith("sym_")):
        return name, None
    return f"{module}.{name}", "Python code"


def check_export(graph_modules: Iterable[nn.Module], path: Path, key: str) -> None:
    """Refuse (one line naming the first op) a torch.export program whose graphs (the program's and
    its nested ones) call anything but compute ops; see the module's text."""
    for gm in graph_modules:
        graph = getattr(gm, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op in ("call_method", "call_module"):
                _refuse(path, key, "torch.export", f"{node.op} {node.target}", "a call that cannot be inspected")
            if node.op != "call_function":
                continue
            name, reason = _export_reason(node.target)
            if reason is not None:
                _refuse(path, key, "torch.export", name, reason)
