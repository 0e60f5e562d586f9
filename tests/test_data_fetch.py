"""stmclf.data.fetch: digits, flowers (download + safe extraction), fashion-mnist (IDX), download.

No test uses the network: downloads are served by a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import logging
import os
import socket
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stmclf.data import fetch
from stmclf.data.fetch import (
    FASHION_MNIST_CLASSES,
    FETCHERS,
    FLOWERS_CLASSES,
    MARKER,
    download,
    extract_tar_safely,
    fetch_dataset,
    fetch_digits,
    fetch_fashion_mnist,
    fetch_flowers,
    read_idx,
)
from stmclf.errors import UserError


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def png_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy configured in the environment."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------------------------
# local HTTP server
# --------------------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/'www' on 127.0.0.1; yields (base URL, served folder, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def closed_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name(tmp_path):
    assert set(FETCHERS) == {"digits", "flowers", "fashion-mnist"}
    with pytest.raises(UserError) as exc:
        fetch_dataset("cifar10", tmp_path / "x")
    message = one_line(exc)
    assert "cifar10" in message
    assert all(name in message for name in ("digits", "flowers", "fashion-mnist"))
    assert not (tmp_path / "x").exists()


def test_unknown_option_is_user_error(tmp_path):
    with pytest.raises(UserError) as exc:
        fetch_dataset("digits", tmp_path / "x", source=tmp_path)
    assert "source" in one_line(exc)


def test_out_that_is_a_file_or_holds_other_things_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError):
        fetch_dataset("digits", tmp_path / "file")
    other = tmp_path / "other"
    (other / "cats").mkdir(parents=True)
    with pytest.raises(UserError) as exc:
        fetch_dataset("digits", other, force=True)
    assert "cats" in one_line(exc)
    assert list(other.iterdir()) == [other / "cats"]


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_png_folders_match_sklearn(tmp_path, caplog):
    from sklearn.datasets import load_digits

    caplog.set_level(logging.INFO, logger="stmclf.data.fetch")
    out = tmp_path / "digits"
    assert fetch_dataset("digits", out) == out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    files = png_files(out)
    assert len(files) == 1797
    bunch = load_digits()
    expected = np.rint(bunch.images * 255.0 / 16.0).astype(np.uint8)
    for path in files:
        index = int(path.stem.removeprefix("digit_"))
        assert path.name == f"digit_{index:05d}.png"
        assert path.parent.name == str(bunch.target[index])
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(im), expected[index])
    assert expected.max() == 255 and expected.min() == 0
    assert any("1797 images" in r.getMessage() for r in caplog.records)
    assert (out / MARKER).is_file()


def test_digits_idempotent_force_and_repair(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stmclf.data.fetch")
    out = tmp_path / "digits"
    fetch_digits(out)
    before = mtimes(out)
    caplog.clear()
    fetch_digits(out)  # complete: nothing is touched
    assert mtimes(out) == before
    assert any("already complete" in r.getMessage() for r in caplog.records)

    victim = sorted((out / "3").iterdir())[0]
    victim.unlink()  # incomplete folder: rewritten
    fetch_digits(out)
    assert victim.is_file() and len(png_files(out)) == 1797

    first = png_files(out)[0]
    data = first.read_bytes()
    os.utime(first, ns=(0, 0))
    fetch_digits(out, force=True)  # force rewrites (same bytes: deterministic)
    assert first.stat().st_mtime_ns != 0
    assert first.read_bytes() == data


# --------------------------------------------------------------------------------------------
# IDX / fashion-mnist
# --------------------------------------------------------------------------------------------

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, _IDX_CODES[dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    data = idx_bytes(array)
    # mtime=0: reproducible .gz bytes
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def make_fashion_source(folder: Path, n_train: int = 30, n_test: int = 12, *, gz: bool = True):
    """Small Fashion-MNIST-shaped IDX files; returns {split: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        data[split] = (images, labels)
    return data


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gz=gz)
    got = read_idx(path)
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, array)


def test_read_idx_rejects_bad_files(tmp_path):
    cases = {
        "magic.idx": b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc",
        "dtype.idx": b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc",
        "short.idx": b"\x00\x00",
        "header.idx": b"\x00\x00\x08\x03" + (3).to_bytes(4, "big"),
        "count.idx": b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError) as exc:
            read_idx(path)
        assert name in one_line(exc)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:30])
    with pytest.raises(UserError) as exc:
        read_idx(broken)
    assert "broken.gz" in one_line(exc)


def test_read_idx_never_inflates_a_gzip_bomb_whole(tmp_path):
    """A 300 KB .gz whose IDX header declares 10 labels but which inflates to 300 MB: the whole
    stream was read into memory before the size check (a 1 MB file can inflate to 1 GB); now the
    header is read first and then at most the declared size and one byte."""
    import tracemalloc

    bomb = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        f.write(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big"))
        for _ in range(300):
            f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"declares 10 items \(10 bytes\) but the file holds more"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    huge = tmp_path / "huge.idx"
    huge.write_bytes(b"\x00\x00\x08\x03" + b"".join((100_000).to_bytes(4, "big") for _ in range(3)))
    with pytest.raises(UserError, match=r"huge\.idx: IDX header declares 100000x100000x100000 items .* more than the "
                                        r"1,024 MiB an IDX file may hold"):
        read_idx(huge)


def check_fashion_tree(out: Path, data: dict, limit: int | None = None) -> None:
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["test", "train"]
    for split, (images, labels) in data.items():
        n = len(labels) if limit is None else min(limit, len(labels))
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(FASHION_MNIST_CLASSES)
        files = png_files(out / split)
        assert len(files) == n
        for path in files:
            index = int(path.stem.removeprefix(f"{split}_"))
            assert path.parent.name == FASHION_MNIST_CLASSES[labels[index]]
            with Image.open(path) as im:
                assert im.format == "PNG" and im.mode == "L"
                np.testing.assert_array_equal(np.asarray(im), images[index])


def test_fashion_mnist_from_source(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stmclf.data.fetch")
    data = make_fashion_source(tmp_path / "idx")
    out = tmp_path / "fm"
    assert fetch_dataset("fashion-mnist", out, source=tmp_path / "idx") == out
    check_fashion_tree(out, data)
    assert any("42 images" in r.getMessage() and "train 30, test 12" in r.getMessage()
               for r in caplog.records)
    before = mtimes(out)
    fetch_fashion_mnist(out, source=tmp_path / "idx")
    assert mtimes(out) == before  # idempotent

    # another subset size is another dataset: rewritten, stale files gone
    fetch_fashion_mnist(out, source=tmp_path / "idx", max_per_split=5)
    check_fashion_tree(out, data, limit=5)


def test_fashion_mnist_uncompressed_source_and_process_pool(tmp_path, monkeypatch):
    data = make_fashion_source(tmp_path / "idx", n_train=40, n_test=20, gz=False)
    monkeypatch.setattr(fetch, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(fetch, "_MIN_CHUNK", 7)
    out = fetch_fashion_mnist(tmp_path / "fm", source=tmp_path / "idx", workers=2)
    check_fashion_tree(out, data)


def test_fashion_mnist_bad_source_files(tmp_path):
    src = tmp_path / "idx"
    make_fashion_source(src)
    # 29 labels for 30 images
    write_idx(src / "train-labels-idx1-ubyte.gz", (np.arange(29) % 10).astype(np.uint8))
    with pytest.raises(UserError) as exc:
        fetch_fashion_mnist(tmp_path / "fm", source=src)
    assert "train-labels-idx1-ubyte.gz" in one_line(exc)

    make_fashion_source(src)
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.full(12, 10, np.uint8))  # label 10
    with pytest.raises(UserError) as exc:
        fetch_fashion_mnist(tmp_path / "fm", source=src)
    assert "t10k-labels-idx1-ubyte.gz" in one_line(exc)

    make_fashion_source(src)
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01junk"))
    with pytest.raises(UserError) as exc:
        fetch_fashion_mnist(tmp_path / "fm", source=src)
    assert "t10k-images-idx3-ubyte.gz" in one_line(exc)

    # labels where images belong: wrong IDX kind (magic 0x00000801)
    make_fashion_source(src)
    write_idx(src / "train-images-idx3-ubyte.gz", np.zeros(30, np.uint8))
    with pytest.raises(UserError) as exc:
        fetch_fashion_mnist(tmp_path / "fm", source=src)
    assert "train-images-idx3-ubyte.gz" in one_line(exc)

    (src / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError) as exc:
        fetch_fashion_mnist(tmp_path / "fm", source=src)
    assert str(src) in one_line(exc)
    assert not (tmp_path / "fm").exists()


def test_fashion_mnist_download_with_md5(tmp_path, server, monkeypatch):
    base, www, requests = server
    data = make_fashion_source(www)
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in www.iterdir()}
    monkeypatch.setattr(fetch, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fetch, "FASHION_MNIST_MD5", md5s)
    out = tmp_path / "dl" / "fm"
    fetch_fashion_mnist(out, url=base + "/")
    check_fashion_tree(out, data)
    assert len(requests) == 4
    assert [p.name for p in out.parent.iterdir()] == ["fm"]  # temporary downloads removed

    md5s["t10k-images-idx3-ubyte.gz"] = "0" * 32
    with pytest.raises(UserError) as exc:
        fetch_fashion_mnist(tmp_path / "dl2" / "fm", url=base + "/")
    assert "MD5 mismatch" in one_line(exc)
    assert [p.name for p in (tmp_path / "dl2").iterdir()] == []


def test_fashion_mnist_offline_without_debian_package(tmp_path, monkeypatch, closed_url):
    nowhere = tmp_path / "no-debian"
    monkeypatch.setattr(fetch, "FASHION_MNIST_DEBIAN_DIR", nowhere)
    with pytest.raises(UserError) as exc:
        fetch_dataset("fashion-mnist", tmp_path / "fm", url=closed_url + "/", timeout=5)
    message = one_line(exc)
    assert message.startswith("fashion-mnist: ")
    assert str(nowhere) in message and closed_url in message
    assert not png_files(tmp_path)


@pytest.mark.skipif(not fetch.FASHION_MNIST_DEBIAN_DIR.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package_subset(tmp_path):
    debian = fetch.FASHION_MNIST_DEBIAN_DIR
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (debian / name).is_file()
    out = fetch_fashion_mnist(tmp_path / "fm", max_per_split=300)
    data = {"train": (read_idx(debian / "train-images-idx3-ubyte.gz")[:300],
                      read_idx(debian / "train-labels-idx1-ubyte.gz")[:300]),
            "test": (read_idx(debian / "t10k-images-idx3-ubyte.gz")[:300],
                     read_idx(debian / "t10k-labels-idx1-ubyte.gz")[:300])}
    assert data["train"][0].shape == (300, 28, 28)
    check_fashion_tree(out, data)


# --------------------------------------------------------------------------------------------
# download helper
# --------------------------------------------------------------------------------------------


def test_download_verifies_and_replaces(tmp_path, server):
    base, www, requests = server
    payload = os.urandom(3 * (1 << 20) + 123)  # several read chunks
    (www / "blob.bin").write_bytes(payload)
    dest = tmp_path / "dl" / "blob.bin"
    sha = hashlib.sha256(payload).hexdigest()
    md5 = hashlib.md5(payload).hexdigest()
    assert download(f"{base}/blob.bin", dest, sha256=sha, md5=md5, size=len(payload)) == dest
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]
    download(f"{base}/blob.bin", dest, sha256=sha)  # present and verified: no request
    assert len(requests) == 1

    for kwargs, text in (({"sha256": "0" * 64}, "SHA-256 mismatch"),
                         ({"md5": "0" * 32}, "MD5 mismatch"),
                         ({"size": 5}, "size mismatch")):
        other = tmp_path / "bad" / "blob.bin"
        with pytest.raises(UserError) as exc:
            download(f"{base}/blob.bin", other, **kwargs)
        assert text in one_line(exc)
        assert list(other.parent.iterdir()) == []  # no dest, no .part


def test_download_http_errors(tmp_path, server, closed_url):
    base, _, _ = server
    dest = tmp_path / "x.bin"
    with pytest.raises(fetch.DownloadError) as exc:
        download(f"{base}/missing.bin", dest)
    assert "404" in one_line(exc) and f"{base}/missing.bin" in str(exc.value)
    with pytest.raises(fetch.DownloadError) as exc:
        download(f"{base}/truncated", dest)
    assert f"{base}/truncated" in one_line(exc)
    with pytest.raises(fetch.DownloadError) as exc:
        download(f"{closed_url}/x.bin", dest, timeout=5)
    assert "refused" in one_line(exc).lower()
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]


# --------------------------------------------------------------------------------------------
# flowers
# --------------------------------------------------------------------------------------------


def jpeg_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (value, 255 - value, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def make_flowers_tgz(path: Path, *, classes=FLOWERS_CLASSES, per_class: int = 2,
                     extra=None) -> Path:
    """A tf_flowers-shaped archive: flower_photos/{LICENSE.txt,<class>/*.jpg}; `extra(tar)`
    appends more members at the end."""
    with tarfile.open(path, "w:gz") as tar:
        top = tarfile.TarInfo("flower_photos")
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        tar.addfile(top)
        add_file(tar, "flower_photos/LICENSE.txt", b"All images are CC-BY\n")
        for k, cls in enumerate(classes):
            for i in range(per_class):
                add_file(tar, f"flower_photos/{cls}/{1000 + i}_{cls}.jpg",
                         jpeg_bytes(40 * k + i))
        if extra:
            extra(tar)
    return path


def test_flowers_download_and_extract(tmp_path, server, caplog):
    caplog.set_level(logging.INFO, logger="stmclf.data.fetch")
    base, www, requests = server
    archive = make_flowers_tgz(www / "flower_photos.tgz")
    out = tmp_path / "data" / "flowers"
    kwargs = dict(url=f"{base}/flower_photos.tgz", sha256=sha256_of(archive), size=None)
    assert fetch_dataset("flowers", out, **kwargs) == out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(FLOWERS_CLASSES)
    for cls in FLOWERS_CLASSES:
        jpgs = sorted((out / cls).glob("*.jpg"))
        assert len(jpgs) == 2
        with Image.open(jpgs[0]) as im:
            assert im.format == "JPEG" and im.size == (12, 10)
    assert not (out / "LICENSE.txt").exists()
    assert (out / fetch.FLOWERS_LICENSE).read_text().startswith("All images")
    assert [p.name for p in out.parent.iterdir()] == ["flowers"]  # no temp archive/scratch
    assert requests == ["/flower_photos.tgz"]
    assert any("10 photos in 5 classes" in r.getMessage() for r in caplog.records)

    before = mtimes(out)
    fetch_flowers(out, **kwargs)  # complete: no download, nothing touched
    assert requests == ["/flower_photos.tgz"]
    assert mtimes(out) == before
    fetch_flowers(out, force=True, **kwargs)
    assert len(requests) == 2
    assert len(list(out.rglob("*.jpg"))) == 10


def test_flowers_checksum_mismatch(tmp_path, server):
    base, www, _ = server
    make_flowers_tgz(www / "flower_photos.tgz")
    out = tmp_path / "data" / "flowers"
    with pytest.raises(UserError) as exc:
        fetch_flowers(out, url=f"{base}/flower_photos.tgz", sha256="ab" * 32, size=None)
    message = one_line(exc)
    assert message.startswith("flowers: ") and "SHA-256 mismatch" in message
    assert list(out.parent.iterdir()) == []
    # the default size check (the real archive's 228,813,984 bytes) also rejects it
    with pytest.raises(UserError) as exc:
        fetch_flowers(out, url=f"{base}/flower_photos.tgz")
    assert "size mismatch" in one_line(exc)
    assert list(out.parent.iterdir()) == []


def test_flowers_offline_is_one_line(tmp_path, closed_url):
    out = tmp_path / "flowers"
    url = f"{closed_url}/flower_photos.tgz"
    with pytest.raises(UserError) as exc:
        fetch_dataset("flowers", out, url=url, timeout=5)
    message = one_line(exc)
    assert message.startswith(f"flowers: could not download {url} (")
    assert str(out) in message and "download it elsewhere" in message
    assert list(tmp_path.iterdir()) == []


def _dotdot(tar):
    add_file(tar, "../evil.jpg", b"evil")


def _dotdot_inside(tar):
    add_file(tar, "flower_photos/daisy/../../../evil.jpg", b"evil")


def _absolute(tar):
    add_file(tar, str(Path(tar.name).parent.parent / "abs_evil.jpg"), b"evil")


def _symlink(tar):
    info = tarfile.TarInfo("flower_photos/daisy/evil_link.jpg")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    tar.addfile(info)


def _hardlink(tar):
    info = tarfile.TarInfo("flower_photos/daisy/evil_hard.jpg")
    info.type = tarfile.LNKTYPE
    info.linkname = "/etc/passwd"
    tar.addfile(info)


def _device(tar):
    info = tarfile.TarInfo("flower_photos/daisy/evil_dev")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    tar.addfile(info)


@pytest.mark.parametrize("evil", [_dotdot, _dotdot_inside, _absolute, _symlink, _hardlink,
                                  _device], ids=lambda f: f.__name__.strip("_"))
def test_flowers_refuses_unsafe_members(tmp_path, evil):
    (tmp_path / "src").mkdir()
    archive = make_flowers_tgz(tmp_path / "src" / "evil.tgz", extra=evil)
    out = tmp_path / "data" / "flowers"
    with pytest.raises(UserError) as exc:
        fetch_flowers(out, archive=archive, sha256=sha256_of(archive), size=None)
    message = one_line(exc)
    assert message.startswith("flowers: refusing to extract evil.tgz: member ")
    assert "evil" in message.removeprefix("flowers: refusing to extract evil.tgz")
    # nothing written anywhere: no output, no scratch folder, no escaped member
    assert list((tmp_path / "data").iterdir()) == []
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "data", "src", "src/evil.tgz"]
    assert Path("/etc/passwd").is_file() and not Path("/etc/passwd").is_symlink()


def test_extract_tar_safely_with_all_bad_members(tmp_path):
    """One archive holding ../evil, an absolute path and a symlink to /etc/passwd."""
    archive = tmp_path / "all.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "ok.txt", b"fine")
        add_file(tar, "../evil", b"evil")
        add_file(tar, str(tmp_path / "abs_evil"), b"evil")
        _symlink(tar)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UserError) as exc:
        extract_tar_safely(archive, dest, label="test")
    assert "'../evil'" in one_line(exc)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "abs_evil").exists()

    for name in (str(tmp_path / "abs_evil"), "flower_photos/daisy/evil_link.jpg"):
        single = tmp_path / "single.tar"
        with tarfile.open(single, "w") as tar:
            if name.startswith("/"):
                add_file(tar, name, b"evil")
            else:
                _symlink(tar)
        with pytest.raises(UserError):
            extract_tar_safely(single, dest, label="test")
    assert not (tmp_path / "abs_evil").exists()
    assert not (dest / "flower_photos" / "daisy" / "evil_link.jpg").exists()


def test_flowers_bad_structure_and_garbage(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    archive = make_flowers_tgz(src / "four.tgz", classes=FLOWERS_CLASSES[:4])
    out = tmp_path / "data" / "flowers"
    with pytest.raises(UserError) as exc:
        fetch_flowers(out, archive=archive, sha256=sha256_of(archive), size=None)
    assert "tulips" in one_line(exc)
    garbage = src / "garbage.tgz"
    garbage.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(UserError) as exc:
        fetch_flowers(out, archive=garbage, sha256=sha256_of(garbage), size=None)
    assert "garbage.tgz" in one_line(exc)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="resource limits and /proc: Linux")
def test_fashion_mnist_writes_in_process_when_the_pool_cannot_start(tmp_path):
    """The PNG writing pool of a real fetch in a process left 8 file descriptors (RLIMIT_NOFILE):
    its 8 workers cannot start (two pipes each), so the PNGs are written here after one warning."""
    import subprocess
    import sys

    make_fashion_source(tmp_path / "src", n_train=4000, n_test=12)
    script = (
        "import logging, os, resource, sys\n"
        "from pathlib import Path\n"
        "from stmclf.data.fetch import fetch_fashion_mnist\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(levelname)s %(message)s')\n"
        "held = len(os.listdir('/proc/self/fd'))\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (held + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "fetch_fashion_mnist(Path(sys.argv[1]), source=Path(sys.argv[2]), workers=16)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out"), str(tmp_path / "src")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    warning = [line for line in done.stderr.splitlines() if "worker processes unavailable" in line]
    assert len(warning) == 1 and "writing the PNGs in this process" in warning[0], done.stderr
    assert "with 1 process)" in done.stderr, done.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) == 4012
