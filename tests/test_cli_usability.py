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
    options = [line.split()[0] for line in lines if line.startswith("  --")]
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


@pytest.mark.parametrize("mode", ["deployment", "chain_qd"])
def test_the_modes_that_flash_a_board_point_to_deploy_header(mode, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"general: {{project_name: p}}\noperation_mode: {mode}\n")
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"stmclf: error: operation_mode: '{mode}' is not available in stmclf")
    assert "stmclf deploy-header --run RUN" in line
