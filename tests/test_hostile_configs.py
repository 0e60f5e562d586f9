"""Hostile and broken configs (issue 12): every one stops with exactly one stderr line naming the
key or the file, exit code 2, no traceback, within 2 s, and nothing written.

Each case is a real ``stmclf fit`` of a config that is valid except for one thing. The cases that
used to hang (number towers, alias bombs, runaway interpolation) run in subprocesses, all started
at once, each with a wall-clock timeout: a regression fails them instead of hanging the suite.
The other cases run in-process with a timer.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import pytest

from conftest import DEFAULT_MODEL, config_text, error_of
from stmclf.cli.main import main

LIMIT_S = 2.0
"""Seconds a refused config may take, parser and imports already warm."""
HANG_TIMEOUT_S = 180
"""Wall clock for a subprocess case, its imports included (a hang regression hits this)."""

SCHEDULE_BLOCK = """\
    ReduceLROnPlateau:
      monitor: val_accuracy
      factor: 0.5
      patience: 10
"""

Content = Union[str, bytes]


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[str, Path], Content]
    """(valid config text, case folder) → the config file's content."""
    expected: str
    """Regex the error line must match; ``{file}`` stands for the config path."""
    args: tuple[str, ...] = ()
    isolated: bool = False
    """Run in a subprocess with a timeout (the cases that hung before issue 12)."""
    config_arg: Callable[[Path], str] | None = field(default=None)
    """The ``--config`` value, when it is not the written file (a directory, a device)."""


def sub(old: str, new: str) -> Callable[[str, Path], str]:
    def make(text: str, _: Path) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return make


def append(extra: str) -> Callable[[str, Path], str]:
    return lambda text, _: text + textwrap.dedent(extra)


def schedule(expr: str) -> Callable[[str, Path], str]:
    return sub(SCHEDULE_BLOCK, f"    LearningRateScheduler:\n      schedule: {expr}\n")


def hydra(extra: str) -> Callable[[str, Path], str]:
    return sub("hydra:\n", "hydra:\n" + extra)


def run_dir_at(where: Callable[[Path], str]) -> Callable[[str, Path], str]:
    """``hydra.run.dir`` set to ``where(case folder)``."""
    def make(text: str, folder: Path) -> str:
        assert f"dir: {folder / 'run'}\n" in text
        return text.replace(f"dir: {folder / 'run'}\n", f"dir: {where(folder)}\n", 1)
    return make


def a_file(folder: Path) -> str:
    (folder / "a_file").write_text("not a folder")
    return str(folder / "a_file")


def alias_bomb(text: str, _: Path) -> str:
    """The "billion laughs": 9 levels of 9 aliases each, 9**9 leaves once expanded."""
    lines = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return text.replace("hydra:\n", "hydra:\n" + "\n".join(lines) + "\n")


def interpolation_bomb(text: str, _: Path) -> str:
    """Each value refers 8 times to the next: 8**12 copies if nothing bounds it."""
    lines = [f"  k{i}: " + "${hydra.k%d}" % (i + 1) * 8 for i in range(12)] + ["  k12: " + "x" * 200]
    return text.replace("hydra:\n", "hydra:\n" + "\n".join(lines) + "\n")


def png_bytes(text: str, folder: Path) -> bytes:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "x.png")
    return (folder / "x.png").read_bytes()


def _dir(folder: Path) -> str:
    (folder / "a_directory").mkdir(exist_ok=True)
    return str(folder / "a_directory")


TOWER = "((((9**64)**64)**64)**64)"
FILE = r"{file}"

CASES = [
    # --- numbers: bounded arithmetic, sane integer ranges
    Case("power-tower-epochs", sub("epochs: 1\n", f"epochs: {TOWER}\n"), r"^training\.epochs: .*out of bounds",
         isolated=True),
    Case("power-tower-any-key", sub("alpha: 0.35", "alpha: 9**9**9**9"), r"^training\.model\.alpha: .*out of bounds",
         isolated=True),
    Case("override-power-tower", lambda t, _: t, r"^training\.epochs: .*out of bounds",
         args=("--training.epochs", TOWER), isolated=True),
    Case("float-overflow", sub("scale: 1/127.5", "scale: 1e308*10"),
         r"^preprocessing\.rescaling\.scale: .*out of bounds \(a float overflow\)"),
    Case("float-literal-overflow", sub("offset: -1", "offset: -1e999"), r"^preprocessing\.rescaling\.offset: .*out of bounds"),
    Case("yaml-native-inf", sub("scale: 1/127.5", "scale: .inf"), r"^preprocessing\.rescaling\.scale: .*not a finite number"),
    Case("yaml-native-nan", sub("offset: -1", "offset: .nan"), r"^preprocessing\.rescaling\.offset: .*not a finite number"),
    Case("yaml-float-overflow", sub("offset: -1", "offset: -1.0e+400"), r"^preprocessing\.rescaling\.offset: .*not a finite number"),
    Case("epochs-1e100", sub("epochs: 1\n", "epochs: 1e100\n"), r"^training\.epochs: expected int"),
    Case("epochs-10**30", sub("epochs: 1\n", "epochs: 10**30\n"), r"^training\.epochs: must be at most 1,000,000 \(got 1e\+30\)"),
    Case("epochs-zero", sub("epochs: 1\n", "epochs: 0\n"), r"^training\.epochs: must be a positive integer \(got 0\)"),
    Case("batch-size-huge", sub("batch_size: 8", "batch_size: 100000"), r"^training\.batch_size: must be at most 65,536"),
    Case("batch-size-negative", sub("batch_size: 8", "batch_size: -8"), r"^training\.batch_size: must be a positive integer"),
    Case("override-batch-size", lambda t, _: t, r"^training\.batch_size: must be at most 65,536",
         args=("--training.batch_size", "1000000")),
    Case("num-workers-huge", sub("num_workers: 0", "num_workers: 100000"), r"^dataset\.num_workers: must be at most 256"),
    Case("seed-negative", sub("global_seed: 7", "global_seed: -1"), r"^general\.global_seed: must be an integer from 0"),
    Case("input-shape-huge", sub("(32, 32, 3)", "(100000, 100000, 3)"),
         r"^training\.model\.input_shape: the height must be from 1 to 8,192"),
    Case("input-shape-channels", sub("(32, 32, 3)", "(32, 32, 7)"),
         r"^training\.model\.input_shape: the channels must be from 1 to 4"),
    Case("input-shape-pair", sub("(32, 32, 3)", "(32, 32)"), r"^training\.model\.input_shape: expecting \(height, width"),
    Case("memory-estimate", lambda t, f: sub("(32, 32, 3)", "(8192, 8192, 3)")(t, f).replace("batch_size: 8", "batch_size: 65536"),
         r"^training\.batch_size: a batch of 65,536 images of 8192x8192x3 needs at least [\d,.]+ GiB"),
    # --- YAML: anchors, duplicates, nesting, size
    Case("alias-bomb", alias_bomb, FILE + r": invalid YAML \(line \d+, column \d+\): .*more than 5,000 values",
         isolated=True),
    Case("many-aliases", hydra("  base: &b 1\n  many: [" + ", ".join(["*b"] * 150) + "]\n"),
         FILE + r": .*anchors/aliases are limited to 100"),
    Case("alias-cycle", hydra("  loop: &a [1, *a]\n"), FILE + r": .*alias \*a refers to a value that contains it"),
    Case("duplicate-section", append("training:\n  epochs: 3\n"), FILE + r": .*duplicate key training \(lines \d+ and \d+\)"),
    Case("duplicate-key", sub("epochs: 1\n", "epochs: 1\n  epochs: 50\n"),
         FILE + r": .*duplicate key training\.epochs \(lines (\d+) and (?!\1)\d+\)"),
    Case("duplicate-key-flow", sub("    Adam:\n      learning_rate: 0.005\n",
                                   "    Adam: {learning_rate: 0.005, learning_rate: 5}\n"),
         FILE + r": .*duplicate key training\.optimizer\.Adam\.learning_rate \(lines (\d+) and \1\)"),
    Case("nesting-10000", lambda t, _: t + "deep: " + "[" * 10_000 + "\n", FILE + r": invalid YAML .*nesting"),
    Case("nesting-100", hydra("  deep: " + "[" * 100 + "1" + "]" * 100 + "\n"), FILE + r": .*nesting deeper than 64"),
    Case("too-many-values", hydra("  many: [" + ", ".join(f"v{i}" for i in range(6000)) + "]\n"),
         FILE + r": .*more than 5,000 values"),
    Case("long-line-key", lambda t, _: t + "x" * 500_000 + ": 1\n", FILE + r": invalid YAML \(line \d+, column 500001\)"),
    Case("long-line-value", lambda t, _: t + "junk_section: " + "x" * 500_000 + "\n",
         r"^junk_section: unknown top-level section"),
    Case("long-digits", sub("epochs: 1\n", "epochs: " + "1" * 100_000 + "\n"), FILE + r": invalid YAML \(line \d+, column \d+\): training\.epochs: a 100,000-digit integer is too large for any "
         r"config value$"),
    Case("file-over-1-MiB", lambda t, _: t + ("# padding\n" * 120_000), FILE + r": [\d.]+ MiB is too large"),
    Case("binary-png", png_bytes, FILE + r": a binary file"),
    Case("latin-1", lambda t, _: t.replace("pytest_project", "caf\u00e9").encode("latin-1"),
         FILE + r": not UTF-8 text \(byte 0xe9 on line 2\)"),
    Case("yaml-escaped-surrogate", sub("project_name: pytest_project", 'project_name: "caf\\udce9"'),
         FILE + r": invalid YAML \(line 2, column \d+\): found invalid Unicode character escape"),
    Case("override-not-utf8", lambda t, _: t, r"^dataset\.training_path: '/data/tr\\xe9in' is not UTF-8 text$",
         args=(os.fsdecode(b"dataset.training_path=/data/tr\xe9in"),)),
    Case("override-flag-not-utf8", lambda t, _: t, r"^general\.project_name: 'caf\\xe9' is not UTF-8 text$",
         args=("--general.project_name", os.fsdecode(b"caf\xe9"))),
    Case("argument-not-utf8", lambda t, _: t, r"^command-line argument '\\xe9' is not UTF-8 text$",
         args=(os.fsdecode(b"\xe9"),)),
    Case("empty-file", lambda t, _: "", FILE + r": expecting a YAML mapping .* found nothing \(an empty file\)"),
    Case("comments-only", lambda t, _: "# nothing here\n", FILE + r": expecting a YAML mapping .* found nothing"),
    Case("top-level-list", lambda t, _: "- general\n- training\n", FILE + r": expecting a YAML mapping .* found a list"),
    Case("top-level-text", lambda t, _: "just some words\n", FILE + r": expecting a YAML mapping .* found text"),
    Case("top-level-int-key", append("1: 2\n"), FILE + r": top-level key 1 is not a section name"),
    Case("directory", lambda t, _: t, FILE + r": not a regular file", config_arg=_dir),
    Case("device", lambda t, _: t, r"^/dev/zero: not a regular file", config_arg=lambda _: "/dev/zero"),
    Case("yaml-syntax", sub("epochs: 1\n", "epochs: [1\n"), FILE + r": invalid YAML \(line \d+, column \d+\)"),
    Case("tab-indent", sub("  epochs: 1\n", "\tepochs: 1\n"), FILE + r": invalid YAML \(line \d+"),
    Case("python-tag", append("extra: !!python/object/apply:os.system ['touch pwned']\n"),
         FILE + r": invalid YAML .*(constructor|python/object)"),
    # --- schema
    Case("unknown-section", append("foo: 1\n"), r"^foo: unknown top-level section; allowed: general"),
    Case("unknown-section-mapping", append("generall: {project_name: x}\n"),
         r"^generall: unknown top-level section \(did you mean general\?\); allowed: general, .*, trainer$"),
    Case("unknown-section-override", lambda t, _: t,
         r"^generall: unknown top-level section \(did you mean general\?\); allowed: general",
         args=("generall.project_name=x",)),
    Case("unknown-section-flag", lambda t, _: t, r"^dataset_: unknown top-level section \(did you mean dataset\?\)",
         args=("--dataset_.name", "x")),
    # --- values Lightning or torch would fail on epochs later (or never): refused up front
    Case("label-smoothing-5", sub("  batch_size: 8\n", "  batch_size: 8\n  label_smoothing: 5.0\n"),
         r"^training\.label_smoothing: must be from 0 to 1 \(got 5\.0\)"),
    Case("mixup-negative", sub("  batch_size: 8\n", "  batch_size: 8\n  mixup: -1\n"),
         r"^training\.mixup: the Beta distribution's alpha must be > 0"),
    Case("patience-text", sub("      patience: 10\n", "      patience: x\n"),
         r"^training\.callbacks\.ReduceLROnPlateau\.patience: expecting an integer, got 'x'"),
    Case("patience-negative", sub("      patience: 10\n", "      patience: -3\n"),
         r"^training\.callbacks\.ReduceLROnPlateau\.patience: must be >= 0"),
    Case("model-checkpoint-by-class-path", sub("  callbacks:\n", "  callbacks:\n    lightning.pytorch.callbacks."
                                                                   "ModelCheckpoint: {}\n"),
         r"^training\.callbacks\.lightning\.pytorch\.callbacks\.ModelCheckpoint: stmclf writes the run's checkpoints"),
    Case("val-check-interval-0", sub("trainer:\n", "trainer:\n  val_check_interval: 0\n"),
         r"^trainer\.val_check_interval: expecting a number of batches"),
    Case("check-val-every-0", sub("trainer:\n", "trainer:\n  check_val_every_n_epoch: 0\n"),
         r"^trainer\.check_val_every_n_epoch: expecting an integer >= 1, got 0"),
    Case("limit-val-batches-0", sub("trainer:\n", "trainer:\n  limit_val_batches: 0\n"),
         r"^trainer\.limit_val_batches: .*the validation that picks the best model"),
    Case("devices-negative", sub("trainer:\n", "trainer:\n  devices: -5\n"),
         r"^trainer\.devices: expecting a number of devices >= 1"),
    Case("accumulate-grad-batches-0", sub("trainer:\n", "trainer:\n  accumulate_grad_batches: 0\n"),
         r"^trainer\.accumulate_grad_batches: expecting an integer >= 1, got 0$"),
    Case("num-sanity-val-steps-negative", sub("trainer:\n", "trainer:\n  num_sanity_val_steps: -5\n"),
         r"^trainer\.num_sanity_val_steps: expecting an integer >= 0, or -1"),
    Case("accelerator-without-backend", sub("trainer:\n", "trainer:\n  accelerator: mps\n"),
         r"^trainer\.accelerator: `MPSAccelerator` can not run"),
    Case("empty-class-name", sub("  validation_split: 0.25\n", "  validation_split: 0.25\n  class_names: ['', cat]\n"),
         r"^dataset\.class_names\[0\]: an empty class name"),
    Case("long-missing-class-name", sub("  validation_split: 0.25\n",
                                        "  validation_split: 0.25\n  class_names: [cat, " + "x" * 5000 + "]\n"),
         r"^dataset\.training_path: class folder\(s\) x{100,}…"),
    Case("model-path-is-a-fifo", lambda t, folder: (os.mkfifo(folder / "model.pt"), re.sub(
        r"  model:\n(    .*\n)+", "", t.replace("general:\n", f"general:\n  model_path: {folder / 'model.pt'}\n", 1)))[1],
         r"^general\.model_path: .*model\.pt is not a regular file \(a folder, FIFO or device\)"),
    Case("gradient-clip-negative", sub("  batch_size: 8\n", "  batch_size: 8\n  gradient_clip_val: -1\n"),
         r"^training\.gradient_clip_val: must be >= 0"),
    Case("one-class", sub("  validation_split: 0.25\n", "  validation_split: 0.25\n  class_names: [cat]\n"),
         r"^dataset\.class_names: 1 class \(cat\): a classifier needs at least 2 classes"),
    Case("validation-split-leaves-no-training", sub("validation_split: 0.25", "validation_split: 0.999"),
         r"^dataset\.validation_split: leaves the training set without images \(0 training"),
    Case("name-with-control-characters", sub("  project_name: pytest_project\n",
                                             '  project_name: "p\\e[31mRED\\r\\nFAKE: line"\n'),
         r"^general\.project_name: .* holds the control character '\\x1b': a name must be printable text"),
    # --- code: a config cannot make jsonargparse import or build a class, nor grant itself --trust-*
    Case("class-path-in-free-form-key", hydra("  job:\n    class_path: subprocess.Popen\n    init_args: {args: "
                                              "'touch pwned'}\n    dict_kwargs: {shell: true}\n"),
         r"^hydra\.job\.class_path: 'subprocess\.Popen': stmclf builds no class a config names outside lightning\."),
    Case("class-path-in-model-spec", sub("    alpha: 0.35\n", "    alpha: 0.35\n    extra: [{class_path: this.Foo}]\n"),
         r"^training\.model\.extra\.0\.class_path: 'this\.Foo': stmclf builds no class"),
    Case("override-class-path", lambda t, _: t, r"^hydra\.job\.class_path: 'subprocess\.Popen': stmclf builds no class",
         args=("--hydra.job", "{class_path: subprocess.Popen, init_args: {args: 'touch pwned'}, "
                              "dict_kwargs: {shell: true}}")),
    Case("config-grants-trust-code", lambda t, _: "trust_code: true\n" + t,
         r"^trust_code: a command-line option \(--trust-code\), not a config key"),
    Case("config-grants-trust-model-file", lambda t, _: "trust-model-file: true\n" + t,
         r"^trust-model-file: a command-line option \(--trust-model-file\), not a config key"),
    Case("unknown-key", sub("  epochs: 1\n", "  epoch: 1\n"), r"^training\.epoch: unknown key \(did you mean epochs\?\); allowed in training"),
    Case("quantization-input-type-int16", append("quantization:\n  quantizer: TFlite_converter\n  quantization_type: PTQ\n"
                                                 "  quantization_input_type: int16\n  quantization_output_type: float\n"),
         r"^quantization\.quantization_input_type: expecting int8, uint8 or float, got 'int16'$"),
    Case("wrong-type", sub("batch_size: 8", "batch_size: eight"), r"^training\.batch_size: expected int, got 'eight'"),
    Case("section-is-list", lambda t, _: t.replace("mlflow:\n  uri:", "mlflow: [1, 2]\nx_uri:", 1).replace("x_uri:", "#"),
         r"^mlflow: "),
    Case("trainer-is-list", sub("trainer:\n  enable_model_summary: false\n", "trainer: [1, 2]\n"), r"^trainer: expected a mapping of Lightning Trainer arguments"),
    Case("cpu-devices-1000", sub("trainer:\n  enable_model_summary: false\n",
                                 "trainer:\n  enable_model_summary: false\n  accelerator: cpu\n  devices: 1000\n"),
         r"^trainer\.devices: 1000 CPU processes asked, but this machine gives the run \d+ cores: use 1\.\.\d+"),
    Case("run-dir-is-a-file", run_dir_at(a_file),
         r"^hydra\.run\.dir: .*/a_file is a file, not a folder: name the folder the run should write into$"),
    Case("run-dir-is-a-device", run_dir_at(lambda _: "/dev/null"),
         r"^hydra\.run\.dir: /dev/null is a device or special file, not a folder"),
    # --- where a run writes: inside its folder only (a config from elsewhere writes nothing outside it)
    Case("saved-models-dir-absolute", sub("  global_seed: 7\n", "  global_seed: 7\n  saved_models_dir: /tmp/stmclf_out\n"),
         r"^general\.saved_models_dir: '/tmp/stmclf_out': must name a folder inside the run folder"),
    Case("logs-dir-dotdot", lambda t, _: t, r"^general\.logs_dir: '\.\./\.\./x': must name a folder inside the run",
         args=("general.logs_dir=../../x",)),
    Case("export-dir-absolute", append("quantization:\n  quantizer: TFlite_converter\n  quantization_type: PTQ\n"
                                       "  quantization_input_type: uint8\n  quantization_output_type: float\n"
                                       "  export_dir: /tmp/stmclf_out\n"),
         r"^quantization\.export_dir: '/tmp/stmclf_out': must name a folder inside the run folder"),
    Case("callback-writes-a-file", sub("  callbacks:\n", "  callbacks:\n    stmclf.training.tracking.EpochCSVLogger: "
                                                       "{path: pwned}\n"),
         r"^training\.callbacks\.stmclf\.training\.tracking\.EpochCSVLogger\.path: names a file or folder for the "
         r"callback to write: .*--trust-code"),
    Case("callback-spike-file", sub("  callbacks:\n", "  callbacks:\n    lightning.pytorch.callbacks.SpikeDetection: "
                                                    "{exclude_batches_path: pwned}\n"),
         r"^training\.callbacks\.lightning\.pytorch\.callbacks\.SpikeDetection\.exclude_batches_path: names a file"),
    Case("callback-main-module", sub("  callbacks:\n", "  callbacks:\n    torch.utils.model_dump.__main__.X: {}\n"),
         r"^training\.callbacks\.torch\.utils\.model_dump\.__main__\.X: torch\.utils\.model_dump\.__main__ runs "
         r"Python code from a module named by the config; pass --trust-code"),
    Case("class-path-main-module", sub("trainer:\n", "trainer:\n  strategy: {class_path: torch.utils.model_dump.__main__.X}\n"),
         r"^trainer\.strategy\.class_path: 'torch\.utils\.model_dump\.__main__\.X': stmclf builds no class"),
    Case("override-trainer-fifo", lambda t, folder: (os.mkfifo(folder / "trainer.fifo"), t)[1],
         r"^trainer: expected a mapping of Lightning Trainer arguments, got 'trainer\.fifo'$",
         args=("--trainer", "trainer.fifo"), isolated=True),
    Case("override-trainer-file", lambda t, folder: ((folder / "trainer.yaml").write_text("accelerator: cpu\n"), t)[1],
         r"^trainer: expected a mapping of Lightning Trainer arguments, got '.*trainer\.yaml'$",
         args=("trainer=trainer.yaml",)),
    Case("section-is-text", sub("dataset:\n", "dataset: hello\nold_dataset:\n"),
         r"^dataset: expected a mapping of keys \(name, class_names, training_path, .*\), got 'hello'$"),
    Case("section-is-number", lambda t, _: t.replace("training:\n", "training: 5\nold_training:\n", 1),
         r"^training: expected a mapping of keys \(batch_size, epochs, optimizer, .*\), got 5$"),
    Case("trainer-unknown-key", sub("trainer:\n", "trainer:\n  bogus: 1\n"),
         r"^trainer\.bogus: unknown key; allowed: the Lightning Trainer arguments, e\.g\. accelerator, devices"),
    Case("trainer-key-stmclf-sets", sub("trainer:\n", "trainer:\n  max_epochs: 3\n"),
         r"^trainer\.max_epochs: stmclf sets it from training\.epochs: give it there$"),
    Case("override-trainer-unknown-key", lambda t, _: t, r"^trainer\.bogus: unknown key; allowed: the Lightning",
         args=("--trainer.bogus", "1")),
    Case("override-trainer-key-stmclf-sets", lambda t, _: t, r"^trainer\.logger: stmclf sets it from the mlflow",
         args=("trainer.logger=false",)),
    Case("bad-operation-mode", sub("operation_mode: training", "operation_mode: trainnig"), r"^operation_mode: expected one of"),
    # --- LearningRateScheduler expressions
    Case("schedule-code", schedule("\"lambda epoch, lr: __import__('os').system('touch pwned')\""),
         r"^training\.callbacks\.LearningRateScheduler\.schedule: "),
    Case("schedule-power-tower", schedule(f"'lambda epoch, lr: lr * {TOWER}'"),
         r"^training\.callbacks\.LearningRateScheduler\.schedule: .*more than 1000 bits", isolated=True),
    Case("schedule-syntax", schedule("'lambda epoch, lr: lr *'"),
         r"^training\.callbacks\.LearningRateScheduler\.schedule: invalid syntax"),
    Case("schedule-too-long", schedule("'lambda epoch, lr: lr" + " * 1.0" * 100 + "'"),
         r"^training\.callbacks\.LearningRateScheduler\.schedule: the expression has \d+ characters; at most 500"),
    Case("schedule-division-by-zero", schedule("'lambda epoch, lr: lr / epoch'"),
         r"^training\.callbacks\.LearningRateScheduler\.schedule: evaluating the schedule fails at epoch 0: ZeroDivision"),
    Case("schedule-not-text", schedule("[1, 2]"), r"^training\.callbacks\.LearningRateScheduler\.schedule: expecting an expression"),
    # --- interpolation
    Case("env-var-unset", sub("project_name: pytest_project", "project_name: ${STMCLF_HOSTILE_UNSET_VARIABLE}"),
         r"^general\.project_name: environment variable STMCLF_HOSTILE_UNSET_VARIABLE is not set"),
    Case("interpolation-unsupported", sub("project_name: pytest_project", "project_name: ${foo:bar}"),
         r"^general\.project_name: unsupported interpolation"),
    Case("interpolation-missing-key", sub("project_name: pytest_project", "project_name: ${nope.key}"),
         r"^general\.project_name: \$\{nope\.key\} refers to a key that does not exist"),
    Case("interpolation-loop", sub("project_name: pytest_project", "project_name: x${general.project_name}"),
         r"^general\.project_name: interpolation (does not terminate|gives more than)"),
    Case("override-env-unset", lambda t, _: t, r"^dataset\.name: environment variable STMCLF_HOSTILE_UNSET_VARIABLE is not set",
         args=("--dataset.name", "x${STMCLF_HOSTILE_UNSET_VARIABLE}")),
    Case("override-unsupported-interpolation", lambda t, _: t, r"^dataset\.name: unsupported interpolation \$\{foo:bar\}",
         args=("dataset.name=${foo:bar}",)),
    Case("override-refers-to-key", lambda t, _: t,
         r"^dataset\.name: \$\{general\.project_name\}: a command-line value cannot refer to another key",
         args=("dataset.name=${general.project_name}",)),
    Case("interpolation-bomb", interpolation_bomb, r"^hydra\.k0: interpolation gives more than 65,536 characters",
         isolated=True),
]
IN_PROCESS = [c for c in CASES if not c.isolated]
ISOLATED = [c for c in CASES if c.isolated]


def _prepare(case: Case, root: Path, image_folder: Path) -> tuple[Path, list[str], str]:
    """Write the case's config into ``root/<id>/``; (folder, argv, expected regex)."""
    folder = root / case.id
    folder.mkdir(parents=True)
    base = config_text(image_folder, folder / "run", folder / "mlruns", epochs=1)
    content = case.make(base, folder)
    path = folder / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    config = case.config_arg(folder) if case.config_arg else str(path)
    expected = "^" + case.expected.replace(FILE, re.escape(config)) if FILE in case.expected \
        else case.expected
    return folder, ["fit", "--config", config, *case.args], expected


def _check(case: Case, folder: Path, before: set[str], code: int, out: str, err: str, elapsed: float,
           expected: str) -> None:
    assert "Traceback" not in out + err, err
    lines = error_of(err).splitlines()  # the command's log lines, before the error, are on stderr too
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err[-3000:]}"
    assert code == 2, (code, err)
    assert lines[0].startswith("stmclf: error: "), lines[0]
    message = lines[0][len("stmclf: error: "):]
    assert re.search(expected, message), f"{message[:500]!r} does not match {expected[:300]!r}"
    assert len(lines[0]) < 1000, "the line should be cut short"
    assert elapsed < LIMIT_S, f"{case.id} took {elapsed:.2f} s"
    assert not (folder / "run").exists() and not (folder / "mlruns").exists(), "a run was started"
    assert {p.name for p in folder.iterdir()} == before, "the failed command wrote files"
    assert not (Path.cwd() / "pwned").exists()


@pytest.fixture(scope="module")
def warm_cli():
    """Import what ``stmclf fit`` imports before its first check, so the timer measures the check."""
    from stmclf.config.parser import add_trainer_arguments, build_parser
    import stmclf.orchestration  # noqa: F401
    import stmclf.training.fit  # noqa: F401

    add_trainer_arguments(build_parser("warm-up"))


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.id for c in IN_PROCESS])
def test_hostile_config_in_process(case, tmp_path, image_folder, capsys, monkeypatch, warm_cli):
    monkeypatch.chdir(tmp_path)  # the default experiments_outputs/ would land here
    monkeypatch.delenv("STMCLF_HOSTILE_UNSET_VARIABLE", raising=False)
    run_in_process(case, tmp_path, image_folder, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == [case.id]


def run_in_process(case: Case, tmp_path: Path, image_folder: Path, capsys, timed: bool = True) -> None:
    """``case`` through ``main`` in this process, then :func:`_check` (``timed=False``: no time
    limit, for a first command whose imports may still be cold)."""
    folder, argv, expected = _prepare(case, tmp_path, image_folder)
    before = {p.name for p in folder.iterdir()}
    capsys.readouterr()
    start = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - start if timed else 0.0
    out, err = capsys.readouterr()
    _check(case, folder, before, code, out, err, elapsed, expected)


WRAPPER = """\
import sys, time
from stmclf.cli.main import main
from stmclf.config.parser import add_trainer_arguments, build_parser
import stmclf.orchestration, stmclf.training.fit
add_trainer_arguments(build_parser("warm-up"))
start = time.process_time()  # CPU seconds: the cases run side by side, a hang is CPU-bound
code = main(sys.argv[1:])
print(f"\\nSTMCLF_CASE {time.process_time() - start:.3f} {code}")
"""


@pytest.fixture(scope="module")
def isolated_runs(tmp_path_factory, image_folder):
    """Start every subprocess case at once; each test then waits for its own."""
    root = tmp_path_factory.mktemp("hostile")
    runs = {}
    for case in ISOLATED:
        folder, argv, expected = _prepare(case, root, image_folder)
        before = {p.name for p in folder.iterdir()}
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, *argv], cwd=folder, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        runs[case.id] = (proc, folder, before, expected, time.monotonic())
    yield runs
    for proc, *_ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("case", ISOLATED, ids=[c.id for c in ISOLATED])
def test_hostile_config_subprocess(case, isolated_runs):
    proc, folder, before, expected, started = isolated_runs[case.id]
    try:
        out, err = proc.communicate(timeout=max(1.0, HANG_TIMEOUT_S - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{case.id}: stmclf fit still running after {HANG_TIMEOUT_S} s (hangs)")
    marker = re.search(r"STMCLF_CASE ([\d.]+) (-?\d+)\s*$", out)
    assert marker, f"no result line; exit code {proc.returncode}, stderr:\n{err[-3000:]}"
    elapsed, code = float(marker.group(1)), int(marker.group(2))
    _check(case, folder, before, code, out, err, elapsed, expected)


def test_corpus_size():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


SECRET = "s3cr3t-T0KEN-9f41c7"


def test_environment_secrets_are_not_written(tmp_path, image_folder, monkeypatch):
    """A value from an environment variable is used by the run but written as ${NAME}: in the run's
    config.yaml, in the MLflow parameters, and in no byte of any file of the run or MLflow store."""
    from mlflow.tracking import MlflowClient

    from stmclf.config import load_config
    from stmclf.training.tracking import resolve_tracking_uri

    monkeypatch.setenv("STMCLF_TEST_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1) + textwrap.dedent("""\
        tools:
          stedgeai:
            version: ${STMCLF_TEST_SECRET}
        deployment:
          c_project_path: ${oc.env:STMCLF_TEST_SECRET}/project/${general.project_name}
        """))
    cfg = load_config(["--config", str(config)])
    assert cfg.tools.stedgeai.version == SECRET  # the run uses the resolved values
    assert cfg.deployment.c_project_path == f"{SECRET}/project/pytest_project"
    assert SECRET not in cfg.resolved_yaml and SECRET not in repr(cfg.redacted_dict())

    # an override that uses the variable is written back as ${NAME} too
    assert main(["fit", "--config", str(config), "--training.precision", "32",
                 "--deployment.hardware_setup.board", "b_${STMCLF_TEST_SECRET}"]) == 0
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert "version: ${STMCLF_TEST_SECRET}" in written
    assert "board: b_${STMCLF_TEST_SECRET}" in written
    assert "c_project_path: ${oc.env:STMCLF_TEST_SECRET}/project/pytest_project" in written  # ${a.b} resolved
    files = [p for root in (tmp_path / "run", tmp_path / "mlruns") for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files) and any(p.suffix == ".ckpt" for p in files)
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the secret is written in {leaks}"

    tracking_uri, _ = resolve_tracking_uri(str(tmp_path / "mlruns"))
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("pytest_project")
    runs = client.search_runs([experiment.experiment_id])
    (train,) = [r for r in runs if r.info.run_name == "train"]
    assert train.data.params["tools.stedgeai.version"] == "${STMCLF_TEST_SECRET}"


def test_environment_values_in_model_and_optimizer_stay_references(tmp_path, image_folder, monkeypatch):
    """Values the run derives from its config under other keys (the module's hyper-parameters: the
    model spec, the optimizer) and the lines of its log show ${NAME} too: hparams.yaml, the MLflow
    parameters, stmclf.log and the checkpoints (resolved when read: tests/test_checkpoint_secrets.py)."""
    import shutil

    from mlflow.tracking import MlflowClient

    from stmclf.training.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first.yaml"
    first.write_text(config_text(image_folder, tmp_path / "run1", tmp_path / "mlruns1", epochs=1))
    assert main(["fit", "--config", str(first), "--training.precision", "32"]) == 0
    private = tmp_path / f"w_{SECRET}"
    private.mkdir()
    shutil.copy(tmp_path / "run1" / "saved_models" / "best_model.pt", private / "w.pt")

    monkeypatch.setenv("STMCLF_TEST_SECRET", SECRET)
    model = DEFAULT_MODEL + f"    pretrained_model_path: {tmp_path}/w_${{STMCLF_TEST_SECRET}}/w.pt\n"
    text = config_text(image_folder, tmp_path / "run2", tmp_path / "mlruns", epochs=1, model=model)
    text = text.replace("      learning_rate: 0.005\n", "      learning_rate: 0.005\n      name: adam_${STMCLF_TEST_SECRET}\n")
    second = tmp_path / "second.yaml"
    second.write_text(text)
    assert main(["fit", "--config", str(second), "--training.precision", "32"]) == 0

    run = tmp_path / "run2"
    hparams = next(run.rglob("hparams.yaml")).read_text()
    assert "adam_${STMCLF_TEST_SECRET}" in hparams and "w_${STMCLF_TEST_SECRET}/w.pt" in hparams
    assert "w_${STMCLF_TEST_SECRET}/w.pt" in (run / "stmclf.log").read_text()  # "Pretrained weights : ..."
    files = [p for root in (run, tmp_path / "mlruns") for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "best_model.pt" for p in files) and any(p.suffix == ".ckpt" for p in files)
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the secret is written in {leaks}"

    tracking_uri, _ = resolve_tracking_uri(str(tmp_path / "mlruns"))
    client = MlflowClient(tracking_uri=tracking_uri)
    (train,) = [r for r in client.search_runs([client.get_experiment_by_name("pytest_project").experiment_id])
                if r.info.run_name == "train"]
    assert train.data.params["optimizer/Adam/name"] == "adam_${STMCLF_TEST_SECRET}"
    assert not [k for k, v in train.data.params.items() if SECRET in v]


DDP = "lightning.pytorch.strategies.DDPStrategy"


def _pwn_module(tmp_path: Path, monkeypatch, body: str) -> Path:
    """An importable ``stmclf_pwn_module`` (``body`` after a line that leaves a marker file when the
    module is imported), importable from the current folder; the marker's path."""
    marker = tmp_path / "imported"
    (tmp_path / "stmclf_pwn_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return marker


@pytest.mark.parametrize("override, yaml_extra, key", [
    ([], f"  strategy:\n    class_path: {DDP}\n    init_args:\n      ddp_comm_hook: stmclf_pwn_module.hook\n",
     "trainer.strategy.ddp_comm_hook"),
    (["--trainer.strategy", DDP, "--trainer.strategy.ddp_comm_hook", "stmclf_pwn_module.hook"], "",
     "trainer.strategy.ddp_comm_hook"),
    ([], "  strategy:\n    class_path: lightning.pytorch.strategies.FSDPStrategy\n    init_args:\n"
         "      activation_checkpointing_policy: [stmclf_pwn_module.Anything]\n",
     "trainer.strategy.activation_checkpointing_policy"),
    ([], f"  strategy:\n    class_path: {DDP}\n    init_args:\n      ddp_comm_hook: torch.utils.model_dump.__main__.main\n",
     "trainer.strategy.ddp_comm_hook"),
    (["--preprocessing.rescaling", "stmclf_pwn_module.Anything"], "", "preprocessing.rescaling"),
    (["--training", "stmclf_pwn_module.Anything"], "", "training"),
    (["general=stmclf_pwn_module.Anything"], "", "general"),
], ids=["callable-init-arg", "callable-override", "callable-in-list", "callable-main-module", "dataclass-as-class-path",
        "section-as-class-path", "section-as-class-path-hydra-form"])
def test_value_imports_nothing(override, yaml_extra, key, tmp_path, image_folder, capsys, monkeypatch):
    """jsonargparse imports what a value names for a Callable or a class-typed key (a strategy's
    ``ddp_comm_hook``, a section given as ``MODULE.Class``), besides ``class_path``: outside
    lightning., torch. and stmclf. (and their program modules) it is refused before anything is imported."""
    marker = _pwn_module(tmp_path, monkeypatch, "class Anything:\n    pass\ndef hook(state, bucket):\n    pass\n")
    config = tmp_path / "config.yaml"
    text = config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1)
    config.write_text(text.replace("trainer:\n", "trainer:\n" + yaml_extra, 1))
    capsys.readouterr()
    code = main(["fit", "--config", str(config), *override, "--print_config"])
    out, err = capsys.readouterr()
    assert not marker.exists(), "the module a config value names was imported"
    assert "stmclf_pwn_module" not in sys.modules and "usage:" not in out + err
    assert code == 2, err
    assert re.fullmatch(rf"stmclf: error: {re.escape(key)}: ('[\w.]+': stmclf imports nothing a config names outside "
                        r"lightning\., torch\. and stmclf\. \(importing a module runs its code\)|expected a mapping of "
                        r"keys .*)\n", err), err


@pytest.mark.parametrize("override", [
    ["hydra.job.class_path=stmclf_pwn_module.Anything"],
    ["--hydra.job.class_path", "stmclf_pwn_module.Anything"],
    ["--hydra.job.class_path=stmclf_pwn_module.Anything"],
    ["trainer.strategy.class_path=stmclf_pwn_module.Anything"],
], ids=["hydra-form", "option-form", "option-equals-form", "trainer-strategy"])
def test_class_path_override_imports_nothing(override, tmp_path, image_folder, capsys, monkeypatch):
    """``key.class_path=MODULE.Class`` on the command line (not only ``key={class_path: ...}``) is
    refused before jsonargparse imports MODULE: importing it runs its code."""
    marker = _pwn_module(tmp_path, monkeypatch, "class Anything:\n    def __init__(self, a: int = 1):\n        pass\n")
    config = tmp_path / "config.yaml"
    config.write_text(config_text(image_folder, tmp_path / "run", tmp_path / "mlruns", epochs=1))
    capsys.readouterr()
    code = main(["fit", "--config", str(config), *override, "--print_config"])
    err = capsys.readouterr().err
    assert not marker.exists(), "the module a config override names was imported"
    assert "stmclf_pwn_module" not in sys.modules
    assert code == 2, err
    assert re.fullmatch(r"stmclf: error: (hydra\.job|trainer\.strategy)\.class_path: 'stmclf_pwn_module\.Anything': "
                        r"stmclf builds no class a config names outside lightning\., torch\. and stmclf\..*\n", err), err
