"""Torch model files: TorchScript (``torch.jit.save``), torch.export programs (``torch.export.save``,
``.pt2``) and pickled ``nn.Module``\\ s (``torch.save(model)``, only when trusted).

The layer view (``frozen_layers``, ``stmclf summary``) is the module's top-level children, as for
custom models (:class:`~stmclf.models.custom.ModuleGraph`); a module without children is one layer.
These files do not record the input size: it comes from ``input_shape`` (the caller), else from the
file — a torch.export program's example input, a TorchScript extra file ``input_shape``
(``torch.jit.save(m, path, _extra_files={"input_shape": "128,128,3"})``) or an ``input_shape``
attribute of the module —, else from ``fallback_shape`` (the config's ``training.model.input_shape``).

Before ``torch.jit.load`` / ``torch.export.load``, the archive's records are checked for a zip bomb;
without ``trust_model_file`` the TorchScript / torch.export code is read before any of it runs and
refused when it does more than compute (:mod:`.torch_code`).

* TorchScript: loaded with ``torch.jit.load`` (TorchScript code, no Python unpickling). Scripted
  modules train normally. Traced modules keep the batch-norm / dropout mode they were traced in (a
  note says so). Dropout rates are TorchScript constants: they cannot be changed.
* torch.export: ``torch.export.load(path).module()``; train/eval mode switches batch norm and
  dropout by rewriting the flags of their graph nodes (``aten.batch_norm`` / ``aten.dropout``), and
  a final softmax node is removed. Graphs decomposed to inference batch norm keep it in inference.
* pickled modules: ``torch.load(weights_only=False)`` runs code from the file, so it is refused
  unless ``trust_model_file=True``.

A final softmax is removed where it can be (a trailing ``nn.Softmax`` / ``nn.LogSoftmax`` child of
an ``nn.Sequential``; a torch.export softmax node); a model still outputting probabilities is
refused (training works on logits).
"""
from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest.mock import patch
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from stmclf.errors import UserError, is_allocation_failure
from stmclf.models.custom import ModuleGraph, _keras_shape
from stmclf.models.graph import Node, normalise_indices
from stmclf.models.importers.base import (PICKLED_CODE, ImportedModel, file_error, first_line, is_zip,
                                          looks_like_probabilities, probe_outputs)
from stmclf.models.importers.torch_code import check_archive, check_export, check_torchscript, check_torchscript_source

_BN_NAMES = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"}
_DROPOUT_NAMES = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}


def _type_name(module: nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) or (isinstance(module, torch.jit.ScriptModule)
                                              and _type_name(module) in _BN_NAMES)


class OpaqueModuleGraph(ModuleGraph):
    """A :class:`ModuleGraph` for modules that forward hooks cannot observe (TorchScript, torch.export
    graph modules): the layers are the top-level children of ``module`` (or of its submodule
    ``layer_path``), output shapes are unknown (``()``) except the model's own, and freezing sets
    ``requires_grad`` parameter by parameter."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int], name: str, layer_path: str = "",
                 input_name: str = "input_1", type_names: dict[str, str] | None = None) -> None:
        nn.Module.__init__(self)
        self.name = name
        self.module = module
        self.frozen_indices: frozenset[int] = frozenset()
        self.backbone_end_index = None
        self._layer_path = layer_path
        root = self._layer_root()
        self._children = [child for child, _ in root.named_children()]
        self.output_shape = _keras_shape(probe_outputs(module, input_shape, batch=2))
        nodes, previous = [Node(input_name, "InputLayer", (), tuple(input_shape))], input_name
        for child, sub in root.named_children():
            nodes.append(Node(child, (type_names or {}).get(child) or _type_name(sub), (previous,), ()))
            previous = child
        self.nodes = tuple(nodes)

    def _layer_root(self) -> nn.Module:
        return self.module.get_submodule(self._layer_path) if self._layer_path else self.module

    def layer_module(self, index: int) -> nn.Module | None:
        index = range(len(self.nodes))[index]
        return None if index == 0 else getattr(self._layer_root(), self._children[index - 1])

    def set_frozen(self, indices: Iterable[int]) -> None:
        n = len(self.nodes)
        self.frozen_indices = normalise_indices(indices, n, self.name)
        for param in self.module.parameters():
            param.requires_grad_(True)
        for i in range(1, n):
            if i in self.frozen_indices:
                for param in self.layer_module(i).parameters():
                    param.requires_grad_(False)
        if isinstance(self.module, ExportedModule):
            self.module.frozen_children = {self._children[i - 1] for i in self.frozen_indices if i > 0}
        self.train(self.training)

    def train(self, mode: bool = True) -> OpaqueModuleGraph:
        nn.Module.train(self, mode)
        if mode:
            for i in self.frozen_indices:
                module = self.layer_module(i)
                for m in module.modules() if module is not None else ():
                    if _is_batch_norm(m):
                        m.eval()
        return self


# ---------------------------------------------------------------------------------------------
# torch.export programs.

def _op_set(*names: str) -> set[Any]:
    """The aten overloads ``packet.overload`` that exist in this torch."""
    ops = set()
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(torch.ops.aten, packet, None)
        if op is not None and hasattr(op, overload):
            ops.add(getattr(op, overload))
    return ops


_BN_OPS = _op_set("batch_norm.default")
_DROPOUT_OPS = _op_set("dropout.default", "feature_dropout.default", "alpha_dropout.default",
                       "feature_alpha_dropout.default")
_INFERENCE_BN_OPS = _op_set("_native_batch_norm_legit_no_training.default",
                            "_native_batch_norm_legit_functional.default")
_SOFTMAX_OPS = _op_set("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default")


class ExportedModule(nn.Module):
    """A torch.export graph module that follows train/eval mode: the training flags of its batch
    norm and dropout nodes are rewritten (and the code recompiled) when the mode changes. Batch
    norms whose parameters belong to a frozen top-level child stay in inference mode."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        for attr in ("train", "eval"):  # torch.export's module() forbids both: switch by rewriting the graph
            if attr in gm.__dict__:
                delattr(gm, attr)
        self.gm = gm
        self.frozen_children: set[str] = set()
        self._flags: tuple[bool, frozenset[str]] | None = None
        self._sync(self.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.gm(x)

    def train(self, mode: bool = True) -> ExportedModule:
        nn.Module.train(self, mode)
        self._sync(mode)
        return self

    def _owner(self, node: torch.fx.Node) -> str | None:
        weight = node.args[1] if len(node.args) > 1 else None
        if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
            return str(weight.target).split(".")[0]
        return None

    def _sync(self, mode: bool) -> None:
        state = (mode, frozenset(self.frozen_children))
        if state == self._flags:
            return
        changed = False
        for node in self.gm.graph.nodes:
            if node.op != "call_function":
                continue
            if node.target in _BN_OPS:
                flag = mode and self._owner(node) not in self.frozen_children
                index = 5
            elif node.target in _DROPOUT_OPS:
                flag, index = mode, 2
            else:
                continue
            if len(node.args) > index and node.args[index] != flag:
                node.args = node.args[:index] + (flag,) + node.args[index + 1:]
                changed = True
        if changed:
            self.gm.recompile()
        self._flags = state

    def dropout_rates(self) -> list[float]:
        return [float(node.args[1]) for node in self.gm.graph.nodes
                if node.op == "call_function" and node.target in _DROPOUT_OPS]

    def set_dropout_rate(self, rate: float) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "call_function" and node.target in _DROPOUT_OPS:
                node.args = (node.args[0], float(rate)) + tuple(node.args[2:])
        self.gm.recompile()

    def inference_batch_norms(self) -> int:
        return sum(1 for node in self.gm.graph.nodes if node.op == "call_function" and node.target in _INFERENCE_BN_OPS)

    def strip_final_softmax(self) -> bool:
        """Return the softmax's input instead of the softmax (class axis only)."""
        graph = self.gm.graph
        output = next(node for node in graph.nodes if node.op == "output")
        outs = output.args[0]
        flat = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        if len(flat) != 1 or not isinstance(flat[0], torch.fx.Node):
            return False
        node = flat[0]
        if node.op != "call_function" or node.target not in _SOFTMAX_OPS or len(node.users) != 1:
            return False
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        val = node.meta.get("val")
        rank = val.dim() if isinstance(val, Tensor) else 2
        if dim is None or int(dim) % rank != 1 or rank != 2:
            return False
        source = node.args[0]
        output.args = ((type(outs)([source]) if isinstance(outs, (list, tuple)) else source),) + tuple(output.args[1:])
        graph.erase_node(node)
        self.gm.recompile()
        return True


def _export_type_names(gm: torch.fx.GraphModule) -> dict[str, str]:
    """Top-level child name → class name of the original module (from the nodes' module stacks)."""
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        for entry in (node.meta.get("nn_module_stack") or {}).values():
            if not isinstance(entry, tuple) or len(entry) != 2:
                continue
            path, cls = entry
            path = str(path)
            if path and "." not in path and path not in names:
                names[path] = str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1].strip("'>")
    return names


def _export_input_shape(program: Any) -> tuple[int, int, int] | None:
    example = getattr(program, "example_inputs", None)
    if example and example[0] and isinstance(example[0][0], Tensor) and example[0][0].dim() == 4:
        _, c, h, w = example[0][0].shape
        return int(h), int(w), int(c)
    for node in program.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), Tensor):
            shape = node.meta["val"].shape
            if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
                return int(shape[2]), int(shape[3]), int(shape[1])
    return None


# ---------------------------------------------------------------------------------------------

def _shape_from(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = [v for v in value.replace("(", " ").replace(")", " ").replace(",", " ").split() if v]
    try:
        dims = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return dims if len(dims) == 3 and all(d > 0 for d in dims) else None  # type: ignore[return-value]


_RECORD_SHAPE = {
    "TorchScript": 'or save it with torch.jit.save(model, path, _extra_files={"input_shape": "H,W,C"})',
    "torch.export": "or export it with an example input of shape (batch, channels, height, width)",
    "pickled module": "or give the module an input_shape attribute (height, width, channels) before torch.save",
}


def _resolve_shape(given: tuple[int, int, int] | None, found: tuple[int, int, int] | None, path: Path, key: str,
                   kind: str, fallback: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """``given`` (a rebuild's stored shape), else the shape the file records, else ``fallback``
    (the config's ``training.model.input_shape``)."""
    if given is None and found is None:
        given = fallback
    if given is not None:
        shape = _shape_from(given)
        if shape is None:
            raise file_error(key, path, f"input_shape must be (height, width, channels), got {given!r}")
        return shape
    if found is None:
        raise file_error(key, path, f"a {kind} file does not record the input size: set training.model.input_shape: "
                                    f"(height, width, channels) in the config, {_RECORD_SHAPE[kind]}")
    return found


def _probe(module: nn.Module, input_shape: tuple[int, int, int], path: Path, key: str) -> Tensor:
    try:
        out = probe_outputs(module, input_shape, batch=2)
    except Exception as exc:  # noqa: BLE001 - the model's own code failing on a batch
        h, w, c = input_shape
        if is_allocation_failure(exc):
            from stmclf.config.rules import available_memory

            raise file_error(key, path, f"the model needs more than the {available_memory() / 2**30:,.1f} GiB of "
                                        f"memory available for a batch of shape (2, {c}, {h}, {w}) "
                                        f"({first_line(exc)}): is training.model.input_shape right?") from None
        try:
            probe_outputs(module, input_shape, batch=1)
            hint = "it runs on one image: a fixed batch size? export it with a dynamic batch"
        except Exception:  # noqa: BLE001 - the same failure: the input size, not the batch
            hint = f"does it take {h}x{w} images with {c} channel(s)? (training.model.input_shape)"
        raise file_error(key, path, f"the model fails on a batch of shape (2, {c}, {h}, {w}): {first_line(exc)} "
                                    f"({hint})") from None
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise file_error(key, path, f"the model outputs {shape}; (batch, classes) scores are needed")
    return out


def _refuse_probabilities(module: nn.Module, input_shape: tuple[int, int, int], path: Path, key: str) -> None:
    if looks_like_probabilities(probe_outputs(module, input_shape)):
        raise file_error(key, path, "the model outputs probabilities (its rows sum to 1: a final softmax) that "
                                    "could not be removed; save it without its final softmax (training uses logits)")


def load_torchscript(path: Path, key: str, input_shape: tuple[int, int, int] | None,
                     fallback_shape: tuple[int, int, int] | None = None, trust: bool = False) -> ImportedModel:
    extra = {"input_shape": ""}
    check_archive(path, key)
    if not trust:
        check_torchscript_source(path, key)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise file_error(key, path, f"not a loadable TorchScript file ({first_line(exc)})") from None
    if not trust:
        check_torchscript(module, path, key)
    found = _shape_from(extra.get("input_shape") or None) or _shape_from(getattr(module, "input_shape", None))
    shape = _resolve_shape(input_shape, found, path, key, "TorchScript", fallback_shape)
    out = _probe(module, shape, path, key)
    _refuse_probabilities(module, shape, path, key)
    graph = OpaqueModuleGraph(module, shape, name=_type_name(module))
    dropouts = [m for m in module.modules() if _type_name(m) in _DROPOUT_NAMES]
    rates = [float(getattr(m, "p", 0.5)) for m in dropouts]
    notes = []
    traced = [m for m in module.modules() if _type_name(m) in _BN_NAMES and "training" not in _code(m)]
    if traced:
        notes.append(f"{len(traced)} batch norm layers were traced in one mode and keep it in training")

    def set_rate(rate: float) -> None:
        if any(abs(r - rate) > 1e-9 for r in rates):
            raise UserError(f"{path}: the dropout rates of a TorchScript model are constants ({rates}); "
                            f"training.dropout must equal them")

    return ImportedModel(graph=graph, input_shape=shape, num_outputs=int(out.shape[1]), has_dropout=bool(dropouts),
                         dropout_rate=rates[0] if rates else None, kind="torchscript", output_is_softmax=False,
                         path=path, name=graph.name, notes=notes, _set_dropout=set_rate)


def _code(module: nn.Module) -> str:
    try:
        return str(module.code)
    except Exception:  # noqa: BLE001 - modules without TorchScript code
        return "training"


class PickledPayload(Exception):
    """A torch.export archive asked to unpickle a payload (code could run) without --trust-model-file."""


@contextmanager
def _unpickling_refused() -> Iterator[None]:
    """``torch.export.load`` without code from the file: its pickled weights, constants and
    fall-backs (``torch.load(weights_only=False)``, ``pickle.loads``, TorchScript objects) load
    with PyTorch's weights-only unpickler or are refused. ``torch.export.save`` writes plain
    tensors and JSON, which load as before."""
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError:  # objects beyond tensors and containers: the unpickler that runs code
            raise PickledPayload("it holds a pickled object") from None

    def refuse(*args, **kwargs):
        raise PickledPayload("it holds a pickled object")

    with patch.object(torch, "load", weights_only_load), patch.object(pickle, "loads", refuse), \
            patch.object(torch._C, "_pickle_load_obj", refuse):
        yield


def load_torch_export(path: Path, key: str, input_shape: tuple[int, int, int] | None,
                      trust: bool = False, fallback_shape: tuple[int, int, int] | None = None) -> ImportedModel:
    check_archive(path, key)
    try:
        with nullcontext() if trust else _unpickling_refused():
            program = torch.export.load(str(path))
            if not trust:  # before module(): nothing of the program runs before its graphs are checked
                check_export(program.graph_module.modules(), path, key)
        gm = program.module(check_guards=False)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, PickledPayload):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise file_error(key, path, "a torch.export program with pickled objects: loading them runs code from "
                                        "the file; pass --trust-model-file only for a file you trust") from None
        raise file_error(key, path, f"not a loadable torch.export program ({first_line(exc)})") from None
    shape = _resolve_shape(input_shape, _export_input_shape(program), path, key, "torch.export", fallback_shape)
    module = ExportedModule(gm)
    stripped = module.strip_final_softmax()
    out = _probe(module, shape, path, key)
    _refuse_probabilities(module, shape, path, key)
    graph = OpaqueModuleGraph(module, shape, name="exported_program", layer_path="gm",
                              type_names=_export_type_names(gm))
    rates = module.dropout_rates()
    notes = []
    if stripped:
        notes.append("final softmax node removed (training uses logits)")
    if module.inference_batch_norms():
        notes.append(f"{module.inference_batch_norms()} batch norm nodes are inference-only in this program and "
                     "keep their statistics")
    return ImportedModel(graph=graph, input_shape=shape, num_outputs=int(out.shape[1]), has_dropout=bool(rates),
                         dropout_rate=rates[0] if rates else None, kind="torch_export", output_is_softmax=stripped,
                         path=path, name=graph.name, notes=notes, _set_dropout=module.set_dropout_rate)


def _strip_sequential_softmax(module: nn.Module) -> bool:
    if isinstance(module, nn.Sequential) and len(module) > 0:
        last = module[-1]
        if isinstance(last, (nn.Softmax, nn.LogSoftmax)) and last.dim in (1, -1):
            module[len(module) - 1] = nn.Identity()
            return True
        return _strip_sequential_softmax(last)
    return False


def load_pickled_module(path: Path, key: str, input_shape: tuple[int, int, int] | None,
                        trust: bool, fallback_shape: tuple[int, int, int] | None = None) -> ImportedModel:
    if not trust:
        raise file_error(key, path, f"{PICKLED_CODE}; pass --trust-model-file only for a file you trust (or "
                                    "save the model with "
                                    "torch.jit.save / torch.export.save / torch.onnx.export)")
    if is_zip(path):
        check_archive(path, key)
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - anything the unpickled code raises
        raise file_error(key, path, f"cannot load the pickled model ({first_line(exc)})") from None
    if isinstance(module, torch.jit.ScriptModule):
        raise file_error(key, path, "a pickled TorchScript module: save it with torch.jit.save")
    if not isinstance(module, nn.Module):
        raise file_error(key, path, f"the file holds a {type(module).__name__}, not a torch nn.Module")
    shape = _resolve_shape(input_shape, _shape_from(getattr(module, "input_shape", None)), path, key,
                           "pickled module", fallback_shape)
    stripped = _strip_sequential_softmax(module)
    out = _probe(module, shape, path, key)
    _refuse_probabilities(module, shape, path, key)
    try:
        graph = ModuleGraph(module, shape, name=type(module).__name__,
                            backbone_end_index=None)
    except Exception as exc:  # noqa: BLE001
        raise file_error(key, path, f"cannot index the model's layers ({first_line(exc)})") from None
    dropouts = [m for m in module.modules() if isinstance(m, _DropoutNd)]

    def set_rate(rate: float) -> None:
        for m in dropouts:
            m.p = rate

    notes = ["final nn.Softmax removed (training uses logits)"] if stripped else []
    return ImportedModel(graph=graph, input_shape=shape, num_outputs=int(out.shape[1]), has_dropout=bool(dropouts),
                         dropout_rate=float(dropouts[0].p) if dropouts else None, kind="pickled_module",
                         output_is_softmax=stripped, path=path, name=graph.name, notes=notes, _set_dropout=set_rate)

