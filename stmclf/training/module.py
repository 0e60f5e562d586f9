"""The LightningModule: what one training/validation/test step does.

Batches arrive as uint8 NCHW; on the device they are converted to float, rescaled
(``scale·x + offset``, the reference's Rescaling layer), put in channels_last layout and, in
training only, augmented. Everything needed to rebuild the module (model spec, classes,
preprocessing, augmentation, optimizer) is stored as hyper-parameters in every checkpoint,
which is why a run can resume from a checkpoint alone; the values of environment variables in
them are stored as ``${NAME}`` (:mod:`stmclf.models.checkpoint_env`).
"""
from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.parsing import AttributeDict
from torchmetrics.classification import MulticlassAccuracy

from stmclf.config.interpolate import env_names, redact
from stmclf.models.regularization import kernel_regularization_terms, regularization_loss
from stmclf.training.optimizers import build_optimizer


def build_batch_augmentation(section: Optional[dict], custom: Optional[dict], pixels_range: tuple[float, float],
                             channels: int, size=None):
    """The on-device augmentation for ``data_augmentation`` or ``custom_data_augmentation`` (or None).
    ``size``: the batches' :class:`stmclf.augment.ImageSize`, for the size bounds of a new run's
    arguments (a stored checkpoint's were checked when its run started)."""
    if section:
        from stmclf.augment import build_augmentation

        return build_augmentation(section, pixels_range, channels=channels, size=size)
    if custom:
        from stmclf.augment.custom import build_custom_augmentation

        return build_custom_augmentation(custom, pixels_range)
    return None


def _batch_mixing(mixup: Optional[float], cutmix: Optional[float], num_classes: int):
    """torchvision's batch MixUp / CutMix (one of them at random per batch when both are set)."""
    from torchvision.transforms import v2

    transforms = [cls(alpha=float(alpha), num_classes=num_classes)
                  for cls, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if alpha]
    if not transforms:
        return None
    return transforms[0] if len(transforms) == 1 else v2.RandomChoice(transforms)


class ClassifierModule(L.LightningModule):
    def __init__(self, model_spec: dict[str, Any], class_names: list[str], input_shape: list[int],
                 rescaling: tuple[float, float], optimizer: Any, dropout: Optional[float] = None,
                 data_augmentation: Optional[dict[str, Any]] = None,
                 custom_data_augmentation: Optional[dict[str, Any]] = None,
                 frozen_layers: Any = None, channels_last: bool = True, label_smoothing: float = 0.0,
                 class_weights: Optional[list[float]] = None, mixup: Optional[float] = None,
                 cutmix: Optional[float] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        from stmclf.models import build_model

        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.model = build_model(dict(model_spec), num_classes=self.num_classes, dropout=dropout)
        if frozen_layers is not None:
            from stmclf.models.frozen import frozen_indices

            offset = getattr(self.model, "layer_index_offset", 0)  # Keras Sequential files: no InputLayer
            self.model.set_frozen([i + offset for i in frozen_indices(frozen_layers, self.model.num_layers - offset)])
        self.scale, self.offset = float(rescaling[0]), float(rescaling[1])
        self.augment = self._build_augmentation(data_augmentation, custom_data_augmentation)
        self.mix = _batch_mixing(mixup, cutmix, max(self.num_classes, 2))
        self.label_smoothing = float(label_smoothing or 0.0)
        #: The positions of this module's checkpoints that hold values of environment variables, with
        #: their ``${NAME}`` texts (``stmclf.models.checkpoint_env.EnvRefs``: in a fit, the config's
        #: and those of the checkpoint it was rebuilt from; a module read from a checkpoint: those it
        #: stored). The loggers (``hparams.yaml``, MLflow params) and the checkpoints show ``${NAME}`` there.
        self.env_refs: dict[tuple, tuple[str, Any]] = {}
        #: The environment variables whose values its checkpoints and loggers hold nowhere else either
        #: (``stmclf.config.interpolate.keep_env_values_out``): those of :attr:`env_refs` and, in a
        #: fit, every variable of the config (``RunConfig.env_names``) ...
        self.env_names: frozenset[str] = frozenset()
        #: ... except in these texts, written as they are: the class names and, in a fit,
        #: ``RunConfig.plain_texts``.
        self.plain_texts: frozenset[str] = frozenset(self.class_names)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        metric_classes = max(self.num_classes, 2)
        self.train_acc = MulticlassAccuracy(metric_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(metric_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(metric_classes, average="micro", validate_args=False)
        self._epoch_loss_sum, self._epoch_images = torch.zeros(()), 0
        self._regularized = kernel_regularization_terms(self.model)
        # One image (uint8 pixels, rescaled on the way in like a batch): Lightning's model summary
        # shows the layers' in/out sizes and the FLOPs per image from it (without it, "Total FLOPs: 0").
        height, width, channels = (int(v) for v in input_shape)  # Keras order
        self.example_input_array = torch.zeros(1, channels, height, width, dtype=torch.uint8)

    @property
    def hparams_initial(self) -> AttributeDict:
        """Lightning's copy of the hyper-parameters for its loggers (only they read it), with the
        values of :attr:`env_refs` shown as ``${NAME}``."""
        refs = {path[1:]: ref for path, ref in self.env_refs.items() if path[:1] == ("hyper_parameters",)}
        return AttributeDict(redact(dict(super().hparams_initial), refs, names=self.env_names | env_names(self.env_refs),
                                    where="the hyper-parameters (hparams.yaml, MLflow parameters)",
                                    plain=self.plain_texts))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from stmclf.models.checkpoint_env import store_env_references
        from stmclf.models.model_file_entry import store_source

        store_source(self.model, checkpoint)  # a model built from a model file: its copy, for a self-contained run
        # the last hook before the file is written: no value of an environment variable in any of it
        store_env_references(checkpoint, self.env_refs, self.env_names, self.plain_texts)

    @property
    def model_name(self) -> str:
        return getattr(self.model, "name", None) or str(self.hparams.model_spec.get("name"))

    def _build_augmentation(self, section, custom):
        pixels_range = (self.offset, 255.0 * self.scale + self.offset)
        return build_batch_augmentation(section, custom, pixels_range, int(self.hparams.input_shape[-1]))

    # -- data on the device ---------------------------------------------------------------
    def preprocess(self, images: torch.Tensor, memory_format: Optional[torch.memory_format] = None) -> torch.Tensor:
        """uint8 NCHW → rescaled float in the model's (or the given) memory format."""
        images = images.to(memory_format=memory_format or self.memory_format)
        return images.float().mul_(self.scale).add_(self.offset)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, torch.Tensor):  # the model summary's example_input_array
            return self.preprocess(batch)
        images, labels = batch
        if self.augment is not None and self.trainer is not None and self.trainer.training and images.shape[0]:
            # augmentation kernels run fastest on NCHW; the model's layout is applied once after
            images = self.augment(self.preprocess(images, torch.contiguous_format), epoch=self.current_epoch)
            return images.contiguous(memory_format=self.memory_format), labels
        return self.preprocess(images), labels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    # -- steps ----------------------------------------------------------------------------
    def _loss(self, batch, metric: MulticlassAccuracy, training: bool) -> Optional[tuple[torch.Tensor, int]]:
        """(loss, batch size) of one batch, the accuracy metric updated; None for an empty batch."""
        images, labels = batch
        targets = labels
        if isinstance(labels, tuple):  # MixUp/CutMix: (hard labels for the metric, soft targets for the loss)
            labels, targets = labels
        if labels.shape[0] == 0:  # every file of the batch failed to decode: skip the step
            return None
        logits = self(images)
        loss = F.cross_entropy(logits.float(), targets, weight=self.class_weights if training else None,
                               label_smoothing=self.label_smoothing if training else 0.0)
        penalty = regularization_loss(self._regularized)
        if penalty is not None:  # Keras adds its kernel regularizers to every loss it reports
            loss = loss + penalty
        metric.update(logits.detach(), labels)
        return loss, int(labels.shape[0])

    def _evaluation_step(self, batch, metric: MulticlassAccuracy, prefix: str) -> None:
        result = self._loss(batch, metric, training=False)
        if result is not None:
            loss, batch_size = result
            self.log(f"{prefix}loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size,
                     sync_dist=True)
            self.log(f"{prefix}accuracy", metric, on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=batch_size)

    def training_step(self, batch, batch_idx: int) -> Optional[torch.Tensor]:
        result = self._loss(batch, self.train_acc, training=True)
        if result is not None:
            loss, batch_size = result
            self._epoch_loss_sum += loss.detach() * batch_size
            self._epoch_images += batch_size
        last = self._trainer is not None and batch_idx + 1 == self._trainer.num_training_batches
        if last and self._epoch_images:
            # The epoch's loss and accuracy are logged once, from its last batch: Lightning's
            # per-step `log` bookkeeping costs ~5 % of a small model's step on CPU. Callbacks
            # read them in on_train_epoch_end exactly as before (loss = image-weighted mean).
            self.log("loss", self._epoch_loss_sum / self._epoch_images, on_step=False, on_epoch=True,
                     prog_bar=True, batch_size=1, sync_dist=True)
            self.log("accuracy", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        return None if result is None else result[0]

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_acc, "val_")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_acc, "test_")

    def on_train_epoch_start(self) -> None:
        self._epoch_loss_sum = torch.zeros((), device=self.device)
        self._epoch_images = 0
        # The learning rate used during this epoch (schedulers set it at epoch start).
        self.log("lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        clipping = self._trainer is not None and bool(self.trainer.gradient_clip_val)
        return build_optimizer(self.hparams.optimizer, self.model.parameters(), allow_fused=not clipping)
