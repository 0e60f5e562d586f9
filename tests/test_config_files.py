"""A run's config: ``config.yaml`` holds ST's schema only, ``stmclf_extras.yaml`` the rest; every
reader of a run merges the two (and still reads an older run with a single ``config.yaml``);
``--print_config`` prints each form."""
from __future__ import annotations

import logging
import shutil

import pytest
import yaml

from conftest import error_of, config_text
from stmclf.cli.main import main
from stmclf.config import load_config
from stmclf.config.run_files import read_run_config
from stmclf.config.st_schema import merge_config
from stmclf.errors import UserError

# ST's legal keys, section by section, as the reference service's config checker lists them
# (reference inventory §1); a key whose value is a free mapping (training.model, hydra, ...) is a leaf.
ST_SCHEMA = {
    "general": "project_name model_path logs_dir saved_models_dir deterministic_ops display_figures global_seed "
               "gpu_memory_limit num_threads_tflite",
    "operation_mode": None,
    "dataset": "name class_names training_path validation_path validation_split test_path quantization_path "
               "quantization_split check_image_files seed",
    "preprocessing": {"rescaling": "scale offset", "resizing": "aspect_ratio interpolation", "color_mode": None},
    "data_augmentation": None,
    "custom_data_augmentation": "function_name config",
    "training": "model batch_size epochs optimizer dropout frozen_layers callbacks resume_training_from "
                "trained_model_path",
    "quantization": "quantizer quantization_type quantization_input_type quantization_output_type export_dir "
                    "granularity target_opset optimize extra_options",
    "evaluation": "gen_npy_input gen_npy_output npy_in_name npy_out_name target",
    "prediction": "test_files_path seed target",
    "tools": {"stedgeai": "version optimization on_cloud path_to_stedgeai",
              "stm32ai": "version optimization on_cloud path_to_stm32ai", "path_to_cubeIDE": None},
    "benchmarking": "board",
    "deployment": "c_project_path IDE verbosity hardware_setup label_file_path board_deploy_path",
    "mlflow": "uri",
    "hydra": None,
}

TOOLS = """tools:
  stedgeai:
    version: 10.0.0
    optimization: balanced
    on_cloud: False
    path_to_stedgeai: /opt/stedgeai
  path_to_cubeIDE: /opt/cubeide
"""
FIT_ARGS = ("--training.label_smoothing", "0.05", "--training.checkpoint_every", "false",
            "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
"""stmclf-only keys given at fit time: they must reach stmclf_extras.yaml and the later commands."""

def _st_walk(data, schema=ST_SCHEMA, path: str = "") -> tuple[list[str], list[str]]:
    """``(foreign, st)``: the key paths of ``data`` that ST's schema does not have, and those of its
    keys (leaves) that it has."""
    if schema is None or not isinstance(data, dict):
        return [], [path.rstrip(".")]
    allowed = dict.fromkeys(schema.split()) if isinstance(schema, str) else schema
    foreign, st = [], []
    for key, value in data.items():
        if key not in allowed:
            foreign.append(f"{path}{key}")
        else:
            more_foreign, more_st = _st_walk(value, allowed[key], f"{path}{key}.")
            foreign += more_foreign
            st += more_st
    return foreign, st


@pytest.fixture(autouse=True)
def _detach_log_files(tmp_path_factory):
    """Runs attach their log file to the ``stmclf`` logger: detach those of this module's folders."""
    yield
    logger = logging.getLogger("stmclf")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and \
                handler.baseFilename.startswith(str(tmp_path_factory.getbasetemp())):
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, image_folder):
    """A tiny ``stmclf fit`` through the CLI, with stmclf-only keys set on the command line."""
    tmp = tmp_path_factory.mktemp("config_files")
    config = tmp / "c.yaml"
    config.write_text(config_text(image_folder, tmp / "run", tmp / "mlruns", epochs=1) + TOOLS)
    argv = ["fit", "--config", str(config), *FIT_ARGS]
    assert main(argv) == 0
    return tmp, tmp / "run", argv


def _printed(capsys, argv: list[str]) -> dict:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.slow
def test_config_yaml_holds_st_schema_only_and_extras_the_rest(fitted):
    tmp, run, argv = fitted
    st = yaml.safe_load((run / "config.yaml").read_text())
    extras = yaml.safe_load((run / "stmclf_extras.yaml").read_text())
    assert _st_walk(st)[0] == []
    assert st["training"]["epochs"] == 1 and st["tools"]["stedgeai"]["path_to_stedgeai"] == "/opt/stedgeai"
    assert "trainer" not in st and "label_smoothing" not in st["training"] and "num_workers" not in st["dataset"]
    assert extras["training"]["label_smoothing"] == 0.05 and extras["training"]["checkpoint_every"] is False
    assert extras["trainer"]["limit_train_batches"] == 2 and extras["dataset"] == {"num_workers": 0}
    # the combined tool type's other path is not ST's key under tools.stedgeai
    assert extras["tools"] == {"stedgeai": {"path_to_stm32ai": None}}
    foreign, st_keys = _st_walk(extras)
    assert st_keys == [] and {"trainer", "training.label_smoothing", "dataset.num_workers"} <= set(foreign)
    # the two merged are the resolved config of the command, and what the readers see
    resolved = yaml.safe_load(load_config(argv[1:]).resolved_yaml)
    assert merge_config(st, extras) == resolved == read_run_config(run)


@pytest.mark.slow
def test_config_yaml_alone_loads_with_stmclf_defaults(fitted):
    tmp, run, _ = fitted
    cfg = load_config(["--config", str(run / "config.yaml")])
    st_text, extras_text = cfg.written_files()
    assert st_text == (run / "config.yaml").read_text()  # ST's part reads back unchanged
    extras = yaml.safe_load(extras_text)
    assert extras["training"]["label_smoothing"] == 0.0 and extras["training"]["checkpoint_every"] == {"minutes": 5.0}
    assert extras["trainer"]["limit_train_batches"] is None
    assert cfg.training.label_smoothing == 0.0 and cfg.trainer["limit_train_batches"] is None


@pytest.mark.slow
def test_print_config_forms(fitted, capsys):
    tmp, run, argv = fitted
    extra_cli = ["--offline", "--trust-code", "--ckpt_path", str(run / "saved_models/last_augmented_model.ckpt")]
    full = _printed(capsys, [*argv, *extra_cli, "--print_config"])
    st = _printed(capsys, [*argv, *extra_cli, "--print_config=st"])
    extras = _printed(capsys, [*argv, "--print_config=extras"])
    assert st == yaml.safe_load((run / "config.yaml").read_text())  # exactly what config.yaml holds
    assert extras == yaml.safe_load((run / "stmclf_extras.yaml").read_text())
    assert full == merge_config(st, extras)
    assert not {"ckpt_path", "offline", "trust_code", "trust_model_file", "print_config"} & set(full)
    # jsonargparse's skip_unset flag still works, alone or with a form
    trimmed = _printed(capsys, [*argv, "--print_config=extras,skip_unset"])
    assert "ema" not in trimmed["training"] and trimmed["training"]["label_smoothing"] == 0.05
    assert main([*argv, "--print_config=st,extras"]) == 2
    assert "st and extras together" in capsys.readouterr().err
    assert main([*argv, "--print_config=sT"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stmclf: error: --print_config=sT: unknown flag 'sT'") and "Traceback" not in err


@pytest.mark.slow
def test_run_commands_use_the_merged_config(fitted, capsys):
    tmp, run, _ = fitted
    assert _printed(capsys, ["export", "--run", str(run), "--print_config=extras"]) == \
        yaml.safe_load((run / "stmclf_extras.yaml").read_text())
    assert main(["export", "--run", str(run), "--format", "onnx", "--no_int8"]) == 0
    assert (run / "quantized_models/best_model.onnx").is_file()
    # the command's config is the run's config: no config_<time>.yaml beside it
    assert sorted(p.name for p in run.glob("*.yaml")) == ["config.yaml", "stmclf_extras.yaml"]
    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(str(tmp / "mlruns"))[0])
    runs = client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id])
    stages = {r.data.tags.get("stmclf.stage"): r for r in runs}
    # the export stage's parameters carry the stmclf-only keys set at fit time
    params = stages["export"].data.params
    # (float(): with TensorFlow loaded in the same process by earlier tests, jsonargparse resolves
    # Lightning's Union[int, float] to 2.0; the same number for Lightning)
    assert params["training.label_smoothing"] == "0.05" and float(params["trainer.limit_train_batches"]) == 2
    assert {"config.yaml", "stmclf_extras.yaml"} <= {a.path for a in client.list_artifacts(stages["train"].info.run_id)}
    assert main(["report", "--run", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<h3>stmclf_extras.yaml</h3>" in page and "label_smoothing: 0.05" in page


@pytest.mark.slow
def test_a_different_config_is_kept_beside_the_run_in_both_files(fitted):
    from stmclf.training.run_dir import create_run_dir

    tmp, run, argv = fitted
    copy = tmp / "other_run"
    shutil.copytree(run, copy)
    cfg = load_config([*argv[1:], "--training.label_smoothing", "0.1", "--training.epochs", "2"])
    create_run_dir(cfg, root=copy)
    (st_side,) = copy.glob("config_*.yaml")
    (extras_side,) = copy.glob("stmclf_extras_*.yaml")
    assert st_side.name[len("config_"):] == extras_side.name[len("stmclf_extras_"):]
    assert yaml.safe_load(st_side.read_text())["training"]["epochs"] == 2
    assert yaml.safe_load(extras_side.read_text())["training"]["label_smoothing"] == 0.1
    assert _st_walk(yaml.safe_load(st_side.read_text()))[0] == []


@pytest.mark.slow
def test_an_older_run_with_everything_in_config_yaml_still_reads(fitted, capsys):
    from stmclf.training.run_dir import create_run_dir

    tmp, run, argv = fitted
    old = tmp / "old_run"
    shutil.copytree(run, old)
    merged = read_run_config(run)
    (old / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    (old / "stmclf_extras.yaml").unlink()
    assert read_run_config(old) == merged
    assert _printed(capsys, ["export", "--run", str(old), "--print_config"]) == merged
    create_run_dir(load_config(argv[1:]), root=old)  # the same config: nothing written beside it
    assert sorted(p.name for p in old.glob("*.yaml")) == ["config.yaml"]
    assert main(["report", "--run", str(old)]) == 0
    assert "stmclf_extras.yaml" not in (old / "report.html").read_text()


def test_environment_values_stay_references_in_both_files(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("STMCLF_TEST_TOOL_VERSION", "10.9.8-secret")
    monkeypatch.setenv("STMCLF_TEST_WORKERS", "3")
    config = tmp_path / "c.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns").replace(
        "num_workers: 0", "num_workers: ${STMCLF_TEST_WORKERS}") + TOOLS.replace("10.0.0", "${STMCLF_TEST_TOOL_VERSION}"))
    cfg = load_config(["--config", str(config)])
    assert cfg.dataset.num_workers == 3 and cfg.tools.stedgeai.version == "10.9.8-secret"
    st_text, extras_text = cfg.written_files()
    assert "version: ${STMCLF_TEST_TOOL_VERSION}" in st_text and "secret" not in st_text
    assert "num_workers: ${STMCLF_TEST_WORKERS}" in extras_text


def test_run_folder_problems_are_one_line(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path), "--format", "onnx"]) == 2
    assert error_of(capsys.readouterr().err) == \
        f"stmclf: error: --run {tmp_path}: no config.yaml; is this a stmclf run directory?"
    (tmp_path / "config.yaml").write_text("general:\n  project_name: x\n")
    (tmp_path / "stmclf_extras.yaml").write_text("trainer: [unclosed\n")
    with pytest.raises(UserError, match=r"stmclf_extras.yaml: not valid YAML"):
        read_run_config(tmp_path)
    assert main(["deploy-header", "--run", str(tmp_path)]) == 2
    err = error_of(capsys.readouterr().err)
    assert "stmclf_extras.yaml" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
