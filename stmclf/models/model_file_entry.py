"""``model_file``: a user's model file (Keras .h5, ONNX, TorchScript, torch.export, pickled module)
as a registry entry, so that checkpoints of runs started from ``general.model_path`` rebuild it
(the file is read again, then the checkpoint's weights are loaded on top).

A pickled model file loads only with ``--trust-model-file`` on the command line
(:func:`stmclf.trust.model_files_trusted`). The spec never grants it: a ``trust_model_file`` value
in a config's ``training.model`` or in an older checkpoint's stored spec is ignored."""
from __future__ import annotations

from typing import Any

from stmclf.errors import ConfigError
from stmclf.models.graph import KerasGraph
from stmclf.models.heads import head_units
from stmclf.models.registry import register_model

NAME = "model_file"


@register_model(NAME, required=("name", "input_shape", "path"), optional=("trust_model_file",))
def model_file(*, num_classes: int, input_shape: tuple[int, int, int], dropout: float | None, path: str,
               trust_model_file: bool = False) -> KerasGraph:
    from stmclf.models.importers import load_model_file
    from stmclf.trust import model_files_trusted

    del trust_model_file  # accepted for older checkpoints' specs, never obeyed: only the command line grants it
    imported = load_model_file(path, trust_model_file=model_files_trusted(), input_shape=tuple(input_shape),
                               key="training.model.path")
    if imported.num_outputs != head_units(num_classes):
        raise ConfigError("general.model_path", f"the model in {path} has {imported.num_outputs} outputs, the "
                                                f"dataset {num_classes} classes")
    if dropout:
        imported.set_dropout_rate(float(dropout))
    graph = imported.graph
    graph.layer_index_offset = imported.layer_index_offset
    return graph


def model_file_spec(path: str, input_shape: Any) -> dict[str, Any]:
    return {"name": NAME, "path": str(path), "input_shape": [int(v) for v in input_shape]}
