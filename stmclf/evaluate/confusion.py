"""Row-normalised confusion-matrix figures (each row: how one true class was predicted)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from stmclf.figures import save_figure


def normalise_rows(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(class_names) + [f"class {i}" for i in range(len(class_names), confusion.shape[0])]
    matrix = normalise_rows(confusion)
    n = len(names)
    size = min(4 + 0.45 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8 if n > 12 else 10)
    ax.set_yticks(range(n), names, fontsize=8 if n > 12 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7 if n > 12 else 9,
                            color="white" if matrix[i, j] > 0.5 else "black")
    return save_figure(fig, out)
