"""Malformed Keras ``.h5`` files (hand-written with h5py, as a hostile file would be): every one is
a one-line error naming the file, never a traceback or an unbounded allocation; a model file's own
input shape obeys the bounds a config's has."""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from stmclf.errors import UserError
from stmclf.models.importers import load_model_file


def _sequential(*layers) -> str:
    return json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": list(layers)}})


def _input(shape) -> dict:
    return {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *shape], "dtype": "float32",
                                                    "name": "in"}}


def _dense(units) -> dict:
    return {"class_name": "Dense", "config": {"name": "d", "units": units, "activation": "softmax", "use_bias": True}}


GAP = {"class_name": "GlobalAveragePooling2D", "config": {"name": "g"}}


def _write(path: Path, model_config, layer_names=(b"d",)) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = model_config
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = layer_names
        if isinstance(layer_names, tuple) and layer_names:
            dense = weights.create_group("d")
            dense.attrs["weight_names"] = [b"d/kernel:0", b"d/bias:0"]
            dense.create_dataset("d/kernel:0", data=np.zeros((3, 2), np.float32))
            dense.create_dataset("d/bias:0", data=np.zeros(2, np.float32))
    return path


@pytest.mark.parametrize("name, model_config, layer_names, expected", [
    ("list", "[1, 2, 3]", (b"d",), "not a Keras model this importer can read"),
    ("int", 12345, (b"d",), "not a"),
    ("deep", "[" * 200000 + "]" * 200000, (b"d",), "nests deeper than 100 levels"),
    ("int-layers", _sequential(1, 2), (b"d",), "not a Keras model this importer can read"),
    ("negative-units", _sequential(_input([8, 8, 3]), GAP, _dense(-5)), (b"d",), "not a"),
    ("huge-units", _sequential(_input([8, 8, 3]), GAP, _dense(10**12)), (b"d",), "not a"),
    ("huge-input", _sequential(_input([200000, 200000, 3]), GAP, _dense(2)), (b"d",),
     r"input shape \(200000, 200000, 3\) is out of bounds"),
    ("layer-names-int", _sequential(_input([8, 8, 3]), GAP, _dense(2)), 5, "not a"),
])
def test_malformed_h5_is_one_line_naming_the_file(tmp_path, name, model_config, layer_names, expected):
    path = _write(tmp_path / f"{name}.h5", model_config, layer_names)
    with pytest.raises(UserError) as info:
        load_model_file(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"general.model_path: {path}: ")
    assert text.count(str(path)) == 1
    assert re.search(expected, text), text


def test_the_same_file_well_formed_loads(tmp_path):
    imported = load_model_file(_write(tmp_path / "ok.h5", _sequential(_input([8, 8, 3]), GAP, _dense(2))))
    assert imported.input_shape == (8, 8, 3) and imported.num_outputs == 2
