"""``stmclf`` — the command table. Each command is one function taking its own arguments."""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable, Optional, Sequence

from stmclf.errors import UserError

USAGE = """usage: stmclf COMMAND [options]

commands:
{commands}

Run 'stmclf COMMAND --help' (or 'stmclf help COMMAND') for the options of a command,
'stmclf --version' for the version."""


class HelpShown(Exception):
    """Raised after a help text was printed: the command ends with exit code 0."""


SPHINX = ((r":(?:class|func|meth|attr|paramref|obj|mod|ref):`~?(?:[\w.]+\.)?([^`<]+?)(?: <[^>]+>)?`", r"\1"),
          (r"``([^`]+)``", r"\1"), (r"`([^`]+)`", r"\1"), (r"\s+", " "))


def plain(text: str) -> str:
    """Help text without reStructuredText markup, on one line."""
    import re

    for pattern, repl in SPHINX:
        text = re.sub(pattern, repl, text or "")
    return text.strip()


def _option_rows(actions) -> list[tuple[str, str]]:
    rows = []
    for action in actions:
        flags = ", ".join(action.option_strings[:2]) or action.metavar or action.dest.upper()  # a positional: NAME
        takes_value = action.nargs != 0 and not type(action).__name__.startswith(("_StoreTrue", "_StoreFalse"))
        if takes_value and action.option_strings:
            flags += " " + (action.metavar or action.dest.split(".")[-1].upper())
        rows.append((flags, plain(action.help or "")))
    return rows


def _format_rows(rows: list[tuple[str, str]], width: int = 100) -> list[str]:
    import textwrap

    column = min(max((len(f) for f, _ in rows), default=0) + 4, 34)
    lines = []
    for flags, text in rows:
        wrapped = textwrap.wrap(text, width - column, break_on_hyphens=False) or [""]
        if len(flags) + 4 > column:
            lines.append(f"  {flags}")
            lines.extend(" " * column + w for w in wrapped)
        else:
            lines.append(f"  {flags:<{column - 2}}{wrapped[0]}")
            lines.extend(" " * column + w for w in wrapped[1:])
    return lines


COMMON_OPTIONS = {
    "config": ("-c, --config FILE", "ST model-zoo YAML config file (may be given more than once)"),
    "print_config": ("--print_config[=st|extras]", "(or --print-config) print the resolved config and exit; "
                     "=st: ST's schema only (a run's config.yaml), =extras: the rest (its stmclf_extras.yaml)"),
    "trust_model_file": None, "trust_code": None, "offline": None,
}
"""Options every config command has (shown after the command's own); a tuple replaces the text."""


def config_help(parser) -> str:
    """The command's own options first, then the config sections in one paragraph; the Lightning
    Trainer's options are behind --help-trainer (jsonargparse's full help is 300+ lines)."""
    from stmclf.config import sections

    options = [a for a in parser._actions if a.dest not in sections.SECTIONS and "." not in a.dest
               and a.dest not in ("help", "trainer")]
    common = [a for a in options if a.dest in COMMON_OPTIONS]
    rows = _option_rows([a for a in options if a.dest not in COMMON_OPTIONS])  # the command's own first
    rows += [COMMON_OPTIONS[a.dest] if isinstance(COMMON_OPTIONS[a.dest], tuple) else _option_rows([a])[0]
             for a in common]
    rows += [("-h, --help", "this help"),
                                ("--help-trainer", "the Lightning Trainer options (trainer.devices, "
                                                   "trainer.precision, trainer.strategy, ...)")]
    takes_run = any(a.dest == "run" for a in options)  # --run RUN alone: the run's own config
    config = "(--config FILE | --run RUN)" if takes_run else "--config FILE"
    lines = [f"usage: {parser.prog} {config} [options] [section.key=VALUE ...] [--section.key VALUE ...]", ""]
    if parser.description:
        lines += [plain(parser.description), ""]
    lines += ["options:", *_format_rows(rows), ""]
    lines += ["config (ST model-zoo YAML; every key can be overridden as section.key=VALUE or --section.key VALUE):",
              *_format_rows([("sections", ", ".join(list(sections.SECTIONS)) + ", trainer (Lightning)")]),
              "", "Schema and stmclf's additions: docs/config.md; Lightning Trainer options: --help-trainer."]
    return "\n".join(lines)


def small_help(parser, usage: str, commands: Sequence[tuple[str, str]] = ()) -> str:
    """The help of a command without a config (report, data, data fetch) in the layout of the
    config commands' (:func:`config_help`): usage, description, ``commands`` (a command's
    subcommands), options (positionals first, as ``NAME``)."""
    actions = [a for a in parser._actions if a.dest != "help" and not isinstance(getattr(a, "choices", None), dict)]
    lines = [f"usage: {parser.prog} {usage}", ""]
    if parser.description:
        lines += [plain(parser.description), ""]
    if commands:
        lines += ["commands:", *_format_rows(list(commands)), ""]
    lines += ["options:", *_format_rows([*_option_rows(actions), ("-h, --help", "this help")])]
    return "\n".join(lines)


def trainer_help(parser) -> str:
    from stmclf.config.parser import add_trainer_arguments

    add_trainer_arguments(parser)
    actions = [a for a in parser._actions if a.dest.startswith("trainer.") and not a.dest.endswith(".help")]
    return "\n".join([f"usage: {parser.prog} --config FILE --trainer.KEY VALUE (or trainer.KEY=VALUE)", "",
                      "Lightning Trainer options (the 'trainer' section; stmclf sets max_epochs, callbacks, "
                      "loggers, checkpointing and determinism from the ST sections):", *_format_rows(_option_rows(actions))])


HELP_TRAINER = ("--help-trainer", "--help_trainer")
"""The option of every config command that prints the Lightning Trainer's options (not a parser action)."""


def parse_config_args(parser, argv: Sequence[str], check: Optional[Callable] = None):
    """``parse_args`` with stmclf's short help (-h/--help) and --help-trainer; ``check(cfg, ns)``:
    the command's config-only refusals, run by ``--print_config`` before it prints."""
    from stmclf.config.parser import parse_args

    if "-h" in argv or "--help" in argv:
        print(config_help(parser))
        raise HelpShown
    if any(arg in HELP_TRAINER for arg in argv):
        print(trainer_help(parser))
        raise HelpShown
    takes_run = any(a.dest == "run" for a in parser._actions)  # export, predict, ...: a run or a model file
    if not takes_run and not _gives_config(argv):
        parse_args(parser, argv, check)  # a misspelled option (--confg) or a bare file name is named first
        raise UserError(f"{parser.prog}: no config given: --config FILE (an ST model-zoo YAML, e.g. "
                        f"configs/quickstart.yaml; see '{parser.prog} --help')")
    return parse_args(parser, argv, check)


def _gives_config(argv: Sequence[str]) -> bool:
    """Whether ``argv`` gives a config: ``--config``/``-c``, a ``section.key`` override, or asks
    for ``--print_config`` (the defaults, a template to start from)."""
    from stmclf.config import sections
    from stmclf.config.parser import HYDRA_OVERRIDE

    for arg in argv:
        name = arg.partition("=")[0]
        if name in CONFIG_OPTIONS or name in ("--print_config", "--print-config") or HYDRA_OVERRIDE.match(arg):
            return True
        if arg.startswith("--") and name[2:].split(".")[0] in (*sections.SECTIONS, "trainer"):
            return True
    return False


def _config_command(prog: str, description: str, action: Callable,
                    check: Callable) -> Callable[[Sequence[str]], int]:
    """``stmclf fit`` / ``run``: ``action(cfg)``; ``check(cfg)``: the refusals of ``action`` that need
    the config alone, which ``--print_config`` makes too (``--ckpt_path`` applied first)."""

    def print_check(cfg, ns) -> None:
        _apply_ckpt_path(cfg, ns.ckpt_path)
        check(cfg)

    def command(argv: Sequence[str]) -> int:
        from stmclf.config import from_namespace

        parser = _mode_parser(prog, description)
        ns = parse_config_args(parser, argv, print_check)
        cfg = from_namespace(parser, ns)
        _apply_ckpt_path(cfg, ns.ckpt_path)
        action(cfg)
        return 0
    command.parser = lambda: _mode_parser(prog, description)  # type: ignore[attr-defined]
    return command


def _mode_parser(prog: str, description: str):
    """The parser of ``stmclf fit`` / ``run``: the config and ``--ckpt_path``."""
    from stmclf.config.parser import build_parser

    parser = build_parser(prog, description)
    parser.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", type=Optional[str], default=None,
                        help="resume training from this checkpoint (Lightning's name for "
                             "training.resume_training_from; it wins over training.model)")
    return parser


def _apply_ckpt_path(cfg, ckpt_path: Optional[str]) -> None:
    """``--ckpt_path`` sets ``training.resume_training_from`` (the command line wins, with a warning)."""
    if not ckpt_path:
        return
    if cfg.training is None:
        from stmclf.errors import ConfigError

        raise ConfigError("training", "missing 'training' section: --ckpt_path resumes a training run")
    given = cfg.training.resume_training_from
    if given and given != ckpt_path:
        logging.getLogger("stmclf").warning("--ckpt_path %s replaces training.resume_training_from %s", ckpt_path,
                                            given)
    cfg.training.resume_training_from = ckpt_path


def _fit(cfg) -> None:
    from stmclf.orchestration import fit_command

    fit_command(cfg)


def _fit_check(cfg) -> None:
    from stmclf.training.fit import check_training_config

    check_training_config(cfg)


def _run(cfg) -> None:
    from stmclf.orchestration import run_mode

    run_mode(cfg)


def _run_check(cfg) -> None:
    from stmclf.orchestration.modes import check_run_config

    check_run_config(cfg)


def _option_value(argv: Sequence[str], *names: str) -> Optional[str]:
    """The value of ``names`` (spellings of one option, ``--name VALUE`` or ``--name=VALUE``) that
    argparse keeps: the last one given (``--model a --ckpt b`` runs ``b``), else None."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


CONFIG_OPTIONS = ("--config", "-c")
"""The spellings of ``--config`` (``-c``: Lightning's CLI)."""
MODEL_OPTIONS = ("--model", "--ckpt")
"""The spellings of the model file option of export, predict, benchmark and deploy-header: each
command takes both (export shows ``--ckpt`` first, the others ``--model``)."""


def _typed_spelling(argv: Sequence[str], names: Sequence[str], default: str) -> str:
    """The spelling of the option (``names``) the user typed last, whose value argparse keeps,
    else ``default``: errors about its value name that spelling."""
    typed = [arg.partition("=")[0] for arg in argv if arg.partition("=")[0] in names]
    return typed[-1] if typed else default


def _model_option(argv: Sequence[str], default: str) -> str:
    """The spelling of the model option the user typed (``--model`` or ``--ckpt``; the last one
    given), else ``default``: errors about the file name that option."""
    return _typed_spelling(argv, MODEL_OPTIONS, default)


def _with_run_config(argv: Sequence[str], parser) -> list[str]:
    """Without ``--config``, the config of the run the command works on is the config (its
    ``config.yaml``, then its ``stmclf_extras.yaml`` when there is one): the run of ``--run
    RUN_DIR`` (predict's ``--out RUN_DIR`` too when it names a run, not a new folder), else the run that holds the
    model file of ``--model``/``--ckpt`` (the command writes into that run, so it uses that run's
    preprocessing, evaluation set and MLflow store). Given twice, the last value counts, as for argparse."""
    from pathlib import Path

    argv = list(argv)
    if _option_value(argv, *CONFIG_OPTIONS) is not None or any(arg in CONFIG_OPTIONS for arg in argv):
        return argv  # --config given (once or several times, each file over the ones before): the config
    from stmclf.config.run_files import run_config_args
    from stmclf.training.run_dir import find_run_dir, is_run_dir

    spellings = next(action.option_strings for action in parser._actions if action.dest == "run")
    run, spelling = _option_value(argv, *spellings), _typed_spelling(argv, spellings, "--run")
    if run is not None and (spelling == "--run" or is_run_dir(Path(run))):  # predict --out NEW: a new folder
        return [*run_config_args(run, label=f"{spelling} {run}"), *argv]
    model = _option_value(argv, *MODEL_OPTIONS)
    if model is not None and os.path.isfile(model):
        found = find_run_dir(model)
        if found is not None:
            return [*run_config_args(str(found), label=f"the run of {model}"), "--run", str(found), *argv]
    return argv


def _recording_model(argv: Sequence[str]) -> list[str]:
    """``argv`` plus ``--general.model_path FILE`` when ``--model``/``--ckpt`` names the model: the
    run's config (its ``config.yaml``, or ``config_<time>.yaml`` beside an existing one), the log
    and MLflow then name the model the command used, not the config's own."""
    model = _option_value(argv, *MODEL_OPTIONS)
    return [*argv, "--general.model_path", os.path.abspath(model)] if model else list(argv)


def _data_fetch_parser():
    from jsonargparse import ArgumentParser

    fetch = ArgumentParser(prog="stmclf data fetch", description="download or write a dataset as class folders",
                           allow_abbrev=False)
    fetch.add_argument("name", help="digits (offline, scikit-learn), flowers (tf_flowers), fashion-mnist")
    fetch.add_argument("--out", type=str, default=None, metavar="DIR", help="target directory (default: datasets/NAME)")
    fetch.add_argument("--force", action="store_true", default=False, help="rewrite even if complete")
    fetch.add_argument("--archive", type=Optional[str], default=None, metavar="FILE",
                       help="flowers: use an already downloaded flower_photos.tgz instead of downloading")
    fetch.add_argument("--max_per_split", "--max-per-split", dest="max_per_split", type=Optional[int], default=None,
                       metavar="N",
                       help="fashion-mnist: write at most this many images per split")
    return fetch


def _data(argv: Sequence[str]) -> int:
    from pathlib import Path

    from jsonargparse import ArgumentParser

    from stmclf.config.parser import PARSER_MODE

    parser = ArgumentParser(prog="stmclf data", exit_on_error=False, description="dataset utilities",
                            parser_mode=PARSER_MODE, allow_abbrev=False)
    sub = parser.add_subcommands(required=True, dest="action")
    fetch = _data_fetch_parser()
    sub.add_subcommand("fetch", fetch, help="download or write a dataset as class folders")
    if not argv or argv[0] not in ("fetch", "check") and not argv[0].startswith("-"):
        from stmclf.errors import did_you_mean, printable_path

        given = f"unknown data command '{printable_path(argv[0])}'{did_you_mean(argv[0], ('fetch', 'check'))}" \
            if argv else "give a data command"
        raise UserError(f"stmclf data: {given}; data commands: fetch NAME --out DIR, check --config FILE")
    checking = list(argv[:1]) == ["check"]
    check = _data_check_parser() if checking else ArgumentParser(allow_abbrev=False)  # a config parser only for data check
    sub.add_subcommand("check", check, help="decode every file of the config's dataset paths and list the problems")
    fetch.prog, check.prog = "stmclf data fetch", "stmclf data check"  # jsonargparse's: 'stmclf data [options] fetch'
    if checking:  # the check parser: its --print_config, the short help of every config command
        return _data_check(check, parse_config_args(check, list(argv[1:])))
    if argv[0] == "fetch" and ("-h" in argv or "--help" in argv):
        _parse_small(fetch, argv[1:], "NAME [--out DIR] [options]")
    args = _parse_small(parser, argv, "COMMAND [options]", DATA_COMMANDS)
    if args.action == "fetch":
        from stmclf.data.fetch import fetch_dataset

        opts = args.fetch
        extra = {k: v for k, v in (("archive", opts.archive), ("max_per_split", opts.max_per_split)) if v is not None}
        root = fetch_dataset(opts.name, Path(opts.out or f"datasets/{opts.name}"), force=opts.force, **extra)
        print(root)
    return 0


DATA_COMMANDS = (("fetch NAME", "download or write a dataset as class folders (NAME: digits, flowers, fashion-mnist)"),
                 ("check", "decode every file of the config's dataset paths and list the problems "
                           "('stmclf data check --help')"))
"""The commands of ``stmclf data``, for its help."""


def _augment_preview_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf augment-preview", "Write a before/after grid of the configured augmentation.")
    parser.add_argument("--num-images", "--num_images", type=int, default=8, help="images in the grid")
    parser.add_argument("--seed", type=int, default=1, help="seed for the image choice and the augmentation")
    parser.add_argument("--out", type=str, default="augmentation_preview.png", help="PNG file to write")
    return parser


def _augment_preview(argv: Sequence[str]) -> int:
    from pathlib import Path

    from stmclf.config import from_namespace
    from stmclf.errors import ConfigError

    parser = _augment_preview_parser()
    ns = parse_config_args(parser, argv)
    if not 1 <= ns.num_images <= 256:
        raise ConfigError("--num-images", f"expected an integer from 1 to 256, got {ns.num_images}")
    from stmclf.training.augment_preview import augment_preview  # imports torch: once the command runs

    out = augment_preview(from_namespace(parser, ns), ns.num_images, ns.seed, Path(ns.out))
    print(out)
    return 0


def _plot_lr_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf plot-lr", "Plot the learning-rate schedule of a config without training.")
    parser.add_argument("--out", type=str, default="lr_schedule.png", help="PNG file to write")
    return parser


def _plot_lr(argv: Sequence[str]) -> int:
    from pathlib import Path

    from stmclf.config import from_namespace

    parser = _plot_lr_parser()
    ns = parse_config_args(parser, argv)
    from stmclf.training.plot_lr import plot_learning_rates  # imports torch: once the command runs

    print(plot_learning_rates(from_namespace(parser, ns), Path(ns.out)))
    return 0


def _data_check_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf data check", "Decode every file of the dataset paths of a config (training, "
                                               "validation, test, quantization) and list every problem.")
    parser.add_argument("--workers", type=Optional[int], default=None,
                        help="decoding processes (default: one per core; 1 decodes in this process)")
    parser.add_argument("--imbalance_ratio", "--imbalance-ratio", dest="imbalance_ratio", type=Optional[float], default=3.0,
                        help="warn when a path's largest class has more than this many times the images of its "
                             "smallest (null: no warning)")
    parser.add_argument("--max_rows", "--max-rows", dest="max_rows", type=int, default=200,
                        help="problems listed at most (0: all)")
    return parser


def _data_check(parser, ns) -> int:
    from stmclf.config import from_namespace

    cfg = from_namespace(parser, ns)
    if cfg.dataset is None:
        raise UserError("dataset: missing 'dataset' section: nothing to check")
    from stmclf.data.check import check_dataset, print_report
    color_mode = cfg.preprocessing.color_mode if cfg.preprocessing is not None else "rgb"
    report = check_dataset(cfg.dataset, color_mode, workers=ns.workers, imbalance_ratio=ns.imbalance_ratio,
                           progress=True)
    print_report(report, max_rows=ns.max_rows or None)
    if not report.ok:
        raise UserError(f"{report.summary()} (see above)")
    return 0


def _report_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="stmclf report", exit_on_error=False, allow_abbrev=False,
                            description="Write one self-contained HTML page for a run directory.")
    parser.add_argument("run_dir", nargs="?", default=None, help="the run directory (hydra.run.dir of the run)")
    parser.add_argument("--run", type=Optional[str], default=None, metavar="RUN_DIR",
                        help="the run directory (same as RUN_DIR)")
    parser.add_argument("--out", type=Optional[str], default=None, metavar="FILE",
                        help="HTML file (default RUN_DIR/report.html)")
    return parser


def _report(argv: Sequence[str]) -> int:
    args = _parse_small(_report_parser(), argv, "(RUN_DIR | --run RUN_DIR) [--out FILE]")
    run_dir = args.run_dir or args.run
    if not run_dir:
        raise UserError("stmclf report: give the run directory (RUN_DIR or --run RUN_DIR)")
    from stmclf.errors import printable_path
    from stmclf.evaluate.report import write_report  # imports torch: once the command runs

    label = printable_path(run_dir) if args.run_dir else f"--run {printable_path(run_dir)}"  # as the user gave it
    print(write_report(run_dir, args.out, label))
    return 0


def on_off_action() -> type:
    """The action of an on/off flag whose negation means something (its default comes from the
    config): argparse's ``BooleanOptionalAction`` (``--X`` / ``--no-X``, both in ``--help``), which
    also takes ``--no_X``, as every option of two words takes both spellings."""
    import argparse

    class OnOffAction(argparse.BooleanOptionalAction):
        def __init__(self, option_strings, dest, **kwargs):
            super().__init__(option_strings, dest, **kwargs)
            self.option_strings += [f"--no_{name[2:]}" for name in option_strings if name.startswith("--")]

        def __call__(self, parser, namespace, values, option_string=None):
            setattr(namespace, self.dest, not (option_string or "").startswith(("--no-", "--no_")))

    return OnOffAction


RUN_HELP = "run folder to write into (default: the run folder holding the model file, else a new one)"


def _export_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf export", "Export a trained model: float ONNX / TFLite, and int8 "
                                           "(QDQ ONNX, full-integer TFLite) with --int8.")
    parser.add_argument("--ckpt", "--model", dest="ckpt", type=Optional[str], default=None,
                        help="model file: stmclf best_model.pt/.ckpt, Keras .h5, float ONNX or torch file; with --run: "
                             "the run's best_model.pt (else the model its export came from), else general.model_path")
    parser.add_argument("--run", type=Optional[str], default=None, help=RUN_HELP)
    parser.add_argument("--int8", action=on_off_action(), default=None,
                        help="also write int8 models, or not (default: when the config has a quantization "
                             "section)")
    parser.add_argument("--format", type=str, default="onnx,tflite", help="onnx, tflite or onnx,tflite")
    parser.add_argument("--per-layer", "--per_layer", dest="per_layer", action="store_true", default=False,
                        help="with --int8 and the onnx format: per-tensor SNR of the QDQ model vs the float ONNX "
                             "(table, per_layer_snr.csv in the export directory)")
    return parser


def _export(argv: Sequence[str]) -> int:
    from stmclf.config import from_namespace

    parser = _export_parser()
    ns = parse_config_args(parser, _recording_model(_with_run_config(argv, parser)))
    cfg = from_namespace(parser, ns)
    if ns.per_layer:
        from stmclf.export.per_layer import check_per_layer_request

        check_per_layer_request(ns.format, ns.int8, cfg)
    from stmclf.orchestration import export_command  # imports Lightning: once the command runs

    result, _ = export_command(cfg, ns.ckpt, run=ns.run, formats=ns.format, int8=ns.int8,
                               option=_model_option(argv, "--ckpt"))
    files = dict(result.items())
    if ns.per_layer:
        from stmclf.export.per_layer import per_layer_for_export

        files["per_layer"] = per_layer_for_export(cfg, result)
    for key, path in files.items():
        print(f"{key}: {path}")
    return 0


def _predict_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf predict", "Classify every image of a folder with a trained model (stmclf .pt/"
                                            ".ckpt, Keras .h5, float or QDQ .onnx, float or int8 .tflite).")
    parser.add_argument("--model", "--ckpt", dest="model", type=Optional[str], default=None,
                        help="the model file; default with --run: the run's best_model.pt (else the model its export "
                             "came from), else general.model_path")
    parser.add_argument("--images", type=Optional[str], default=None,
                        help="directory of images; default prediction.test_files_path")
    parser.add_argument("--run", "--out", dest="run", type=Optional[str], default=None,
                        help=RUN_HELP + "; predictions in RUN/predictions")
    return parser


def _predict(argv: Sequence[str]) -> int:
    from stmclf.config import from_namespace

    parser = _predict_parser()
    ns = parse_config_args(parser, _recording_model(_with_run_config(argv, parser)))
    cfg = from_namespace(parser, ns)
    use_config = bool(cfg.config_files) or cfg.preprocessing is not None or cfg.dataset is not None
    from stmclf.orchestration import predict_command  # imports Lightning: once the command runs

    result = predict_command(cfg, ns.model, ns.images, run=ns.run, use_config=use_config,
                             option=_model_option(argv, "--model"))
    print(f"predictions: {result.out_dir}")
    return 0


def _benchmark_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf benchmark", "Footprint of a model on an STM32 board: board run (Developer "
                                              "Cloud) → cloud analyze → local stedgeai → offline estimate.")
    parser.add_argument("--model", "--ckpt", dest="model", type=Optional[str], default=None,
                        help="model file (default with --run: the run's int8 model, else its best_model.pt; else "
                             "general.model_path)")
    parser.add_argument("--run", type=Optional[str], default=None, help=RUN_HELP)
    parser.add_argument("--board", type=Optional[str], default=None, help="board (default benchmarking.board)")
    return parser


def _benchmark(argv: Sequence[str]) -> int:
    from stmclf.config import from_namespace

    parser = _benchmark_parser()
    ns = parse_config_args(parser, _recording_model(_with_run_config(argv, parser)))
    cfg = from_namespace(parser, ns)
    from stmclf.orchestration import benchmark_command  # imports Lightning: once the command runs

    benchmark_command(cfg, ns.model, run=ns.run, board=ns.board, option=_model_option(argv, "--model"))
    return 0


def _deploy_header_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf deploy-header", "Write the C header (ai_model_config.h) the STM32 application "
                                                  "needs for a full-integer (int8) TFLite model: a run's export, or "
                                                  "general.model_path of an ST deployment config.")
    parser.add_argument("--model", "--ckpt", dest="model", type=Optional[str], default=None,
                        help="the int8 .tflite; default with --run: the run's export (quantized_model.tflite), "
                             "else general.model_path")
    parser.add_argument("--run", type=Optional[str], default=None, help=RUN_HELP)
    parser.add_argument("--out", type=Optional[str], default=None, help="header file (default RUN/generated/...)")
    return parser


def _deploy_header(argv: Sequence[str]) -> int:
    from stmclf.config import from_namespace

    parser = _deploy_header_parser()
    ns = parse_config_args(parser, _recording_model(_with_run_config(argv, parser)))
    cfg = from_namespace(parser, ns)
    from stmclf.orchestration import deploy_header_command  # imports Lightning: once the command runs

    print(deploy_header_command(cfg, ns.model, run=ns.run, out=ns.out, option=_model_option(argv, "--model")))
    return 0


def _summary_parser():
    from stmclf.config.parser import build_parser

    parser = build_parser("stmclf summary", "Print the layer table of the config's training.model.")
    parser.add_argument("--num_classes", "--num-classes", type=Optional[int], default=None,
                        help="number of classes (default: dataset.class_names or the dataset's class folders)")
    return parser


def _summary(argv: Sequence[str]) -> int:
    from stmclf.config import from_namespace

    parser = _summary_parser()
    ns = parse_config_args(parser, argv)
    from stmclf.models.summary import build_configured_model, render_summary  # imports torch: once it runs

    render_summary(build_configured_model(from_namespace(parser, ns), ns.num_classes))
    return 0


def _parse_small(parser, argv: Sequence[str], usage: str, commands: Sequence[tuple[str, str]] = ()):
    """``parser.parse_args`` of a command without a config: -h/--help prints :func:`small_help`
    (``usage``: the usage line after the command's name), an error is one line."""
    from stmclf.config.parser import argument_error

    if "-h" in argv or "--help" in argv:
        print(small_help(parser, usage, commands))
        raise HelpShown
    try:
        return parser.parse_args(list(argv))
    except Exception as exc:  # jsonargparse ArgumentError
        raise UserError(argument_error(parser, str(exc))) from None


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "fit": (_config_command("stmclf fit", "Train a model from an ST model-zoo YAML config.", _fit, _fit_check),
            "train a model from a config (operation_mode training)"),
    "run": (_config_command("stmclf run", "Run whatever operation_mode the config names.", _run, _run_check),
            "run the config's operation_mode"),
    "augment-preview": (_augment_preview, "before/after PNG grid of the config's data augmentation"),
    "plot-lr": (_plot_lr, "plot the config's learning-rate schedule without training"),
    "report": (_report, "one self-contained HTML page for a run directory"),
    "export": (_export, "export a trained model to ONNX / TFLite (float; int8 with --int8)"),
    "predict": (_predict, "classify the images of a folder with any trained model (table, annotated PNGs, CSV)"),
    "benchmark": (_benchmark, "footprint on an STM32 board (cloud, local stedgeai or --offline estimate)"),
    "deploy-header": (_deploy_header, "write the C header for ST's application for an int8 .tflite (a run's "
                                      "export or an ST deployment config's model)"),
    "data": (_data, "dataset utilities: 'data fetch digits|flowers|fashion-mnist --out DIR', "
                    "'data check --config x.yaml'"),
    "summary": (_summary, "layer table of the config's training.model (Keras indices, params, output shapes)"),
}

COMMAND_PARSERS: dict[str, Callable] = {
    "fit": COMMANDS["fit"][0].parser, "run": COMMANDS["run"][0].parser,  # type: ignore[attr-defined]
    "augment-preview": _augment_preview_parser, "plot-lr": _plot_lr_parser, "report": _report_parser,
    "export": _export_parser, "predict": _predict_parser, "benchmark": _benchmark_parser,
    "deploy-header": _deploy_header_parser, "summary": _summary_parser,
    "data fetch": _data_fetch_parser, "data check": _data_check_parser,
}
"""The parser of each command (of each ``data`` subcommand), built as the command builds it: what
``stmclf COMMAND ...`` accepts, checked without running it (tests/test_docs_commands.py)."""


def command_parser(argv: Sequence[str]):
    """``(parser, arguments)`` of the command line ``argv`` (``[COMMAND, ...]``, ``data fetch`` and
    ``data check`` as one command) without running it; a command that is none is a :class:`UserError`."""
    name = " ".join(argv[:2]) if argv[:1] == ["data"] else (argv[0] if argv else "")
    if name not in COMMAND_PARSERS:
        if argv[:1] == ["data"]:
            known = ", ".join(n.split()[1] for n in COMMAND_PARSERS if n.startswith("data "))
            raise UserError(f"stmclf data: unknown data command '{' '.join(argv[1:2])}'; data commands: {known}")
        raise UserError(unknown_command(name))
    return COMMAND_PARSERS[name](), list(argv[len(name.split()):])


NOISY_WARNINGS = (
    # (message, category, module that warns): third-party warnings that are harmless with stmclf's
    # settings, hidden in one place; any other warning (a user's misconfiguration) stays visible.
    (r".*overridden `on_after_batch_transfer`", UserWarning, r"lightning\."),  # our module owns preprocessing
    (r".*is smaller than the logging interval", UserWarning, r"lightning\."),  # we log per epoch
    (r".*isinstance\(treespec, LeafSpec\)", FutureWarning, r"lightning\."),  # Lightning vs torch's pytree
    (r".*does not have many workers which may be a bottleneck", UserWarning, r"lightning\."),  # sized to the cores
    (r"Precision \S+ is not supported by the model summary", UserWarning, r"lightning\."),  # size in fp32: right
    (r"Checkpoint directory .* exists and is not empty", UserWarning, r"lightning\."),  # a resumed run's folder
    # frozen layers' BatchNorm and pretrained Keras Applications backbones run in inference mode, as in Keras
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning, r"lightning\."),
    # DDP: the epoch (logged step) and the learning rate are the same on every rank
    (r"It is recommended to use `self\.log\('(step|lr)', \.\.\., sync_dist=True\)`", UserWarning, r"lightning\."),
)


def _quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for message, category, module in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow logs a store failure with its traceback before raising it; the raised error is
    # reported in one line (environment_failure)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class _PlainHandler(logging.StreamHandler):
    """Console logging when stderr is not a terminal (piped, CI): one plain line per record, an INFO
    message bare and any other prefixed with its level, written to the current ``sys.stderr``
    (stdout is the command's data: tables, file paths, the config of --print_config)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # the stderr of the moment (a test's capture, a redirect), as Rich's console does
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname} {text}"


def _setup_console_logging() -> None:
    """stmclf's log lines on stderr (Rich's in a terminal, plain lines otherwise): stdout holds only
    a command's data, so ``stmclf predict ... | head`` or ``stmclf summary ... > f`` get no log."""
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("stmclf")
    if not any(isinstance(h, (RichHandler, _PlainHandler)) for h in logger.handlers):
        handler = (RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
                   if sys.stderr.isatty() else _PlainHandler())
        handler.setFormatter(logging.Formatter("%(message)s"))
        # records for the log file only (training.progress.EpochLine while the Rich bar shows the epoch)
        handler.addFilter(lambda record: not getattr(record, "file_only", False))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    root = logging.getLogger()
    if not any(isinstance(h, _LibraryHandler) for h in root.handlers):
        root.addHandler(_LibraryHandler())


OWN_HANDLERS = ("stmclf", "lightning")  # the loggers (and their children) that print on their own


class _LibraryHandler(logging.StreamHandler):
    """Other libraries' log records on stderr, ``WARNING:name:message`` as Python prints them when
    nothing is set up. With a handler of its own, the root logger is never given one by a library's
    module-level ``logging.warning`` (as onnxruntime's quantizer does), which would print every
    stmclf line a second time. stmclf and Lightning print through their own handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        self.addFilter(lambda record: record.name.partition(".")[0] not in OWN_HANDLERS)

    @property
    def stream(self):  # the stderr of the moment (a test's capture, a redirect)
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = "\n".join(f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items())
    if argv[:1] == ["help"] and len(argv) > 1:  # git's 'help COMMAND'
        if argv[1] not in COMMANDS:
            print(f"stmclf: error: {unknown_command(argv[1])}", file=sys.stderr)
            return 2
        argv = [argv[1], "--help"]
    if not argv:  # as argparse tools: the usage on stderr, exit code 2 (asked for with --help: stdout, 0)
        print(USAGE.format(commands=commands), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands=commands))
        return 0
    if argv[0] in ("-V", "--version"):
        from stmclf import __version__

        print(f"stmclf {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"stmclf: error: {unknown_command(name)}", file=sys.stderr)
        return 2
    _quiet_libraries()
    _setup_console_logging()
    logger = logging.getLogger("stmclf")
    before = set(logger.handlers)
    status = "FAILED"  # what the MLflow runs the command still has open become: see the finally
    try:
        code = COMMANDS[name][0](rest)
        status = "FINISHED" if code == 0 else "FAILED"
        return code
    except HelpShown:
        return 0
    except UserError as exc:
        return _stop(f"stmclf: error: {exc}", 2, before)
    except Exception as exc:  # noqa: BLE001 - a full or read-only disk met deep in a library
        problem = environment_failure(exc)
        if problem is None:
            raise
        return _stop(f"stmclf: error: {problem}", 2, before)
    except KeyboardInterrupt as exc:
        status = "KILLED"
        return _stop(interrupted_line(exc), 128 + getattr(exc, "signum", signal.SIGINT), before)
    finally:  # the run folder (its lock and log file) belongs to this command (main may be called again in-process)
        from stmclf.training.mlflow_runs import end_open_runs
        from stmclf.training.run_dir import release_runs

        end_open_runs(status)  # the parent run (a stage ends its own): FAILED after an error, KILLED after a signal
        release_runs()
        for handler in set(logger.handlers) - before:
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()


def unknown_command(name: str) -> str:
    """The error for a first argument that is no command, with the closest command (git's "did
    you mean"); an option there is named as one."""
    from stmclf.errors import did_you_mean, printable_path

    shown = printable_path(name)
    if name.startswith("-"):
        return (f"unknown option '{shown}' before the command; stmclf takes -h/--help and -V/--version there, "
                f"a command's options after it ('stmclf COMMAND --help'); commands: {', '.join(COMMANDS)}")
    return f"unknown command '{shown}'{did_you_mean(name, COMMANDS)}; commands: {', '.join(COMMANDS)}"


def _stop(line: str, code: int, before: set) -> int:
    """``line`` on stderr and, when the command opened a run folder, at the end of its
    ``stmclf.log`` (the console handlers print nothing of it); returns ``code``, also when stderr
    cannot be written (a closed pipe: the exit code is then all a script sees)."""
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass
    record = logging.LogRecord("stmclf", logging.ERROR, __file__, 0, line, None, None)
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False  # a full disk: no traceback
    try:
        for handler in set(logging.getLogger("stmclf").handlers) - before:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
    finally:
        logging.raiseExceptions = raise_exceptions
    return code


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """What was interrupted and how to go on, in one line."""
    from stmclf.errors import Interrupted, shell_word

    signum = getattr(exc, "signum", signal.SIGINT)
    what = f"stmclf: interrupted ({signal.Signals(signum).name})"
    if not isinstance(exc, Interrupted):
        return what
    if exc.then:
        return f"{what} after the training, whose model is saved; do the rest with: {exc.then}"
    if exc.resume_from is None:
        return f"{what} before the training wrote its first checkpoint: it starts over when run again"
    return f"{what}; resume the training with --training.resume_training_from {shell_word(exc.resume_from)}"


ENVIRONMENT_ERRNOS = (28, 30, 13, 122)  # ENOSPC, EROFS, EACCES, EDQUOT
SQLITE_FAILURES = {"database or disk is full": "No space left on device",
                   "attempt to write a readonly database": "read-only"}


def environment_failure(exc: BaseException):
    """One line for a full or read-only disk met inside a library (MLflow's SQLite store, a
    logger's file), found anywhere in the exception's chain; None for any other failure."""
    from stmclf.errors import one_line

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            return f"{exc.filename}: {exc.strerror}" if exc.filename else one_line(exc)
        for marker, what in SQLITE_FAILURES.items():
            if marker in str(exc):
                return f"mlflow.uri: the MLflow store cannot be written ({what}: {marker})"
        exc = exc.__cause__ or exc.__context__
    return None


def run() -> None:
    """Console entry point: ``main`` plus a quiet exit when the output pipe closes early, and a
    Ctrl+C that ends the process even when its main thread is stuck in C++ (``interrupt_guard``)."""
    from stmclf.cli.interrupt import interrupt_guard

    try:
        with interrupt_guard():
            code = main()
            sys.stdout.flush()
    except BrokenPipeError:
        if not stdout_closed():  # a closed stderr, a worker pool's or a child's pipe: a failure, not the end
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``stmclf predict ... | head``): only then is a
    BrokenPipeError the quiet end of the output. Any other one (stderr closed, the pipe of a process
    pool whose server died) ends the command with its traceback and exit code 1, never 0."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout, or one without a file descriptor
        return False


if __name__ == "__main__":
    run()
