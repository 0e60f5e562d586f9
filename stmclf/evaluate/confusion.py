"""Row-normalised confusion-matrix figures (each row: how one true class was predicted).

The figure scales with the class count: per-cell numbers up to :data:`MAX_ANNOTATED` classes,
every class named up to :data:`MAX_LABELLED`, then every k-th one (at most about
:data:`MAX_LABELLED` / 2 names per axis), and above :data:`MAX_PIXELS` classes each pixel shows
a block of classes (its largest rate, so a single hit stays visible). A 10,000-class figure
takes seconds; ``results.json`` keeps every count.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stmclf.figures import save_figure

MAX_ANNOTATED = 30
"""Classes up to which each non-empty cell shows its rate."""
MAX_LABELLED = 100
"""Classes up to which every class is named on both axes."""
MAX_PIXELS = 1000
"""Classes up to which each class is one row/column of the image."""


def normalise_rows(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)


def block_max(confusion: np.ndarray, block: int) -> np.ndarray:
    """The row-normalised matrix with each ``block``×``block`` square of classes reduced to its
    largest rate, one band of rows at a time (never the whole matrix in floats)."""
    n = confusion.shape[0]
    side = math.ceil(n / block)
    out = np.zeros((side, side))
    for band in range(side):
        rows = normalise_rows(confusion[band * block:(band + 1) * block])
        padded = np.zeros((rows.shape[0], side * block))
        padded[:, :n] = rows
        out[band] = padded.reshape(rows.shape[0], side, block).max(axis=(0, 2))
    return out


def _ticks(n: int) -> tuple[range, int]:
    step = 1 if n <= MAX_LABELLED else math.ceil(n / (MAX_LABELLED // 2))
    return range(0, n, step), step


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Any:
    """The matplotlib figure of :func:`plot_confusion_matrix` (the caller saves or closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = confusion.shape[0]
    names = list(class_names)[:n] + [f"class {i}" for i in range(len(class_names), n)]
    size = min(4 + 0.45 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    if n > MAX_PIXELS:
        block = math.ceil(n / MAX_PIXELS)
        matrix = block_max(confusion, block)
        edge = matrix.shape[0] * block - 0.5
        image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0, extent=(-0.5, edge, edge, -0.5),
                          interpolation="nearest")
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n - 0.5, -0.5)
        title = f"{title}\n({n:,} classes; each pixel: the largest rate of {block}x{block} classes)"
    else:
        matrix = normalise_rows(confusion)
        image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks, step = _ticks(n)
    fontsize = 10 if n <= 12 else 8 if n <= MAX_LABELLED else 6
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("predicted" if step == 1 else f"predicted (one class in {step} named)")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= MAX_ANNOTATED:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7 if n > 12 else 9,
                            color="white" if matrix[i, j] > 0.5 else "black")
    return fig


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], title: str, out: Path) -> Path:
    return save_figure(confusion_figure(confusion, class_names, title), out)
