"""Config parsing: the seed schema through jsonargparse, safe values, interpolation, errors."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from stmclf.cli.main import main
from stmclf.config import load_config, rules
from stmclf.config.interpolate import interpolate_tree, run_start
from stmclf.config.values import convert_values, parse_value
from stmclf.errors import ConfigError, UserError

from conftest import config_text, run_cli

SEED_EXAMPLE = """\
general:
  project_name: my_project
  logs_dir: logs
  saved_models_dir: saved_models
  display_figures: True
  global_seed: 127
  gpu_memory_limit: 3

operation_mode: training

dataset:
   name: flowers
   class_names: [daisy, dandelion, roses, sunflowers, tulips]
   training_path: {train}
   validation_path:
   validation_split: 0.15
   test_path:

preprocessing:
   rescaling:
      scale: 1/127.5
      offset: -1
   resizing:
      aspect_ratio: fit
      interpolation: nearest
   color_mode: rgb

data_augmentation:
  random_contrast:
    factor: 0.4
  random_flip:
    mode: horizontal_and_vertical

training:
   model:
      name: mobilenet
      version: v2
      alpha: 0.35
      pretrained_weights: None
      input_shape: (224, 224, 3)
   batch_size: 64
   epochs: 200
   dropout: 0.3
   frozen_layers: (0:-1)
   optimizer:
      Adam:
         learning_rate: 0.001
   callbacks:
      ReduceLROnPlateau:
         monitor: val_accuracy
         factor: 0.5
         patience: 10
      EarlyStopping:
         monitor: val_accuracy
         patience: 40

quantization:
  quantizer: TFlite_converter
  quantization_type: PTQ
  quantization_input_type: uint8
  quantization_output_type: float
  granularity: per_channel
  export_dir: quantized_models

tools:
  stedgeai:
    version: 10.0.0
    optimization: balanced
    on_cloud: True
    path_to_stedgeai: C:/ST/STEdgeAI/stedgeai.exe
  path_to_cubeIDE: C:/ST/STM32CubeIDE/stm32cubeide.exe

benchmarking:
  board: STM32H747I-DISCO

mlflow:
   uri: ./experiments_outputs/mlruns

hydra:
   run:
      dir: ./experiments_outputs/${{now:%Y_%m_%d_%H_%M_%S}}
"""


@pytest.fixture
def seed_file(tmp_path):
    path = tmp_path / "training_config.yaml"
    path.write_text(SEED_EXAMPLE.format(train="../datasets/flower_photos"))
    return path


def test_seed_example_parses_unchanged(seed_file):
    cfg = load_config(["--config", str(seed_file)])
    assert cfg.operation_mode == "training"
    assert cfg.preprocessing.rescaling.scale == pytest.approx(1 / 127.5)
    assert cfg.preprocessing.rescaling.offset == -1
    assert cfg.training.model["input_shape"] == [224, 224, 3]
    assert cfg.training.model["pretrained_weights"] is None
    assert cfg.training.frozen_layers == "(0:-1)"
    assert cfg.training.optimizer == {"Adam": {"learning_rate": 0.001}}
    assert list(cfg.training.callbacks) == ["ReduceLROnPlateau", "EarlyStopping"]
    assert list(cfg.data_augmentation) == ["random_contrast", "random_flip"]
    assert cfg.dataset.class_names == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert cfg.dataset.validation_path is None
    assert cfg.general.global_seed == 127 and cfg.general.gpu_memory_limit == 3
    assert cfg.tools.stedgeai.version == "10.0.0"
    assert cfg.benchmarking.board == "STM32H747I-DISCO"
    assert str(cfg.run_dir) == "experiments_outputs/" + run_start().strftime("%Y_%m_%d_%H_%M_%S")
    assert cfg.trainer["accelerator"] == "auto"


def test_an_empty_trainer_section_means_lightnings_defaults(seed_file):
    seed_file.write_text(seed_file.read_text() + "\ntrainer:\n")
    cfg = load_config(["--config", str(seed_file)])
    assert cfg.trainer == {}


def test_overrides_and_trainer_section(seed_file):
    cfg = load_config(["--config", str(seed_file), "--training.epochs", "3",
                       "--preprocessing.rescaling.scale", "1/255", "--trainer.precision", "bf16-mixed",
                       "--trainer.devices", "1"])
    assert cfg.training.epochs == 3
    assert cfg.preprocessing.rescaling.scale == pytest.approx(1 / 255)
    assert cfg.trainer["precision"] == "bf16-mixed"
    assert cfg.trainer["devices"] in (1, "1")  # Lightning reads both
    appended = load_config(["--config", str(seed_file), "--trainer.devices+", "0"])  # jsonargparse's list append
    assert appended.trainer["devices"] == [0]


@pytest.mark.parametrize("form", ["hydra", "flag"])
def test_an_override_inside_a_free_form_mapping_changes_only_that_key(seed_file, form):
    """training.callbacks.EarlyStopping.patience=5 changes patience and keeps monitor (jsonargparse
    replaced the whole entry: {EarlyStopping: {patience: 5}}, so it fell back to val_loss); the same
    in optimizer, data_augmentation, custom_data_augmentation.config and hydra, in both syntaxes."""
    seed_file.write_text(seed_file.read_text().replace(
        "  random_flip:", "  random_translation:\n    width_factor: 0.1\n    height_factor: 0.2\n  random_flip:")
        + "\ncustom_data_augmentation:\n  function_name: aug:build\n  config: {a: {b: 1, c: 2}}\n")
    overrides = {"training.callbacks.EarlyStopping.patience": "5", "training.optimizer.Adam.beta_1": "0.8",
                 "data_augmentation.random_translation.width_factor": "1/4",
                 "custom_data_augmentation.config.a.b": "3", "hydra.run.job": "x", "training.model.alpha": "0.5"}
    argv = ["--config", str(seed_file)]
    for key, value in overrides.items():
        argv += [f"{key}={value}"] if form == "hydra" else [f"--{key}", value]
    cfg = load_config(argv)
    assert cfg.training.callbacks["EarlyStopping"] == {"monitor": "val_accuracy", "patience": 5}
    assert list(cfg.training.callbacks) == ["ReduceLROnPlateau", "EarlyStopping"]
    assert cfg.training.optimizer == {"Adam": {"learning_rate": 0.001, "beta_1": 0.8}}
    assert cfg.data_augmentation["random_translation"] == {"width_factor": 0.25, "height_factor": 0.2}
    assert list(cfg.data_augmentation) == ["random_contrast", "random_translation", "random_flip"]
    assert cfg.custom_data_augmentation.config == {"a": {"b": 3, "c": 2}}
    assert sorted(cfg.hydra["run"]) == ["dir", "job"] and cfg.hydra["run"]["job"] == "x"
    assert cfg.training.model["alpha"] == 0.5 and cfg.training.model["name"] == "mobilenet"
    printed = yaml.safe_load(cfg.resolved_yaml)  # what --print_config shows and the run writes
    assert printed["training"]["callbacks"]["EarlyStopping"] == {"monitor": "val_accuracy", "patience": 5}
    assert printed["training"]["optimizer"] == {"Adam": {"learning_rate": 0.001, "beta_1": 0.8}}


def test_an_override_of_a_whole_mapping_replaces_it(seed_file):
    """A mapping value replaces the node its key names (the other entries stay): another optimizer,
    another set of arguments of one callback."""
    cfg = load_config(["--config", str(seed_file), "training.optimizer={SGD: {learning_rate: 0.1}}",
                       "--training.callbacks.EarlyStopping", "{patience: 3}"])
    assert cfg.training.optimizer == {"SGD": {"learning_rate": 0.1}}
    assert cfg.training.callbacks == {"ReduceLROnPlateau": {"monitor": "val_accuracy", "factor": 0.5, "patience": 10},
                                      "EarlyStopping": {"patience": 3}}
    added = load_config(["--config", str(seed_file), "training.callbacks.ModelCheckpoint.save_top_k=2"])
    assert list(added.training.callbacks) == ["ReduceLROnPlateau", "EarlyStopping", "ModelCheckpoint"]
    assert added.training.callbacks["ModelCheckpoint"] == {"save_top_k": 2}


@pytest.mark.parametrize("override", [["training.model.pretrained_weights=None"],
                                      ["training.model.pretrained_weights=null"],
                                      ["--training.model.pretrained_weights", "None"],
                                      ["--training.model.pretrained_weights=null"]])
def test_a_none_override_inside_a_free_form_mapping_is_none(seed_file, capsys, override):
    """None/null inside training.model is None, as in a YAML file: it was the string 'None' (the run
    refused it as a weights path) while --print_config showed null; so was general.model_path=None."""
    seed_file.write_text(seed_file.read_text().replace("pretrained_weights: None", "pretrained_weights: imagenet"))
    name = override[0].lstrip("-").split("=")[0]
    extra = [a.replace("pretrained_weights", "alpha") for a in override] + \
        [a.replace("pretrained_weights", "model_path") for a in override]
    extra += [a.replace("training.model.pretrained_weights", "general.model_path") for a in override]
    cfg = load_config(["--config", str(seed_file), *override, *extra])
    assert name == "training.model.pretrained_weights"
    assert cfg.general.model_path is None  # a path key of the schema: 'None' was the text 'None'
    for key in ("pretrained_weights", "alpha", "model_path"):
        assert cfg.training.model[key] is None, key
    assert yaml.safe_load(cfg.resolved_yaml)["training"]["model"]["pretrained_weights"] is None
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(seed_file), *override, "--print_config"])
    assert "pretrained_weights: null" in capsys.readouterr().out


def test_hydra_add_and_delete_overrides_and_null_entries(seed_file):
    """++key=value sets the key; ~key deletes an entry of a free mapping or sets a nullable key to null
    (both were 'unrecognized arguments'); an entry set to null by an override is accepted as in a YAML
    file (was 'Does not validate against any of the Union subtypes')."""
    cfg = load_config(["--config", str(seed_file), "++training.epochs=2", "++training.optimizer.Adam.beta_1=0.8",
                       "~training.callbacks.EarlyStopping", "~training.model.alpha", "~data_augmentation",
                       "training.callbacks.ReduceLROnPlateau=null"])
    assert cfg.training.epochs == 2 and cfg.training.optimizer == {"Adam": {"learning_rate": 0.001, "beta_1": 0.8}}
    assert cfg.training.callbacks == {"ReduceLROnPlateau": None}
    assert "alpha" not in cfg.training.model and cfg.data_augmentation is None
    assert load_config(["--config", str(seed_file), "~training.callbacks"]).training.callbacks is None
    assert load_config(["--config", str(seed_file), "--training.optimizer.Adam=null"]).training.optimizer == {"Adam": None}


@pytest.mark.parametrize("args, error", [
    (["training.optimizer={Adam: [0.001]}"], "training.optimizer.Adam: the optimizer's arguments must be a mapping "
     "of argument names to values, e.g. Adam: {learning_rate: 0.001}, or nothing (null) for the defaults; got [0.001]"),
    (["--training.optimizer.Adam", "[0.001]"], "training.optimizer.Adam: the optimizer's arguments must be a mapping"),
    (["training.callbacks.EarlyStopping=5"], "training.callbacks.EarlyStopping: the callback's arguments must be"),
    (["data_augmentation.random_flip=3"], "data_augmentation.random_flip: the augmentation's arguments must be"),
    (["~training.callbacks.Foo"], "training.callbacks.Foo: nothing to delete (~): the key is not in the config"),
    (["~preprocessing.rescaling.scale"], "preprocessing.rescaling.scale: cannot be deleted (~): it must have a "
     "value; set it instead"),
    (["training.model.name.x=1"], "training.model.name.x: training.model.name is 'mobilenet', not a mapping: it "
     "holds no key 'x'"),  # the name was replaced by {x: 1}; Hydra refuses it too
    (["training.batch_size.x=1"], "training.batch_size.x: training.batch_size expects int, not a mapping: it holds "
     "no key 'x'"),  # was: expected int, got "NestedArg(key='x', val='1')"
    (["--preprocessing.color_mode.a", "1"], "preprocessing.color_mode.a: preprocessing.color_mode expects one of "
     "grayscale, rgb, rgba, not a mapping"),
    (["--training.optimizer.Adam.learning_rate.decay", "2"], "training.optimizer.Adam.learning_rate.decay: "
     "training.optimizer.Adam.learning_rate is 0.001, not a mapping: it holds no key 'decay'"),
    (["~training.epochs=3"], "~training.epochs=3: Hydra's ~key=value (delete if equal) is not supported; the "
     "override forms are key=value, +key=value, ++key=value"),
])
def test_override_errors_name_the_key_and_what_is_allowed(seed_file, capsys, args, error):
    assert main(["fit", "--config", str(seed_file), *args, "--print_config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"stmclf: error: {error}") and err.count("\n") == 1, err


def test_print_config_shows_resolved_values(seed_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(seed_file), "--training.epochs", "5", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "epochs: 5" in out
    assert "scale: 0.00784313725490196" in out
    assert "input_shape:\n    - 224" in out or "input_shape: [224, 224, 3]" in out.replace("\n    - ", "")


@pytest.mark.parametrize("override, error", [
    ("training.batch_size=100000", "training.batch_size: must be at most 65,536 (got 100000)"),
    ("dataset.validation_split=5", "dataset.validation_split: the value should be > 0 and < 1 (got 5.0)"),
])
def test_print_config_refuses_what_the_command_would(seed_file, capsys, override, error):
    """--print_config runs the config's own checks first: a value every command refuses is the same
    one-line error and exit code 2, not a printed config and exit code 0."""
    assert main(["fit", "--config", str(seed_file), override, "--print_config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"stmclf: error: {error}\n"


CLASS_PATH_CHECKPOINT = "training:\n  callbacks:\n    lightning.pytorch.callbacks.ModelCheckpoint: {}\n"


@pytest.mark.parametrize("command, args, error", [
    ("fit", ["training.callbacks.ModelCheckpoint.save_top_k=2"],
     "training.callbacks.ModelCheckpoint: The ModelCheckpoint callback is built-in and can't be redefined"),
    ("fit", ["--config", "class_path_checkpoint.yaml"], "training.callbacks.lightning.pytorch.callbacks."
     "ModelCheckpoint: stmclf writes the run's checkpoints itself"),
    ("fit", ["~training.epochs"], "missing required key training.epochs"),
    ("run", ["~training.epochs"], "missing required key training.epochs"),
    ("fit", ["~training.model"], "training.model: expecting either training.model, training.resume_training_from"),
    ("fit", ["training.optimizer={Adamm: null}"], "training.optimizer: unknown optimizer 'Adamm'"),
    ("fit", ["training.model.name=mobilenetz"],
     "training.model.name: unknown model name 'mobilenetz' (did you mean mobilenet?). Supported model names are"),
    ("fit", ["training.checkpoint_every={steps: 0}"], "training.checkpoint_every.steps: expecting a positive integer"),
    ("fit", ["training.ema.decay=2"], "training.ema.decay: must be > 0 and < 1 (got 2)"),
    ("fit", ["data_augmentation={random_contrast: {factr: 0.2}}"], "data_augmentation.random_contrast.factr: "
     "unknown or unsupported argument of random_contrast; valid arguments: factor, change_rate"),
    ("run", ["data_augmentation={random_flipp: null}"], "data_augmentation.random_flipp: "),
    ("fit", ["data_augmentation={random_flip: {mode: sideways}}"], "data_augmentation.random_flip.mode: "),
    ("fit", ["training.precision=32", "trainer.precision=bf16-mixed"],
     "training.precision: conflicts with trainer.precision: give one of them"),
    ("fit", ["training.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=4"],
     "training.accumulate_grad_batches: conflicts with trainer.accumulate_grad_batches: give one of them"),
    ("fit", ["trainer.val_check_interval=0"], "trainer.val_check_interval: expecting a number of batches"),
    ("run", ["operation_mode=deployment"], "operation_mode: 'deployment' is not available in stmclf"),
    ("run", ["operation_mode=evaluation"], "general.model_path: evaluation needs the model file"),
    ("run", ["operation_mode=chain_tqe", "quantization.quantizer=foo"], "quantization.quantizer: 'foo': use "
     "TFlite_converter or onnx_quantizer"),
    ("run", ["operation_mode=chain_tqeb", "benchmarking.board=NOPE"], "benchmarking.board: unknown board 'NOPE'"),
])
def test_print_config_makes_the_commands_config_refusals(seed_file, capsys, monkeypatch, command, args, error):
    """``fit``/``run --print_config`` refuses what the command itself refuses from the config alone
    (training.callbacks, the keys a training needs, the optimizer, the model name, a training key that
    conflicts with its trainer key, data_augmentation's functions and arguments, the mode, its sections
    and board), in the command's one line
    with exit code 2: it printed the config with exit code 0, then the command refused it."""
    monkeypatch.chdir(seed_file.parent)
    (seed_file.parent / "class_path_checkpoint.yaml").write_text(CLASS_PATH_CHECKPOINT)
    argv = [command, "--config", str(seed_file), *args]
    assert main([*argv, "--print_config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"stmclf: error: {error}") and err.count("\n") == 1, err
    assert main(argv) == 2  # the command: the same line, before any data is read
    assert capsys.readouterr().err == err
    assert not (seed_file.parent / "experiments_outputs").exists()


def test_print_config_prints_only_the_yaml(seed_file, capsys):
    """The command's checks run before printing without their warnings (the board not given, QAT
    that never starts): stdout is the YAML alone, even piped (one plain line per log record)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(seed_file), "operation_mode=chain_tqeb", "~benchmarking",
              "training.qat={start_epoch: 500}", "--offline", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["training"]["qat"] == {"start_epoch": 500}
    assert "WARNING" not in out and "benchmarking.board" not in out


@pytest.mark.parametrize("text, value", [
    ("1/127.5", 1 / 127.5), ("1./255", 1 / 255), ("-1", -1), ("1e-7", 1e-7), ("(224, 224, 3)", [224, 224, 3]),
    ("(128,128)", [128, 128]), ("True", True), ("None", None), ("2**3", 8), ("(0.2, 1.5)", [0.2, 1.5]),
])
def test_safe_value_parser_converts(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("text", [
    "rgb", "(0:-1)", "(8, 110:121, -1)", "__import__('os').system('echo hi')", "open('x')",
    "lambda epoch, lr: lr * 0.5", "9**9**9", "1/0", "[x for x in range(3)]", "a.b", "(1, foo)",
])
def test_safe_value_parser_keeps_text(text):
    assert parse_value(text) == text


def test_name_and_path_keys_stay_text():
    data = convert_values({"dataset": {"training_path": "1/2", "class_names": ["007", "None"],
                                       "validation_split": "1/4", "name": "None"}})
    assert data["dataset"]["training_path"] == "1/2"
    assert data["dataset"]["class_names"] == ["007", None]
    assert data["dataset"]["validation_split"] == 0.25
    assert data["dataset"]["name"] is None


def test_interpolation(monkeypatch):
    monkeypatch.setenv("MODELS_DIR", "/models")
    data = interpolate_tree({"general": {"project_name": "p"},
                             "training": {"trained_model_path": "${MODELS_DIR}/step_1.ckpt",
                                          "x": "${oc.env:NOT_SET_ANYWHERE,dflt}", "y": "${general.project_name}_run"},
                             "hydra": {"run": {"dir": "out/${now:%Y}"}}})
    assert data["training"]["trained_model_path"] == "/models/step_1.ckpt"
    assert data["training"]["x"] == "dflt"
    assert data["training"]["y"] == "p_run"
    assert data["hydra"]["run"]["dir"] == f"out/{run_start():%Y}"


def test_a_reference_to_a_key_of_an_earlier_config_file(seed_file, tmp_path, capsys):
    """``${section.key}`` across ``--config`` files: a key of an earlier file, referred to from a later
    one, resolves (as on jsonargparse/OmegaConf's merged config); a key that a later file or an
    override then sets to another value is refused in one line naming both keys (the reference
    was resolved when its file was read), and so is a key no file read so far holds."""
    (tmp_path / "names.yaml").write_text("dataset:\n  name: shared_name\n")
    (tmp_path / "uses.yaml").write_text("general:\n  project_name: ${dataset.name}_project\n")
    (tmp_path / "renames.yaml").write_text("dataset:\n  name: other_name\n")
    base = ["--config", str(seed_file)]
    cfg = load_config([*base, "--config", str(tmp_path / "names.yaml"), "--config", str(tmp_path / "uses.yaml")])
    assert (cfg.general.project_name, cfg.dataset.name) == ("shared_name_project", "shared_name")
    cfg = load_config([*base, "--config", str(tmp_path / "names.yaml"), "--config", str(tmp_path / "uses.yaml"),
                       "--dataset.name", "shared_name"])  # the same value: nothing changes
    assert cfg.general.project_name == "shared_name_project"

    refusals = {
        ("--config", str(tmp_path / "renames.yaml")): f"a later --config file ({tmp_path / 'renames.yaml'}) sets "
                                                      "dataset.name to 'other_name'",
        ("--dataset.name", "other_name"): "the command line sets dataset.name to 'other_name'",
    }
    for extra, where in refusals.items():
        argv = ["fit", *base, "--config", str(tmp_path / "names.yaml"), "--config", str(tmp_path / "uses.yaml"), *extra]
        assert main([*argv, "--print_config"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == (f"stmclf: error: general.project_name: ${{dataset.name}} was resolved to "
                                     f"'shared_name' when its --config file was read, but {where}: give the value "
                                     "itself\n"), err
    # the file that refers comes first: the seed's dataset.name then, which the next file changes
    assert main(["fit", *base, "--config", str(tmp_path / "uses.yaml"), "--config", str(tmp_path / "names.yaml"),
                 "--print_config"]) == 2
    assert "${dataset.name} was resolved to 'flowers' when its --config file was read, but a later --config file" \
        in capsys.readouterr().err
    assert main(["fit", "--config", str(tmp_path / "uses.yaml"), "--config", str(seed_file), "--print_config"]) == 2
    assert capsys.readouterr().err == ("stmclf: error: general.project_name: ${dataset.name} refers to a key that does "
                                       "not exist (in this or an earlier --config file)\n")


def test_a_reference_is_checked_against_a_whole_section_or_mapping_given_later(seed_file, tmp_path, capsys):
    """The key a ``${section.key}`` names may be changed by an override of its whole section
    (``--dataset '{name: x}'``, Hydra's ``dataset={name: x}``) as by ``--dataset.name x``: refused the
    same way. A free mapping (``training.callbacks.EarlyStopping``, ``training.model``) given again
    replaces the earlier one whole, so one without the key removes it: refused too, in a file or an
    override. A section given as a mapping that keeps the value, or does not hold the key (merged
    key by key), changes nothing."""
    (tmp_path / "names.yaml").write_text("dataset:\n  name: shared_name\n")
    (tmp_path / "uses.yaml").write_text("general:\n  project_name: ${dataset.name}_project\n")
    (tmp_path / "stops.yaml").write_text("training:\n  callbacks:\n    EarlyStopping: {monitor: val_accuracy, "
                                         "patience: 4}\n")
    (tmp_path / "patience.yaml").write_text("general:\n  project_name: p${training.callbacks.EarlyStopping.patience}\n")
    (tmp_path / "other_stop.yaml").write_text("training:\n  callbacks:\n    EarlyStopping: {monitor: val_loss}\n")
    names = ["--config", str(seed_file), "--config", str(tmp_path / "names.yaml"), "--config", str(tmp_path / "uses.yaml")]
    stops = ["--config", str(seed_file), "--config", str(tmp_path / "stops.yaml"),
             "--config", str(tmp_path / "patience.yaml")]
    for extra in (["--dataset", "{name: shared_name}"], ["--dataset", "{validation_split: 0.2}"]):
        cfg = load_config([*names, *extra])
        assert (cfg.general.project_name, cfg.dataset.name) == ("shared_name_project", "shared_name")
    cfg = load_config([*stops, "--training.callbacks.EarlyStopping.monitor", "val_loss"])  # merged: patience stays
    assert cfg.general.project_name == "p4" and cfg.training.callbacks["EarlyStopping"]["patience"] == 4

    resolved = "${dataset.name} was resolved to 'shared_name' when its --config file was read, but "
    stop = "${training.callbacks.EarlyStopping.patience} was resolved to '4' when its --config file was read, but "
    refusals = [
        ([*names, "--dataset", "{name: other_name}"],
         f"general.project_name: {resolved}the command line (--dataset) sets dataset.name to 'other_name'"),
        ([*names, "dataset={name: other_name}"],
         f"general.project_name: {resolved}the command line (--dataset) sets dataset.name to 'other_name'"),
        ([*stops, "--training.callbacks.EarlyStopping", "{monitor: val_loss}"],
         f"general.project_name: {stop}the command line (--training.callbacks.EarlyStopping) replaces "
         "training.callbacks.EarlyStopping without training.callbacks.EarlyStopping.patience"),
        ([*stops, "--training.callbacks", "{ReduceLROnPlateau: null}"],
         f"general.project_name: {stop}the command line (--training.callbacks) replaces training.callbacks "
         "without training.callbacks.EarlyStopping.patience"),
        ([*stops, "--config", str(tmp_path / "other_stop.yaml")],
         f"general.project_name: {stop}a later --config file ({tmp_path / 'other_stop.yaml'}) replaces "
         "training.callbacks.EarlyStopping without training.callbacks.EarlyStopping.patience"),
    ]
    for argv, message in refusals:
        assert main(["fit", *argv, "--print_config"]) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err == f"stmclf: error: {message}: give the value itself\n", err


def test_a_value_from_a_variable_changed_on_its_way_is_not_written(seed_file, tmp_path, monkeypatch):
    """The safety net of the run's written config and MLflow parameters (``RunConfig.redacted_dict``):
    a value that came from ``${DATA_ROOT}`` is written as the reference where it is still the value
    read; changed on its way (a code path that normalises the path), it is refused in one line naming
    the variable and the key, never written; copied whole to another key, that key shows
    ``${DATA_ROOT}`` too. The config's own texts that contain the value (a literal
    ``validation_path`` beside it) and short values (``${COLOR}`` is ``rgb``) raise no alarm."""
    monkeypatch.setenv("DATA_ROOT", "/srv/private-7f3a9c")
    monkeypatch.setenv("COLOR", "rgb")
    (tmp_path / "paths.yaml").write_text("dataset:\n  training_path: ${DATA_ROOT}/train\n"
                                         "  validation_path: /srv/private-7f3a9c/val\n"
                                         "preprocessing:\n  color_mode: ${COLOR}\n")
    cfg = load_config(["--config", str(seed_file), "--config", str(tmp_path / "paths.yaml")])
    written = cfg.redacted_dict()
    assert written["dataset"]["training_path"] == "${DATA_ROOT}/train"
    assert written["dataset"]["validation_path"] == "/srv/private-7f3a9c/val"
    assert written["preprocessing"]["color_mode"] == "${COLOR}"

    cfg.general.project_name = "/srv/private-7f3a9c"  # carried as it is to a key the config gave as text
    cfg.dataset.name = "rgb"  # the value of ${COLOR}: too short to be looked for
    written = cfg.redacted_dict()
    assert written["general"]["project_name"] == "${DATA_ROOT}" and written["dataset"]["name"] == "rgb"
    cfg.dataset.training_path = "/srv/private-7f3a9c/train/"  # normalised on its way
    with pytest.raises(UserError) as refused:
        cfg.redacted_dict()
    assert str(refused.value) == (
        "the run's config (MLflow parameters): dataset.training_path: would hold the value of environment variable "
        "DATA_ROOT inside other text, where it cannot be written as ${DATA_ROOT} (a run keeps its config's variables "
        "out of the files it writes): not written; if the value is no secret, give it in the config instead of "
        "${DATA_ROOT}")


def test_missing_env_var_names_the_key(monkeypatch):
    monkeypatch.delenv("STMCLF_NOPE", raising=False)
    with pytest.raises(ConfigError, match=r"^general.model_path: environment variable STMCLF_NOPE is not set"):
        interpolate_tree({"general": {"model_path": "${STMCLF_NOPE}/m.h5"}})


def _error_of(tmp_path, capsys, text, *extra):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    code = main(["fit", "--config", str(path), *extra])
    err = capsys.readouterr().err
    return code, err


BASE = """\
operation_mode: training
dataset:
  training_path: {tmp}
preprocessing:
  rescaling: {{scale: 1/255, offset: 0}}
training:
  model:
    name: mobilenet
    version: v2
    alpha: 0.35
    input_shape: (32, 32, 3)
  batch_size: 4
  epochs: 1
  optimizer: Adam
"""


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: t.replace("  epochs: 1", "  epochs: ten"), r"training.epochs: expected int, got 'ten'"),
    (lambda t: t + "foo: 1\n", r"foo: unknown top-level section; allowed: general, operation_mode"),
    (lambda t: t + "generall:\n  project_name: x\n",  # was generall.project_name: unknown key
     r"^stmclf: error: generall: unknown top-level section \(did you mean general\?\); allowed: general, "),
    (lambda t: t + "generall: 5\n", r"^stmclf: error: generall: unknown top-level section \(did you mean general\?\)"),
    (lambda t: t + "trainig: {epochs: 3}\n", r"trainig: unknown top-level section \(did you mean training\?\)"),
    (lambda t: t.replace("  batch_size: 4", "  batchsize: 4"),
     r"training.batchsize: unknown key \(did you mean batch_size\?\); allowed in training: batch_size, epochs, optimizer"),
    (lambda t: t.replace("  batch_size: 4\n", ""), r"missing required key training.batch_size"),
    (lambda t: t.replace("offset: 0}\n", "offset: 0}\n  color_mode: rgbx\n"),
     r"preprocessing.color_mode: expected one of grayscale, rgb, rgba, got 'rgbx' \(did you mean rgb\?\)$"),
    (lambda t: t.replace("operation_mode: training", "operation_mode: trainin"),  # the closest mode, as for keys
     r"operation_mode: expected one of training, evaluation, .*, got 'trainin' \(did you mean training\?\)$"),
    (lambda t: t.replace("operation_mode: training", "operation_mode: chain_tqb"),
     r"operation_mode: expected one of .*, got 'chain_tqb' \(did you mean chain_tqeb\?\)$"),
    (lambda t: t.replace("operation_mode: training", "operation_mode: xyz"),  # nothing close: no hint
     r"operation_mode: expected one of .*chain_qd, got 'xyz'$"),
    (lambda t: t + "general:\n  model_path: m.h5\n",
     r"general.model_path: training.model and general.model_path are mutually exclusive"),
    (lambda t: t.replace("training:\n  model:\n    name: mobilenet\n    version: v2\n    alpha: 0.35\n"
                         "    input_shape: (32, 32, 3)\n", "training:\n"),
     r"training.model: expecting either training.model, training.resume_training_from or general.model_path"),
    (lambda t: t.replace("preprocessing:\n  rescaling: {scale: 1/255, offset: 0}\n", ""),
     r"preprocessing: missing 'preprocessing' section"),
    (lambda t: t.replace("  training_path", "  validation_split: 1.5\n  training_path"),
     r"dataset.validation_split: the value should be > 0 and < 1 \(got 1.5\)"),
    (lambda t: t.replace("optimizer: Adam", "optimizer: Adamm"),
     r"training.optimizer: unknown optimizer 'Adamm'; supported: Adam, AdamW"),
    (lambda t: t.replace("optimizer: Adam", "optimizer: {Adam: [0.001]}"),  # was: Does not validate against ...
     r"^stmclf: error: training.optimizer.Adam: the optimizer's arguments must be a mapping of argument names"),
    (lambda t: t.replace("optimizer: Adam", "optimizer: {SGD: {learning_rat: 0.1}}"),
     r"training.optimizer.SGD.learning_rat: unknown argument for SGD; supported:"),
    (lambda t: t + "  callbacks:\n    ModelCheckpoint: {monitor: val_loss}\n",
     r"training.callbacks.ModelCheckpoint: The ModelCheckpoint callback is built-in and can't be redefined"),
    (lambda t: t + "  callbacks:\n    EarlyStoping: {monitor: val_loss}\n",
     r"training.callbacks.EarlyStoping: unknown callback; supported: ReduceLROnPlateau, EarlyStopping"),
    (lambda t: t.replace("name: mobilenet", "name: mobilenett"), r"training.model.name: .*mobilenet"),
    (lambda t: t + "hydra:\n  run:\n    dir: out/${NOT_A_VAR_STMCLF}\n",
     r"hydra.run.dir: environment variable NOT_A_VAR_STMCLF is not set"),
    (lambda t: t.replace("  epochs: 1", "  epochs: [1"), r"invalid YAML \(line"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, mutate, expected):
    import re

    (tmp_path / "data" / "a").mkdir(parents=True)
    text = mutate(BASE.format(tmp=tmp_path / "data"))
    code, err = _error_of(tmp_path, capsys, text)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stmclf: error: ")
    assert re.search(expected, lines[0]), lines[0]


def test_error_in_subprocess_has_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.format(tmp=tmp_path).replace("  epochs: 1", "  epochs: -3"))
    code, out, err = run_cli("fit", "--config", str(path))
    assert code == 2
    assert err.strip() == "stmclf: error: training.epochs: must be a positive integer (got -3)"
    assert "Traceback" not in out + err


@pytest.mark.parametrize("mode", ["deployment", "chain_qd"])
@pytest.mark.parametrize("rescaling", [True, False])
def test_run_refuses_modes_not_available_yet(tmp_path, capsys, mode, rescaling):
    """ST's deployment configs have no preprocessing.rescaling: they get the mode's refusal (which
    names deploy-header), not 'missing required key preprocessing.rescaling'."""
    (tmp_path / "d" / "a").mkdir(parents=True)
    text = BASE.format(tmp=tmp_path / "d").replace("operation_mode: training", f"operation_mode: {mode}")
    if not rescaling:
        text = text.replace("  rescaling: {scale: 1/255, offset: 0}\n", "  color_mode: rgb\n")
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stmclf: error: operation_mode: '{mode}' is not available") and "deploy-header" in err
    if not rescaling:  # where pixels meet a model, the rescaling is still required
        for command in (["fit"], ["run", "operation_mode=evaluation"]):
            assert main([command[0], "--config", str(path), *command[1:]]) == 2
            assert capsys.readouterr().err == ("stmclf: error: missing required key preprocessing.rescaling.scale, "
                                               "preprocessing.rescaling.offset\n")


def test_a_partial_training_section_is_required_only_where_a_model_is_trained(tmp_path, capsys):
    """As in the reference, which reads the training section in its training modes only: an
    evaluation config may hold training.batch_size alone (was 'missing required key
    training.epochs, training.optimizer'); its batch size is the evaluation's."""
    (tmp_path / "d" / "a").mkdir(parents=True)
    text = BASE.format(tmp=tmp_path / "d").replace("operation_mode: training", "operation_mode: evaluation")
    text = text.replace("  epochs: 1\n  optimizer: Adam\n", "")
    path = tmp_path / "evaluation.yaml"
    path.write_text(text)
    cfg = load_config(["--config", str(path)])
    assert (cfg.training.batch_size, cfg.training.epochs, cfg.training.optimizer) == (4, None, None)
    assert main(["fit", "--config", str(path)]) == 2
    assert capsys.readouterr().err == "stmclf: error: missing required key training.epochs, training.optimizer\n"
    assert main(["plot-lr", "--config", str(path)]) == 2
    assert "missing required key training.epochs, training.optimizer" in capsys.readouterr().err


def test_unknown_command_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_split_check_helper():
    with pytest.raises(ConfigError):
        rules.check_split("dataset.quantization_split", 0.0)
    rules.check_split("dataset.quantization_split", 0.3)


def test_an_input_shape_cut_by_a_yaml_flow_mapping_says_how_to_write_it(tmp_path, image_folder, capsys):
    """``model: {name: mobilenet, input_shape: (32, 32, 3)}``: YAML ends the value at the first comma,
    so the key holds '(32' (and ' 32', '3)' become keys); the error said only "got '(32'", which
    reads as a bug of stmclf's tuple parser. It now says what YAML did and how to write the value,
    as for any key (stmclf.config.parser.cut_tuple_problem)."""

    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", model="""\
  model: {name: mobilenet, version: v2, alpha: 0.35, input_shape: (32, 32, 3)}
""")
    config = tmp_path / "flow.yaml"
    config.write_text(text)
    assert main(["fit", "--config", str(config), "--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"stmclf: error: {config} (line 19): training.model.input_shape: YAML cut the tuple (32, 32, 3) at "
                   "a comma inside a {...} mapping; write it in quotes, input_shape: '(32, 32, 3)', or the mapping "
                   "one key per line"), err
    config.write_text(text.replace("(32, 32, 3)", "'(32, 32, 3)'"))  # as the message says
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "input_shape:\n    - 32\n    - 32\n    - 3\n" in capsys.readouterr().out


@pytest.mark.parametrize("extra, argv, expected", [
    # an augmentation argument: was 'data_augmentation.random_contrast.0.5): unknown ... argument'
    ("data_augmentation:\n  random_contrast: {factor: (0.2, 0.5)}\n", [],
     "data_augmentation.random_contrast.factor: YAML cut the tuple (0.2, 0.5) at a comma"),
    ("data_augmentation: {random_flip: {mode: horizontal}, random_contrast: {factor: 0.2, 0.5)}}\n", [],
     "data_augmentation.random_contrast.0.5): a piece of a tuple that YAML cut at a comma"),
    # another section, in a second --config file
    ("", ["training: {class_weights: (1.0, 3.0, 1.0), label_smoothing: 0.1}\n"],
     "training.class_weights: YAML cut the tuple (1.0, 3.0, 1.0) at a comma"),
    # an override's value: the key it is for is named
    ("", ["--training.model", "{name: mobilenet, version: v2, alpha: 0.35, input_shape: (32, 32, 3)}"],
     "--training.model (line 1): training.model.input_shape: YAML cut the tuple (32, 32, 3) at a comma"),
])
def test_a_tuple_cut_by_a_yaml_flow_mapping_is_named_with_its_key(tmp_path, image_folder, capsys, extra, argv,
                                                                   expected):
    """``random_contrast: {factor: (0.2, 0.5)}`` is ``factor: '(0.2'`` and ``'0.5)': null`` to YAML:
    the error named the unknown argument ``0.5)`` (or a bad value ``'(1.0'``) without saying why.
    Any key of any section, in a file or an override, now gets one line saying what YAML did."""
    config, argv = _flow_configs(tmp_path, image_folder, extra, argv)
    assert main(["fit", "--config", str(config), *argv, "--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("stmclf: error: ") and expected in err, err
    assert " at a comma inside a {...} mapping; write it in quotes, " in err, err
    assert err.endswith("', or the mapping one key per line"), err


@pytest.mark.parametrize("extra, argv, expected", [
    # was: 'training.checkpoint_every: expected bool or float, got 'None'' (found by the resume audit)
    ("", ["training:\n  checkpoint_every: {steps:1}\n"],
     "training.checkpoint_every.steps: YAML read 'steps:1' as one key without a value (no space after its colon); "
     "write steps: 1"),
    ("", ["--training.checkpoint_every", "{minutes:5}"],
     "training.checkpoint_every.minutes: YAML read 'minutes:5' as one key without a value"),
])
def test_a_key_glued_to_its_value_in_a_flow_mapping_is_named(tmp_path, image_folder, capsys, extra, argv, expected):
    """``{steps:1}`` (no space after the colon) is the key ``'steps:1'`` with no value to YAML: the
    error spoke of a missing value. One line now says what YAML read and how to write it."""
    config, argv = _flow_configs(tmp_path, image_folder, extra, argv)
    assert main(["fit", "--config", str(config), *argv, "--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stmclf: error: ") and expected in err[0], err
    second = tmp_path / "second.yaml"  # written as it says, the config is read
    second.write_text("training:\n  checkpoint_every: {steps: 1}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--config", str(second), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "checkpoint_every:\n    steps: 1.0\n" in capsys.readouterr().out


_RESIZING = "data_augmentation:\n  random_periodic_resizing:\n    period: 2\n    image_sizes: {sizes}\n"


def _flow_configs(tmp_path, image_folder, extra: str, argv: list) -> tuple:
    """(config file, argv) of the cut-tuple tests: the small config plus ``extra``; an ``argv`` whose
    first item is YAML text rather than an option becomes a second ``--config`` file."""

    config = tmp_path / "flow.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", extra=extra))
    if argv and not argv[0].startswith("--"):
        second = tmp_path / "second.yaml"
        second.write_text(argv[0])
        argv = ["--config", str(second)]
    return config, argv


@pytest.mark.parametrize("extra, argv, expected", [
    # was: 'image_sizes: expecting a list of image sizes, ...; got '(24' in ('(24', '24)', '(32', '32)')'
    (_RESIZING.format(sizes="[(24, 24), (32, 32)]"), [],
     "data_augmentation.random_periodic_resizing.image_sizes: YAML cut the tuple (24, 24) at a comma "
     "inside a [...] list; write it in quotes, '(24, 24)', or as a list, [24, 24]"),
    # was: 'training.frozen_layers: expected int or int or text, got '(0'' (here in a second --config file)
    ("", ["training:\n  frozen_layers: [(0, 3)]\n"],
     "training.frozen_layers: YAML cut the tuple (0, 3) at a comma inside a [...] list; write it in quotes, "
     "'(0, 3)', or as a list, [0, 3]"),
    # a piece without its opening: named as a piece
    (_RESIZING.format(sizes="[24, 24), (32, 32)]"), [],
     "data_augmentation.random_periodic_resizing.image_sizes: '24)' is a piece of a tuple that YAML cut at a comma "
     "inside a [...] list"),
    # an override's value: the key it is for is named
    (_RESIZING.format(sizes="[[24, 24]]"), ["--data_augmentation.random_periodic_resizing.image_sizes", "[(24, 24)]"],
     "data_augmentation.random_periodic_resizing.image_sizes: YAML cut the tuple (24, 24) at a comma inside a [...] "
     "list"),
])
def test_a_tuple_cut_by_a_yaml_flow_list_is_named_with_its_key(tmp_path, image_folder, capsys, extra, argv, expected):
    """``image_sizes: [(24, 24), (32, 32)]`` is ``['(24', '24)', '(32', '32)']`` to YAML: the error
    named the value '(24' without saying why. As inside a flow mapping, one line now says what YAML
    did and how to write it, naming the key; written as it says, the config is read."""
    config, argv = _flow_configs(tmp_path, image_folder, extra, argv)
    assert main(["fit", "--config", str(config), *argv, "--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stmclf: error: ") and expected in err[0], err
    for written in ("['(24, 24)', '(32, 32)']", "[[24, 24], [32, 32]]"):  # as the message says
        config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns",
                                      extra=_RESIZING.format(sizes=written)))
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(config), "--print_config"])
        assert exit_info.value.code in (0, None)
        assert "image_sizes:\n    - - 24\n      - 24\n    - - 32\n      - 32\n" in capsys.readouterr().out


@pytest.mark.parametrize("text", [
    "training: {b: '(32', 'c)': 1}\n",      # quoted: what the user wrote
    "training: {frozen: (0:-1), f(x): 1}\n",  # whole brackets
    "training:\n  b: (32\n  c: 3)\n",         # a block mapping: no comma cut anything
])
def test_only_a_flow_mappings_cut_tuple_is_refused(text):
    from stmclf.config.parser import load_yaml
    from stmclf.errors import UserError

    assert load_yaml(text, "x.yaml")["training"]
    with pytest.raises(UserError, match=r"^--config x\.yaml \(line 1\): training\.b: YAML cut the tuple \(32, 32, 3\) "):
        load_yaml("training: {b: (32, 32, 3), c: 1}\n", "x.yaml")
