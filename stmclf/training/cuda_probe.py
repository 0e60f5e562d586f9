"""Stop torch probing NVML on every CUDA availability check on a machine without an NVIDIA driver.

Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` so that checking for CUDA does not initialise
it in a process that will fork loader workers. With that setting, ``torch.cuda.is_available()``
first tries to load NVML (``libnvidia-ml``); without a driver the ``dlopen`` fails, nothing is
cached, and the check falls back to ``cudaGetDeviceCount``. torch's optimizers call it on every
``step()``: 36 µs per call here, ~0.7 % of a ResNet-8 bf16 training step on 2 cores. Where NVML
cannot be loaded the probe can never succeed, and the fallback it reaches is the same call, so
the availability answer and the fork safety are unchanged when the variable is set to ``0``.
"""
from __future__ import annotations

import os

import torch

_VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_absent_nvml() -> bool:
    """Turn the per-call NVML probe off when NVML is missing; True when it was turned off."""
    if os.environ.get(_VARIABLE) != "1":
        return False
    probe = getattr(torch.cuda, "_device_count_nvml", None)
    try:
        missing = probe is not None and probe() < 0
    except Exception:  # noqa: BLE001 - a torch without this private probe: leave the setting alone
        return False
    if missing:
        os.environ[_VARIABLE] = "0"
    return missing
