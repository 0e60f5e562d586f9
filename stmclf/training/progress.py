"""Small training-loop callbacks: the progress bar and the per-epoch seeding."""
from __future__ import annotations

from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import Callback, RichProgressBar


class EpochSeed(Callback):
    """Re-seed Python, NumPy and torch at the start of every training epoch from (seed, epoch).

    Augmentation and dropout draws of epoch ``e`` then depend only on the seed and ``e``: a run
    resumed from a checkpoint continues exactly as the uninterrupted run would have."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        from stmclf.data.datamodule import derive_seed

        seed_everything(derive_seed(self.seed, trainer.current_epoch) % 2**32, workers=False, verbose=False)


class ProgressBar(RichProgressBar):
    """Rich progress bar showing only the Keras-named metrics (no logger version number)."""

    def __init__(self) -> None:
        super().__init__(leave=True)

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
