"""``--trust-model-file`` comes only from the command line: a config's ``training.model`` spec or a
crafted checkpoint's stored spec saying ``trust_model_file: true`` must not load a pickled model
file (loading one runs code from it). Real CLI runs on real files; the pickle's payload would
create a marker file."""
from __future__ import annotations

import operator
import re

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from stmclf.errors import UserError
from stmclf.models import build_model
from stmclf.trust import trusting_model_files

STMCLF = [sys.executable, "-m", "stmclf.cli.main"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 50, 10 * i, 0)).save(tmp_path / "data" / c / f"{i}.png")
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload(marker)}, evil)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"""dataset: {{training_path: {tmp_path / 'data'}, validation_split: 0.25, num_workers: 0}}
preprocessing: {{rescaling: {{scale: 1/127.5, offset: -1}}, resizing: {{aspect_ratio: fit, interpolation: bilinear}},
  color_mode: rgb}}
training:
  model:
    name: model_file
    path: {evil}
    input_shape: (32, 32, 3)
    trust_model_file: true
  batch_size: 4
  epochs: 1
  optimizer: {{Adam: {{learning_rate: 0.005}}}}
mlflow: {{uri: {tmp_path / 'mlruns'}}}
hydra: {{run: {{dir: {tmp_path / 'run'}}}}}
""")
    return config, evil, marker


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(STMCLF + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_config_cannot_grant_trust_in_a_pickled_model_file(tmp_path):
    config, _, marker = _files(tmp_path)
    proc = _run(["fit", "--config", str(config)], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--trust-model-file" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_crafted_checkpoint_cannot_grant_it_either(tmp_path):
    config, evil, marker = _files(tmp_path)
    spec = {"name": "model_file", "path": str(evil), "input_shape": [32, 32, 3], "trust_model_file": True}
    torch.save({"hyper_parameters": {"model_spec": spec, "class_names": ["cat", "dog"], "input_shape": [32, 32, 3],
                                     "rescaling": [1 / 127.5, -1.0], "optimizer": None}, "state_dict": {}},
               tmp_path / "crafted.ckpt")
    proc = _run(["predict", "--config", str(config), "--model", str(tmp_path / "crafted.ckpt"),
                 "--images", str(tmp_path / "data" / "cat")], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--trust-model-file" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_the_command_line_grant_rebuilds_a_trusted_pickled_model(tmp_path):
    path = tmp_path / "mine.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), path)
    spec = {"name": "model_file", "path": str(path), "input_shape": (8, 8, 3), "trust_model_file": True}
    with pytest.raises(UserError, match="--trust-model-file"):
        build_model(spec, num_classes=2, dropout=None)  # the spec's own value is ignored
    with trusting_model_files():
        model = build_model(spec, num_classes=2, dropout=None)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 2)


def _poisoned_export(tmp_path: Path, marker: Path) -> Path:
    """A real torch.export archive whose first weight is marked ``use_pickle`` and holds a pickle
    that runs a command (torch.export.load unpickles such payloads with weights_only=False)."""
    import io
    import json
    import zipfile

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x).mean((2, 3))

    good = tmp_path / "good.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(Net(), (torch.zeros(2, 3, 8, 8),), dynamic_shapes=({0: batch},)), good)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        config_name = next(n for n in src.namelist() if n.endswith("weights/model_weights_config.json"))
        config = json.loads(src.read(config_name))
        fqn, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        payload = io.BytesIO()
        torch.save({"x": _Payload(marker)}, payload)
        for name in src.namelist():
            data = src.read(name)
            if name == config_name:
                data = json.dumps(config).encode()
            elif name.endswith(f"weights/{meta['path_name']}"):
                data = payload.getvalue()
            dst.writestr(name, data)
    return good, evil


def test_a_torch_export_archive_cannot_unpickle_code_without_the_grant(tmp_path):
    """torch.export.load unpickles payloads marked use_pickle with the code-running unpickler: stmclf
    loads archives with the weights-only one, so a poisoned archive is a one-line refusal that
    names --trust-model-file, and a plain archive loads as before."""
    from stmclf.models.importers import load_model_file

    marker = tmp_path / "PWNED"
    good, evil = _poisoned_export(tmp_path, marker)
    with pytest.raises(UserError, match="pickled objects: loading them runs code.*--trust-model-file"):
        load_model_file(evil)
    assert not marker.exists()
    assert load_model_file(good).num_outputs == 4
    with trusting_model_files():  # the command-line grant: the user vouches for the file
        try:
            load_model_file(evil, trust_model_file=True)
        except UserError:
            pass  # the payload is not a tensor: the program itself is then broken
    assert marker.exists()


def test_a_config_file_cannot_set_the_command_line_grants(tmp_path):
    """--trust-model-file, --trust-code (and the other command-line options) are refused as config
    keys: a config from elsewhere cannot grant itself the right to run code."""
    config, _, marker = _files(tmp_path)
    text = config.read_text().replace("    trust_model_file: true\n", "")
    for key in ("trust_model_file: true", "trust-code: true", "offline: true"):
        (tmp_path / "granting.yaml").write_text(f"{key}\n{text}")
        proc = _run(["fit", "--config", str(tmp_path / "granting.yaml")], tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        name = key.split(":")[0]
        assert proc.stderr.strip().splitlines()[-1].startswith(f"stmclf: error: {name}: a command-line option"), \
            proc.stderr[-2000:]
        assert not marker.exists()


def _checkpoint_of(module, path: Path) -> Path:
    """What Lightning writes for ``module`` (hyper-parameters, weights, then the module's
    on_save_checkpoint hook), saved to ``path``."""
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_the_copy_of_a_pickled_source_in_a_checkpoint_still_needs_the_grant(tmp_path, forget_model_sources):
    """A run started from a pickled module keeps a copy of the file in its checkpoints (so the run
    does not depend on the file): rebuilt from that copy once the file is gone, it loads only with
    --trust-model-file, like the file itself."""
    from stmclf.models.model_file_entry import SOURCE_KEY, model_file_spec
    from stmclf.training.model_file import load_classifier
    from stmclf.training.module import ClassifierModule

    path = tmp_path / "mine.pt"
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), path)
    with trusting_model_files():
        module = ClassifierModule(model_spec=model_file_spec(path, (8, 8, 3)), class_names=["a", "b"],
                                  input_shape=[8, 8, 3], rescaling=(1 / 255, 0.0), optimizer=None)
    ckpt = _checkpoint_of(module, tmp_path / "best_model.pt")
    stored = torch.load(ckpt, weights_only=True)  # the copy reads with the weights-only unpickler
    assert stored[SOURCE_KEY]["content"].numpy().tobytes() == path.read_bytes()
    forget_model_sources()  # as in a new process: the file and the checkpoint
    with pytest.raises(UserError, match="--trust-model-file") as refused:
        load_classifier(ckpt, "--model")  # the error names the option that gave the checkpoint, and the checkpoint
    assert str(refused.value).startswith(f"--model: {ckpt}: {path}: "), str(refused.value)
    path.unlink()
    forget_model_sources()  # as in a new process: only the checkpoint
    with pytest.raises(UserError, match="--trust-model-file") as refused:
        load_classifier(ckpt)
    assert str(refused.value).startswith(f"general.model_path: the copy of mine.pt stored in {ckpt}: ")  # not a
    assert "stmclf-model-file-" not in str(refused.value)  # temporary file the message outlives
    with trusting_model_files():
        rebuilt = load_classifier(ckpt)
    x = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(rebuilt(rebuilt.preprocess(x)), module.eval()(module.preprocess(x)))


def test_a_checkpoint_without_the_copy_reads_its_model_file_as_before(tmp_path):
    """Checkpoints written before the copy existed (no sha256 in the spec, no copy) rebuild from
    the path; without the file, the error names it."""
    from stmclf.models.model_file_entry import SOURCE_KEY, model_file_spec
    from stmclf.training.model_file import load_classifier
    from stmclf.training.module import ClassifierModule

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))), str(path),
                   _extra_files={"input_shape": "4,4,3"})
    module = ClassifierModule(model_spec=model_file_spec(path, (4, 4, 3)), class_names=["a", "b"],
                              input_shape=[4, 4, 3], rescaling=(1 / 255, 0.0), optimizer=None)
    old = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}  # no hook: an older file
    assert "sha256" not in old["hyper_parameters"]["model_spec"] and SOURCE_KEY not in old
    torch.save(old, tmp_path / "old.pt")
    assert load_classifier(tmp_path / "old.pt").class_names == ["a", "b"]
    path.unlink()
    with pytest.raises(UserError, match=f"unable to find the model file {path}"):
        load_classifier(tmp_path / "old.pt")


def test_a_damaged_or_unreadable_copy_in_a_checkpoint_is_named_as_such(tmp_path, forget_model_sources, caplog):
    """With the source file gone, a checkpoint whose stored copy does not load (truncated, with a
    matching hash) is named in the error as the copy stored in that checkpoint, and a copy whose
    bytes no longer have the SHA-256 stored for them is reported as damaged (with the file back
    but changed, a warning says so)."""
    import hashlib
    import logging

    from stmclf.models.model_file_entry import SOURCE_KEY, model_file_spec
    from stmclf.training.model_file import load_classifier
    from stmclf.training.module import ClassifierModule

    path = tmp_path / "src.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))), str(path),
                   _extra_files={"input_shape": "4,4,3"})
    module = ClassifierModule(model_spec=model_file_spec(path, (4, 4, 3)), class_names=["a", "b"],
                              input_shape=[4, 4, 3], rescaling=(1 / 255, 0.0), optimizer=None)
    stored = torch.load(_checkpoint_of(module, tmp_path / "good.pt"), weights_only=True)
    content = stored[SOURCE_KEY]["content"]
    path.unlink()

    truncated = content[:400].clone()
    sha = hashlib.sha256(truncated.numpy().tobytes()).hexdigest()
    spec = {**stored["hyper_parameters"]["model_spec"], "sha256": sha}
    torch.save({**stored, "hyper_parameters": {**stored["hyper_parameters"], "model_spec": spec},
                SOURCE_KEY: {**stored[SOURCE_KEY], "sha256": sha, "content": truncated}}, tmp_path / "truncated.pt")
    forget_model_sources()
    with pytest.raises(UserError) as info:
        load_classifier(tmp_path / "truncated.pt")
    message = str(info.value)
    assert message.startswith(f"general.model_path: the copy of src.pt stored in {tmp_path / 'truncated.pt'}: "), \
        message
    assert "stmclf-model-file-" not in message and "\n" not in message

    corrupt = content.clone()
    corrupt[200] ^= 0xFF
    torch.save({**stored, SOURCE_KEY: {**stored[SOURCE_KEY], "content": corrupt}}, tmp_path / "corrupt.pt")
    forget_model_sources()
    with pytest.raises(UserError) as info:
        load_classifier(tmp_path / "corrupt.pt")
    assert str(info.value) == (f"general.model_path: {path} is missing and the copy of src.pt stored in "
                               f"{tmp_path / 'corrupt.pt'} is damaged (its bytes do not have the SHA-256 stored "
                               "with them): the model cannot be rebuilt")
    path.write_bytes(b"something else")
    forget_model_sources()
    with caplog.at_level(logging.WARNING, logger="stmclf.models"), pytest.raises(UserError):
        load_classifier(tmp_path / "corrupt.pt")
    assert f"{path} has changed since the checkpoint was written (and the copy of src.pt stored in " in caplog.text
    assert "is damaged" in caplog.text


# ---------------------------------------------------------------------------------------------
# TorchScript and torch.export code is read, never run, before --trust-model-file.

_LOAD_IN_CHILD = ("import resource, sys\n"
                  "from stmclf.errors import UserError\n"
                  "from stmclf.models.importers import load_model_file\n"
                  "try:\n"
                  "    load_model_file(sys.argv[1], input_shape=(16, 16, 3))\n"
                  "    print('loaded')\n"
                  "except UserError as exc:\n"
                  "    print(exc)\n"
                  "try:  # this program's own peak: VmHWM starts afresh at exec, ru_maxrss keeps the forked parent's\n"
                  "    print(next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM:')))\n"
                  "except OSError:\n"
                  "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def _load_in_child(path: Path, address_space: int | None = None) -> tuple[str, int]:
    """Load ``path`` in a child process (60 s at most: a model that hangs fails the test instead of
    hanging it); its one-line outcome and its peak RSS in bytes."""
    import resource

    def cap() -> None:
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    out = subprocess.run([sys.executable, "-c", _LOAD_IN_CHILD, str(path)], capture_output=True, text=True,
                         timeout=60, preexec_fn=cap)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 2, out.stdout + out.stderr[-2000:]
    return lines[0], int(lines[1]) * 1024


class _WritesAFile(torch.nn.Module):
    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x):
        t = torch.from_file(self.victim, True, 8, dtype=torch.uint8)  # a shared map of a file the model names
        t.fill_(88)
        return x.mean(dim=[2, 3]) + t.sum().float() * 0


def test_torchscript_code_touching_files_never_runs_without_the_grant(tmp_path):
    from stmclf.models.importers import load_model_file

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"original content of the victim\n")
    path = tmp_path / "write.pt"
    torch.jit.save(torch.jit.script(_WritesAFile(str(victim))), str(path), _extra_files={"input_shape": "16,16,3"})
    with pytest.raises(UserError) as info:
        load_model_file(path)
    assert str(info.value) == (f"general.model_path: {path}: its TorchScript code calls aten::from_file (file access); "
                               "a model file that runs such code loads only with --trust-model-file")
    assert victim.read_bytes() == b"original content of the victim\n"
    with trusting_model_files():  # the user vouches for the file: it runs as before
        try:
            load_model_file(path, trust_model_file=True)
        except UserError as exc:
            assert "--trust-model-file" not in str(exc)
    assert victim.read_bytes().startswith(b"XXXXXXXX")


class _SetsState(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x):
        return x.mean(dim=[2, 3])

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return self.marker, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), state[0])  # runs inside torch.jit.load


def test_torchscript_setstate_code_is_refused_before_the_file_loads(tmp_path):
    from stmclf.models.importers import load_model_file

    marker = tmp_path / "PWNED"
    path = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(_SetsState(str(marker))), str(path), _extra_files={"input_shape": "16,16,3"})
    with pytest.raises(UserError, match=r"defines __setstate__ .*, which runs while the file loads; .*"
                                        r"only with --trust-model-file$"):
        load_model_file(path)
    assert not marker.exists()


class _Loops(torch.nn.Module):
    def forward(self, x):
        i = 0
        while i >= 0:
            i = i + 1
        return x.mean(dim=[2, 3])


def test_an_unbounded_torchscript_loop_is_refused_not_run(tmp_path):
    path = tmp_path / "loop.pt"
    torch.jit.save(torch.jit.script(_Loops()), str(path), _extra_files={"input_shape": "16,16,3"})
    message, _ = _load_in_child(path)  # before the check, the probe never returned (60 s: TimeoutExpired)
    assert message == (f"general.model_path: {path}: its TorchScript code calls prim::Loop (a loop without a small "
                       "bound); a model file that runs such code loads only with --trust-model-file")


class _Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                            torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = self.features(x)
        if x.shape[-1] > 1:
            x = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return self.head(torch.flatten(x, 1))


def test_plain_traced_scripted_and_exported_models_load_without_the_grant(tmp_path):
    """Scripted batch norm runs a small loop over the input's shape (torch's own code): a loop bounded
    by a tensor's rank passes the check."""
    from stmclf.models.importers import load_model_file

    scripted, traced, exported = tmp_path / "scripted.pt", tmp_path / "traced.pt", tmp_path / "net.pt2"
    torch.jit.save(torch.jit.script(_Plain()), str(scripted), _extra_files={"input_shape": "16,16,3"})
    torch.jit.save(torch.jit.trace(_Plain().eval(), torch.zeros(1, 3, 16, 16)), str(traced),
                   _extra_files={"input_shape": "16,16,3"})
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(_Plain(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},)),
                      exported)
    for path in (scripted, traced, exported):
        assert load_model_file(path).num_outputs == 3


class _WhileLoop(torch.nn.Module):
    def forward(self, x):
        from torch._higher_order_ops.while_loop import while_loop

        _, y = while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 2), (torch.tensor(0), x.mean(dim=[2, 3])))
        return y


def test_a_torch_export_loop_is_refused_without_the_grant(tmp_path):
    from stmclf.models.importers import load_model_file

    path = tmp_path / "loop.pt2"
    torch.export.save(torch.export.export(_WhileLoop(), (torch.zeros(2, 3, 16, 16),)), path)
    with pytest.raises(UserError) as info:
        load_model_file(path)
    assert str(info.value) == (f"general.model_path: {path}: its torch.export code calls "
                               "torch.ops.higher_order.while_loop (a loop); a model file that runs such code loads "
                               "only with --trust-model-file")


def test_a_torch_export_graph_with_file_access_is_refused(tmp_path):
    """torch.export cannot capture aten.from_file (it has no fake kernel), but a crafted archive can
    name it: the check reads the program's graph, here one built with torch.fx."""
    from stmclf.models.importers.torch_code import check_export

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    data = graph.call_function(torch.ops.aten.from_file.default, ("/etc/passwd", True, 8))
    graph.output(graph.call_function(torch.ops.aten.add.Tensor, (x, data)))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    with pytest.raises(UserError, match=r"^m: f.pt2: its torch.export code calls aten::from_file \(file access\)"):
        check_export(gm.modules(), Path("f.pt2"), "m")


@pytest.mark.parametrize("target, name", [(getattr, "builtins.getattr"), (open, "io.open"), (eval, "builtins.eval"),
                                          (operator.call, "_operator.call")])
def test_a_torch_export_graph_calling_python_that_reaches_objects_is_refused(target, name):
    """A graph that could walk from a tensor to any Python object (getattr, operator.call) or open a
    file is refused; operator.getitem, math and plain builtins (len, min) pass."""
    from stmclf.models.importers.torch_code import check_export

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    size = graph.call_function(len, (graph.call_function(operator.getitem, (x, 0)),))
    graph.call_function(target, (x, "__class__") if target is getattr else ("/etc/passwd",))
    graph.output(graph.call_function(torch.ops.aten.mul.Tensor, (x, size)))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    with pytest.raises(UserError, match=rf"^m: f.pt2: its torch.export code calls {re.escape(name)} \(Python code\)"):
        check_export(gm.modules(), Path("f.pt2"), "m")


def test_a_torchscript_zip_bomb_is_refused_before_it_inflates(tmp_path):
    """A real TorchScript archive whose extra/input_shape record (stmclf reads it) inflates from
    ~1 MB to 1 GiB: one line, without inflating it, in a child capped at 6 GB of address space."""
    import zipfile

    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(_Plain().eval()), str(plain))
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w") as dst, zipfile.ZipFile(plain) as src:
        prefix = src.namelist()[0].split("/", 1)[0]
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        entry = zipfile.ZipInfo(f"{prefix}/extra/input_shape")
        entry.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(entry, "w", force_zip64=True) as record:
            chunk = b"0" * 2**24
            for _ in range(64):  # 1 GiB, streamed
                record.write(chunk)
    assert bomb.stat().st_size < 8 * 2**20
    message, peak = _load_in_child(bomb, address_space=6 << 30)
    assert message.startswith(f"general.model_path: {bomb}: its record '{prefix}/extra/input_shape' inflates from ")
    assert "to 1,073,741,824 bytes (a zip bomb?)" in message
    assert peak < 2**30 + 2**29, peak  # the record was never inflated (importing torch alone: ~0.5 GB)


def _record_offset(raw: bytes, info) -> int:
    """Where ``info``'s data starts in the archive's bytes (after its local header)."""
    import struct

    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


@pytest.mark.parametrize("damage", ["code byte", "weight byte", "weight size"])
def test_a_damaged_torch_archive_is_refused_in_one_line(tmp_path, damage):
    """PyTorch's zip reader checks no CRC: a flipped byte in a weight record loaded as a wrong weight,
    a flipped byte in a (deflated) code record raised zlib.error from deep inside, and a weight
    record that inflates past its declared size loaded as zeros (torch reads the declared size). Each
    is now one line naming the record, for TorchScript and for a weights-only state dict alike."""
    import struct
    import zipfile

    from stmclf.models.importers import load_model_file
    from stmclf.models.importers.base import load_weights_only

    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(_Plain().eval()), str(good))
    with zipfile.ZipFile(good) as archive:
        infos = archive.infolist()
        prefix = infos[0].filename.split("/", 1)[0]
        if damage == "code byte":
            info = next(i for i in infos if "/code/" in i.filename and i.filename.endswith(".py"))
        else:
            info = next(i for i in infos if i.filename == f"{prefix}/data/0")
    raw = bytearray(good.read_bytes())
    if damage == "weight size":  # the conv weight (432 bytes) re-stored deflated, declaring 16 bytes
        bad = tmp_path / "bad.pt"
        with zipfile.ZipFile(bad, "w") as dst, zipfile.ZipFile(good) as src:
            for item in src.infolist():
                dst.writestr(item.filename, src.read(item),
                             compress_type=zipfile.ZIP_DEFLATED if item.filename == info.filename else None)
        raw = bytearray(bad.read_bytes())
        with zipfile.ZipFile(bad) as archive:
            moved = archive.getinfo(info.filename)
        struct.pack_into("<I", raw, moved.header_offset + 22, 16)  # local header: uncompressed size
        central = raw.index(b"PK\x01\x02")  # the central directory's entries, in order
        while raw[central + 46:central + 46 + len(info.filename)] != info.filename.encode():
            central = raw.index(b"PK\x01\x02", central + 4)
        struct.pack_into("<I", raw, central + 24, 16)  # central directory: uncompressed size
    else:
        raw[_record_offset(raw, info) + 5] ^= 0x41
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(raw))

    with pytest.raises(UserError) as caught:
        load_model_file(damaged, input_shape=(16, 16, 3))
    message = str(caught.value)
    assert message.startswith(f"general.model_path: {damaged}: its record '{info.filename}' is damaged ("), message
    assert message.endswith("); save or download it again") and "\n" not in message

    weights = tmp_path / "weights.pt"
    torch.save(_Plain().state_dict(), weights)
    with zipfile.ZipFile(weights) as archive:
        record = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    raw = bytearray(weights.read_bytes())
    raw[_record_offset(raw, record) + 5] ^= 0x41
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"^its record '{re.escape(record.filename)}' is damaged \(Bad CRC-32"):
        load_weights_only(weights)
