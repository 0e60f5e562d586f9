"""CIFAR-10/100 from the official archive layouts: python pickles (restricted unpickling) and the
binary version, the reference's split semantics, class names, and ArraySource loading."""
from __future__ import annotations

import logging
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stmclf.config.sections import Dataset
from stmclf.data.cifar import (CIFAR10_LABEL_NAMES, CIFAR100_COARSE_LABEL_NAMES, CIFAR100_FINE_LABEL_NAMES,
                               ArraySource, load_pickle)
from stmclf.data.datamodule import ImageDataModule, ImageFormat
from stmclf.data.folder import FileList, make_splits
from stmclf.data.resize import resize_image
from stmclf.errors import ConfigError, UserError

from conftest import write_image_folder

TRAIN_PER_BATCH, N_TEST = 4, 5
FMT32 = ImageFormat(32, 32)


# ---------------------------------------------------------------- writers of the official formats

class _Py2StylePickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as the official files (cPickle,
    protocol 2, Python 2) do; loaded with encoding="bytes" they come back as bytes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str8(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def dump(obj, path: Path, style: str = "py2") -> None:
    """py2: like the official files (numpy 1 module names); py3-2 / py3-5: ``pickle.dump`` under
    this numpy (≥ 2: ``numpy._core``) with protocol 2 / 5."""
    if style == "py2":
        import io

        buffer = io.BytesIO()
        _Py2StylePickler(buffer, protocol=2).dump(obj)
        data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"numpy._core" not in data and b"_codecs" not in data
        path.write_bytes(data)
    else:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=int(style.split("-")[1]))


def planar(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def nhwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def write_cifar10_python(root: Path, style: str = "py2", meta_names=CIFAR10_LABEL_NAMES) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = N_TEST if name == "test_batch" else TRAIN_PER_BATCH
        data, labels = planar(n, i), [(3 * i + j) % 10 for j in range(n)]
        dump({b"batch_label": f"batch {i}".encode(), b"labels": labels, b"data": data,
              b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]}, root / name, style)
        batches[name] = (data, labels)
    if meta_names is not None:
        dump({b"num_cases_per_batch": TRAIN_PER_BATCH, b"label_names": [n.encode() for n in meta_names],
              b"num_vis": 3072}, root / "batches.meta", style)
    return batches


def write_cifar100_python(root: Path, style: str = "py2") -> dict:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, n) in enumerate((("train", 12), ("test", 6))):
        data = planar(n, 10 + i)
        fine = [(7 * j + i) % 100 for j in range(n)]
        coarse = [(3 * j + i) % 20 for j in range(n)]
        dump({b"filenames": [b"x.png"] * n, b"batch_label": b"training", b"fine_labels": fine,
              b"coarse_labels": coarse, b"data": data}, root / name, style)
        out[name] = (data, fine, coarse)
    dump({b"fine_label_names": [n.encode() for n in CIFAR100_FINE_LABEL_NAMES],
          b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_LABEL_NAMES]}, root / "meta", style)
    return out


def write_cifar10_binary(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        n = N_TEST if name == "test_batch.bin" else TRAIN_PER_BATCH
        data, labels = planar(n, 20 + i), np.array([(i + 4 * j) % 10 for j in range(n)], np.uint8)
        (root / name).write_bytes(np.concatenate([labels[:, None], data], axis=1).tobytes())
        batches[name] = (data, labels.tolist())
    (root / "batches.meta.txt").write_text("\n".join(CIFAR10_LABEL_NAMES) + "\n\n")
    return batches


def write_cifar100_binary(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, n) in enumerate((("train.bin", 8), ("test.bin", 3))):
        data = planar(n, 30 + i)
        coarse = np.array([(5 * j + i) % 20 for j in range(n)], np.uint8)
        fine = np.array([(11 * j + i) % 100 for j in range(n)], np.uint8)
        (root / name).write_bytes(np.concatenate([coarse[:, None], fine[:, None], data], axis=1).tobytes())
        out[name] = (data, fine.tolist(), coarse.tolist())
    (root / "fine_label_names.txt").write_text("\n".join(CIFAR100_FINE_LABEL_NAMES) + "\n")
    (root / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE_LABEL_NAMES) + "\n")
    return out


def loaded(source) -> np.ndarray:
    return np.stack([source.load(i, FMT32) for i in range(len(source))])


def check_cifar10(splits, batches, seed: int, names=CIFAR10_LABEL_NAMES, suffix: str = "") -> None:
    train_names = [f"data_batch_{k}{suffix}" for k in range(1, 6)]
    train_rows = np.concatenate([batches[n][0] for n in train_names])
    train_labels = sum((list(batches[n][1]) for n in train_names), [])
    order = np.random.RandomState(seed).permutation(len(train_labels))
    assert splits.class_names == list(names)
    assert len(splits.train) == 5 * TRAIN_PER_BATCH and len(splits.valid) == N_TEST
    assert splits.train.labels == [train_labels[i] for i in order]
    np.testing.assert_array_equal(loaded(splits.train), nhwc(train_rows)[order])
    test_rows, test_labels = batches[f"test_batch{suffix}"]
    assert splits.valid.labels == list(test_labels)  # the test batch, in file order
    np.testing.assert_array_equal(loaded(splits.valid), nhwc(test_rows))
    assert splits.quantization is splits.train and splits.test is None and splits.evaluation is splits.valid


# ---------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("style", ["py2", "py3-2", "py3-5"])
def test_cifar10_python_batches(tmp_path, style):
    batches = write_cifar10_python(tmp_path / "c10", style)
    splits = make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "c10"), seed=7))
    check_cifar10(splits, batches, seed=7)
    # messages name the file and the row inside it
    row = int(np.random.RandomState(7).permutation(20)[0])
    assert splits.train.describe(0) == f"cifar10:{tmp_path / 'c10' / f'data_batch_{row // 4 + 1}'}#{row % 4}"
    assert splits.valid.describe(2) == f"cifar10:{tmp_path / 'c10' / 'test_batch'}#2"


def test_cifar10_official_pickle_really_uses_python2_strings(tmp_path):
    write_cifar10_python(tmp_path, "py2")
    raw = (tmp_path / "data_batch_1").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"U\x04data" in raw  # SHORT_BINSTRING key
    batch = load_pickle(tmp_path / "data_batch_1")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (TRAIN_PER_BATCH, 3072)


def test_train_shuffle_follows_the_seed(tmp_path):
    write_cifar10_python(tmp_path)
    a, b, c = (make_splits(Dataset(name="cifar10", training_path=str(tmp_path), seed=s)) for s in (1, 1, 2))
    assert a.train.labels == b.train.labels and list(a.train.indices) == list(b.train.indices)
    assert list(a.train.indices) != list(c.train.indices)
    assert list(a.valid.indices) == list(c.valid.indices) == list(range(N_TEST))
    default = make_splits(Dataset(name="CIFAR10", training_path=str(tmp_path), seed=None))  # name: any case
    assert list(default.train.indices) == list(np.random.RandomState(123).permutation(20))


def test_label_names_from_meta_or_builtin(tmp_path):
    custom = [f"class_{i}" for i in range(10)]
    write_cifar10_python(tmp_path / "meta", meta_names=custom)
    assert make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "meta"))).class_names == custom
    write_cifar10_python(tmp_path / "nometa", meta_names=None)
    splits = make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "nometa")))
    assert splits.class_names == list(CIFAR10_LABEL_NAMES)


@pytest.mark.parametrize("names, problem", [
    ([f"c{i}" for i in range(9)] + ["c0"], r"label name 9 'c0' is not unique"),
    (["plane\n2026 INFO Float model accuracy : 99.99 %"] + [f"c{i}" for i in range(9)],
     r"label name 0 'plane\\n2026 INFO .*' holds the control character '\\n'"),
    ([f"c{i}" for i in range(9)] + ["\x1b[2Jtruck"], r"label name 9 '\\x1b\[2Jtruck' holds the control character '\\x1b'"),
])
def test_label_names_from_a_meta_file_must_be_unique_printable_text(tmp_path, names, problem):
    """The meta file's label names become the class names (logs, reports, C headers) unchecked: a
    duplicate, a line break (a forged log line) or an escape sequence went through; now the same
    rule as for ``dataset.class_names``, one line naming the file."""
    write_cifar10_python(tmp_path / "meta", meta_names=names)
    with pytest.raises(UserError, match=r"^.*/meta/batches\.meta: " + problem) as info:
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "meta")))
    assert len(str(info.value).splitlines()) == 1 and "\x1b" not in str(info.value)


def test_given_class_names(tmp_path):
    write_cifar10_python(tmp_path)
    mine = [f"c{i}" for i in range(10)][::-1]
    assert make_splits(Dataset(name="cifar10", training_path=str(tmp_path), class_names=mine)).class_names == mine
    shuffled = list(CIFAR10_LABEL_NAMES[5:] + CIFAR10_LABEL_NAMES[:5])  # the official names: official order
    splits = make_splits(Dataset(name="cifar10", training_path=str(tmp_path), class_names=shuffled))
    assert splits.class_names == list(CIFAR10_LABEL_NAMES)
    with pytest.raises(ConfigError, match=r"^dataset.class_names: CIFAR-10 has 10 classes \(got 9 names\)$"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path), class_names=mine[:9]))


def test_cifar10_binary(tmp_path):
    batches = write_cifar10_binary(tmp_path)
    splits = make_splits(Dataset(name="cifar10", training_path=str(tmp_path), seed=3))
    check_cifar10(splits, batches, seed=3, suffix=".bin")


def test_archive_directory_inside_training_path(tmp_path):
    batches = write_cifar10_python(tmp_path / "cifar-10-batches-py")
    check_cifar10(make_splits(Dataset(name="cifar10", training_path=str(tmp_path), seed=4)), batches, seed=4)


# ---------------------------------------------------------------- CIFAR-100

@pytest.mark.parametrize("style", ["py2", "py3-2"])
def test_cifar100_fine_by_default_coarse_with_20_names(tmp_path, style):
    files = write_cifar100_python(tmp_path, style)
    order = np.random.RandomState(9).permutation(12)
    fine = make_splits(Dataset(name="cifar100", training_path=str(tmp_path), seed=9))
    assert fine.class_names == list(CIFAR100_FINE_LABEL_NAMES) and len(fine.class_names) == 100
    assert fine.train.labels == [files["train"][1][i] for i in order]
    assert fine.valid.labels == files["test"][1]
    np.testing.assert_array_equal(loaded(fine.train), nhwc(files["train"][0])[order])
    np.testing.assert_array_equal(loaded(fine.valid), nhwc(files["test"][0]))

    coarse = make_splits(Dataset(name="cifar100", training_path=str(tmp_path), seed=9,
                                 class_names=list(CIFAR100_COARSE_LABEL_NAMES)))
    assert coarse.class_names == list(CIFAR100_COARSE_LABEL_NAMES)
    assert coarse.train.labels == [files["train"][2][i] for i in order]
    assert coarse.valid.labels == files["test"][2]
    named = make_splits(Dataset(name="cifar100", training_path=str(tmp_path),
                                class_names=[f"n{i}" for i in range(100)]))
    assert named.valid.labels == files["test"][1] and named.class_names[0] == "n0"


def test_cifar100_class_count_must_be_100_or_20(tmp_path):
    write_cifar100_python(tmp_path)
    with pytest.raises(ConfigError, match=r"CIFAR-100 has 100 fine or 20 coarse classes \(got 50 names\)"):
        make_splits(Dataset(name="cifar100", training_path=str(tmp_path), class_names=[f"n{i}" for i in range(50)]))


def test_official_cifar100_lists_are_in_label_order():
    assert len(CIFAR100_FINE_LABEL_NAMES) == len(set(CIFAR100_FINE_LABEL_NAMES)) == 100
    assert len(CIFAR100_COARSE_LABEL_NAMES) == len(set(CIFAR100_COARSE_LABEL_NAMES)) == 20
    assert CIFAR100_FINE_LABEL_NAMES[:3] == ("apple", "aquarium_fish", "baby")
    assert CIFAR100_FINE_LABEL_NAMES[39] == "keyboard" and CIFAR100_FINE_LABEL_NAMES[-1] == "worm"


def test_cifar100_binary(tmp_path):
    files = write_cifar100_binary(tmp_path)
    order = np.random.RandomState(123).permutation(8)
    fine = make_splits(Dataset(name="cifar100", training_path=str(tmp_path)))
    assert fine.train.labels == [files["train.bin"][1][i] for i in order]
    assert fine.valid.labels == files["test.bin"][1] and fine.class_names == list(CIFAR100_FINE_LABEL_NAMES)
    np.testing.assert_array_equal(loaded(fine.train), nhwc(files["train.bin"][0])[order])
    coarse = make_splits(Dataset(name="cifar100", training_path=str(tmp_path), class_names=[f"s{i}" for i in range(20)]))
    assert coarse.train.labels == [files["train.bin"][2][i] for i in order]
    assert coarse.valid.labels == files["test.bin"][2]


# ---------------------------------------------------------------- errors

def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^dataset.training_path: expecting the CIFAR-10 python batches "
                                          r"data_batch_1..5 and test_batch \(or the binary version"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "empty")))
    write_cifar10_python(tmp_path / "partial")
    (tmp_path / "partial" / "test_batch").unlink()
    with pytest.raises(ConfigError, match=r"\(missing in .*partial: test_batch\)$"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "partial")))
    with pytest.raises(ConfigError, match=r"expecting the CIFAR-100 python files train and test"):
        make_splits(Dataset(name="cifar100", training_path=str(tmp_path / "partial")))
    with pytest.raises(ConfigError, match=r"unable to find the CIFAR-10 directory"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"^dataset.training_path: missing"):
        make_splits(Dataset(name="cifar10"))


def test_emnist_is_not_supported():
    with pytest.raises(ConfigError, match=r"^dataset.name: emnist is not supported yet$"):
        make_splits(Dataset(name="emnist", training_path="/nowhere"))


def test_corrupt_batches_are_one_line_errors(tmp_path):
    write_cifar10_python(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(UserError, match=r"data_batch_2: not a readable CIFAR python batch") as info:
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path)))
    assert "\n" not in str(info.value)
    dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, tmp_path / "data_batch_2")
    with pytest.raises(UserError, match=r"data_batch_2: expecting 'data' as a uint8 \(N, 3072\) array"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path)))
    dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, tmp_path / "data_batch_2")
    with pytest.raises(UserError, match=r"data_batch_2: labels outside 0..9"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path)))
    (tmp_path / "bin").mkdir()
    write_cifar10_binary(tmp_path / "bin")
    (tmp_path / "bin" / "test_batch.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(UserError, match=r"test_batch.bin: size 3000 is not a multiple of the 3073-byte"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "bin")))


class _StridedView:
    """Pickles to ``numpy.ndarray(shape, dtype, buffer, 0, strides)``: an allowed constructor that
    repeats a few bytes as often as it likes."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return np.ndarray, (self.shape, np.dtype(self.dtype), b"\0" * 8, 0, (0,) * len(self.shape))


def test_a_batch_whose_arrays_repeat_their_bytes_is_refused(tmp_path):
    """285 bytes on disk made 400,000 images (3 GB in memory, a 1.2 GB cache file)."""
    write_cifar10_python(tmp_path)
    bomb = {b"data": _StridedView((400_000, 3072), "u1"), b"labels": _StridedView((400_000,), "i8")}
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(bomb, protocol=2))
    assert (tmp_path / "data_batch_2").stat().st_size < 400
    with pytest.raises(UserError, match=r"data_batch_2: 'data' repeats its bytes \(strides \(0, 0\)\): not a CIFAR"):
        make_splits(Dataset(name="cifar10", training_path=str(tmp_path)))


class _Exploit:
    """Pickles to a call of ``func(*args)``: what a hostile batch file would contain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_payloads(marker: Path):
    import builtins
    import os
    import subprocess

    create = f"open({str(marker)!r}, 'w').close()"
    return {
        "exec": _Exploit(builtins.exec, create),
        "eval": _Exploit(builtins.eval, create),
        "os.system": _Exploit(os.system, f"touch {marker}"),
        "subprocess.Popen": _Exploit(subprocess.Popen, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("payload", ["exec", "eval", "os.system", "subprocess.Popen"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, payload, protocol):
    root = tmp_path / "c10"
    write_cifar10_python(root)
    marker = tmp_path / "pwned"
    exploit = _hostile_payloads(marker)[payload]
    hostile = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"filenames": exploit}
    (root / "data_batch_3").write_bytes(pickle.dumps(hostile, protocol=protocol))
    if payload == "exec":  # the payload is live: a plain pickle.load would create the marker
        pickle.loads((root / "data_batch_3").read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UserError) as info:
        make_splits(Dataset(name="cifar10", training_path=str(root)))
    message = str(info.value)
    assert "\n" not in message and str(root / "data_batch_3") in message
    refused = {"exec": "builtins.exec", "eval": "builtins.eval", "os.system": "posix.system",
               "subprocess.Popen": "subprocess.Popen"}[payload]
    assert "refusing to unpickle global" in message and refused in message
    assert not marker.exists()


def test_codecs_encode_is_only_latin1(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x0a\x00\x00\x00zlib_codec\x86R.")
    with pytest.raises(UserError, match=r"only allowed to turn latin1 text into bytes"):
        load_pickle(path)


# ---------------------------------------------------------------- ArraySource

@pytest.fixture()
def source() -> ArraySource:
    images = nhwc(planar(6, 42)).copy()
    return ArraySource(images, [0, 1, 2, 3, 4, 5], "test", [("/data/a", 4), ("/data/b", 2)],
                       indices=np.array([5, 3, 1, 0, 2, 4]))


def test_array_source_colour_modes_and_resize(source):
    image = source.images[5]
    np.testing.assert_array_equal(source.load(0, FMT32), image)
    big = source.load(0, ImageFormat(40, 40, interpolation="bilinear"))
    assert big.shape == (40, 40, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(big, resize_image(image, 40, 40, "bilinear"))
    gray = source.load(0, ImageFormat(32, 32, color_mode="grayscale"))
    assert gray.shape == (32, 32, 1)
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(image).convert("L")))  # as decode_image
    gray40 = source.load(0, ImageFormat(40, 40, color_mode="grayscale", interpolation="nearest"))
    assert gray40.shape == (40, 40, 1)
    rgba = source.load(0, ImageFormat(32, 32, color_mode="rgba"))
    assert rgba.shape == (32, 32, 4) and (rgba[..., 3] == 255).all()
    np.testing.assert_array_equal(rgba[..., :3], image)
    wide = source.load(0, ImageFormat(32, 48, aspect_ratio="padding"))  # scaled + centre crop, as Keras Resizing
    np.testing.assert_array_equal(wide, resize_image(image, 32, 48, "bilinear", "crop"))


def test_array_source_subset_describe_identity(source):
    part = source.subset(1, 4)
    assert len(part) == 3 and part.labels == [1, 2, 3] and list(part.indices) == [3, 1, 0]
    np.testing.assert_array_equal(part.load(0, FMT32), source.images[3])
    assert source.describe(0) == "test:/data/b#1" and part.describe(0) == "test:/data/a#3"
    assert source.cache_identity() != part.cache_identity()
    assert source.cache_identity() == source.subset(0).cache_identity()


def test_cache_identity_is_cheap_and_tracks_files(tmp_path):
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(b"x")
    images = np.broadcast_to(np.zeros((1, 32, 32, 3), np.uint8), (50_000, 32, 32, 3))
    big = ArraySource(images, np.zeros(50_000, np.int64), "cifar10", [(str(batch), 50_000)],
                      indices=np.random.RandomState(0).permutation(50_000))
    start = time.perf_counter()
    identity = big.cache_identity()
    assert time.perf_counter() - start < 0.05 and len(identity) == 3
    batch.write_bytes(b"xy")  # another size: another identity
    again = ArraySource(images, np.zeros(50_000, np.int64), "cifar10", [(str(batch), 50_000)], indices=big.indices)
    assert again.cache_identity() != identity


# ---------------------------------------------------------------- other paths and the data module

def test_validation_path_ignored_test_path_is_a_folder(tmp_path, caplog):
    write_cifar10_python(tmp_path / "c10")
    classes = {"cat": (200, 0, 0), "airplane": (0, 0, 200), "truck": (0, 200, 0)}
    write_image_folder(tmp_path / "test", per_class=2, size=(32, 32), classes=classes)
    names = ["truck", "cat", "airplane"] + [f"x{i}" for i in range(7)]
    for name in names[3:]:
        (tmp_path / "test" / name).mkdir()
    with caplog.at_level(logging.WARNING, logger="stmclf.data.cifar"):
        splits = make_splits(Dataset(name="cifar10", training_path=str(tmp_path / "c10"),
                                     validation_path=str(tmp_path / "ignored"), test_path=str(tmp_path / "test"),
                                     class_names=names))
    assert "validation_path is ignored" in caplog.text
    assert len(splits.valid) == N_TEST and isinstance(splits.test, FileList) and len(splits.test) == 6
    assert splits.class_names == names and splits.evaluation is splits.test
    for path, label in zip(splits.test.paths, splits.test.labels):  # labels follow class_names order
        assert Path(path).parent.name == names[label]


def test_test_path_without_training_path(tmp_path):
    write_image_folder(tmp_path / "test", per_class=1, size=(32, 32),
                       classes={name: (10 * i, 0, 0) for i, name in enumerate(CIFAR10_LABEL_NAMES)})
    splits = make_splits(Dataset(name="cifar10", test_path=str(tmp_path / "test")))
    assert splits.train is None and splits.valid is None and len(splits.test) == 10
    assert splits.class_names == list(CIFAR10_LABEL_NAMES)


def test_datamodule_batches_from_cifar(tmp_path):
    batches = write_cifar10_python(tmp_path)
    module = ImageDataModule(Dataset(name="cifar10", training_path=str(tmp_path), seed=5), FMT32,
                             batch_size=8, num_workers=0)
    module.setup("fit")
    assert module.class_names == list(CIFAR10_LABEL_NAMES)
    images, labels = next(iter(module.val_dataloader()))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (N_TEST, 3, 32, 32)
    np.testing.assert_array_equal(images.numpy(), batches["test_batch"][0].reshape(-1, 3, 32, 32))
    assert labels.tolist() == batches["test_batch"][1]
    images, labels = next(iter(module.train_dataloader()))
    assert images.dtype == torch.uint8 and tuple(images.shape) == (8, 3, 32, 32) and labels.dtype == torch.int64
    resized = ImageDataModule(Dataset(name="cifar10", training_path=str(tmp_path)), ImageFormat(40, 40),
                              batch_size=4, num_workers=0)
    images, _ = next(iter(resized.val_dataloader()))
    assert tuple(images.shape) == (4, 3, 40, 40)


@pytest.mark.parametrize("binary", [False, True])
def test_an_oversized_batch_file_is_refused_before_it_is_read(tmp_path, binary):
    """A 600 MiB (sparse) file in a batch's place was read whole into memory before being found not
    to be a CIFAR batch; it is refused from its size now, in one line naming it."""
    import tracemalloc

    root = tmp_path / "bin" if binary else tmp_path
    (write_cifar10_binary if binary else write_cifar10_python)(root)
    huge = root / ("data_batch_2.bin" if binary else "data_batch_2")
    with open(huge, "wb") as f:
        f.truncate(600 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"data_batch_2(\.bin)?: larger than the 512 MiB a CIFAR file may hold") as info:
            make_splits(Dataset(name="cifar10", training_path=str(root)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value) and peak < 64 << 20, peak
