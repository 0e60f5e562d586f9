"""The YAML schema: one dataclass per section of an ST model-zoo config.

Field names, defaults and allowed values are the reference service's (see docs/config.md);
keys marked "stmclf" are our additions. jsonargparse turns these into the parser, so unknown
keys, wrong types and bad choices are refused with the key path.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence, Union

from stmclf.errors import UserError
from stmclf.config.modes import OPERATION_MODES, OperationModeName as OperationMode  # noqa: F401

INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                  "mitchellcubic")
Interpolation = Literal["bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
                        "gaussian", "mitchellcubic"]
Target = Literal["host", "stedgeai_host", "stedgeai_n6"]
ArgsByName = dict[str, Optional[dict[str, Any]]]
"""``{Name: {arg: value}}`` as used by optimizer, callbacks and data_augmentation."""


@dataclass
class General:
    project_name: str = "<unnamed>"
    model_path: Optional[str] = None
    logs_dir: str = "logs"
    saved_models_dir: str = "saved_models"
    deterministic_ops: bool = False
    display_figures: bool = True
    global_seed: Optional[int] = 123
    gpu_memory_limit: Optional[float] = None
    num_threads_tflite: int = 1


@dataclass
class Dataset:
    name: str = "<unnamed>"
    class_names: Optional[list[str]] = None
    training_path: Optional[str] = None
    validation_path: Optional[str] = None
    validation_split: Optional[float] = 0.2
    test_path: Optional[str] = None
    quantization_path: Optional[str] = None
    quantization_split: Optional[float] = None
    check_image_files: bool = False
    seed: Optional[int] = 123
    num_workers: Optional[int] = None
    """stmclf: data-loader worker processes (default: one per core, at most 8)."""


@dataclass
class Rescaling:
    scale: float
    offset: float


@dataclass
class Resizing:
    aspect_ratio: Literal["fit", "crop", "padding", "full_screen"] = "fit"
    interpolation: Interpolation = "bilinear"


@dataclass
class Preprocessing:
    rescaling: Optional[Rescaling] = None
    """Required wherever pixels meet a model (:meth:`scale_offset`); ST's deployment configs leave
    it out."""
    resizing: Resizing = field(default_factory=Resizing)
    color_mode: Literal["grayscale", "rgb", "rgba"] = "rgb"

    def scale_offset(self) -> tuple[float, float]:
        """``(rescaling.scale, rescaling.offset)``; refused when the config has no rescaling."""
        if self.rescaling is None:
            raise UserError(MISSING_RESCALING)
        return float(self.rescaling.scale), float(self.rescaling.offset)

    def model_rescaling(self, recorded: Sequence[float]) -> tuple[float, float]:
        """The rescaling a model records (what it was trained with: what evaluation, export and
        prediction use), with a warning when the config gives another one."""
        model = (float(recorded[0]), float(recorded[1]))
        if self.rescaling is not None and not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
                                                  for a, b in zip(self.scale_offset(), model)):
            logging.getLogger("stmclf").warning("preprocessing.rescaling %s differs from the model's %s: using the "
                                                "model's", self.scale_offset(), model)
        return model


MISSING_RESCALING = "missing required key preprocessing.rescaling.scale, preprocessing.rescaling.offset"


@dataclass
class CustomDataAugmentation:
    function_name: str
    config: Any = None


@dataclass
class Training:
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    optimizer: Union[None, str, ArgsByName] = None
    """batch_size, epochs and optimizer are required where a model is trained
    (:func:`stmclf.config.rules.check_training_keys`): as in the reference, another mode's config may
    hold a partial ``training`` section (its ``model``, its ``batch_size``)."""
    model: Optional[dict[str, Any]] = None
    dropout: Optional[float] = None
    frozen_layers: Union[None, int, list[int], str] = None
    callbacks: Optional[ArgsByName] = None
    resume_training_from: Optional[str] = None
    trained_model_path: Optional[str] = None
    # stmclf additions (docs/training.md)
    label_smoothing: float = 0.0
    class_weights: Union[None, str, list[float]] = None
    """``balanced`` (n / (classes · count)) or one weight per class."""
    ema: Union[None, float, dict[str, Any]] = None
    """Exponential moving average of the weights: a decay (0.999) or EMAWeightAveraging arguments."""
    mixup: Optional[float] = None
    """MixUp alpha (on training batches)."""
    cutmix: Optional[float] = None
    """CutMix alpha; with mixup too, each batch uses one of them at random."""
    precision: Union[None, int, str] = None
    """Lightning precision, e.g. bf16-mixed or 32 (same as trainer.precision)."""
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: Optional[int] = None
    qat: Optional[dict[str, Any]] = None
    """Quantization-aware training: ``{start_epoch: N, freeze_bn_epoch: M, ...}`` (stmclf/training/qat.py)."""
    checkpoint_every: Union[bool, dict[str, float]] = field(default_factory=lambda: {"minutes": 5})
    """The ``last`` checkpoint inside an epoch too: ``{steps: N}`` or ``{minutes: M}``; ``false``: every
    epoch only (stmclf/training/progress.py)."""


@dataclass
class Quantization:
    quantizer: str
    quantization_type: str
    quantization_input_type: str
    quantization_output_type: str
    export_dir: str = "quantized_models"
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    target_opset: int = 17
    optimize: bool = False
    extra_options: Optional[str] = None
    # stmclf addition (docs/config.md)
    tflm_check_images: int = 32
    """Evaluation images the int8 TFLite runs on TensorFlow Lite Micro after the export (stmclf/export/tflm.py);
    0 skips the check."""


@dataclass
class Evaluation:
    gen_npy_input: bool = False
    gen_npy_output: bool = False
    npy_in_name: Optional[str] = None
    npy_out_name: Optional[str] = None
    target: Target = "host"


@dataclass
class Prediction:
    test_files_path: str
    seed: Optional[int] = None
    target: Target = "host"


@dataclass
class StEdgeAiTool:
    version: Union[str, float, None] = None
    optimization: Literal["balanced", "time", "ram"] = "balanced"
    on_cloud: bool = True
    path_to_stedgeai: Optional[str] = None
    path_to_stm32ai: Optional[str] = None


@dataclass
class Tools:
    stedgeai: Optional[StEdgeAiTool] = None
    stm32ai: Optional[StEdgeAiTool] = None
    path_to_cubeIDE: Optional[str] = None


@dataclass
class Benchmarking:
    board: str


@dataclass
class Deployment:
    c_project_path: Optional[str] = None
    IDE: Optional[str] = None
    verbosity: Optional[int] = None
    hardware_setup: Optional[dict[str, Any]] = None
    label_file_path: Optional[str] = None
    board_deploy_path: Optional[str] = None


@dataclass
class Mlflow:
    uri: str = "./experiments_outputs/mlruns"


DEFAULT_RUN_DIR = "./experiments_outputs/${now:%Y_%m_%d_%H_%M_%S}"

# Top-level sections in the reference's order, with their types. ``hydra`` is Hydra's own
# free-form section: we read ``hydra.run.dir`` and keep the rest.
SECTIONS: dict[str, Any] = {
    "general": Optional[General],
    "operation_mode": Optional[OperationMode],
    "dataset": Optional[Dataset],
    "preprocessing": Optional[Preprocessing],
    "data_augmentation": Optional[ArgsByName],
    "custom_data_augmentation": Optional[CustomDataAugmentation],
    "training": Optional[Training],
    "quantization": Optional[Quantization],
    "evaluation": Optional[Evaluation],
    "prediction": Optional[Prediction],
    "tools": Optional[Tools],
    "benchmarking": Optional[Benchmarking],
    "deployment": Optional[Deployment],
    "mlflow": Optional[Mlflow],
    "hydra": Optional[dict[str, Any]],
}
