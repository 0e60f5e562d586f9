"""Bring your own model: ``general.model_path`` files read as trainable models.

    from stmclf.models.importers import load_model_file

    imported = load_model_file("my_model.h5")            # or .onnx, TorchScript, torch.export .pt2
    imported.check_dropout(cfg.training.dropout)          # the reference's dropout rule
    imported.apply_frozen_layers(cfg.training.frozen_layers)
    model = imported.graph                                # NCHW float images → logits

The kind of file is told from its content, not its name (:func:`detect_kind`):

* ``keras_h5`` — a full Keras model saved by tf_keras / Keras 2 (``model.save("x.h5")``), rebuilt
  layer for layer as a :class:`~stmclf.models.graph.KerasGraph` (same names, types and order:
  ``frozen_layers`` indices mean the same layers) without importing TensorFlow
  (:mod:`.keras_h5`);
* ``onnx`` — a float ONNX model converted to a torch module, one layer per ONNX node
  (:mod:`.onnx_graph`);
* ``torchscript`` / ``torch_export`` / ``pickled_module`` — torch files (:mod:`.torch_files`); a
  pickled module runs code from the file when loaded and needs ``trust_model_file=True``; so does
  TorchScript / torch.export code that does more than compute (:mod:`.torch_code`).

Every kind ends in logits: a final softmax is removed when the file has one
(``ImportedModel.output_is_softmax``). Anything else is a one-line :class:`UserError` naming the
file and the supported kinds.
"""
from __future__ import annotations

from pathlib import Path

from stmclf.config.rules import check_input_shape
from stmclf.errors import ConfigError
from stmclf.models.importers.base import (KINDS, SUPPORTED_TEXT, ImportedModel, detect_kind, file_error,
                                          named_allocation_failure, require_model_file, resave_hint)

__all__ = ["ImportedModel", "KINDS", "detect_kind", "load_model_file"]


def load_model_file(path: str | Path, *, trust_model_file: bool = False, key: str = "general.model_path",
                    input_shape: tuple[int, int, int] | None = None,
                    fallback_input_shape: tuple[int, int, int] | None = None) -> ImportedModel:
    """Read a model file as an :class:`ImportedModel` (CPU, train mode, all layers trainable).

    ``input_shape`` (height, width, channels) is needed for torch files that do not record it
    (TorchScript, pickled modules); for Keras and ONNX files, which fix it, a different value is an
    error. ``fallback_input_shape`` (the config's ``training.model.input_shape``) is used only by a
    torch file that records no input size; other files ignore it. Errors are one-line
    :class:`~stmclf.errors.ConfigError`\\ s under ``key``.
    """
    file = require_model_file(path, key)
    try:
        kind = detect_kind(file)
    except OSError as exc:
        raise file_error(key, file, f"cannot read the file ({exc.strerror or exc})") from None
    with named_allocation_failure(key, file):  # a file describing a model too big for the memory
        if kind == "keras_h5":
            from stmclf.models.importers.keras_h5 import load_keras_h5

            imported = load_keras_h5(file, key)
        elif kind == "onnx":
            from stmclf.models.importers.onnx_graph import load_onnx

            imported = load_onnx(file, key)
        elif kind == "torchscript":
            from stmclf.models.importers.torch_files import load_torchscript

            imported = load_torchscript(file, key, input_shape, fallback_input_shape, trust_model_file)
        elif kind == "torch_export":
            from stmclf.models.importers.torch_files import load_torch_export

            imported = load_torch_export(file, key, input_shape, trust_model_file, fallback_input_shape)
        elif kind == "pickled_module":
            from stmclf.models.importers.torch_files import load_pickled_module

            imported = load_pickled_module(file, key, input_shape, trust_model_file, fallback_input_shape)
        elif kind == "stmclf_checkpoint":
            raise file_error(key, file, "a stmclf checkpoint / model file, not a model to import: it is read as a "
                                        "stmclf model (stmclf.training.model_file)")
        elif kind == "state_dict":
            raise file_error(key, file, "a state dict holds weights only, not a model; supported: " + SUPPORTED_TEXT)
        else:
            raise file_error(key, file, "unsupported model file; supported: " + SUPPORTED_TEXT + resave_hint(file))
    _check_input_shape(key, file, imported.input_shape)
    if input_shape is not None and kind in ("keras_h5", "onnx") and tuple(input_shape) != imported.input_shape:
        raise file_error(key, file, f"the model's input shape is {imported.input_shape}, not {tuple(input_shape)}")
    imported.graph.train()
    return imported


def _check_input_shape(key: str, file: Path, shape) -> None:
    """The bounds a config's ``training.model.input_shape`` has (:func:`rules.check_input_shape`)
    hold for a model file's own input shape too: a file cannot make the loader allocate without limit."""
    try:
        check_input_shape("the model's input shape", list(shape))
    except ConfigError as exc:
        raise file_error(key, file, str(exc)) from None
