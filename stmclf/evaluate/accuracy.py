"""Accuracy, loss and confusion matrix of a trained classifier on labelled sets."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F


PROBABILITY_FLOOR = 1e-7
"""Keras clips a softmax output to [1e-7, 1 − 1e-7] before its cross-entropy: one image the model
is sure it knows, wrongly, counts −log(1e-7) ≈ 16.1, not an unbounded logit gap."""


def clipped_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Summed cross-entropy of softmax outputs, clipped as Keras does (every evaluation's ``loss``)."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, PROBABILITY_FLOOR, 1.0)).sum())


@torch.no_grad()
def evaluate_module(module, loaders: Iterable[tuple[str, Iterable]]) -> dict[str, dict]:
    """Per (name, loader): accuracy (%, 2 decimals), mean cross-entropy (``loss``: of the softmax
    clipped as Keras does and without the kernel regularizers' term, which the validation loss of
    training includes, so that the float model and its exported files compare), image count and
    the confusion matrix (counts, rows = true class) of ``module`` in eval mode."""
    module.eval()
    device = next(module.parameters()).device
    classes = max(module.num_classes, 2)
    results = {}
    for name, loader in loaders:
        confusion = torch.zeros(classes, classes, dtype=torch.int64)
        loss_sum = 0.0
        for images, labels in loader:
            if labels.numel() == 0:
                continue
            logits = module(module.preprocess(images.to(device)))
            labels = labels.to(device)
            loss_sum += clipped_cross_entropy(F.softmax(logits.float(), dim=1).cpu().numpy(), labels.cpu().numpy())
            index = labels.cpu() * classes + logits.argmax(dim=1).cpu()
            confusion += torch.bincount(index, minlength=classes * classes).reshape(classes, classes)
        total = int(confusion.sum())
        if total:
            results[name] = {"accuracy": round(100.0 * int(confusion.trace()) / total, 2), "loss": loss_sum / total,
                             "count": total, "confusion": confusion.numpy()}
    return results


def accuracy_from_confusion(confusion: np.ndarray) -> float:
    return round(100.0 * float(np.trace(confusion)) / max(float(confusion.sum()), 1.0), 2)


def print_accuracy_table(results: dict[str, dict], title: str) -> None:
    from rich.table import Table

    from stmclf.console import data_console

    table = Table(title=title)
    table.add_column("set")
    table.add_column("images", justify="right")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("cross-entropy", justify="right")
    for name, metrics in results.items():
        loss = metrics.get("loss")
        table.add_row(name.replace("_", " "), str(metrics["count"]), f"{metrics['accuracy']:.2f}",
                      "" if loss is None else f"{loss:.4f}")
    data_console().print(table)
