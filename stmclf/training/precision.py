"""The default training precision: ``bf16-mixed`` on CPUs that compute bfloat16 natively.

Measured on a 2-core AVX512-BF16 CPU (``benchmarks/train_throughput.py``): bf16 autocast trains
MobileNetV2-0.35@128 1.5–1.9× and ResNet-8@32 1.4–1.6× faster than fp32, and the reference service's
TensorFlow fp32 step is faster than eager fp32 PyTorch there, so fp32 cannot reach it. Weights,
optimizer state, checkpoints and exported models stay fp32 (autocast only lowers the compute of
convolutions and matrix products). CPUs without AVX512-BF16/AMX emulate bfloat16 slowly: they
keep fp32, as do GPUs (set ``16-mixed``/``bf16-mixed`` there yourself). An explicit
``training.precision`` or ``trainer.precision`` always wins.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["cpu_has_native_bf16", "default_precision", "trains_on_cpu"]


def cpu_has_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_precision(options: dict[str, Any]) -> Optional[str]:
    """``bf16-mixed`` when the run will train on a bf16-capable CPU, else None (Lightning's 32)."""
    return "bf16-mixed" if trains_on_cpu(options) and cpu_has_native_bf16() else None


def trains_on_cpu(options: dict[str, Any]) -> bool:
    """Whether Lightning's Trainer with these ``trainer:`` options picks the CPU accelerator."""
    accelerator = str(options.get("accelerator") or "auto")
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                    and not torch.backends.mps.is_available())
