"""Cross-key rules of the reference's config checker (what a type alone cannot say).

``cfg`` is a :class:`stmclf.config.RunConfig`; it is not imported here (``stmclf.config``
imports this module), so the functions take it unannotated.
"""
from __future__ import annotations

from stmclf.config.modes import modes_with
from stmclf.errors import ConfigError, UserError, one_line

TRAINING_GROUP = modes_with("train")
EVALUATION_GROUP = modes_with("evaluate")
QUANTIZATION_GROUP = modes_with("quantize")
BENCHMARKING_GROUP = modes_with("benchmark")
DEPLOYMENT_GROUP = modes_with("deploy")
BUILTIN_DATASETS = ("cifar10", "cifar100", "emnist")


MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 65_536
MAX_IMAGE_SIDE = 8192
MAX_CHANNELS = 4
MAX_NUM_WORKERS = 256
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range
MAX_CLASSES = 10_000
"""Classes a dataset may have (its class folders, ``summary --num_classes``; ``dataset.class_names`` is
bounded by the YAML node limit):
a 10,000-class head, its confusion matrix (0.8 GB of int64 counts) and its figures work; 50,000 empty
class folders made a 20 GB confusion matrix."""
MEMORY_MARGIN = 4
"""A training config whose first layer alone needs more than this many times the available
memory is refused before anything is allocated."""

# (section, key, lowest, highest): integers that must lie in a sane range.
INT_RANGES = (
    ("training", "epochs", 1, MAX_EPOCHS),
    ("training", "batch_size", 1, MAX_BATCH_SIZE),
    ("training", "accumulate_grad_batches", 1, MAX_BATCH_SIZE),
    ("dataset", "num_workers", 0, MAX_NUM_WORKERS),
    ("dataset", "seed", 0, MAX_SEED),
    ("general", "global_seed", 0, MAX_SEED),
    ("general", "num_threads_tflite", 1, 1024),
    ("prediction", "seed", 0, MAX_SEED),
)


def _shown(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        return f"{float(value):.3g}" if value.bit_length() < 1024 else f"a {value.bit_length()}-bit number"
    return repr(value)


def check_int_range(key: str, value, low: int, high: int) -> None:
    """``value`` (None: not given) is an integer from ``low`` to ``high``, else a ConfigError."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expecting an integer from {low:,} to {high:,}, got {_shown(value)}")
    if value < low:
        what = "a positive integer" if low == 1 else f"an integer from {low:,} to {high:,}"
        raise ConfigError(key, f"must be {what} (got {_shown(value)})")
    if value > high:
        raise ConfigError(key, f"must be at most {high:,} (got {_shown(value)})")


def model_input_shape(cfg) -> list[int] | None:
    """``training.model.input_shape`` checked (:func:`check_input_shape`); None when the config has
    no ``training.model`` input shape."""
    model = cfg.training.model if cfg.training is not None else None
    if not isinstance(model, dict) or model.get("input_shape") in (None, ""):
        return None
    return check_input_shape("training.model.input_shape", model["input_shape"])


def check_input_shape(key: str, shape) -> list[int]:
    """``shape`` (under ``key``: a config key, or a key stored in a checkpoint) as (height, width,
    channels), each side 1..8192 and 1..4 channels, else a ConfigError under ``key``."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 \
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        # a tuple that YAML cut at its commas ({input_shape: (32, 32, 3)}) is refused as it is read:
        # stmclf.config.parser.cut_tuple_problem
        raise ConfigError(key, f"expecting (height, width, channels) as three integers, got {shape!r}"[:300])
    for value, name, high in zip(shape, ("height", "width", "channels"), (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE, MAX_CHANNELS)):
        if not 1 <= value <= high:
            raise ConfigError(key, f"the {name} must be from 1 to {high:,} (got {_shown(value)} in {tuple(shape)})"[:300])
    return list(shape)


def shape_only_model(cfg) -> bool:
    """Whether ``training.model`` holds only ``input_shape``: beside ``general.model_path``, the
    input size of a model file that does not record it (TorchScript, pickled module), not a model."""
    model = cfg.training.model if cfg.training is not None else None
    return isinstance(model, dict) and set(model) == {"input_shape"}


def check_model_file_input_shape(cfg, path, shape) -> None:
    """A shape-only ``training.model`` (:func:`shape_only_model`) beside a model file that records
    its own input size ``shape`` (Keras, ONNX, a torch file that records it) must give that size:
    the model is used at the size it was built for, so another one is refused rather than ignored."""
    declared = model_input_shape(cfg) if shape_only_model(cfg) else None
    if declared is not None and tuple(declared) != tuple(shape):
        raise ConfigError("training.model.input_shape", f"{tuple(declared)}, but {path} records the input shape "
                                                        f"{tuple(shape)}, the size its model was built for; remove "
                                                        "training.model.input_shape (it gives the size of a "
                                                        "TorchScript file or pickled module that records none)")


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def batch_memory_problem(batch: int, height: int, width: int, channels: int) -> str | None:
    """Why a batch of ``batch`` images of ``height``×``width``×``channels`` cannot fit (its input
    plus a first convolution's output, 32 float32 channels at full resolution: the least any model
    here holds, needing far more than the available memory), or None when it may."""
    needed = batch * height * width * (channels + 32) * 4
    available = available_memory()
    if needed <= MEMORY_MARGIN * available:
        return None
    return (f"a batch of {batch:,} images of {height}x{width}x{channels} needs at least {needed / 2**30:,.1f} GiB "
            f"for its input and first layer, far more than the {available / 2**30:,.1f} GiB of memory available")


def check_memory_estimate(cfg) -> None:
    """Refuse a training batch that needs far more memory than is available (:func:`check_batch_memory`)."""
    shape = model_input_shape(cfg)
    if shape is None or cfg.training.resume_training_from:
        return
    check_batch_memory("training.batch_size", cfg.training.batch_size, shape,
                       "lower training.batch_size or training.model.input_shape")


def check_batch_memory(key: str, batch: int, shape, advice: str) -> None:
    """Refuse a batch of ``batch`` images of ``shape`` that :func:`batch_memory_problem` says cannot
    fit: a ConfigError under ``key`` ending with ``advice``."""
    problem = batch_memory_problem(batch, *shape)
    if problem is not None:
        raise ConfigError(key, f"{problem}: {advice}")


def check_ranges(cfg) -> None:
    """Integers in sane ranges (epochs, batch size, workers, seeds, image size): a config such as
    ``epochs: 10**30`` is refused here, at parse time, with the key."""
    for section, key, low, high in INT_RANGES:
        holder = getattr(cfg, section, None)
        if holder is not None:
            check_int_range(f"{section}.{key}", getattr(holder, key, None), low, high)
    model_input_shape(cfg)


def check_split(key: str, value: float | None) -> None:
    if value is not None and not 0 < value < 1:
        raise ConfigError(key, f"the value should be > 0 and < 1 (got {value})")


TRAINING_KEYS = ("batch_size", "epochs", "optimizer")


def check_training_keys(cfg, purpose: str = "training") -> None:
    """The ``training`` keys a training needs (the schema lets other modes' configs leave them out)."""
    if cfg.training is None:
        raise ConfigError("training", f"missing 'training' section: {purpose} needs it")
    missing = [f"training.{key}" for key in TRAINING_KEYS if getattr(cfg.training, key) is None]
    if missing:
        raise UserError(f"missing required key {', '.join(missing)}")


def check_training(cfg) -> None:
    """Rules for any mode that trains (``stmclf fit``, ``training``, ``chain_tqe(b)``)."""
    for name in ("dataset", "preprocessing", "training"):
        if getattr(cfg, name) is None:
            raise ConfigError(name, f"missing '{name}' section: training needs dataset, preprocessing and training")
    check_training_keys(cfg)
    cfg.preprocessing.scale_offset()  # also when operation_mode names a deployment mode
    training, general, dataset = cfg.training, cfg.general, cfg.dataset
    # training.model with only input_shape beside general.model_path: the input size of a torch
    # model file that does not record it (TorchScript, pickled module), not a second model source
    shape_only = bool(general.model_path) and shape_only_model(cfg)
    sources = [k for k, v in (("training.model", None if shape_only else training.model),
                              ("general.model_path", general.model_path)) if v]
    if not sources and not training.resume_training_from:
        raise ConfigError("training.model", "expecting either training.model, training.resume_training_from "
                                            "or general.model_path")
    # A checkpoint to resume wins over the other sources (with a warning when they differ).
    if len(sources) > 1 and not training.resume_training_from:
        raise ConfigError(sources[1], f"{' and '.join(sources)} are mutually exclusive: give only one model source")
    if training.model is not None and not training.resume_training_from and not shape_only:
        for key in ("name", "input_shape"):
            if training.model.get(key) in (None, ""):
                raise ConfigError(f"training.model.{key}", "missing required key")
    if training.batch_size < 1:
        raise ConfigError("training.batch_size", f"must be a positive integer (got {training.batch_size})")
    if training.epochs < 1:
        raise ConfigError("training.epochs", f"must be a positive integer (got {training.epochs})")
    if training.dropout is not None and not 0 <= training.dropout < 1:
        raise ConfigError("training.dropout", f"must be >= 0 and < 1 (got {training.dropout})")
    if training.gradient_clip_val is not None and not training.gradient_clip_val >= 0:
        raise ConfigError("training.gradient_clip_val", f"must be >= 0 (0: no clipping), got "
                                                        f"{training.gradient_clip_val}")
    if not 0 <= training.label_smoothing <= 1:
        raise ConfigError("training.label_smoothing", f"must be from 0 to 1 (got {training.label_smoothing})")
    for name in ("mixup", "cutmix"):  # the Beta distribution's alpha
        alpha = getattr(training, name)
        if alpha is not None and not alpha > 0:
            raise ConfigError(f"training.{name}", f"the Beta distribution's alpha must be > 0 (got {alpha})")
    check_memory_estimate(cfg)
    if dataset.name not in BUILTIN_DATASETS and not dataset.training_path:
        raise ConfigError("dataset.training_path", "missing: training needs a training set directory")
    if cfg.data_augmentation and cfg.custom_data_augmentation:
        raise ConfigError("custom_data_augmentation",
                          "the data_augmentation and custom_data_augmentation sections are mutually exclusive")


def check_names(cfg) -> None:
    """Names go into logs, reports, MLflow and C headers: a control character (an escape sequence,
    a line break that forges a log line) is refused with its key."""
    general, dataset = cfg.general, cfg.dataset
    names = [("general.project_name", getattr(general, "project_name", None))]
    if dataset is not None:
        names.append(("dataset.name", dataset.name))
        names += [(f"dataset.class_names[{i}]", n) for i, n in enumerate(dataset.class_names or [])]
    for key, name in names:
        if key.startswith("dataset.class_names") and isinstance(name, str) and not name.strip():
            raise ConfigError(key, "an empty class name: each class is a folder name")
        if isinstance(name, str) and not name.isprintable():
            bad = next(c for c in name if not c.isprintable())
            raise ConfigError(key, f"{one_line(repr(name), 80)} holds the control character {ascii(bad)}: a name "
                                   "must be printable text")


RUN_SUBDIRS = (("general", "saved_models_dir"), ("general", "logs_dir"), ("quantization", "export_dir"))
"""Keys that name a folder of the run: relative to the run folder, and inside it."""


def is_run_subdir(value) -> bool:
    """``value`` names a folder inside the run folder: a relative path without ``..``."""
    from pathlib import PurePath

    return isinstance(value, str) and bool(value.strip()) and not PurePath(value).is_absolute() and \
        ".." not in PurePath(value).parts and not value.startswith("~")


def check_run_subdirs(cfg) -> None:
    """``general.saved_models_dir: /home/me/.ssh`` (or ``../..``) would write the run's checkpoints,
    logs or exported models outside its folder: one line naming the key."""
    for section, key in RUN_SUBDIRS:
        value = getattr(getattr(cfg, section, None), key, None)
        if value is not None and not is_run_subdir(value):
            raise ConfigError(f"{section}.{key}", f"{one_line(repr(value), 80)}: must name a folder inside the run "
                                                  f"folder (hydra.run.dir): a relative path without '..'")


def check_common(cfg) -> None:
    check_ranges(cfg)
    check_names(cfg)
    check_run_subdirs(cfg)
    dataset = cfg.dataset
    if dataset is not None:
        check_split("dataset.validation_split", dataset.validation_split)
        check_split("dataset.quantization_split", dataset.quantization_split)
        if dataset.class_names is not None and len(set(dataset.class_names)) != len(dataset.class_names):
            raise ConfigError("dataset.class_names", "class names must be unique")
    rescaling = cfg.preprocessing.rescaling if cfg.preprocessing is not None else None
    if rescaling is not None and rescaling.scale == 0:
        raise ConfigError("preprocessing.rescaling.scale", "must not be 0")
    if cfg.preprocessing is not None and rescaling is None and cfg.operation_mode not in modes_with("deploy"):
        cfg.preprocessing.scale_offset()  # the one-line refusal: only ST's deployment modes leave it out
    check_io_types(cfg)


IO_TYPES = ("int8", "uint8", "float", "float32")


def check_io_types(cfg) -> None:
    """``quantization.quantization_input_type`` / ``_output_type``: what ST's README lists (int8,
    uint8, float). The reference's code takes any other text for float, silently (``int16``
    gave a float input); stmclf refuses it."""
    section = getattr(cfg, "quantization", None)
    for name in ("quantization_input_type", "quantization_output_type"):
        value = getattr(section, name, None) if section is not None else None
        if value is not None and str(value).strip().lower() not in IO_TYPES:
            raise ConfigError(f"quantization.{name}", f"expecting int8, uint8 or float, got {value!r}")
