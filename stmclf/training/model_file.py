"""stmclf model files: training checkpoints (``*.ckpt``) and weights-only models (``best_model.pt``).

Both are ``torch.save`` dictionaries of tensors and plain values, read with
``torch.load(weights_only=True)`` — nothing in them is unpickled as code. Both hold
``hyper_parameters`` (model spec, class names, input shape, rescaling, augmentation, optimizer)
and ``state_dict``, so either rebuilds the trained :class:`ClassifierModule`; values that came from
environment variables are stored as ``${NAME}`` and resolved when the file is read
(:mod:`stmclf.models.checkpoint_env`). The weights-only
file drops the optimizer, loop and callback states: it is what evaluation and export take.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stmclf.errors import ConfigError

MODEL_FORMAT = "stmclf-model/1"
BEST_MODEL_NAME = "best_model.pt"


def read_checkpoint(path: str | Path, key: str, batch: int = 1) -> dict[str, Any]:
    """Load a stmclf checkpoint or model file without unpickling arbitrary objects; its stored
    spec is checked with a config's rules (:func:`~stmclf.models.model_file_entry.check_stored_spec`, the
    memory estimate for batches of ``batch`` images)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, f"unable to find file {path}")
    from stmclf.models.importers.base import load_weights_only

    try:
        checkpoint = load_weights_only(file)
    except ValueError as exc:  # any failure means "not a stmclf file"
        raise ConfigError(key, f"{path} is not a stmclf checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("hyper_parameters"), dict) \
            or not isinstance(checkpoint.get("state_dict"), dict) \
            or not _REQUIRED_HPARAMS <= set(checkpoint["hyper_parameters"]) <= _module_arguments():
        raise ConfigError(key, f"{path} is not a stmclf checkpoint (expecting a file written by stmclf fit: "
                               f"last_augmented_model.ckpt, best_augmented_model.ckpt or {BEST_MODEL_NAME})")
    from stmclf.models.checkpoint_env import resolve_env_references
    from stmclf.models.model_file_entry import check_stored_spec, remember_source

    checkpoint = resolve_env_references(checkpoint, path, key)  # its ${NAME} references, from the environment
    check_stored_spec(checkpoint["hyper_parameters"], path, key, batch)  # before anything is built at its sizes
    remember_source(checkpoint, path)  # a run started from a model file rebuilds it without the file
    return checkpoint


_REQUIRED_HPARAMS = {"model_spec", "class_names", "input_shape"}


def _module_arguments() -> set[str]:
    """The keyword arguments :class:`ClassifierModule` takes: a checkpoint's hyper-parameters."""
    import inspect

    from stmclf.training.module import ClassifierModule

    return set(inspect.signature(ClassifierModule.__init__).parameters) - {"self"}


def write_model_file(checkpoint_path: Path, out: Path) -> Path:
    """The weights-only model of a training checkpoint."""
    from stmclf.config.interpolate import env_names
    from stmclf.models.checkpoint_env import ENV_NAMES_KEY, ENV_POSITIONS_KEY, value_at
    from stmclf.models.model_file_entry import SOURCE_KEY
    from stmclf.training.checkpoint_io import atomic_torch_save

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model = {"format": MODEL_FORMAT, "epoch": checkpoint.get("epoch"),
             "hyper_parameters": checkpoint["hyper_parameters"], "state_dict": checkpoint["state_dict"]}
    if SOURCE_KEY in checkpoint:  # the copy of the model file the run started from
        model[SOURCE_KEY] = checkpoint[SOURCE_KEY]
    if ENV_NAMES_KEY in checkpoint:  # the ${NAME}s its hyper-parameters hold, and where
        positions = [p for p in checkpoint.get(ENV_POSITIONS_KEY, []) if p[:1] == ["hyper_parameters"]]
        if ENV_POSITIONS_KEY not in checkpoint:  # written before the positions were: resolved by text
            model[ENV_NAMES_KEY] = checkpoint[ENV_NAMES_KEY]
        elif positions:
            texts = {tuple(p): (value_at(checkpoint, p)[1], None) for p in positions}
            model[ENV_NAMES_KEY] = sorted(env_names(texts))
            model[ENV_POSITIONS_KEY] = positions
    atomic_torch_save(model, out)
    return out


def load_classifier(path: str | Path, key: str = "general.model_path"):
    """The trained :class:`ClassifierModule` stored in ``path`` (eval mode, CPU)."""
    from stmclf.models.checkpoint_env import stored_env_refs
    from stmclf.models.model_file_entry import model_file_given
    from stmclf.training.module import ClassifierModule

    checkpoint = read_checkpoint(path, key)
    with model_file_given(key, path):  # a run started from a model file: errors about it name key and path
        module = ClassifierModule(**checkpoint["hyper_parameters"])
    module.env_refs = stored_env_refs(checkpoint)
    load_weights(module, checkpoint["state_dict"], path, key)
    return module.eval()


def load_weights(module: torch.nn.Module, state_dict: dict[str, Any], path: str | Path, key: str) -> None:
    """``module.load_state_dict(state_dict)``; weights that do not fit the model (missing or extra
    names, other shapes, values that are not tensors: a damaged or crafted file) are a one-line
    error naming ``key`` and the file."""
    bad = [name for name, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ConfigError(key, f"{path} does not match the model it describes (not a tensor: {bad[:3]})")
    expected = module.state_dict()
    shapes = [f"{name} {tuple(value.shape)} instead of {tuple(expected[name].shape)}"
              for name, value in state_dict.items() if name in expected and value.shape != expected[name].shape]
    if shapes:
        raise ConfigError(key, f"{path} does not match the model it describes (shape of {'; '.join(shapes[:3])})")
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ConfigError(key, f"{path} does not match the model it describes "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def dataset_class_names(cfg) -> list[str] | None:
    """The class names of the config's dataset (``dataset.class_names``, else the class folders of
    its first path), or None without a dataset."""
    dataset = getattr(cfg, "dataset", None)
    if dataset is None:
        return None
    if dataset.class_names:
        return sorted(dataset.class_names)  # label indices follow the sorted names, as in training
    from stmclf.data.datamodule import ImageDataModule, ImageFormat

    try:
        return list(ImageDataModule(dataset, ImageFormat(8, 8), batch_size=1, num_workers=0)
                    .prepare_splits().class_names)
    except ConfigError:
        return None


def import_model_file(source, cfg=None):
    """The model of an imported file (Keras, ONNX, torch: :mod:`stmclf.models.importers`) at the
    size it records, else at the config's ``training.model.input_shape`` (a torch file that records
    none); a size given beside one it records must match it. A pickled module loads only with the
    command line's ``--trust-model-file`` (:func:`stmclf.trust.model_files_trusted`)."""
    from stmclf.config.rules import check_model_file_input_shape, model_input_shape
    from stmclf.models.importers import load_model_file
    from stmclf.trust import model_files_trusted

    imported = load_model_file(source.path, trust_model_file=model_files_trusted(), key=source.key,
                               fallback_input_shape=model_input_shape(cfg) if cfg is not None else None)
    if cfg is not None:
        check_model_file_input_shape(cfg, source.path, imported.input_shape)
    return imported


def load_source_module(source, cfg=None, *, class_names=None):
    """The :class:`ClassifierModule` (eval mode, CPU) of any torch-readable model source
    (:class:`stmclf.models.source.ModelSource`): a stmclf file as trained, or an imported
    Keras/ONNX/torch model wrapped with the config's rescaling and the dataset's class names
    (``class_0`` … when there is no dataset). A torch file that records no input size takes the
    config's ``training.model.input_shape``; a pickled module loads only with the command line's
    ``--trust-model-file`` (:func:`stmclf.trust.model_files_trusted`, with or without ``cfg``).

    The module is kept in ``source.loaded``: the same source loaded again (an imported file: for the
    same ``cfg`` and ``class_names``), as by the check of a mode or command and then each of its
    stages, is that module; the file is not read again."""
    if source.kind == "stmclf":  # its own class names and rescaling: whatever the config
        memo = ("stmclf",)
    else:
        memo = (id(cfg), tuple(class_names) if class_names is not None else None)
    if memo in source.loaded:
        return source.loaded[memo][1]
    module = _load_source_module(source, cfg, class_names)
    source.loaded[memo] = (cfg, module)  # the config kept alive with it: its id is not reused
    return module


def _load_source_module(source, cfg, class_names):
    from stmclf.models.heads import head_units
    from stmclf.models.model_file_entry import model_file_given, model_file_spec
    from stmclf.training.module import ClassifierModule

    if source.kind == "stmclf":
        return load_classifier(source.path, source.key)
    imported = import_model_file(source, cfg)
    names = list(class_names) if class_names is not None else dataset_class_names(cfg)
    if names is None:
        names = [f"class_{i}" for i in range(max(imported.num_outputs, 2))]
    if head_units(len(names)) != imported.num_outputs:
        raise ConfigError(source.key, f"{source.path} has {imported.num_outputs} outputs, the dataset has "
                                      f"{len(names)} classes ({', '.join(names[:10])})")
    preprocessing = getattr(cfg, "preprocessing", None)
    rescaling = preprocessing.scale_offset() if preprocessing is not None else (1 / 255.0, 0.0)
    with model_file_given(source.key, imported=imported):  # the model read above, not a second import
        module = ClassifierModule(model_spec=model_file_spec(source.path.resolve(), imported.input_shape),
                                  class_names=names, input_shape=list(imported.input_shape),
                                  rescaling=(float(rescaling[0]), float(rescaling[1])), optimizer=None,
                                  dropout=imported.dropout_rate if imported.has_dropout else None)
    return module.eval()
