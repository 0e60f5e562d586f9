"""Accuracy and loss of a trained classifier on labelled sets, and their table."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate_module(module, loaders: Iterable[tuple[str, Iterable]]) -> dict[str, dict[str, float]]:
    """Accuracy (%, 2 decimals) and mean loss of ``module`` on each (name, loader) pair."""
    module.eval()
    device = next(module.parameters()).device
    results = {}
    for name, loader in loaders:
        correct, total, loss_sum = 0, 0, 0.0
        for images, labels in loader:
            images = module.preprocess(images.to(device))
            labels = labels.to(device)
            logits = module(images)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += int(labels.numel())
        if total:
            results[name] = {"accuracy": round(100.0 * correct / total, 2), "loss": loss_sum / total, "count": total}
    return results


def print_accuracy_table(results: dict[str, dict[str, float]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("set")
    table.add_column("images", justify="right")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("loss", justify="right")
    for name, metrics in results.items():
        table.add_row(name.replace("_", " "), str(metrics["count"]), f"{metrics['accuracy']:.2f}", f"{metrics['loss']:.4f}")
    Console().print(table)
