"""The command line as users of ST's service and Lightning expect: short help, Hydra overrides."""
from __future__ import annotations

import pytest

from stmclf.cli.main import main


@pytest.mark.parametrize("command", ["fit", "run", "export", "predict", "benchmark", "summary", "plot-lr",
                                     "augment-preview"])
def test_help_is_short_plain_and_starts_with_the_commands_options(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) <= 60, len(lines)
    # the commands that take a run folder need no --config (the run's own config is used)
    config = "(--config FILE | --run RUN)" if command in ("export", "predict", "benchmark") else "--config FILE"
    assert lines[0].startswith(f"usage: stmclf {command} {config} [options]"), lines[0]
    assert ":class:" not in text and "``" not in text
    options = [line.split()[0].rstrip(",") for line in lines if line.startswith("  --")]
    assert "--help-trainer" in text and "--trainer.devices" not in text
    if command == "export":
        assert options[:2] == ["--ckpt", "--run"]  # the command's own options first
    if command == "fit":
        assert options[0].startswith("--ckpt_path")


@pytest.mark.parametrize("action", ["fetch", "check"])
def test_data_help_names_the_subcommand_first(action, capsys):
    """``stmclf data fetch --help`` read ``usage: stmclf data [options] fetch ...`` (jsonargparse's
    subcommand prog); like every other command, its usage starts with the command. ``data check``
    (a config command) has their short help: it printed jsonargparse's 350 lines."""
    try:
        code = main(["data", action, "--help"])
    except SystemExit as done:  # jsonargparse's own help (data fetch) exits
        code = done.code
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"usage: stmclf data {action} "), lines[0]
    if action == "check":
        assert lines[0].startswith("usage: stmclf data check --config FILE [options]") and len(lines) <= 60


def test_help_trainer_lists_lightning_options_in_plain_text(capsys):
    assert main(["fit", "--help-trainer"]) == 0
    text = capsys.readouterr().out
    assert "--trainer.devices" in text and "--trainer.precision" in text and ":class:" not in text


def test_hydra_overrides_parse_like_flags(tmp_path, capsys, image_folder):
    from conftest import config_text

    (tmp_path / "c.yaml").write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml", epochs=2))
    with pytest.raises(SystemExit) as done:  # --print_config prints, then exits (jsonargparse)
        main(["fit", "--config", str(tmp_path / "c.yaml"), "training.epochs=1", "+training.batch_size=4",
              "trainer.max_time=00:00:10:00", "--print_config"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "  epochs: 1\n" in out and "  batch_size: 4\n" in out and "max_time: 00:00:10:00" in out
    # the same errors as --key value
    assert main(["fit", "--config", str(tmp_path / "c.yaml"), "training.epochz=1"]) == 2
    flag_err = capsys.readouterr().err
    assert main(["fit", "--config", str(tmp_path / "c.yaml"), "--training.epochz", "1"]) == 2
    assert capsys.readouterr().err == flag_err
    assert flag_err.startswith("stmclf: error: training.epochz: unknown key")


@pytest.mark.parametrize("command, flag", [("run", "--offline"), ("fit", "--trust-code"), ("fit", "--trust_model_file")])
def test_a_hydra_override_after_a_flag_option_is_an_override(tmp_path, capsys, image_folder, command, flag):
    """``stmclf run --config x.yaml --offline training.epochs=3`` (or after --trust-code) was
    'unexpected argument training.epochs=3': the override was taken for the flag's value."""
    from conftest import config_text

    (tmp_path / "c.yaml").write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml", epochs=2))
    with pytest.raises(SystemExit) as done:
        main([command, "--config", str(tmp_path / "c.yaml"), flag, "training.epochs=5", "--print_config=st"])
    assert done.value.code == 0, capsys.readouterr().err
    assert "  epochs: 5\n" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["deployment", "chain_qd"])
def test_the_modes_that_flash_a_board_point_to_deploy_header(mode, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"general: {{project_name: p}}\noperation_mode: {mode}\n")
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"stmclf: error: operation_mode: '{mode}' is not available in stmclf")
    assert "stmclf deploy-header --run RUN" in line


# --- a user's commonest slips: one line on stderr, exit code 2, naming what was meant (git's "did you mean")

def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured
    return captured.err.strip()


def test_a_misspelled_command_names_the_closest_one(capsys):
    assert _error(capsys, ["fitt"]).startswith("stmclf: error: unknown command 'fitt' (did you mean fit?); commands: ")
    assert "(did you mean deploy-header?)" in _error(capsys, ["deploy_header"])
    # an option before the command is named as an option, not as a command
    assert _error(capsys, ["--foo"]).startswith("stmclf: error: unknown option '--foo' before the command")
    assert "(did you mean fit?)" in _error(capsys, ["help", "fitt"])
    assert _error(capsys, ["data", "fetchh"]) == ("stmclf: error: stmclf data: unknown data command 'fetchh' (did "
                                                  "you mean fetch?); data commands: fetch NAME --out DIR, check "
                                                  "--config FILE")
    assert "give a data command" in _error(capsys, ["data"])


def test_help_command_is_the_commands_help(capsys):
    """``stmclf help fit`` (git's form) is ``stmclf fit --help``."""
    assert main(["help", "plot-lr"]) == 0
    assert capsys.readouterr().out.startswith("usage: stmclf plot-lr --config FILE [options]")


def test_a_misspelled_option_names_the_closest_one(tmp_path, capsys):
    assert _error(capsys, ["fit", "--confg", "c.yaml"]) == \
        "stmclf: error: unknown option --confg (did you mean --config?); see 'stmclf fit --help'"
    (tmp_path / "c.yaml").write_text("general: {project_name: p}\n")
    assert "unknown option --num-clases (did you mean --num-classes?)" in \
        _error(capsys, ["summary", "--config", str(tmp_path / "c.yaml"), "--num-clases", "3"])
    # a subcommand's option, refused by the parser of 'stmclf data'
    assert "unknown option --outt (did you mean --out?)" in _error(capsys, ["data", "fetch", "digits", "--outt", "x"])
    # the config file without --config
    assert _error(capsys, ["fit", "x.yaml"]) == \
        "stmclf: error: unexpected argument 'x.yaml': a config file is given as --config x.yaml"


def test_a_misspelled_key_names_the_closest_one(tmp_path, capsys, image_folder):
    from conftest import config_text

    (tmp_path / "c.yaml").write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml", epochs=1))
    assert _error(capsys, ["fit", "--config", str(tmp_path / "c.yaml"), "training.epoch=1"]).startswith(
        "stmclf: error: training.epoch: unknown key (did you mean epochs?); allowed in training: batch_size, epochs")


@pytest.mark.parametrize("command", ["fit", "run", "summary", "plot-lr", "augment-preview", "data check"])
def test_a_config_command_without_config_says_so(command, capsys):
    """``stmclf fit`` alone said ``dataset: missing 'dataset' section`` (of the empty config)."""
    name = f"stmclf {command}"
    assert _error(capsys, command.split()) == (f"stmclf: error: {name}: no config given: --config FILE (an ST "
                                               f"model-zoo YAML, e.g. configs/quickstart.yaml; see '{name} --help')")


def test_lightning_and_dash_spellings_are_accepted(tmp_path, capsys, image_folder):
    """``-c`` (Lightning's CLI) is ``--config``; ``--print-config`` is ``--print_config`` as
    ``--trust-code`` is ``--trust_code``."""
    from conftest import config_text

    (tmp_path / "c.yaml").write_text(config_text(image_folder, tmp_path / "run", tmp_path / "ml", epochs=1))
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", str(tmp_path / "c.yaml"), "--print-config=st"])
    assert done.value.code == 0
    assert "  epochs: 1\n" in capsys.readouterr().out


def test_data_fetch_force_is_a_flag(tmp_path, capsys):
    """``--force`` took a value (``--force true``): ``--force`` alone was 'expected one argument'."""
    out = tmp_path / "digits"
    assert main(["data", "fetch", "digits", "--out", str(out)]) == 0
    assert main(["data", "fetch", "digits", "--out", str(out)]) == 0
    assert "--force rewrites it" in capsys.readouterr().err  # the log, on stderr
    (out / "0" / "extra.png").write_bytes(b"x")  # not the fetch's: a forced fetch starts over
    assert main(["data", "fetch", "digits", "--out", str(out), "--force"]) == 0
    assert not (out / "0" / "extra.png").exists()


def test_run_folder_mistakes_name_the_run_meant(tmp_path, capsys):
    runs = tmp_path / "experiments_outputs"
    (runs / "2026_01_02_10_00_00").mkdir(parents=True)
    (runs / "2026_01_02_10_00_00" / "config.yaml").write_text("general:\n  project_name: x\n")
    typo = runs / "2026_01_02_10_00_01"
    for argv in (["export", "--run", str(typo)], ["report", str(typo)]):
        assert _error(capsys, argv).endswith(f"{typo}: no such folder (did you mean {runs / '2026_01_02_10_00_00'}?)")
    assert _error(capsys, ["predict", "--run", str(runs)]).endswith(
        f"--run {runs}: no config.yaml: a folder of 1 run folder(s), give one of them (the newest: 2026_01_02_10_00_00)")


def test_report_names_the_run_folder_as_given(tmp_path, capsys):
    """``stmclf report --run RUN`` names ``--run`` as every other ``--run`` command does (docs/config.md:
    ``--run experiments_outputs/qq: no such folder (did you mean experiments_outputs/q?)``); it said
    ``report: RUN: ...``. The positional RUN_DIR is named by itself."""
    runs = tmp_path / "experiments_outputs"
    (runs / "q").mkdir(parents=True)
    (runs / "q" / "config.yaml").write_text("general:\n  project_name: x\n")
    typo = runs / "qq"
    assert _error(capsys, ["report", "--run", str(typo)]) == \
        f"stmclf: error: --run {typo}: no such folder (did you mean {runs / 'q'}?)"
    assert _error(capsys, ["report", str(typo)]) == f"stmclf: error: {typo}: no such folder (did you mean {runs / 'q'}?)"


@pytest.mark.parametrize("command", ["export", "predict", "benchmark", "deploy-header"])
@pytest.mark.parametrize("option", ["--model", "--ckpt"])
def test_every_model_command_takes_both_model_options(command, option, tmp_path, capsys):
    """The docs say ``--ckpt``/``--model`` for the model file of export, predict and benchmark; export
    took only --ckpt, the others only --model ('unrecognized arguments'). An error about the file
    names the option the user typed: ``predict --ckpt X`` said ``--model: ...``."""
    missing = tmp_path / "missing.pt"
    assert _error(capsys, [command, option, str(missing)]) == \
        f"stmclf: error: {option}: unable to find the model file {missing}"
    assert _error(capsys, [command, f"{option}={missing}"]) == \
        f"stmclf: error: {option}: unable to find the model file {missing}"


def test_a_misspelled_config_file_names_the_file_meant(tmp_path, capsys):
    """``--config configs/quickstar.yaml`` read ``config: File does not exist: '/abs/...'``."""
    (tmp_path / "quickstart.yaml").write_text("general: {project_name: p}\n")
    assert _error(capsys, ["fit", "--config", str(tmp_path / "quickstar.yaml")]) == \
        f"stmclf: error: --config {tmp_path / 'quickstar.yaml'}: no such file (did you mean {tmp_path / 'quickstart.yaml'}?)"
    assert _error(capsys, ["fit", "--config", str(tmp_path / "none" / "x.yaml")]) == \
        f"stmclf: error: --config {tmp_path / 'none' / 'x.yaml'}: no such file"


HEAVY_MODULES = ("lightning", "torch", "torchvision", "onnx", "onnxruntime", "tensorflow", "mlflow", "matplotlib")
"""What a command imports only once it runs: seconds each (Lightning with torch: ~6 s on 2 cores)."""

LIGHT_CALLS = """\
import json, sys
from stmclf.cli.main import main

heavy = {heavy!r}
loaded = {{}}
for argv in {calls!r}:
    try:
        code = main(argv)
    except SystemExit as done:  # jsonargparse's own help (data fetch) exits
        code = done.code
    loaded[" ".join(argv)] = [code, sorted(m for m in heavy if m in sys.modules)]
print(json.dumps(loaded))
"""


def test_help_and_option_errors_do_not_import_lightning_or_torch(tmp_path):
    """``stmclf export --help`` took 8 s and ``stmclf export --fromat x`` 15 s on 2 cores: building
    the parser imported Lightning (the trainer section) and the command's modules before the
    arguments were read. Help, a misspelled option and a misspelled key of a section on the command
    line, of every command (a config file given or not), import none of Lightning, torch,
    TensorFlow, ONNX, MLflow or matplotlib; the trainer section is added, and the command's modules
    are imported, once the command runs."""
    import json
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text("general: {project_name: p}\n")
    calls = [[*command.split(), "--help"] for command in
             ("fit", "run", "export", "predict", "benchmark", "deploy-header", "report", "summary",
              "augment-preview", "plot-lr", "data", "data check", "data fetch")]
    calls += [[*command.split(), "--confg", str(config)] for command in
              ("fit", "run", "export", "predict", "benchmark", "deploy-header", "summary", "augment-preview",
               "plot-lr", "data check")]
    calls += [["export", "--config", str(config), "--fromat", "onnx"], ["report", "--ouy", "x"],
              ["data", "fetch", "digits", "--forse"], ["export", "--run", str(tmp_path / "no_run")],
              ["export", "--training.epoch", "3"], ["fit", "--config", str(config), "training.epoch=1"],
              ["predict", "--preprocessing.rescaling.scael", "1"]]
    proc = subprocess.run([sys.executable, "-c", LIGHT_CALLS.format(heavy=HEAVY_MODULES, calls=calls)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert len(loaded) == len(calls)
    for argv, (code, modules) in loaded.items():
        assert code == (0 if argv.endswith("--help") else 2), (argv, code)
        assert modules == [], f"stmclf {argv} imported {', '.join(modules)}"
    assert "unknown option --fromat (did you mean --format?)" in proc.stderr
    assert "training.epoch: unknown key (did you mean epochs?)" in proc.stderr
    assert "preprocessing.rescaling.scael: unknown key (did you mean scale?)" in proc.stderr


def test_no_arguments_is_a_usage_error_and_help_is_not(capsys):
    """``stmclf`` alone printed the command list on stdout with exit code 0; as argparse tools, the
    usage goes to stderr with exit code 2 (a script that forgot its command fails); ``--help`` and
    ``help`` ask for it: stdout, 0."""
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: stmclf COMMAND") and "  fit " in captured.err
    for argv in (["--help"], ["-h"], ["help"]):
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and captured.out.startswith("usage: stmclf COMMAND") and "  fit " in captured.out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder):
    """One tiny training run (1 epoch) whose config has a quantization section (export's int8 default)."""
    from conftest import QUANTIZATION, config_text

    tmp = tmp_path_factory.mktemp("cli_trained")
    config = tmp / "c.yaml"
    config.write_text(config_text(image_folder, tmp / "run", tmp / "ml", epochs=1, extra=QUANTIZATION))
    assert main(["fit", "--config", str(config)]) == 0
    return tmp / "run"


@pytest.mark.parametrize("flags", [["--no-int8"], ["--no_int8"], ["--int8", "--no-int8"]])
def test_int8_can_be_turned_off_with_no_int8(flags, trained, image_folder, tmp_path, capsys):
    """``--int8`` is on by default when the config has a quantization section; ``--no-int8``
    (argparse's BooleanOptionalAction) was refused as an unknown option; the last flag wins."""
    from conftest import QUANTIZATION, config_text

    run, config = tmp_path / "run", tmp_path / "export.yaml"
    config.write_text(config_text(image_folder, run, tmp_path / "ml", extra=QUANTIZATION))
    assert main(["export", "--config", str(config), "--ckpt", str(trained / "saved_models" / "best_model.pt"),
                 "--format", "onnx", *flags]) == 0
    exported = sorted(p.name for p in (run / "quantized_models").iterdir() if p.suffix in (".onnx", ".tflite"))
    assert exported == ["best_model.onnx"], exported
    capsys.readouterr()
    assert main(["export", "--help"]) == 0
    assert "  --int8, --no-int8 " in capsys.readouterr().out


@pytest.mark.parametrize("argv, hint", [
    (["export", "--int", "--ckpt", "m.pt"], "unknown option --int (did you mean --int8?); see 'stmclf export --help'"),
    (["export", "--per", "--ckpt", "m.pt"], "unknown option --per (did you mean --per-layer?)"),
    (["fit", "--conf", "c.yaml"], "unknown option --conf (did you mean --config?)"),
    (["fit", "--trust", "--config", "c.yaml"], "unknown option --trust (did you mean --trust-model-file or --trust-code?)"),
    (["data", "fetch", "digits", "--ou", "x"], "unknown option --ou (did you mean --out?)"),
    (["report", "--ou", "x.html", "run"], "unknown option --ou (did you mean --out?); see 'stmclf report --help'"),
])
def test_a_truncated_option_is_refused_and_named(argv, hint, tmp_path, capsys, monkeypatch):
    """argparse took a unique prefix as the option (``--int`` was ``--int8``): adding an option later
    would change what an old command line does. A truncated option is an unknown option, named with
    the option(s) it begins, as a misspelled one is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("general: {project_name: p}\n")
    err = _error(capsys, argv)
    assert err.startswith(f"stmclf: error: {hint}"), err


@pytest.mark.parametrize("argv, usage", [(["report", "--help"], "usage: stmclf report (RUN_DIR | --run RUN_DIR)"),
                                         (["help", "report"], "usage: stmclf report (RUN_DIR | --run RUN_DIR)"),
                                         (["data", "--help"], "usage: stmclf data COMMAND"),
                                         (["data", "fetch", "-h"], "usage: stmclf data fetch NAME")])
def test_commands_without_config_have_the_same_help_layout(argv, usage, capsys):
    """``stmclf report --help`` (and data, data fetch) printed jsonargparse's help (``positional
    arguments:``, ``(type: Optional[str], default: null)``), unlike every other command."""
    assert main(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(usage), lines[0]
    assert "options:" in lines and lines[-1].split() == ["-h,", "--help", "this", "help"], text
    assert "(type:" not in text and "default: null" not in text and "positional arguments" not in text, text
    if argv[0] == "report":
        assert [line.split()[0] for line in lines if line.startswith("  ")][:3] == ["RUN_DIR", "--run", "--out"]
    if argv[:2] == ["data", "--help"]:
        assert "  fetch NAME " in text and "  check " in text


@pytest.mark.parametrize("argv, data", [
    (["predict", "--images", "{images}/cat"], ["Predictions of best_model.pt", "cat_000.png", "predictions: "]),
    (["summary", "--config", "{config}"], ["Model: mobilenet_v2", "Total params: "]),
    (["export", "--format", "onnx", "--no-int8"], ["onnx: ", "summary: "]),
])
def test_stdout_is_the_data_and_the_log_is_on_stderr(argv, data, trained, image_folder, capsys):
    """Piped (``stmclf predict ... | head``, ``stmclf summary ... > f``), the log lines were mixed into
    the tables on stdout; stdout is now the command's data (tables, file paths), the log stderr."""
    config = trained.parent / "c.yaml"
    argv = [arg.format(images=image_folder, config=config) for arg in argv]
    if argv[0] != "summary":
        argv += ["--run", str(trained)]
    capsys.readouterr()
    assert main(argv) == 0
    out, err = capsys.readouterr()
    for text in data:
        assert text in out, out
    log = {"predict": "operation_mode: prediction", "export": "operation_mode: export",
           "summary": f"Found 3 classes in dataset {image_folder}"}[argv[0]]
    assert log in err and log not in out, (out, err)


def _untrained_model_file(path, seed: int):
    """A stmclf model file of an untrained ResNet-8 (32×32, classes cat, dog, owl) at ``path``."""
    import torch

    from stmclf.training.model_file import MODEL_FORMAT
    from stmclf.training.module import ClassifierModule

    torch.manual_seed(seed)
    module = ClassifierModule(model_spec={"name": "resnet", "version": "v1", "depth": 8, "input_shape": (32, 32, 3)},
                              class_names=["cat", "dog", "owl"], input_shape=[32, 32, 3], rescaling=(1 / 127.5, -1.0),
                              optimizer={"Adam": {"learning_rate": 0.001}})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": MODEL_FORMAT, "epoch": 0, "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict()}, path)
    return path


def _recorded_models(run) -> list[str]:
    """``general.model_path`` of each config file of ``run`` (config.yaml, then config_<time>.yaml)."""
    import yaml

    return [yaml.safe_load(f.read_text())["general"]["model_path"] for f in sorted(run.glob("config*.yaml"))]


def test_a_model_option_given_twice_is_the_last_one_everywhere(tmp_path, image_folder, capsys):
    """``predict --model a.pt --ckpt b.pt`` ran b (argparse keeps the last value) but recorded a as
    general.model_path in the run's config.yaml, and took the config and run folder of a's run:
    every reading of --model/--ckpt, and of predict's --run/--out, is now argparse's, the last one."""
    runs = {name: tmp_path / f"run_{name}" for name in "ab"}
    models = {name: _untrained_model_file(runs[name] / "saved_models" / f"{name}.pt", seed) for seed, name in
              enumerate("ab")}
    # no run yet: the run folder given, both options, in either order and spelling
    for name, images in (("a", "cat"), ("b", "dog")):
        other = models["b" if name == "a" else "a"]
        assert main(["predict", "--ckpt", str(other), f"--model={models[name]}", "--out", str(runs[name]),
                     "--prediction.test_files_path", str(image_folder / images)]) == 0
        assert f"Predictions of {name}.pt" in capsys.readouterr().out
        assert _recorded_models(runs[name]) == [str(models[name])]  # read a.pt's run config, not b's
    # each model now sits in its own run: the last option names the run written into and its config
    assert main(["predict", "--model", str(models["a"]), "--ckpt", str(models["b"])]) == 0
    out = capsys.readouterr().out
    assert "Predictions of b.pt" in out and "dog_000.png" in out and "cat_000.png" not in out, out
    assert _recorded_models(runs["a"]) == [str(models["a"])] and _recorded_models(runs["b"]) == [str(models["b"])]
    # --out is predict's --run: its run's config (dog images), not the config of the model's run (cat)
    assert main(["predict", "--model", str(models["a"]), "--out", str(runs["b"])]) == 0
    out = capsys.readouterr().out
    assert "dog_000.png" in out and "cat_000.png" not in out, out
    assert _recorded_models(runs["b"])[-1] == str(models["a"])


def _table_rows(text: str) -> list[str]:
    """The body rows of the Rich tables in ``text`` (``│ a │ b │``), their cells stripped, joined by ``|``."""
    return ["|".join(cell.strip() for cell in line.strip().strip("│").split("│")) for line in text.splitlines()
            if line.lstrip().startswith("│")]


@pytest.mark.slow  # two real commands on a pipe (~25 s)
def test_piped_tables_are_never_wrapped_or_cut(trained, tmp_path):
    """Piped or redirected, Rich printed every table at 80 columns: export's comparison table read
    ``validati… set`` and a long image name in predict's table was folded over several lines (the
    summary and data check tables widened themselves, each its own way). Every table goes through
    ``stmclf.console.data_console``: piped, each row is one line, whole."""
    from conftest import run_cli, write_image_folder

    images = tmp_path / "images"
    images.mkdir()
    long_name = "owl_" + "a_long_descriptive_file_name_" * 4 + ".png"
    next(write_image_folder(tmp_path / "folder", per_class=1).rglob("owl/*.png")).rename(images / long_name)
    model = _untrained_model_file(tmp_path / "m.pt", seed=0)
    code, out, err = run_cli("predict", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "run"))
    assert code == 0, err
    rows = _table_rows(out)
    assert len(rows) == 1 and rows[0].startswith(f"1|{long_name}|"), out
    code, out, err = run_cli("export", "--run", str(trained), "--format", "onnx", "--no-int8")
    assert code == 0, err
    assert "…" not in out, out
    rows = [row.split("|") for row in _table_rows(out)]
    assert ["ONNX float", "validation set"] in [cells[:2] for cells in rows], out
    assert all(all(cells) for cells in rows), out  # no row continued on a second line


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is gone (``| head`` after it has read its lines)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.mark.parametrize("args, code", [(["fitt"], None), (["fit", "--config", "missing.yaml"], 2)])
def test_a_command_that_fails_with_stderr_closed_does_not_exit_0(args, code, tmp_path):
    """``stmclf ... 2> >(head -0)``, a supervisor that closed the log pipe: the console entry point
    took any BrokenPipeError for stdout's reader leaving (``| head``) and exited 0 in silence, so a
    missing config or an unknown command passed for a success in a script. Only a closed stdout is
    the quiet end of the output; a failing command keeps its exit code (2 for a config error)."""
    import os
    import subprocess
    import sys

    stderr = _closed_pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "stmclf", *args], stdout=subprocess.PIPE, stderr=stderr,
                              cwd=tmp_path, timeout=300)
    finally:
        os.close(stderr)
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code


def test_output_read_by_head_still_ends_quietly():
    """The other side of the rule above: ``stmclf --help | head -0``, stdout's reader gone, is exit
    code 0 with nothing on stderr (Python's 'Exception ignored ... BrokenPipeError' neither)."""
    import os
    import subprocess
    import sys

    stdout = _closed_pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "stmclf", "--help"], stdout=stdout, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(stdout)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
