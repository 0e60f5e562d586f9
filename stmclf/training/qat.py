"""Quantization-aware training (``training.qat``): fine-tune with int8 fake quantization.

Opt-in, in the training section::

    training:
      qat:
        start_epoch: 8          # first epoch (0-based) trained with fake quantization (default 0)
        freeze_bn_epoch: 10     # from this epoch, BatchNorm layers use their moving statistics and
                                # stop updating them (default: never)
        averaging_constant: 0.01  # activation ranges: moving average of each batch's min/max
        activations: true       # fake-quantize activations (false: weights only)
        per_channel: true       # default: quantization.granularity != per_tensor

From ``start_epoch`` on, every forward pass of the model sees what the exported int8 models
compute (the scheme of ``stmclf.export``: onnxruntime QDQ and the TFLite converter):

- **weights**: int8 symmetric, range [−127, 127], one scale per output channel (per-tensor when
  ``per_channel: false``), scale = max|w|/127 from the current weights, zero point 0. The export
  folds each BatchNormalization into the convolution before it, so the quantized tensor is the
  folded weight ``w·γ/√(σ²+ε)``. The fake quantizer therefore quantizes ``w·s`` and divides by
  ``s`` again (``s`` = the following BatchNorm's ``γ/√(moving variance+ε)``, per output channel,
  without gradient). Per channel this equals quantizing ``w`` itself (symmetric per-channel
  quantization commutes with a per-channel factor); per tensor it is what the folded export does.
- **activations**: int8 asymmetric per tensor, range [−128, 127], on every tensor the int8
  graph materialises: outputs of Add, ReLU-type activations, convolutions/Dense/BatchNorm layers
  not followed by a layer the converters fuse into them (Conv → BatchNorm → ReLU is one int8
  tensor, after the ReLU), and the logits. Layers that only move values (Flatten, Reshape,
  Dropout, padding, max and average pooling) keep the quantization of their input and get no
  quantizer. The model input is not quantized (raw pixels are exact int8 values). Ranges are a
  moving average of each training batch's min/max (``averaging_constant``), initialised on the
  first QAT batch and fixed in evaluation; the scale and zero point follow onnxruntime's
  formula (the range always includes 0).
- Gradients pass straight through the rounding inside the range and are zero outside it (the
  straight-through estimator of ``torch.fake_quantize_per_*_affine``).

Implementation: a Lightning :class:`Callback` (:class:`QatCallback`), added by ``stmclf fit``
when ``training.qat`` is set. It changes no module and no parameter name: weight fake quantization
is an instance-level override of each Conv's ``_conv_forward`` / each Dense's ``forward``, and
activation fake quantization is a forward hook on the layer; both are removed at the end of
``fit``. So checkpoints (``*.ckpt``, ``best_model.pt``) hold exactly the float model's
``state_dict`` and load with :func:`~stmclf.training.model_file.load_classifier`; the export
then quantizes these float weights with its usual calibration (the model has learned weights and
ranges that survive int8). The activation ranges are saved in the checkpoint's callback state,
so a resumed run continues with them.

At ``start_epoch`` the best-model selection restarts (ModelCheckpoint's best score, EarlyStopping
and ReduceLROnPlateau counters are reset): ``best_augmented_model.ckpt`` / ``best_model.pt`` is
then the best *fake-quantized* epoch, never a float epoch from before QAT. Validation accuracies
from ``start_epoch`` on are those of the fake-quantized model.

Models that are not stmclf layer graphs (timm models, imported torch modules) get weight fake
quantization on every Conv2d/Linear and activation fake quantization on ReLU-type modules only.
In a distributed run each rank keeps its own activation ranges (they differ by batch noise only).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from stmclf.errors import ConfigError
from stmclf.models.graph import NestedModel

log = logging.getLogger("stmclf.training")

KEY = "training.qat"
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
ACT_QMIN, ACT_QMAX = -128, 127
CONV_TYPES = ("Conv2D", "DepthwiseConv2D")
FUSED_ACTIVATIONS = ("relu", "relu6")
PASS_THROUGH = ("Flatten", "Reshape", "Dropout", "SpatialDropout2D", "ZeroPadding2D", "MaxPooling2D",
                "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "InputLayer")


@dataclass(frozen=True)
class QatSettings:
    start_epoch: int = 0
    freeze_bn_epoch: Optional[int] = None
    averaging_constant: float = 0.01
    activations: bool = True
    per_channel: bool = True

    @classmethod
    def parse(cls, spec: Any, quantization: Any = None) -> Optional["QatSettings"]:
        """``training.qat`` (a mapping; ``{}`` or ``true`` for the defaults) → settings, or None."""
        if spec is None or spec is False:
            return None
        if spec is True:
            spec = {}
        if not isinstance(spec, dict):
            raise ConfigError(KEY, f"expecting a mapping such as {{start_epoch: 5}}, got {spec!r}")
        known = ("start_epoch", "freeze_bn_epoch", "averaging_constant", "activations", "per_channel")
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise ConfigError(f"{KEY}.{unknown[0]}", f"unknown key; known keys: {', '.join(known)}")
        granularity = getattr(quantization, "granularity", None)
        values = {"start_epoch": 0, "per_channel": granularity != "per_tensor", **spec}
        for key in ("start_epoch", "freeze_bn_epoch"):
            value = values.get(key)
            if value is None and key == "freeze_bn_epoch":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{KEY}.{key}", f"expecting an epoch number >= 0, got {value!r}")
        constant = values.get("averaging_constant", 0.01)
        if isinstance(constant, bool) or not isinstance(constant, (int, float)) or not 0 < constant <= 1:
            raise ConfigError(f"{KEY}.averaging_constant", f"expecting a number > 0 and <= 1, got {constant!r}")
        for key in ("activations", "per_channel"):
            if not isinstance(values.get(key, True), bool):
                raise ConfigError(f"{KEY}.{key}", f"expecting true or false, got {values[key]!r}")
        values["averaging_constant"] = float(constant)
        return cls(**values)


def qat_callbacks(spec: Any, quantization: Any = None, epochs: Optional[int] = None) -> list[Callback]:
    """``[QatCallback]`` for ``training.qat`` (empty when QAT is off)."""
    settings = QatSettings.parse(spec, quantization)
    if settings is None:
        return []
    if epochs is not None and settings.start_epoch >= epochs:
        log.warning("training.qat.start_epoch %d >= training.epochs %d: quantization-aware training never starts",
                    settings.start_epoch, epochs)
    return [QatCallback(settings)]


# -- fake quantizers -----------------------------------------------------------------------------

def fake_quantize_weight(weight: Tensor, per_channel: bool = True, channel_scale: Optional[Tensor] = None) -> Tensor:
    """int8 symmetric fake quantization of ``weight`` (axis 0 = output channels); with
    ``channel_scale`` s: of the folded weight ``w·s``, divided by ``s`` again."""
    w = weight.float()
    shape = (-1,) + (1,) * (w.dim() - 1)
    if channel_scale is not None:
        s = channel_scale.detach().float()
        s = torch.where(s.abs() < 1e-12, torch.ones_like(s), s).view(shape)
        w = w * s
    if per_channel:
        absmax = w.detach().abs().flatten(1).amax(dim=1)
        scale = (absmax / WEIGHT_QMAX).clamp_min(1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        q = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, WEIGHT_QMIN, WEIGHT_QMAX)
    else:
        scale = (w.detach().abs().amax() / WEIGHT_QMAX).clamp_min(1e-12).reshape(())
        q = torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros((), dtype=torch.int32, device=w.device),
                                                  WEIGHT_QMIN, WEIGHT_QMAX)
    if channel_scale is not None:
        q = q / s
    return q.to(weight.dtype)


def activation_qparams(min_val: Tensor, max_val: Tensor) -> tuple[Tensor, Tensor]:
    """onnxruntime's asymmetric int8 (scale, zero point) for the range [min, max] (0 included)."""
    rmin = torch.clamp(min_val, max=0.0)
    rmax = torch.clamp(max_val, min=0.0)
    scale = ((rmax - rmin) / float(ACT_QMAX - ACT_QMIN)).clamp_min(1e-12)
    zero = torch.clamp(torch.round(ACT_QMIN - rmin / scale), ACT_QMIN, ACT_QMAX).to(torch.int32)
    return scale.reshape(()), zero.reshape(())


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric int8 fake quantization with a moving-average min/max observer."""

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.averaging_constant = averaging_constant
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        low, high = torch.aminmax(x.detach().float())
        if not bool(self.initialized):
            self.min_val.copy_(low)
            self.max_val.copy_(high)
            self.initialized.fill_(True)
        else:
            c = self.averaging_constant
            self.min_val.add_(c * (low - self.min_val))
            self.max_val.add_(c * (high - self.max_val))

    def forward(self, x: Tensor, observe: bool = True) -> Tensor:
        if observe:
            self.observe(x)
        if not bool(self.initialized):
            return x  # evaluation before any QAT batch: no range yet
        scale, zero = activation_qparams(self.min_val, self.max_val)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, ACT_QMIN, ACT_QMAX).to(x.dtype)


# -- where to put them ---------------------------------------------------------------------------

@dataclass
class QuantPlan:
    """Weight layers (with the BatchNorm that folds into each) and activation points of a model."""

    weights: list[tuple[str, nn.Module, Optional[_BatchNorm]]]
    activations: list[tuple[str, nn.Module]]
    batch_norms: list[_BatchNorm]


def _fused_activation(module: nn.Module, keras_type: str) -> bool:
    if keras_type == "ReLU":
        return True
    return keras_type == "Activation" and getattr(module, "activation", None) in FUSED_ACTIVATIONS


def _is_output_identity(module: nn.Module) -> bool:
    """The reference's softmax output layer, an identity in stmclf models (they output logits)."""
    return type(module).__name__ == "SoftmaxLogits"


def plan_model(model: nn.Module) -> QuantPlan:
    """Where the int8 export quantizes: weights and materialised activation tensors."""
    batch_norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    nodes = getattr(model, "nodes", None)
    if nodes is None or not isinstance(getattr(model, "layers", None), nn.ModuleDict):
        return _plan_generic(model, batch_norms)
    layers = {node.name: model.layer_module(i) for i, node in enumerate(nodes)}  # by Keras name
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        for src in node.inputs:
            consumers.setdefault(src, []).append(node.name)
    types = {node.name: node.keras_type for node in nodes}
    weights, activations = [], []
    for node in nodes[1:]:
        module = layers[node.name]
        if module is None:
            continue
        if isinstance(module, NestedModel):  # a Keras Applications backbone: its own layers, named outer/inner
            inner = plan_model(module.graph)
            weights += [(f"{node.name}/{name}", sub, bn) for name, sub, bn in inner.weights]
            activations += [(f"{node.name}/{name}", sub) for name, sub in inner.activations]
            continue
        users = consumers.get(node.name, [])
        single = layers[users[0]] if len(users) == 1 else None
        single_type = types.get(users[0]) if len(users) == 1 else None
        has_own_activation = getattr(module, "activation", None) is not None and node.keras_type != "Activation"
        # weights
        for name, sub in module.named_modules():
            if isinstance(sub, (nn.Conv2d, nn.Linear)):
                bn = None
                if (sub is module and single_type == "BatchNormalization" and not has_own_activation
                        and isinstance(single, _BatchNorm)):
                    bn = single
                weights.append((f"{node.name}.{name}" if name else node.name, sub, bn))
        # activations
        if node.keras_type in PASS_THROUGH or _is_output_identity(module):
            continue
        if single is not None and not has_own_activation:
            if node.keras_type in CONV_TYPES + ("Dense", "SeparableConv2D") and single_type == "BatchNormalization":
                continue  # folded into the convolution
            if node.keras_type in CONV_TYPES + ("Dense", "SeparableConv2D", "BatchNormalization", "Add") \
                    and _fused_activation(single, single_type):
                continue  # the activation is fused: one int8 tensor after it
        activations.append((node.name, module))
    return QuantPlan(weights, activations, batch_norms)


def _plan_generic(model: nn.Module, batch_norms: list[_BatchNorm]) -> QuantPlan:
    weights = [(name, m, None) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    activations = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.GELU))]
    return QuantPlan(weights, activations, batch_norms)


def _bn_factor(bn: _BatchNorm) -> Tensor:
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    return gamma.detach() / std


class FakeQuantizer:
    """Attaches weight and activation fake quantization to a model and removes it again."""

    def __init__(self, model: nn.Module, settings: QatSettings,
                 observers: Optional[dict[str, ActivationFakeQuant]] = None) -> None:
        self.model = model
        self.settings = settings
        self.plan = plan_model(model)
        self.observers = observers if observers is not None else {}
        self._hooks: list = []
        self._overridden: list[tuple[nn.Module, str]] = []

    @property
    def attached(self) -> bool:
        return bool(self._hooks or self._overridden)

    def attach(self) -> None:
        if self.attached:
            return
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        for _, module, bn in self.plan.weights:
            self._override_weight(module, bn)
        if self.settings.activations:
            root = self.model
            for name, module in self.plan.activations:
                observer = self.observers.get(name)
                if observer is None:
                    observer = self.observers[name] = ActivationFakeQuant(self.settings.averaging_constant)
                observer.to(device)

                def hook(_module, _inputs, output, observer=observer):
                    return observer(output, observe=root.training)
                self._hooks.append(module.register_forward_hook(hook))

    def _override_weight(self, module: nn.Module, bn: Optional[_BatchNorm]) -> None:
        per_channel = self.settings.per_channel
        factor: Callable[[], Optional[Tensor]] = (lambda: _bn_factor(bn)) if bn is not None else (lambda: None)
        if isinstance(module, nn.Conv2d):
            conv_forward = type(module)._conv_forward

            def quantized_conv_forward(x, weight, bias, module=module):
                return conv_forward(module, x, fake_quantize_weight(weight, per_channel, factor()), bias)
            module._conv_forward = quantized_conv_forward
            self._overridden.append((module, "_conv_forward"))
        else:  # nn.Linear (stmclf Dense applies its own activation after the product)
            def quantized_linear_forward(x, module=module):
                y = F.linear(x, fake_quantize_weight(module.weight, per_channel, factor()), module.bias)
                activation = getattr(module, "activation", None)
                return activation(y) if callable(activation) else y
            module.forward = quantized_linear_forward
            self._overridden.append((module, "forward"))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for module, name in self._overridden:
            module.__dict__.pop(name, None)
        self._overridden.clear()

    def state(self) -> dict[str, dict[str, float]]:
        return {name: {"min": float(o.min_val), "max": float(o.max_val), "initialized": bool(o.initialized)}
                for name, o in self.observers.items()}


def observers_from_state(state: dict[str, dict[str, float]], averaging_constant: float) -> dict[str, ActivationFakeQuant]:
    observers = {}
    for name, values in (state or {}).items():
        observer = ActivationFakeQuant(averaging_constant)
        observer.min_val.fill_(float(values["min"]))
        observer.max_val.fill_(float(values["max"]))
        observer.initialized.fill_(bool(values.get("initialized", True)))
        observers[name] = observer
    return observers


# -- the callback --------------------------------------------------------------------------------

class QatCallback(Callback):
    """Turns fake quantization on at ``start_epoch`` and BatchNorm statistics off at
    ``freeze_bn_epoch``; removes everything at the end of fit (see the module docstring)."""

    def __init__(self, settings: QatSettings) -> None:
        self.settings = settings
        self.quantizer: Optional[FakeQuantizer] = None
        self._observers: dict[str, ActivationFakeQuant] = {}
        self._bn_frozen = False
        self._started = False

    @property
    def state_key(self) -> str:
        return "QatCallback"

    # checkpoint state: the activation ranges (the model's state_dict is untouched)
    def state_dict(self) -> dict[str, Any]:
        observers = self.quantizer.state() if self.quantizer is not None else \
            {n: {"min": float(o.min_val), "max": float(o.max_val), "initialized": bool(o.initialized)}
             for n, o in self._observers.items()}
        return {"observers": observers, "started": self._started}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._observers = observers_from_state(state_dict.get("observers") or {}, self.settings.averaging_constant)
        self._started = bool(state_dict.get("started", False))
        if self.quantizer is not None:
            self.quantizer.observers = self._observers

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if epoch >= self.settings.start_epoch and (self.quantizer is None or not self.quantizer.attached):
            if self.quantizer is None:
                self.quantizer = FakeQuantizer(pl_module.model, self.settings, self._observers)
            self.quantizer.attach()
            plan = self.quantizer.plan
            log.info("QAT: int8 fake quantization from epoch %d (%d weight tensors %s, %d activation tensors)",
                     epoch + 1, len(plan.weights), "per channel" if self.settings.per_channel else "per tensor",
                     len(plan.activations) if self.settings.activations else 0)
            if not self._started:
                self._started = True
                _restart_selection(trainer)
        freeze = self.settings.freeze_bn_epoch
        if freeze is not None and epoch >= freeze and not self._bn_frozen:
            self._bn_frozen = True
            log.info("QAT: BatchNorm statistics frozen from epoch %d", epoch + 1)
        self._freeze_batch_norms(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._freeze_batch_norms(pl_module)

    def _freeze_batch_norms(self, pl_module) -> None:
        if self._bn_frozen:
            for module in pl_module.model.modules():
                if isinstance(module, _BatchNorm) and module.training:
                    module.eval()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._remove(pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._remove(pl_module)

    def _remove(self, pl_module) -> None:
        if self.quantizer is not None:
            self._observers = self.quantizer.observers
            self.quantizer.detach()
        if self._bn_frozen:
            pl_module.model.train(pl_module.model.training)  # frozen BN layers follow the model again


def _restart_selection(trainer) -> None:
    """The float epochs before QAT must not stay "best": reset the checkpoint and plateau trackers."""
    from stmclf.training.callbacks import ReduceLROnPlateau

    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
            callback.best_k_models = {}
            callback.best_model_score = None
            callback.best_model_path = ""
            callback.kth_best_model_path = ""
            callback.kth_value = torch.tensor(math.inf if callback.mode == "min" else -math.inf)
        elif isinstance(callback, EarlyStopping):
            callback.wait_count = 0
            callback.best_score = torch.tensor(math.inf if callback.mode == "min" else -math.inf)
        elif isinstance(callback, ReduceLROnPlateau):
            callback.best = math.inf if callback.mode == "min" else -math.inf
            callback.wait = 0
    log.info("QAT: best-model selection restarts (the best checkpoint is now the best fake-quantized epoch)")
