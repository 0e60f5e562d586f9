"""``--trust-code``: Python code named by a config (custom model, custom augmentation, callback
class paths outside lightning./torch./stmclf.) runs only with the command-line flag.

Each user file writes a marker file when it is imported, which proves whether its code ran."""
from __future__ import annotations

import pickle
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEFAULT_MODEL, config_text

from stmclf.cli.main import main
from stmclf.config import load_config
from stmclf.errors import ConfigError
from stmclf.training.callbacks import build_callbacks
from stmclf.trust import code_trusted, trusting_code

MODEL_SRC = '''
from pathlib import Path

from torch import nn

Path(__file__).with_name("model_imported.marker").touch()


class Net(nn.Module):
    def __init__(self, num_classes, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.flat(self.pool(self.conv(x))))


def build(num_classes, input_shape, dropout):
    return Net(num_classes, input_shape[2])
'''

AUG_SRC = '''
from pathlib import Path

HERE = Path(__file__).parent
(HERE / "aug_imported.marker").touch()


def augment(images, config, epoch):
    (HERE / "aug_called.marker").touch()
    return images
'''

CALLBACK_SRC = '''
from pathlib import Path

from lightning.pytorch.callbacks import Callback

HERE = Path(__file__).parent
(HERE / "cb_imported.marker").touch()


class Marker(Callback):
    def __init__(self, name: str = "cb_trained.marker"):
        self.name = name

    def on_train_end(self, trainer, pl_module):
        (HERE / self.name).touch()
'''

CUSTOM_MODEL = "  model:\n    name: custom\n    input_shape: (32, 32, 3)\n    custom_model: {target}\n"
ZOO_MODEL = {"mobilenet": DEFAULT_MODEL, "": ""}  # a zoo model (no flag needed), none (resume)


@pytest.fixture(autouse=True)
def untrusted():
    """Every test starts without --trust-code; the process-wide setting is restored after it."""
    with trusting_code(False):
        yield


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's files in the current directory (and on sys.path, as ``python -m`` would have it)."""
    (tmp_path / "my_model.py").write_text(MODEL_SRC)
    (tmp_path / "my_aug.py").write_text(AUG_SRC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture
def callback_module(user_dir: Path):
    """A user module holding a Lightning callback, under a fresh name (sys.modules caches imports)."""
    module = f"user_callbacks_{uuid.uuid4().hex[:10]}"
    (user_dir / f"{module}.py").write_text(CALLBACK_SRC)
    yield module
    sys.modules.pop(module, None)


def _config(user_dir: Path, image_folder: Path, name: str = "config.yaml", *, model: str = "my_model.py:build",
            augmentation: str | None = None, callback: str | None = None, epochs: int = 1) -> Path:
    extra = f"custom_data_augmentation:\n  function_name: {augmentation}\n" if augmentation else ""
    text = config_text(image_folder, user_dir / "run", user_dir / "mlruns", epochs=epochs, extra=extra,
                       model=ZOO_MODEL.get(model, CUSTOM_MODEL.format(target=model)))
    if callback:
        text = text.replace("  callbacks:\n", f"  callbacks:\n    {callback}:\n", 1)
    path = user_dir / name
    path.write_text(text)
    return path


def _refused(capsys: pytest.CaptureFixture, argv: list[str], key: str, target: str) -> str:
    """Run the CLI in-process: exit 2 and one error line naming the key, the file/module and the flag."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("stmclf: error:")]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"stmclf: error: {key}: ") and target in line and "--trust-code" in line, line
    return line


def _markers(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.marker")}


def test_custom_model_file_is_refused_without_trust_code(user_dir, image_folder, capsys):
    config = _config(user_dir, image_folder)
    line = _refused(capsys, ["fit", "--config", str(config)], "training.model.custom_model", "my_model.py:build")
    assert line == ("stmclf: error: training.model.custom_model: my_model.py:build runs Python code from a file "
                    "named by the config; pass --trust-code if you trust it")
    _refused(capsys, ["summary", "--config", str(config)], "training.model.custom_model", "my_model.py:build")
    assert _markers(user_dir) == set()  # the file never ran
    assert not (user_dir / "run").exists()


def test_custom_model_module_is_refused_without_trust_code(user_dir, image_folder, capsys):
    config = _config(user_dir, image_folder, model="my_model:build")
    line = _refused(capsys, ["fit", "--config", str(config)], "training.model.custom_model", "my_model:build")
    assert "from a module named by the config" in line
    assert _markers(user_dir) == set() and "my_model" not in sys.modules


def test_custom_model_runs_with_trust_code(user_dir, image_folder, capsys):
    config = _config(user_dir, image_folder)
    assert main(["summary", "--config", str(config), "--trust-code"]) == 0
    out = capsys.readouterr().out
    assert "conv" in out and "head" in out
    assert _markers(user_dir) == {"model_imported.marker"}


def test_custom_augmentation_file_is_refused_without_trust_code(user_dir, image_folder, capsys):
    config = _config(user_dir, image_folder, model="mobilenet", augmentation="my_aug.py:augment")
    # the default model (mobilenet) needs no flag: only the augmentation is refused
    _refused(capsys, ["fit", "--config", str(config)], "custom_data_augmentation.function_name",
             "my_aug.py:augment")
    _refused(capsys, ["augment-preview", "--config", str(config), "--out", str(user_dir / "preview.png")],
             "custom_data_augmentation.function_name", "my_aug.py:augment")
    assert _markers(user_dir) == set() and not (user_dir / "preview.png").exists()
    assert main(["augment-preview", "--config", str(config), "--out", str(user_dir / "preview.png"),
                 "--num-images", "2", "--trust-code"]) == 0
    assert {"aug_imported.marker", "aug_called.marker"} <= _markers(user_dir)
    assert (user_dir / "preview.png").read_bytes()[:4] == b"\x89PNG"


def test_callback_class_path_in_a_user_module_is_refused_without_trust_code(user_dir, callback_module, image_folder,
                                                                            capsys):
    name = f"{callback_module}.Marker"
    config = _config(user_dir, image_folder, model="mobilenet", callback=name)
    line = _refused(capsys, ["fit", "--config", str(config)], f"training.callbacks.{name}", callback_module)
    assert "from a module named by the config" in line
    assert _markers(user_dir) == set() and callback_module not in sys.modules
    with pytest.raises(ConfigError, match="--trust-code"):
        build_callbacks({name: None})
    with trusting_code():
        (callback,) = build_callbacks({name: {"name": "x.marker"}})
    assert type(callback).__name__ == "Marker" and callback.name == "x.marker"
    assert _markers(user_dir) == {"cb_imported.marker"}


def test_lightning_torch_and_stmclf_class_paths_need_no_flag():
    assert not code_trusted()
    monitor, nan = build_callbacks({"lightning.pytorch.callbacks.LearningRateMonitor": {"logging_interval": "epoch"},
                                    "stmclf.training.callbacks.TerminateOnNaN": None})
    assert type(monitor).__name__ == "LearningRateMonitor" and type(nan).__name__ == "TerminateOnNaN"


def test_trusted_run_trains_and_its_checkpoints_still_need_the_flag(user_dir, callback_module, image_folder, capsys):
    name = f"{callback_module}.Marker"
    config = _config(user_dir, image_folder, augmentation="my_aug.py:augment", callback=name)
    assert main(["fit", "--config", str(config), "--trust-code"]) == 0
    capsys.readouterr()
    assert _markers(user_dir) == {"model_imported.marker", "aug_imported.marker", "aug_called.marker",
                                  "cb_imported.marker", "cb_trained.marker"}
    saved = user_dir / "run" / "saved_models"
    written = (user_dir / "run" / "config.yaml").read_text()
    written = yaml.safe_load(written)
    assert "trust_code" not in written and "trust_code" not in written["general"]
    assert written["training"]["model"]["custom_model"] == "my_model.py:build"
    hparams = torch.load(saved / "last_augmented_model.ckpt", weights_only=True)["hyper_parameters"]
    assert "trust_code" not in str(hparams)

    # resuming rebuilds the custom model from the checkpoint's spec: the flag is needed again
    (user_dir / "model_imported.marker").unlink()
    resume = _config(user_dir, image_folder, "resume.yaml", model="", epochs=3)
    argv = ["fit", "--config", str(resume), "--ckpt_path", str(saved / "last_augmented_model.ckpt"),
            "--hydra.run.dir", str(user_dir / "resumed")]
    _refused(capsys, argv, "training.model.custom_model", "my_model.py:build")
    assert not (user_dir / "model_imported.marker").exists()

    # so does predicting with (evaluating) the trained model file
    best = user_dir / "run" / "saved_models" / "best_model.pt"
    argv = ["predict", "--model", str(best), "--images", str(image_folder / "cat")]
    _refused(capsys, argv, "training.model.custom_model", "my_model.py:build")
    assert not (user_dir / "model_imported.marker").exists()
    assert main([*argv, "--trust-code"]) == 0
    assert (user_dir / "model_imported.marker").exists()


def test_trust_code_comes_only_from_the_command_line(user_dir, image_folder, capsys):
    config = _config(user_dir, image_folder)
    in_file = user_dir / "in_file.yaml"
    in_file.write_text(config.read_text().replace("  global_seed: 7\n", "  global_seed: 7\n  trust_code: true\n"))
    assert main(["fit", "--config", str(in_file)]) == 2
    err = capsys.readouterr().err
    assert "stmclf: error: general.trust_code: unknown key" in err and "Traceback" not in err
    assert main(["fit", "--config", str(config), "--general.trust_code", "true"]) == 2
    assert "general.trust_code: unknown key" in capsys.readouterr().err
    assert _markers(user_dir) == set()

    cfg = load_config(["--config", str(config), "--trust_code"])
    assert cfg.trust_code and code_trusted()
    resolved = yaml.safe_load(cfg.resolved_yaml)
    assert "trust_code" not in resolved and "trust_code" not in resolved["general"]
    assert "trust_code" not in cfg.to_dict()
    cfg = load_config(["--config", str(config)])  # each parsed command line sets it again
    assert not cfg.trust_code and not code_trusted()


def test_an_unpickled_custom_augmentation_reloads_its_function(user_dir):
    from stmclf.augment.custom import build_custom_augmentation

    with pytest.raises(ConfigError, match=r"^custom_data_augmentation\.function_name: my_aug\.py:augment runs"):
        build_custom_augmentation({"function_name": "my_aug.py:augment"}, (0.0, 1.0))
    assert _markers(user_dir) == set()
    with trusting_code():
        aug = build_custom_augmentation({"function_name": "my_aug.py:augment"}, (0.0, 1.0))
    # it passed the check when it was built (a spawned worker process has no command line to read)
    copy = pickle.loads(pickle.dumps(aug))
    images = torch.rand(2, 3, 4, 4)
    assert torch.equal(copy(images), images) and (user_dir / "aug_called.marker").exists()
