"""Malformed Keras ``.h5`` files (hand-written with h5py, as a hostile file would be): every one is
a one-line error naming the file, never a traceback or an unbounded allocation; a model file's own
input shape obeys the bounds a config's has; weights stored outside the file (HDF5 external
storage, external links, virtual datasets) are refused before anything is read, and a weight's
declared shape is compared with its layer before it is read."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from stmclf.errors import UserError
from stmclf.models.importers import load_model_file
from stmclf.models.keras_weights import read_h5_layer_weights


def _sequential(*layers) -> str:
    return json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": list(layers)}})


def _input(shape) -> dict:
    return {"class_name": "InputLayer", "config": {"batch_input_shape": [None, *shape], "dtype": "float32",
                                                    "name": "in"}}


def _dense(units) -> dict:
    return {"class_name": "Dense", "config": {"name": "d", "units": units, "activation": "softmax", "use_bias": True}}


GAP = {"class_name": "GlobalAveragePooling2D", "config": {"name": "g"}}


def _zeros_kernel(group: h5py.Group, name: str) -> None:
    group.create_dataset(name, data=np.zeros((3, 2), np.float32))


def _write(path: Path, model_config, layer_names=(b"d",),
           kernel: Callable[[h5py.Group, str], None] = _zeros_kernel) -> Path:
    """A Keras 2 model file; ``kernel(group, name)`` writes the Dense kernel (3 × 2)."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = model_config
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = layer_names
        if isinstance(layer_names, tuple) and layer_names:
            dense = weights.create_group("d")
            dense.attrs["weight_names"] = [b"d/kernel:0", b"d/bias:0"]
            dense.create_dataset("d/bias:0", data=np.zeros(2, np.float32))
            kernel(dense, "d/kernel:0")
    return path


@pytest.mark.parametrize("name, model_config, layer_names, expected", [
    ("list", "[1, 2, 3]", (b"d",), "not a Keras model this importer can read"),
    ("int", 12345, (b"d",), "not a"),
    ("deep", "[" * 200000 + "]" * 200000, (b"d",), "nests deeper than 100 levels"),
    ("int-layers", _sequential(1, 2), (b"d",), "not a Keras model this importer can read"),
    ("negative-units", _sequential(_input([8, 8, 3]), GAP, _dense(-5)), (b"d",), "not a"),
    ("huge-units", _sequential(_input([8, 8, 3]), GAP, _dense(10**12)), (b"d",), "not a"),
    ("huge-input", _sequential(_input([200000, 200000, 3]), GAP, _dense(2)), (b"d",),
     r"the model's input shape: the height must be from 1 to 8,192 \(got 200000 in \(200000, 200000, 3\)\)"),
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


MODEL = _sequential(_input([8, 8, 3]), GAP, _dense(2))
OUTSIDE = "stmclf reads only weights stored inside the .h5"


def test_weights_in_another_local_file_are_refused_before_reading(tmp_path):
    """HDF5 external storage: the kernel's bytes would be read from any file the .h5 names (a
    password file, a key): refused, by the model importer and by the weights reader that
    ``pretrained_weights``/``pretrained_model_path`` use, so those bytes never reach a model."""
    secret = tmp_path / "passwd"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    path = _write(tmp_path / "ext.h5", MODEL, kernel=lambda group, name: group.create_dataset(
        name, shape=(3, 2), dtype="f4", external=[(str(secret), 0, 24)]))
    expected = f"{path}: layer 'd': weight 'd/kernel:0' is stored outside the file ({secret}); {OUTSIDE}"
    with pytest.raises(UserError) as info:
        load_model_file(path)
    assert str(info.value) == f"general.model_path: {expected}"
    with pytest.raises(UserError) as info:
        read_h5_layer_weights(path)
    assert str(info.value) == expected


def _other_file(tmp_path: Path) -> Path:
    """Another .h5 holding a Dense layer's weights (at ``d/d/...``) and a (3, 2) array ``k``."""
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("d/d/kernel:0", data=np.ones((3, 2), np.float32))
        f.create_dataset("d/d/bias:0", data=np.ones(2, np.float32))
        f.create_dataset("k", data=np.ones((3, 2), np.float32))
    return other


def _external_link(other: Path) -> Callable[[h5py.Group, str], None]:
    def write(group: h5py.Group, name: str) -> None:
        group[name] = h5py.ExternalLink(str(other), "k")
    return write


def _virtual(other: Path) -> Callable[[h5py.Group, str], None]:
    def write(group: h5py.Group, name: str) -> None:
        layout = h5py.VirtualLayout(shape=(3, 2), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "k", shape=(3, 2))
        group.create_virtual_dataset(name, layout)
    return write


def _soft_link(group: h5py.Group, name: str) -> None:
    group.file.create_dataset("elsewhere/k", data=np.ones((3, 2), np.float32))
    group[name] = h5py.SoftLink("/elsewhere/k")


def _layer_linked(other: Path) -> Callable[[h5py.Group, str], None]:
    def write(group: h5py.Group, name: str) -> None:  # the layer's whole group is in the other file
        weights = group.parent
        del weights["d"]
        weights["d"] = h5py.ExternalLink(str(other), "d")
        weights["d"].attrs["weight_names"] = [b"d/kernel:0", b"d/bias:0"]
    return write


@pytest.mark.parametrize("kind, expected", [
    ("external-link", rf"layer 'd': weight 'd/kernel:0' is a link to another file \(\S*other.h5\); {OUTSIDE}$"),
    ("layer-external-link", rf"layer 'd' is a link to another file \(\S*other.h5\); {OUTSIDE}$"),
    ("virtual", rf"layer 'd': weight 'd/kernel:0' is a virtual dataset \(.*\); {OUTSIDE}$"),
    ("soft-link", rf"layer 'd': weight 'd/kernel:0' is a link \(/elsewhere/k\), not data of its own; {OUTSIDE}$"),
    ("strings", r"layer 'd': weight 'd/kernel:0' is not a numeric array \(HDF5 type object\)$"),
    ("compound", r"layer 'd': weight 'd/kernel:0' is not a numeric array \(HDF5 type \[\('a', '<f4'\)"),
])
def test_weights_that_are_not_plain_arrays_in_the_file_are_refused(tmp_path, kind, expected):
    """External links, virtual datasets (whose data HDF5 reads from other files) and soft links
    (Keras writes none; they may lead through an external link) are refused without being followed;
    so is a weight that is not a numeric array."""
    other = _other_file(tmp_path)
    kernel = {"external-link": _external_link(other), "layer-external-link": _layer_linked(other),
              "virtual": _virtual(other), "soft-link": _soft_link,
              "strings": lambda group, name: group.create_dataset(name, data=[b"ab", b"cd", b"ef"]),
              "compound": lambda group, name: group.create_dataset(
                  name, data=np.zeros((3, 2), dtype=[("a", "f4"), ("b", "i4")]))}[kind]
    path = _write(tmp_path / f"{kind}.h5", MODEL, kernel=kernel)
    with pytest.raises(UserError) as info:
        load_model_file(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"general.model_path: {path}: "), text
    assert re.search(expected, text), text


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[:3]} did not finish within {timeout} s")


def test_a_fifo_as_external_storage_is_refused_without_hanging(tmp_path):
    """A weight stored in a named pipe: reading it would wait for a writer forever; ``stmclf
    predict`` exits 2 at once with one line."""
    from PIL import Image

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = _write(tmp_path / "fifo.h5", MODEL, kernel=lambda group, name: group.create_dataset(
        name, shape=(3, 2), dtype="f4", external=[(str(fifo), 0, 24)]))
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "0.png")
    config = tmp_path / "pred.yaml"
    config.write_text(f"operation_mode: prediction\nmlflow: {{uri: {tmp_path / 'mlruns'}}}\n"
                      f"hydra: {{run: {{dir: {tmp_path / 'run'}}}}}\n"
                      "preprocessing: {rescaling: {scale: 1/255, offset: 0}, resizing: {aspect_ratio: fit, "
                      "interpolation: bilinear}, color_mode: rgb}\n")
    proc = _run("-m", "stmclf", "predict", "--config", str(config), "--model", str(path),
                "--images", str(tmp_path / "imgs"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"stmclf: error: --model: {path}: layer 'd': weight 'd/kernel:0' is stored outside the file ({fifo}); "
        f"{OUTSIDE}")


# Loads the files given, in a process whose address space is capped 1 GiB above what its imports
# take: reading a weight of 4 GiB would fail there (MemoryError), instead of swapping the machine.
CAPPED_LOAD = """
import json, re, resource, sys
from pathlib import Path
from stmclf.errors import UserError
from stmclf.models.importers import load_model_file
size = int(re.search(r"VmSize:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, size + 2**30))
for path in sys.argv[1:]:
    try:
        print(json.dumps(["loaded", load_model_file(path).num_outputs]))
    except UserError as exc:
        print(json.dumps(["refused", str(exc)]))
"""


def test_a_weight_is_compared_with_its_layer_before_it_is_read(tmp_path):
    """A 10 KB file declaring a 32768 × 32768 float32 kernel (4 GiB; chunked, no chunk written)
    is refused by its shape, without reading it; a layer the model does not have (its weight
    declared as 16 GiB) is not read at all."""
    def huge(shape: tuple[int, int]) -> Callable[[h5py.Group, str], None]:
        def write(group: h5py.Group, name: str) -> None:
            group.create_dataset(name, shape=shape, dtype="f4", chunks=(1024, 1024), compression="gzip")
        return write

    big = _write(tmp_path / "big.h5", MODEL, kernel=huge((32768, 32768)))
    extra = _write(tmp_path / "extra.h5", MODEL, layer_names=(b"d", b"unused"))
    with h5py.File(extra, "r+") as f:
        group = f["model_weights"].create_group("unused")
        group.attrs["weight_names"] = [b"unused/kernel:0"]
        huge((65536, 65536))(group, "unused/kernel:0")
    assert big.stat().st_size < 100_000 and extra.stat().st_size < 100_000
    proc = _run("-c", CAPPED_LOAD, str(big), str(extra))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert results == [
        ["refused", f"general.model_path: {big}: layer 'd': a Keras weight of shape (32768, 32768) does not fit "
                    "(2, 3)"],
        ["loaded", 2]]
