"""No secret lands on disk: a config value that comes from an environment variable (``${NAME}``)
is stored as ``${NAME}`` in the run's checkpoints too (``*.ckpt``, ``best_model.pt``), and every
command that rebuilds a model from a checkpoint resolves it from the environment when it reads the
file; without the variable that command stops in one line naming the file and the variable.

The run is a real 1-epoch fit of MobileNetV2-0.35 at 32x32 on two small colour classes whose
optimizer name holds a password (``pw_${stmai_password}``) and whose augmentation mode comes from
another variable (``${FLIP_MODE}``: the stored ``${FLIP_MODE}`` is no valid mode, so a rebuild that
did not resolve it would fail)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import error_of, COLORS, DEFAULT_MODEL, config_text, write_image_folder
from stmclf.cli.main import main
from stmclf.models.checkpoint_env import ENV_NAMES_KEY, ENV_POSITIONS_KEY, resolve_env_references
from stmclf.training.model_file import load_classifier

SECRET = "pw-S3CR3T-4f1e9a"
VARIABLES = {"stmai_password": SECRET, "FLIP_MODE": "horizontal"}
AUGMENTATION = """\
data_augmentation:
  random_flip:
    mode: ${FLIP_MODE}
"""


def _set(monkeypatch, **skip: bool) -> None:
    for name, value in VARIABLES.items():
        if skip.get(name):
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def _leaks(*roots: Path) -> list[str]:
    """The files under ``roots`` whose bytes hold the secret."""
    return [str(p) for root in roots for p in sorted(root.rglob("*")) if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory):
    """(folder, data, the run's folder, a config without variables) of a fit with the variables set."""
    tmp = tmp_path_factory.mktemp("secrets")
    data = write_image_folder(tmp / "data", per_class=4, classes={k: COLORS[k] for k in ("cat", "dog")})
    text = config_text(data, tmp / "run", tmp / "mlruns", epochs=1, extra=AUGMENTATION)
    text = text.replace("      learning_rate: 0.005\n", "      learning_rate: 0.005\n      name: pw_${stmai_password}\n")
    (tmp / "secret.yaml").write_text(text)
    plain = tmp / "plain.yaml"  # the same data, no variable: whatever needs one comes from the checkpoint
    plain.write_text(config_text(data, tmp / "plain_run", tmp / "mlruns", epochs=1))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(tmp)
        _set(monkeypatch)
        assert main(["fit", "--config", str(tmp / "secret.yaml"), "--training.precision", "32"]) == 0
    return tmp, data, tmp / "run", plain


def _one_line_error(capsys, key: str, path: Path, variable: str) -> None:
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"stmclf: error: {key}: {path}: environment variable {variable} is not set"), err


def test_no_file_of_the_run_holds_the_value_of_a_variable(secret_run):
    tmp, _, run, _ = secret_run
    saved = run / "saved_models"
    assert {p.name for p in saved.iterdir()} >= {"best_augmented_model.ckpt", "last_augmented_model.ckpt",
                                                 "best_model.pt"}
    assert not _leaks(run, tmp / "mlruns"), "the secret is written in these files"
    for name in ("last_augmented_model.ckpt", "best_model.pt"):
        stored = torch.load(saved / name, map_location="cpu", weights_only=True)
        assert stored["hyper_parameters"]["optimizer"]["Adam"]["name"] == "pw_${stmai_password}"
        assert stored["hyper_parameters"]["data_augmentation"]["random_flip"]["mode"] == "${FLIP_MODE}"
        assert stored[ENV_NAMES_KEY] == ["FLIP_MODE", "stmai_password"]


def test_a_resumed_run_resolves_the_variables_and_keeps_them_out_of_its_files(secret_run, tmp_path, monkeypatch,
                                                                               capsys):
    """Resumed with a config that names no variable: the checkpoint's ``${NAME}`` are resolved (the
    run trains with the stored optimizer and augmentation) and stay references in every file of the
    new run (its checkpoints, hparams.yaml, stmclf.log)."""
    tmp, _, run, plain = secret_run
    monkeypatch.chdir(tmp_path)
    last = run / "saved_models" / "last_augmented_model.ckpt"
    resume = ["fit", "--config", str(plain), "--ckpt_path", str(last), "--training.epochs", "2",
              "--training.precision", "32", "--hydra.run.dir", str(tmp_path / "resumed"),
              "--mlflow.uri", str(tmp_path / "mlruns")]
    _set(monkeypatch, stmai_password=True)
    assert main(resume) == 2
    _one_line_error(capsys, "training.resume_training_from", last, "stmai_password")
    assert not (tmp_path / "resumed").exists()

    _set(monkeypatch)
    assert main(resume) == 0
    resumed = tmp_path / "resumed" / "saved_models" / "last_augmented_model.ckpt"
    stored = torch.load(resumed, map_location="cpu", weights_only=True)
    assert stored["epoch"] == 1  # the second epoch ran
    assert stored["hyper_parameters"]["optimizer"]["Adam"]["name"] == "pw_${stmai_password}"
    assert stored[ENV_NAMES_KEY] == ["FLIP_MODE", "stmai_password"]
    assert "pw_${stmai_password}" in next((tmp_path / "resumed").rglob("hparams.yaml")).read_text()
    assert not _leaks(tmp_path / "resumed", tmp_path / "mlruns"), "the secret is written in these files"


def test_export_and_predict_resolve_the_variables(secret_run, tmp_path, monkeypatch, capsys):
    tmp, data, run, plain = secret_run
    monkeypatch.chdir(tmp_path)
    best = run / "saved_models" / "best_model.pt"
    export = ["export", "--config", str(plain), "--ckpt", str(best), "--run", str(tmp_path / "exp"),
              "--format", "onnx", "--no_int8"]
    predict = ["predict", "--config", str(plain), "--model", str(best), "--images", str(data / "cat"),
               "--run", str(tmp_path / "pred")]
    pretrained = ["fit", "--config", str(plain), "--training.model.pretrained_model_path", str(best),
                  "--hydra.run.dir", str(tmp_path / "fit"), "--mlflow.uri", str(tmp_path / "mlruns")]
    evaluation = tmp_path / "evaluation.yaml"
    evaluation.write_text(plain.read_text().replace("operation_mode: training", "operation_mode: evaluation")
                          .replace("general:\n", f"general:\n  model_path: {best}\n", 1)
                          .replace(str(tmp / "plain_run"), str(tmp_path / "eval")))

    _set(monkeypatch, stmai_password=True)
    for key, args in (("--ckpt", export), ("--model", predict), ("training.model.pretrained_model_path", pretrained),
                      ("general.model_path", ["run", "--config", str(evaluation)])):
        assert main(args) == 2, args
        _one_line_error(capsys, key, best, "stmai_password")
    assert not any((tmp_path / name).exists() for name in ("exp", "pred", "fit", "eval"))
    # the run's own config names the variable too: --run stops at the config, in one line
    assert main(["export", "--run", str(run), "--format", "onnx", "--no_int8"]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "environment variable stmai_password is not set" in err, err

    _set(monkeypatch)
    assert main(export) == 0
    assert any((tmp_path / "exp").rglob("*.onnx"))
    assert main(predict) == 0
    assert any((tmp_path / "pred").rglob("*.csv"))
    assert main(["run", "--config", str(evaluation)]) == 0
    assert main(["export", "--run", str(run), "--format", "onnx", "--no_int8"]) == 0
    assert any(run.rglob("*.onnx"))
    assert not _leaks(tmp_path, run), "the secret is written in these files"


def test_a_checkpoint_written_before_keeps_loading(secret_run, tmp_path, monkeypatch, capsys):
    """A checkpoint that holds resolved values (written before this change: no list of variables)
    loads as it is, with no variable set."""
    tmp, data, run, plain = secret_run
    monkeypatch.chdir(tmp_path)
    stored = torch.load(run / "saved_models" / "best_model.pt", map_location="cpu", weights_only=True)
    stored.pop(ENV_NAMES_KEY, None)
    stored["hyper_parameters"]["optimizer"] = {"Adam": {"learning_rate": 0.005, "name": "plain_adam"}}
    stored["hyper_parameters"]["data_augmentation"] = {"random_flip": {"mode": "horizontal"}}
    old = tmp_path / "old.pt"
    torch.save(stored, old)
    _set(monkeypatch, stmai_password=True, FLIP_MODE=True)
    assert main(["predict", "--config", str(plain), "--model", str(old), "--images", str(data / "cat"),
                 "--run", str(tmp_path / "pred")]) == 0, capsys.readouterr().err
    assert any((tmp_path / "pred").rglob("*.csv"))


def test_a_malformed_list_of_variables_is_one_line(secret_run, tmp_path, capsys, monkeypatch):
    tmp, data, run, plain = secret_run
    monkeypatch.chdir(tmp_path)
    stored = torch.load(run / "saved_models" / "best_model.pt", map_location="cpu", weights_only=True)
    stored[ENV_NAMES_KEY] = ["not a name"]
    bad = tmp_path / "bad.pt"
    torch.save(stored, bad)
    assert main(["predict", "--config", str(plain), "--model", str(bad), "--images", str(data / "cat")]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and err.startswith(f"stmclf: error: --model: {bad}: is not a stmclf checkpoint")


def test_the_stored_spec_is_checked_on_the_resolved_value(secret_run, tmp_path, monkeypatch, capsys):
    """check_stored_spec runs on the resolved spec: a stored ``name: ${STMCLF_TEST_MODEL}`` whose
    variable names MobileNet, with ``alpha: 1000`` (8 TB of parameters), is refused by the memory
    estimate (an unresolved name is no zoo model: the estimate would skip it)."""
    tmp, data, run, plain = secret_run
    monkeypatch.chdir(tmp_path)
    stored = torch.load(run / "saved_models" / "best_model.pt", map_location="cpu", weights_only=True)
    stored["hyper_parameters"]["model_spec"].update(name="${STMCLF_TEST_MODEL}", alpha=1000)
    stored[ENV_NAMES_KEY] = [*stored.get(ENV_NAMES_KEY, []), "STMCLF_TEST_MODEL"]
    stored[ENV_POSITIONS_KEY] = [*stored.get(ENV_POSITIONS_KEY, []), ["hyper_parameters", "model_spec", "name"]]
    edited = tmp_path / "edited.pt"
    torch.save(stored, edited)
    _set(monkeypatch)
    monkeypatch.setenv("STMCLF_TEST_MODEL", "mobilenet")
    assert main(["predict", "--config", str(plain), "--model", str(edited), "--images", str(data / "cat")]) == 2
    err = error_of(capsys.readouterr().err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"stmclf: error: --model: {edited}: stored hyper_parameters.model_spec: its model "
                          "(name: 'mobilenet'"), err
    assert "more than the" in err, err


def test_only_the_positions_that_used_a_variable_store_its_reference(tmp_path, monkeypatch):
    """By provenance, not by value: ``${FLIP_MODE}`` is ``horizontal`` and two class folders are named
    ``horizontal`` and ``vertical_horizontal``; the class names are stored as they are (they did not
    come from the variable), only the augmentation mode is ``${FLIP_MODE}``. Read with another
    value of the variable, the mode changes and the class names do not."""
    data = write_image_folder(tmp_path / "data", per_class=4,
                              classes={"horizontal": COLORS["cat"], "vertical_horizontal": COLORS["dog"]})
    (tmp_path / "c.yaml").write_text(config_text(data, tmp_path / "run", tmp_path / "mlruns", epochs=1,
                                                 extra=AUGMENTATION))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLIP_MODE", "horizontal")
    assert main(["fit", "--config", str(tmp_path / "c.yaml"), "--training.precision", "32"]) == 0
    classes = ["horizontal", "vertical_horizontal"]
    for name in ("last_augmented_model.ckpt", "best_model.pt"):
        stored = torch.load(tmp_path / "run" / "saved_models" / name, map_location="cpu", weights_only=True)
        assert stored["hyper_parameters"]["class_names"] == classes, name
        assert stored["hyper_parameters"]["data_augmentation"]["random_flip"]["mode"] == "${FLIP_MODE}", name
        assert stored[ENV_NAMES_KEY] == ["FLIP_MODE"], name
    logged = yaml.safe_load(next((tmp_path / "run").rglob("hparams.yaml")).read_text())  # the loggers' copy too
    assert logged["class_names"] == classes and logged["data_augmentation"]["random_flip"]["mode"] == "${FLIP_MODE}"
    monkeypatch.setenv("FLIP_MODE", "vertical")
    module = load_classifier(tmp_path / "run" / "saved_models" / "best_model.pt")
    assert module.class_names == classes
    assert module.hparams.data_augmentation["random_flip"]["mode"] == "vertical"


def test_a_reference_in_a_mapping_key_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """Only values are interpolated: a ``${NAME}`` used as a mapping key (in a file or an override)
    is one line naming the key, before anything is written (the run would have used, and its
    checkpoints stored, the key's unresolved text)."""
    data = write_image_folder(tmp_path / "data", per_class=4, classes={k: COLORS[k] for k in ("cat", "dog")})
    (tmp_path / "my_aug.py").write_text("def augment(images, config, epoch):\n    return images\n")
    extra = "custom_data_augmentation:\n  function_name: my_aug.py:augment\n  config:\n    ${FLIP_MODE}: 1\n"
    (tmp_path / "c.yaml").write_text(config_text(data, tmp_path / "run", tmp_path / "mlruns", epochs=1, extra=extra))
    (tmp_path / "plain.yaml").write_text(config_text(data, tmp_path / "run", tmp_path / "mlruns", epochs=1,
                                                     extra=extra.split("  config:")[0]))
    monkeypatch.chdir(tmp_path)
    _set(monkeypatch)
    for args in (["--config", "c.yaml"],
                 ["--config", "plain.yaml", "--custom_data_augmentation.config", '{"${FLIP_MODE}": 1}']):
        assert main(["fit", *args, "--trust-code", "--training.precision", "32"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("stmclf: error: custom_data_augmentation.config.${FLIP_MODE}: ${FLIP_MODE} in a mapping key "
                       "is not interpolated (only values are): write the key itself"), err
    assert not (tmp_path / "run").exists()


def test_a_reference_in_an_override_key_is_refused_as_such_while_the_variable_is_unset(tmp_path, monkeypatch,
                                                                                       capsys):
    """An override's mapping key ``${NAME}`` is named as a key that is not interpolated, as in a file,
    also while NAME is not set (it said "environment variable NAME is not set": setting it only led to
    the key's refusal)."""
    data = write_image_folder(tmp_path / "data", per_class=4, classes={k: COLORS[k] for k in ("cat", "dog")})
    extra = "custom_data_augmentation:\n  function_name: my_aug.py:augment\n"
    (tmp_path / "c.yaml").write_text(config_text(data, tmp_path / "run", tmp_path / "mlruns", epochs=1, extra=extra))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STMCLF_UNSET_KEY", raising=False)
    for override in (["--custom_data_augmentation.config", "{'${STMCLF_UNSET_KEY}': 1}"],
                     ["custom_data_augmentation.config={'${STMCLF_UNSET_KEY}': 1}"],
                     ["--custom_data_augmentation", "{config: {'${STMCLF_UNSET_KEY}': {a: 1}}}"]):
        assert main(["fit", "--config", "c.yaml", *override, "--print_config"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("stmclf: error: custom_data_augmentation.config.${STMCLF_UNSET_KEY}: ${STMCLF_UNSET_KEY} in a "
                       "mapping key is not interpolated (only values are): write the key itself"), (override, err)


def test_fine_tuning_from_general_model_path_resolves_the_stored_reference(tmp_path, monkeypatch, capsys):
    """Multi-step training: a run whose model name came from ``${STMCLF_MODEL_NAME}`` is fine-tuned
    by a config that names the variable nowhere (``general.model_path: best_model.pt``, no
    ``training.model``). Without the variable that fit is one line naming the key, the file and the
    variable, before anything is written; with it, it trains, and its own checkpoints store the
    model name as ``${STMCLF_MODEL_NAME}`` again."""
    data = write_image_folder(tmp_path / "data", per_class=4, classes={k: COLORS[k] for k in ("cat", "dog")})
    model = DEFAULT_MODEL.replace("name: mobilenet", "name: ${STMCLF_MODEL_NAME}")
    (tmp_path / "first.yaml").write_text(config_text(data, tmp_path / "first", tmp_path / "mlruns", epochs=1,
                                                     model=model))
    best = tmp_path / "first" / "saved_models" / "best_model.pt"
    (tmp_path / "tuned.yaml").write_text(config_text(data, tmp_path / "tuned", tmp_path / "mlruns", epochs=1, model="")
                                         .replace("general:\n", f"general:\n  model_path: {best}\n", 1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STMCLF_MODEL_NAME", "mobilenet")
    assert main(["fit", "--config", "first.yaml", "--training.precision", "32"]) == 0
    assert torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]["model_spec"]["name"] == \
        "${STMCLF_MODEL_NAME}"

    tune = ["fit", "--config", "tuned.yaml", "--training.precision", "32"]
    monkeypatch.delenv("STMCLF_MODEL_NAME")
    assert main(tune) == 2
    _one_line_error(capsys, "general.model_path", best, "STMCLF_MODEL_NAME")
    assert not (tmp_path / "tuned").exists()

    monkeypatch.setenv("STMCLF_MODEL_NAME", "mobilenet")
    assert main(tune) == 0, capsys.readouterr().err
    for name in ("last_augmented_model.ckpt", "best_model.pt"):
        stored = torch.load(tmp_path / "tuned" / "saved_models" / name, map_location="cpu", weights_only=True)
        assert stored["hyper_parameters"]["model_spec"]["name"] == "${STMCLF_MODEL_NAME}", name
        assert stored[ENV_NAMES_KEY] == ["STMCLF_MODEL_NAME"], name


ROOT_CALLBACK = '''
import os

from lightning.pytorch.callbacks import Callback


class KeepsRoot(Callback):
    """Keeps the folder it was given in the run's checkpoints, as given or normalised (a trailing /)."""

    def __init__(self, root: str, normalise: bool = False):
        self.root, self.normalise = root, normalise

    def state_dict(self):
        return {"root": os.path.join(self.root, "") if self.normalise else self.root}

    def load_state_dict(self, state):
        self.root = state["root"]
'''


def _holding(root: Path, value: str, allowed: str) -> list[str]:
    """The files under ``root`` whose bytes hold ``value`` outside the text ``allowed``."""
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file()
            and value.encode() in p.read_bytes().replace(allowed.encode(), b"")]


def test_a_value_carried_elsewhere_is_not_written(tmp_path, monkeypatch, capsys):
    """The safety net behind the positions: a code path the positions do not know (here a callback of
    the user's, whose state the checkpoints keep) carries the value of ``${DATA_ROOT}`` into a
    checkpoint. Carried as it is, the checkpoint stores ``${DATA_ROOT}`` there too and lists the
    position (read back, it is resolved); changed (a path normalised with a trailing ``/``), the fit
    stops in one line naming the variable and the place, and no file holds the value. The config's
    own texts that contain the value (``dataset.validation_path``, written literally) and the class
    folder named like ``${FLIP_MODE}`` are written as they are."""
    secret = str(tmp_path / "private-7f3a9c")
    classes = {"horizontal": COLORS["cat"], "dog": COLORS["dog"]}
    data = write_image_folder(tmp_path / "data", per_class=4, classes=classes)
    validation = write_image_folder(Path(secret) / "val", per_class=2, classes=classes)
    (tmp_path / "keeps_root_cb.py").write_text(ROOT_CALLBACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_ROOT", secret)
    monkeypatch.setenv("FLIP_MODE", "horizontal")
    base = config_text(data, tmp_path / "run", tmp_path / "mlruns", epochs=1, extra=AUGMENTATION).replace(
        "  validation_split: 0.25\n", f"  validation_path: {validation}\n")
    for normalise in ("false", "true"):
        text = base.replace("  callbacks:\n", "  callbacks:\n    keeps_root_cb.KeepsRoot:\n      root: ${DATA_ROOT}\n"
                                              f"      normalise: {normalise}\n", 1)
        text = text.replace(str(tmp_path / "run"), str(tmp_path / f"run_{normalise}"))
        (tmp_path / f"c_{normalise}.yaml").write_text(text)
    fit = ["fit", "--trust-code", "--training.precision", "32", "--config"]

    assert main([*fit, "c_false.yaml"]) == 0, capsys.readouterr().err
    run = tmp_path / "run_false"
    last = run / "saved_models" / "last_augmented_model.ckpt"
    stored = torch.load(last, map_location="cpu", weights_only=True)
    assert stored["callbacks"]["KeepsRoot"] == {"root": "${DATA_ROOT}"}
    assert ["callbacks", "KeepsRoot", "root"] in stored[ENV_POSITIONS_KEY]
    assert stored[ENV_NAMES_KEY] == ["DATA_ROOT", "FLIP_MODE"]
    assert stored["hyper_parameters"]["class_names"] == ["dog", "horizontal"]
    assert stored["ImageDataModule"]["dataset"]["validation_path"] == str(validation)  # the config's own text
    resolved = resolve_env_references(stored, last, "--ckpt_path")
    assert resolved["callbacks"]["KeepsRoot"] == {"root": secret}
    assert not _holding(run, secret, str(validation))

    capsys.readouterr()
    assert main([*fit, "c_true.yaml"]) == 2
    err = error_of(capsys.readouterr().err)
    assert err == ("stmclf: error: a checkpoint of the run: callbacks.KeepsRoot.root: would hold the value of "
                   "environment variable DATA_ROOT inside other text, where it cannot be written as ${DATA_ROOT} (a "
                   "run keeps its config's variables out of the files it writes): not written; if the value is no "
                   "secret, give it in the config instead of ${DATA_ROOT}"), err
    assert not _holding(tmp_path / "run_true", secret, str(validation))
    assert not list((tmp_path / "run_true").rglob("*.ckpt"))
