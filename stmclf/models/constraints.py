"""Argument checks shared by the zoo builders (one-line ConfigErrors with the YAML key path)."""
from __future__ import annotations

from typing import Optional, Sequence

from stmclf.errors import ConfigError


def check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError("training.model.alpha", f"expected a positive number, got {alpha!r}")
    return float(alpha)


def check_mobilenet_args(label: str, alpha: object, input_shape: tuple[int, int, int],
                         pretrained_weights: Optional[str], imagenet_alphas: Sequence[float],
                         min_size: int = 32) -> None:
    """Width multiplier, minimum input size and the ImageNet-weights constraints (Keras's alpha
    set, 3 channels) of the MobileNet family."""
    check_alpha(alpha)
    height, width, channels = input_shape
    if min(height, width) < min_size:
        raise ConfigError("training.model.input_shape", f"{label} needs height and width >= {min_size}, "
                                                        f"got {input_shape}")
    if pretrained_weights == "imagenet":
        if alpha not in imagenet_alphas:
            raise ConfigError("training.model.alpha", f"ImageNet weights exist for alpha in {list(imagenet_alphas)}, "
                                                      f"got {alpha}")
        if channels != 3:
            raise ConfigError("training.model.input_shape", f"ImageNet weights need 3 input channels, got {channels}")
