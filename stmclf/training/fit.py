"""The ``training`` operation mode: ``stmclf fit --config x.yaml``."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException

from stmclf.config import RunConfig, rules
from stmclf.data.datamodule import SPLIT_KEYS, ImageDataModule, ImageFormat
from stmclf.cpus import available_cpus
from stmclf.errors import ConfigError, Interrupted, UserError, one_line
from stmclf.config.interpolate import env_names
from stmclf.models.checkpoint_env import config_env_refs, stored_env_refs
from stmclf.models.pretrained import apply_pretrained
from stmclf.models.registry import check_model_spec
from stmclf.models.source import ModelSource
from stmclf.training.allocator import keep_freed_memory
from stmclf.training.cuda_probe import skip_absent_nvml
from stmclf.training.callbacks import build_callbacks
from stmclf.training.checkpoint_io import AtomicCheckpointIO
from stmclf.training.model_file import (BEST_MODEL_NAME, import_model_file, load_weights, read_checkpoint,
                                        write_model_file)
from stmclf.training.module import ClassifierModule, build_batch_augmentation
from stmclf.training.optimizers import gradient_clipping, parse_optimizer
from stmclf.training.precision import default_precision, trains_on_cpu
from stmclf.training.run_dir import RunDir, create_run_dir, release_runs
from stmclf.training.progress import (MID_EPOCH_KEY, EpochLine, EpochSeed, EpochStep, MidEpochCheckpoint, ProgressBar,
                                     checkpoint_interval, is_mid_epoch)
from stmclf.training.qat import qat_callbacks
from stmclf.training.tracking import EpochCSVLogger, is_global_zero, make_tensorboard_logger, plot_training_curves
from stmclf.trust import check_config_code

log = logging.getLogger("stmclf.training")
BEST_NAME = "best_augmented_model"
LAST_NAME = "last_augmented_model"


@dataclass
class TrainResult:
    run_dir: RunDir
    best_checkpoint: Path
    last_checkpoint: Path
    epochs_run: int = 0
    module: Optional[ClassifierModule] = None
    """The trained module, best weights loaded (rank 0)."""
    datamodule: Optional[ImageDataModule] = None
    splits: Any = None
    is_global_zero: bool = True
    accuracies: dict[str, float] = field(default_factory=dict)
    """Filled by the orchestration after evaluating the best model: {set: accuracy %}."""

    @property
    def best_model(self) -> Path:
        return self.run_dir.saved_models / BEST_MODEL_NAME


def ema_callback(spec) -> list[Callback]:
    """``training.ema``: a decay (``0.999``) or ``{decay, update_starting_at_step, ...}`` → Lightning's
    EMAWeightAveraging (the averaged weights are validated and saved)."""
    if spec is None or spec is False:
        return []
    from lightning.pytorch.callbacks import EMAWeightAveraging

    args = {"decay": float(spec)} if isinstance(spec, (int, float)) else dict(spec)
    if not 0.0 < float(args.get("decay", 0.999)) < 1.0:
        raise ConfigError("training.ema.decay", f"must be > 0 and < 1 (got {args.get('decay')})")
    try:
        return [EMAWeightAveraging(**args)]
    except TypeError as exc:
        raise ConfigError("training.ema", one_line(exc)) from None


def class_weights(spec, labels: Sequence[int], num_classes: int) -> Optional[list[float]]:
    """``training.class_weights``: ``balanced`` → n / (classes · count) from the training labels."""
    if spec is None:
        return None
    if spec == "balanced":
        counts = torch.bincount(torch.tensor(list(labels)), minlength=num_classes).float()
        return (len(labels) / (num_classes * counts.clamp(min=1))).tolist()
    if isinstance(spec, str) or len(spec) != num_classes or any(w < 0 for w in spec):
        raise ConfigError("training.class_weights", f"expecting 'balanced' or {num_classes} non-negative weights, "
                                                    f"got {spec!r}")
    return [float(w) for w in spec]


def _model_settings(cfg: RunConfig, class_names: list[str], labels: Sequence[int]) -> dict[str, Any]:
    training = cfg.training
    augmentation = cfg.data_augmentation
    custom = cfg.custom_data_augmentation
    return dict(
        label_smoothing=training.label_smoothing, mixup=training.mixup, cutmix=training.cutmix,
        class_weights=class_weights(training.class_weights, labels, len(class_names)),
        class_names=class_names, rescaling=cfg.preprocessing.scale_offset(),
        optimizer=training.optimizer, dropout=training.dropout, frozen_layers=training.frozen_layers,
        data_augmentation=dict(augmentation) if augmentation else None,
        custom_data_augmentation={"function_name": custom.function_name, "config": custom.config} if custom else None)


def module_from_config(cfg: RunConfig, class_names: list[str], labels: Sequence[int] = (),
                       source: Optional[ModelSource] = None, imported=None) -> ClassifierModule:
    """A new module for a fresh run: the zoo model of ``training.model``, or the model of
    ``general.model_path`` (``source``: multi-step training) with this config's training settings.
    ``imported``: the source's model file already read (:func:`import_model_file`), else it is read here."""
    training = cfg.training
    settings = _model_settings(cfg, class_names, labels)
    if source is None:
        return ClassifierModule(model_spec=dict(training.model),
                                input_shape=[int(v) for v in training.model["input_shape"]], **settings)
    from stmclf.models.model_file_entry import model_file_given, model_file_spec

    if source.is_imported:
        imported = imported if imported is not None else import_model_file(source, cfg)
        imported.check_dropout(training.dropout)  # the reference's dropout rule
        log.info("Model file : %s", imported.describe())
        spec = model_file_spec(source.path.resolve(), imported.input_shape)
        with model_file_given(source.key, imported=imported):  # the model read above, not a second import
            return ClassifierModule(model_spec=spec, input_shape=list(imported.input_shape), **settings)
    stored = read_checkpoint(source.path, source.key)
    hparams = stored["hyper_parameters"]
    if list(hparams["class_names"]) != list(class_names):
        raise ConfigError(source.key, f"the model was trained on classes {hparams['class_names']}, "
                                      f"the dataset has {class_names}")
    had_dropout = bool(hparams.get("dropout"))
    if had_dropout and not training.dropout:
        raise ConfigError("training.dropout", "the model includes a dropout layer: set training.dropout")
    if training.dropout and not had_dropout:
        raise ConfigError("training.dropout", "unable to set the dropout rate: the model does not include a "
                                              "dropout layer")
    with model_file_given(source.key, source.path):  # a run started from a model file
        module = ClassifierModule(model_spec=hparams["model_spec"], input_shape=hparams["input_shape"], **settings)
    load_weights(module, stored["state_dict"], source.path, source.key)
    module.env_refs = stored_env_refs(stored, ("hyper_parameters", "model_spec"))  # its model spec may hold some
    return module


def _input_shape(cfg: RunConfig, resume: Optional[dict], source: Optional[ModelSource], imported=None) -> list[int]:
    if resume is not None:
        return list(resume["hyper_parameters"]["input_shape"])
    if source is not None:
        if source.is_imported:
            return list((imported or import_model_file(source, cfg)).input_shape)
        return list(read_checkpoint(source.path, source.key)["hyper_parameters"]["input_shape"])
    shape = cfg.training.model.get("input_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ConfigError("training.model.input_shape", f"expecting (height, width, channels), got {shape!r}")
    return list(shape)


@contextlib.contextmanager
def lightning_handles_sigterm() -> Iterator[None]:
    """Within: SIGTERM is Lightning's alone (it stops the training at the end of the batch and
    raises SIGTERMException). Lightning also calls a SIGTERM handler installed before it (the CLI's,
    which raises at once, mid-batch): it is set aside for the fit and put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def check_augmentation_sizes(cfg: RunConfig, fmt: ImageFormat) -> None:
    """``data_augmentation`` against the model input size and batch size (a blur filter larger
    than the image, resized batches beyond the memory): refused before the data is read and the
    run folder made."""
    if not cfg.data_augmentation:
        return
    from stmclf.augment import ImageSize

    scale, offset = cfg.preprocessing.scale_offset()
    build_batch_augmentation(dict(cfg.data_augmentation), None, (offset, 255.0 * scale + offset), fmt.channels,
                             ImageSize(fmt.height, fmt.width, fmt.channels, cfg.training.batch_size))


def check_augmentation_arguments(cfg: RunConfig) -> None:
    """``data_augmentation``'s functions and arguments, from the config alone (the input size is not
    known yet: :func:`check_augmentation_sizes` checks the size bounds when it is), so that ``stmclf fit
    --print_config`` refuses what the training would: ``random_contrast: {factr: 0.2}``."""
    if not cfg.data_augmentation:
        return
    from stmclf.data.decode import CHANNELS

    scale, offset = cfg.preprocessing.scale_offset()
    build_batch_augmentation(dict(cfg.data_augmentation), None, (offset, 255.0 * scale + offset),
                             CHANNELS[cfg.preprocessing.color_mode])


def _warn_resume_overrides(cfg: RunConfig, resume: dict) -> None:
    """A checkpoint to resume wins over ``training.model`` / ``general.model_path``: one warning
    line when they say something else."""
    stored = resume["hyper_parameters"]["model_spec"]
    model = cfg.training.model
    differs = [f"{key} {value!r} (checkpoint: {stored[key]!r})" for key, value in (model or {}).items()
               if key in ("name", "alpha", "input_shape", "version", "depth") and key in stored
               and stored[key] != value]
    if differs:
        log.warning("training.model differs from the checkpoint's model (%s): resuming the checkpoint's",
                    ", ".join(differs))
    if cfg.general.model_path:
        log.warning("general.model_path (%s) is ignored: resuming %s", cfg.general.model_path,
                    cfg.training.resume_training_from)


def _check_resume_data(cfg: RunConfig, resume: dict, datamodule: ImageDataModule) -> None:
    """A resumed training trains and validates on its checkpoint's split (else validation images
    leak into training, or the other way round), and resumes inside an epoch only with the batch
    size its position is counted in. Checkpoints written before stmclf recorded them pass."""
    stored = resume.get(type(datamodule).__qualname__) or {}
    source = cfg.training.resume_training_from
    saved, now = stored.get("splits") or {}, datamodule.split_fingerprints()
    for name, what in (("train", "training"), ("valid", "validation")):
        if name not in saved or name not in now or saved[name].get("sha256") == now[name]["sha256"]:
            continue
        then = stored.get("dataset") or {}
        changed = [key for key in SPLIT_KEYS if key in then and not _same_setting(key, then[key],
                                                                                  getattr(cfg.dataset, key))]
        cause = (f"{getattr(cfg.dataset, changed[0])!r}, but the checkpoint's run had {then[changed[0]]!r}"
                 if changed else "the dataset's files changed")
        raise ConfigError(f"dataset.{changed[0]}" if changed else "training.resume_training_from",
                          f"{cause}: the {what} set is not the one {source} trained on ({saved[name]['images']} "
                          f"images then, {now[name]['images']} now). Resuming needs the same split; to train these "
                          f"weights on this data, start a new training with general.model_path: {source}")
    if is_mid_epoch(resume) and stored.get("batch_size") not in (None, datamodule.batch_size):
        epoch = int(resume[MID_EPOCH_KEY]["epoch"]) + 1
        raise ConfigError("training.batch_size", f"{datamodule.batch_size}, but {source} was written inside epoch "
                                                 f"{epoch} with batch_size {stored['batch_size']}: a position inside "
                                                 f"an epoch is counted in its batches; resume with batch_size "
                                                 f"{stored['batch_size']}")


def _same_setting(key: str, then: Any, now: Any) -> bool:
    if key.endswith("_path") and then is not None and now is not None:
        return os.path.realpath(str(then)) == os.path.realpath(str(now))
    return then == now


TRAINING_TO_TRAINER = ("precision", "gradient_clip_val", "accumulate_grad_batches")


def config_trainer_options(cfg: RunConfig) -> dict[str, Any]:
    """The Trainer options the config alone gives (``trainer:`` and the ``training`` keys that set
    one, :data:`TRAINING_TO_TRAINER`), with its refusals: a ``training`` key that conflicts with the
    same ``trainer`` key, and the values Lightning would fail on (:func:`_check_trainer_values`).
    :func:`check_training_config` (``fit --print_config`` too) and :func:`_trainer_options` start with it."""
    options = {"log_every_n_steps": 10, **{k: v for k, v in cfg.trainer.items() if v is not None}}
    # The training sampler shards itself across ranks (exact resume needs its per-epoch order);
    # every rank validates on the whole validation set.
    options["use_distributed_sampler"] = False
    if options.get("precision") is not None:
        options["precision"] = str(options["precision"])  # `precision: 32` and `precision: "32"` alike
    for key in TRAINING_TO_TRAINER:
        value = getattr(cfg.training, key)
        if value is None:
            continue
        if key == "precision":
            value = str(value)
        if key in options and options[key] != value and not (
                key == "accumulate_grad_batches" and options[key] == 1):
            raise ConfigError(f"training.{key}", f"conflicts with trainer.{key}: give one of them")
        options[key] = value
    _check_trainer_values(options)
    return options


def _trainer_options(cfg: RunConfig) -> dict[str, Any]:
    """:func:`config_trainer_options` completed for this machine (the default precision, the
    gradient clipping of the optimizer), with the refusals that need the machine (16-bit without a
    GPU, more CPU processes than cores, what Lightning itself refuses: :func:`_probe_trainer`)."""
    options = config_trainer_options(cfg)
    if options.get("precision") is None and (default := default_precision(options)) is not None:
        options["precision"] = default
        log.info("Precision: %s (the CPU default where bfloat16 is native; training.precision: 32 for fp32)",
                 default)
    if torch.cuda.is_available() is False and options.get("precision") in ("16-mixed", "16"):
        raise ConfigError("trainer.precision", "16-bit mixed precision needs a GPU; use bf16-mixed on CPU")
    _check_cpu_processes(options)
    clip = gradient_clipping(cfg.training.optimizer)
    if clip and "gradient_clip_val" not in options:
        options.update(clip)
    _probe_trainer(options)
    return options


def _probe_trainer(options: dict[str, Any]) -> None:
    """Build a throw-away Trainer from the options (~15 ms), silently: Lightning's refusals of an
    accelerator, strategy or precision this machine lacks come before the run folder is made."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_trainer(**{**options, "logger": False, "enable_checkpointing": False, "enable_model_summary": False,
                            "enable_progress_bar": False})
    finally:
        logging.disable(previous)


def _check_trainer_values(options: dict[str, Any]) -> None:
    """The ``trainer:`` numbers Lightning takes without a check and then fails on (a division by
    zero, a comparison with a string) or that leave stmclf without what it needs (validation picks
    the best model): one-line errors before the run folder is made."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    interval = options.get("val_check_interval")
    if interval is not None and (not number(interval) or not interval > 0):
        raise ConfigError("trainer.val_check_interval", f"expecting a number of batches (an integer >= 1) or a "
                                                        f"fraction of an epoch (> 0, <= 1), got {interval!r}")
    every = options.get("check_val_every_n_epoch")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ConfigError("trainer.check_val_every_n_epoch", f"expecting an integer >= 1, got {every!r}")
    for name in ("limit_train_batches", "limit_val_batches"):
        limit = options.get(name)
        if limit is not None and (not number(limit) or not limit > 0):
            raise ConfigError(f"trainer.{name}", f"expecting a number of batches (an integer >= 1) or a fraction "
                                                 f"of them (> 0, <= 1), got {limit!r}: training needs both its "
                                                 "batches and the validation that picks the best model")
    for name, least, allowed in (("accumulate_grad_batches", 1, "an integer >= 1"),
                                 ("log_every_n_steps", 0, "an integer >= 0 (0: no per-step logging)"),
                                 ("num_sanity_val_steps", -1, "an integer >= 0, or -1 (all the validation batches)")):
        value = options.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ConfigError(f"trainer.{name}", f"expecting {allowed}, got {value!r}")
    clip = options.get("gradient_clip_val")
    if clip is not None and (not number(clip) or clip < 0):
        raise ConfigError("trainer.gradient_clip_val", f"expecting a number >= 0 (0: no clipping), got {clip!r}")
    devices = options.get("devices")
    if number(devices) and (devices != int(devices) or (devices < 1 and devices != -1)):
        raise ConfigError("trainer.devices", f"expecting a number of devices >= 1, -1 (all), 'auto' or a list of "
                                             f"device indices, got {devices!r}")
    if isinstance(devices, list) and not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                             for d in devices):
        raise ConfigError("trainer.devices", f"a list of device indices (integers >= 0), got {devices!r}")


def _check_num_nodes(options: dict[str, Any]) -> None:
    """``trainer.num_nodes`` > 1 needs a launcher that tells each node who it is: a cluster
    environment Lightning detects (a SLURM ``srun`` job, ``torchrun``/torchelastic, LSF ``jsrun``,
    MPI; Lightning's own list and order) or the variables of Lightning's manual launch
    (``NODE_RANK``, and ``MASTER_ADDR`` on every node but node 0). Without them each rank waits for
    the other nodes at the rendezvous until its timeout (minutes): refused at once instead. A pod of
    a Kubeflow PyTorchJob started without ``torchrun`` has the job's variables but none of these
    (Lightning does not detect Kubeflow, and stmclf takes no ``trainer.plugins``): its refusal gives
    the ``torchrun`` command that starts it with those variables."""
    nodes = options.get("num_nodes")
    if nodes is None:
        return
    if isinstance(nodes, str) and nodes.strip().isdigit():
        nodes = int(nodes)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise ConfigError("trainer.num_nodes", f"expecting a number of machines (an integer >= 1), got {nodes!r}")
    if nodes == 1:
        return
    from lightning.fabric.plugins.environments import (LSFEnvironment, MPIEnvironment, SLURMEnvironment,
                                                       TorchElasticEnvironment)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SLURM's "srun is available but not used"
        if any(kind.detect() for kind in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)):
            return
    rank = (os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "").strip()
    if rank and (os.environ.get("MASTER_ADDR") or rank == "0"):
        return
    pod = _kubeflow_pod()
    if pod is not None:
        raise ConfigError("trainer.num_nodes", f"{nodes} machines asked in a Kubeflow PyTorchJob pod (RANK={pod['RANK']} "
                          f"of WORLD_SIZE={pod['WORLD_SIZE']}) started without torchrun, which Lightning cannot "
                          "place: start each pod with torchrun --nnodes $WORLD_SIZE --node-rank $RANK "
                          "--nproc-per-node <trainer.devices> --master-addr $MASTER_ADDR --master-port $MASTER_PORT "
                          "$(command -v stmclf) fit --config ...")
    raise ConfigError("trainer.num_nodes", f"{nodes} machines asked, but this process was not started by a "
                      "multi-node launcher, so it would wait for the other machines until the rendezvous times out: "
                      "start stmclf on every machine under srun (SLURM) or torchrun (--nnodes, --node-rank, "
                      "--rdzv-endpoint), or set NODE_RANK, MASTER_ADDR and MASTER_PORT on each; on one machine "
                      "use trainer.num_nodes: 1 (trainer.devices sets the processes)")


KUBEFLOW_POD_VARIABLES = ("KUBERNETES_PORT", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
"""What Kubeflow's training operator gives each pod of a PyTorchJob (Lightning's ``KubeflowEnvironment``)."""


def _kubeflow_pod() -> Optional[dict[str, str]]:
    """The Kubeflow PyTorchJob variables of this process, when it is such a pod (all of them set)."""
    found = {name: os.environ.get(name, "").strip() for name in KUBEFLOW_POD_VARIABLES}
    return found if all(found.values()) else None


def _check_cpu_processes(options: dict[str, Any]) -> None:
    """On CPU, ``trainer.devices: N`` starts N training processes on this machine: more than it has
    cores only competes for them (and a typo such as 1000 would fork a thousand ranks that wait on
    each other's rendezvous), so it is refused."""
    devices = options.get("devices")
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or not trains_on_cpu(options):
        return
    cores = available_cpus()
    if devices > cores:
        raise ConfigError("trainer.devices", f"{devices} CPU processes asked, but this machine gives the run "
                          f"{cores} cores: use 1..{cores} (each process trains on its own cores), or a GPU "
                          "accelerator")


def make_trainer(**kwargs: Any) -> L.Trainer:
    """``L.Trainer(**kwargs)``; Lightning's refusal of a ``trainer:`` option becomes a one-line error."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as exc:
        message = one_line(exc)
        raise ConfigError(_trainer_key(message, kwargs), message) from None


def _trainer_key(message: str, options: dict[str, Any]) -> str:
    """``trainer.<key>`` when exactly one option's text value appears in Lightning's message
    (``No supported gpu backend found!`` → ``trainer.accelerator``), else ``trainer``."""
    lowered = message.lower()
    named = [key for key, value in options.items()
             if isinstance(value, str) and len(value.strip()) >= 2 and value.strip().lower() in lowered]
    return f"trainer.{named[0]}" if len(named) == 1 else "trainer"


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps the best score of the epochs before a resume even when the
    run continues in another directory (Lightning forgets it then): the earlier best checkpoint is
    copied into the new directory, so ``best_augmented_model.ckpt`` is the best of the whole run."""

    @property
    def state_key(self) -> str:  # the key ModelCheckpoint writes, so that either reads the other's state
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath")
        if old_dir is None or self.dirpath is None or Path(old_dir).resolve() == Path(self.dirpath).resolve():
            return super().load_state_dict({**state_dict, "dirpath": self.dirpath})
        score, old_best = state_dict.get("best_model_score"), state_dict.get("best_model_path") or ""
        new_best = str(Path(self.dirpath) / Path(old_best).name) if old_best else ""
        if old_best and Path(old_best).is_file() and not Path(new_best).exists():
            import shutil

            Path(self.dirpath).mkdir(parents=True, exist_ok=True)
            shutil.copy2(old_best, new_best)
        self.best_model_score = score
        if new_best and Path(new_best).exists():
            self.best_model_path = self.kth_best_model_path = new_best
            self.best_k_models = {new_best: score} if score is not None else {}
            self.kth_value = score if score is not None else self.kth_value
        elif self.monitor is not None and score is not None:
            log.warning("The best checkpoint of the earlier epochs (%s) is gone; best score %.4f kept", old_best,
                        float(score))


def resume_checkpoint(cfg: RunConfig) -> Optional[dict]:
    """The checkpoint ``training.resume_training_from`` names (None for a fresh run)."""
    path = cfg.training.resume_training_from
    if not path:
        return None
    from stmclf.models.source import resolve_model_source

    resolve_model_source(path, "training.resume_training_from").require("resume", "resuming")
    checkpoint = read_checkpoint(path, "training.resume_training_from", cfg.training.batch_size)
    if "pytorch-lightning_version" not in checkpoint or not isinstance(checkpoint.get("epoch", 0), int):
        raise ConfigError("training.resume_training_from",
                          f"{path} holds a model's weights, not a training state: resume from the run's "
                          "last_augmented_model.ckpt or best_augmented_model.ckpt, or start a new training from "
                          "this model with general.model_path")
    return checkpoint


def check_training_config(cfg: RunConfig) -> tuple[dict[str, float], list[Callback]]:
    """The refusals of a training that need the config alone (no model file, checkpoint, dataset or
    machine): the cross-key rules, the Trainer options (:func:`config_trainer_options`: a
    ``training.precision`` that conflicts with ``trainer.precision``, ...), ``training.checkpoint_every``,
    the optimizer, ``training.model``, the code the config names (``--trust-code``) and the
    callbacks. :func:`fit_run` starts with them, and ``stmclf fit --print_config`` runs them before
    it prints. Returns the checkpoint interval and the user's callbacks (``training.callbacks``, ``ema``, ``qat``)."""
    rules.check_training(cfg)
    config_trainer_options(cfg)
    training = cfg.training
    checkpoint_every = checkpoint_interval(training.checkpoint_every)
    if not training.resume_training_from:  # a resumed run takes its model and optimizer from the checkpoint
        parse_optimizer(training.optimizer)
        if not cfg.general.model_path and training.model is not None:
            check_model_spec(training.model)
        check_config_code(cfg, model=not cfg.general.model_path)  # custom model/augmentation need --trust-code
        check_augmentation_arguments(cfg)
    callbacks = build_callbacks(training.callbacks) + ema_callback(training.ema) + \
        qat_callbacks(training.qat, cfg.quantization, training.epochs)
    return checkpoint_every, callbacks


def train(cfg: RunConfig, callbacks: Sequence[Callback] = (), *,
          open_run: Optional[Callable[[], tuple[RunDir, Any]]] = None) -> TrainResult:
    """:func:`fit_run`; a run folder it opened itself (no ``open_run``) is no longer held by this
    process afterwards (``run_dir.release_runs``: another process may resume or export it)."""
    try:
        return fit_run(cfg, callbacks, open_run=open_run)
    finally:
        if open_run is None:
            release_runs()


def fit_run(cfg: RunConfig, callbacks: Sequence[Callback] = (), *,
            open_run: Optional[Callable[[], tuple[RunDir, Any]]] = None) -> TrainResult:
    """Fit the model of the config: data → model → Lightning fit → best/last checkpoints,
    ``best_model.pt``, curves. Returns the :class:`TrainResult` with the best weights loaded
    (evaluating and reporting them is the caller's: :mod:`stmclf.orchestration`).

    ``open_run()`` → (run directory, MLflow logger or None) is called once the config, the data
    and the model are checked (default: a new run directory from ``hydra.run.dir``, no MLflow);
    ``callbacks``: extra Lightning callbacks (for scripts: profiling, benchmarks)."""
    checkpoint_every, user_callbacks = check_training_config(cfg)
    _check_num_nodes(config_trainer_options(cfg))  # the launch, before the dataset is listed
    training = cfg.training
    resume = resume_checkpoint(cfg)
    source = None
    if resume is None:
        if cfg.general.model_path:
            from stmclf.models.source import resolve_model_source

            source = resolve_model_source(cfg.general.model_path).require("train", "training")
    else:
        _warn_resume_overrides(cfg, resume)
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels crawl late in training
    keep_freed_memory()
    skip_absent_nvml()
    seed = 123 if cfg.general.global_seed is None else cfg.general.global_seed
    L.seed_everything(seed, workers=True, verbose=False)

    imported = import_model_file(source, cfg) if source is not None and source.is_imported else None  # read once
    fmt = ImageFormat.from_config(cfg.preprocessing, _input_shape(cfg, resume, source, imported))
    if resume is None:
        check_augmentation_sizes(cfg, fmt)
    datamodule = ImageDataModule(cfg.dataset, fmt, training.batch_size, cfg.dataset.num_workers, shuffle_seed=seed)
    if cfg.dataset.check_image_files:  # every file decoded first: stop with the full list of problems
        from stmclf.data.check import check_image_files

        check_image_files(cfg.dataset, cfg.preprocessing.color_mode)
    splits = datamodule.prepare_splits()
    if splits.train is None or splits.valid is None:
        raise ConfigError("dataset.training_path", "training needs a training set and a validation set")
    if len(splits.class_names) < 2:
        raise ConfigError("dataset.class_names" if cfg.dataset.class_names else "dataset.training_path",
                          f"{len(splits.class_names)} class ({', '.join(splits.class_names)}): a classifier needs "
                          "at least 2 classes (one folder of images per class)")
    for name, files in (("training", splits.train), ("validation", splits.valid)):
        if len(files) == 0:  # a validation_split near 0 or 1 on a small folder, or an empty folder
            key = "dataset.validation_split" if cfg.dataset.training_path and not cfg.dataset.validation_path \
                else f"dataset.{name}_path"
            raise ConfigError(key, f"leaves the {name} set without images ({len(splits.train)} training, "
                                   f"{len(splits.valid)} validation): training needs both")
    if resume is not None:
        from stmclf.models.model_file_entry import model_file_given

        with model_file_given("training.resume_training_from", training.resume_training_from):
            module = ClassifierModule(**resume["hyper_parameters"])
        module.env_refs = stored_env_refs(resume)
        load_weights(module, resume["state_dict"], training.resume_training_from, "training.resume_training_from")
        if module.class_names != splits.class_names:
            raise ConfigError("dataset.class_names", f"the checkpoint was trained on classes {module.class_names}, "
                                                     f"the dataset has {splits.class_names}")
        _check_resume_data(cfg, resume, datamodule)
        finished = resume.get("epoch", 0) + (0 if is_mid_epoch(resume) else 1)  # a mid-epoch checkpoint: not yet
        if finished >= training.epochs:
            raise UserError(f"training.epochs: the run in {training.resume_training_from} already finished "
                            f"{finished} epoch(s); raise training.epochs to continue it")
    else:
        module = module_from_config(cfg, splits.class_names, splits.train.labels, source, imported)
        weights_source = (f"model file {source.path}" if source is not None
                          else apply_pretrained(module.model, training.model))

    # hparams.yaml, the MLflow params, stmclf.log and the checkpoints show ${NAME} for an environment
    # variable's value, as config.yaml does: the config's variables and those of the checkpoint the
    # module was rebuilt from (a resumed run's config need not name them)
    cfg.checkpoint_env_names = frozenset(env_names(module.env_refs))
    module.env_refs = {**module.env_refs, **config_env_refs(cfg.env_references)}
    module.env_names, module.plain_texts = cfg.env_names, module.plain_texts | cfg.plain_texts()  # the safety net
    options = _trainer_options(cfg)  # its refusals before anything is written
    run, mlflow_logger = open_run() if open_run is not None else (create_run_dir(cfg), None)
    if is_global_zero():
        run.make_training_dirs()
    log.info("operation_mode: training")
    log.info("Model name : %s", module.model_name)
    log.info("Dataset : %s (%d classes: %s)", cfg.dataset.name, len(splits.class_names), ", ".join(splits.class_names))
    log.info("Training set: %d images, validation set: %d images%s", len(splits.train), len(splits.valid),
             f", test set: {len(splits.test)} images" if splits.test is not None else "")
    if resume:
        log.info("Resuming from %s: %d epoch(s) done, continuing at epoch %d of %d",
                 training.resume_training_from, finished, finished + 1, training.epochs)
    else:
        log.info("Pretrained weights : %s", weights_source or "none (training from scratch)")

    best = RunCheckpoint(dirpath=run.saved_models, filename=BEST_NAME, monitor="val_accuracy", mode="max",
                         save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    last = RunCheckpoint(dirpath=run.saved_models, filename=LAST_NAME, save_top_k=1, every_n_epochs=1,
                         auto_insert_metric_name=False, enable_version_counter=False)
    # inside an epoch (training.checkpoint_every), the same `last` file; exact resume from it
    mid_epoch = MidEpochCheckpoint(run.saved_models / f"{LAST_NAME}.ckpt", seed, **checkpoint_every)
    csv_logger = EpochCSVLogger(run.metrics_csv)
    loggers = [make_tensorboard_logger(run.root, cfg.general.logs_dir), *([mlflow_logger] if mlflow_logger else [])]
    # The Rich bar (on stderr, with the log) only in a terminal; piped or in CI, one plain line per
    # epoch (EpochLine) and no sanity-check or validation bars.
    rich_bar = bool(options.get("enable_progress_bar", True)) and sys.stderr.isatty()
    options["enable_progress_bar"] = rich_bar
    progress = [ProgressBar()] if rich_bar else []
    trainer = make_trainer(max_epochs=training.epochs,
                           callbacks=[EpochSeed(seed), EpochStep(), *user_callbacks, best, last, mid_epoch, csv_logger,
                                      EpochLine(console=not rich_bar), *progress, *callbacks],
                           logger=loggers, default_root_dir=str(run.root), deterministic=cfg.general.deterministic_ops,
                           plugins=[AtomicCheckpointIO()], **options)

    start = time.monotonic()
    try:
        with lightning_handles_sigterm():
            trainer.fit(module, datamodule=datamodule, ckpt_path=training.resume_training_from)
    except SystemExit as exc:
        # Lightning turns Ctrl+C into sys.exit(1) and SIGTERM into a SystemExit of code None
        # (exit status 0): neither says the run was cut short, nor where it resumes from.
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        checkpoint = run.saved_models / f"{LAST_NAME}.ckpt"
        raise Interrupted(signal.SIGTERM if isinstance(exc, SIGTERMException) else signal.SIGINT,
                          checkpoint if checkpoint.is_file() else None) from None
    runtime = time.monotonic() - start
    epochs_run = csv_logger.epochs_written
    result = TrainResult(run, run.saved_models / f"{BEST_NAME}.ckpt", run.saved_models / f"{LAST_NAME}.ckpt",
                         epochs_run=epochs_run, module=module, datamodule=datamodule, splits=splits,
                         is_global_zero=trainer.is_global_zero)
    if not trainer.is_global_zero:
        return result
    log.info("Training runtime : %.1f s (%d epoch%s, average %.2f s per epoch)", runtime, epochs_run,
             "" if epochs_run == 1 else "s", runtime / max(epochs_run, 1))
    plot_training_curves(run.metrics_csv, run.curves_png)
    if result.best_checkpoint.exists():
        write_model_file(result.best_checkpoint, run.saved_models / BEST_MODEL_NAME)
        state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        if training.trained_model_path:
            target = Path(training.trained_model_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_model_file(result.best_checkpoint, target)
    return result
