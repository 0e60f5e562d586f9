"""``stmclf summary --config x.yaml``: the model of ``training.model`` as a Keras-style layer table.

One row per Keras layer index (the indices ``training.frozen_layers`` and backbone transfer use):
index, name, Keras type, trainable, parameters (BatchNormalization moving statistics included, as
Keras counts them) and output shape; then Keras' totals (total, trainable, non-trainable). The
number of classes comes from ``--num_classes``, else ``dataset.class_names``, else the class
sub-folders of the first dataset path given; ``training.dropout`` and ``training.frozen_layers``
apply as in training. Pretrained weights are not loaded (they change no count).
"""
from __future__ import annotations

from typing import Any, TextIO

from stmclf.config.rules import MAX_CLASSES
from stmclf.errors import ConfigError
from stmclf.models.graph import KerasGraph


def _shape(shape: tuple[int, ...]) -> str:
    return "(None, " + ", ".join(str(d) for d in shape) + ")" if shape else "?"


def summary_totals(model: KerasGraph) -> tuple[int, int, int]:
    """Keras' (total, trainable, non-trainable) parameter counts."""
    total, trainable = model.keras_param_count(), model.keras_trainable_count()
    return total, trainable, total - trainable


def render_summary(model: KerasGraph, file: TextIO | None = None, width: int | None = None) -> None:
    """Print the layer table and totals of ``model`` with Rich."""
    from rich.table import Table

    from stmclf.console import data_console

    console = data_console(file, width)
    end = model.backbone_end_index
    table = Table(title=f"Model: {model.name}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("Layer", overflow="fold")
    table.add_column("Type")
    table.add_column("Trainable")
    table.add_column("Params", justify="right")
    table.add_column("Output shape")
    for row in model.layer_table():
        name = row.name + (" ◂ backbone end" if end is not None and row.index == end else "")
        table.add_row(str(row.index), name, row.keras_type, "yes" if row.trainable else "no", f"{row.params:,}",
                      _shape(row.output_shape))
    console.print(table)
    total, trainable, frozen = summary_totals(model)
    console.print(f"Total params: {total:,}")
    console.print(f"Trainable params: {trainable:,}")
    console.print(f"Non-trainable params: {frozen:,}")
    console.print(f"Layers: {model.num_layers} (indices 0..{model.num_layers - 1})"
                  + (f"; backbone transfer copies layers 0..{end}" if end is not None else ""))


def class_count(cfg: Any) -> int:
    """Classes from ``dataset.class_names`` or from the class folders of the dataset paths."""
    from stmclf.data.folder import infer_class_names

    dataset = cfg.dataset
    if dataset is None:
        raise ConfigError("dataset", "missing: give dataset.class_names, a dataset path or --num_classes")
    if dataset.class_names:
        return len(dataset.class_names)
    paths = [("dataset.training_path", dataset.training_path), ("dataset.validation_path", dataset.validation_path),
             ("dataset.test_path", dataset.test_path), ("dataset.quantization_path", dataset.quantization_path)]
    if not any(path for _, path in paths):
        raise ConfigError("dataset.class_names", "give dataset.class_names, a dataset path or --num_classes")
    return len(infer_class_names(paths))


def build_configured_model(cfg: Any, num_classes: int | None = None) -> KerasGraph:
    """The model of ``training.model`` with the config's classes, dropout and frozen layers."""
    from stmclf.models import build_model
    from stmclf.models.frozen import frozen_indices

    training = cfg.training
    if training is None or not training.model:
        raise ConfigError("training.model", "missing: stmclf summary shows the model of training.model")
    if cfg.general.model_path:  # a model file (training.model: {input_shape: ...} beside it, or a second source)
        raise ConfigError("general.model_path", "stmclf summary shows the layers of a training.model (name, "
                                                "version, ...), not of a model file")
    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError("--num_classes", f"expected an integer from 1 to {MAX_CLASSES:,}, got {num_classes}")
    classes = num_classes if num_classes is not None else class_count(cfg)
    model = build_model(dict(training.model), num_classes=classes, dropout=training.dropout)
    if training.frozen_layers is not None:
        model.set_frozen(frozen_indices(training.frozen_layers, model.num_layers))
    return model
