"""``operation_mode`` → the function that runs it (the reference's stm32ai_main dispatch)."""
from __future__ import annotations

from typing import Callable

from stmclf.config import RunConfig
from stmclf.config.sections import OPERATION_MODES
from stmclf.errors import ConfigError


def _training(cfg: RunConfig) -> None:
    from stmclf.training.fit import train

    train(cfg)


def _evaluation(cfg: RunConfig) -> None:
    from stmclf.evaluate.mode import evaluate

    evaluate(cfg)


def _quantization(cfg: RunConfig) -> None:
    from stmclf.export import quantization_mode

    quantization_mode(cfg)


MODES: dict[str, Callable[[RunConfig], None]] = {
    "quantization": _quantization,
    "training": _training,
    "evaluation": _evaluation,
}


def run_mode(cfg: RunConfig) -> None:
    mode = cfg.operation_mode
    if mode is None:
        raise ConfigError("operation_mode", f"missing; one of: {', '.join(OPERATION_MODES)}")
    handler = MODES.get(mode)
    if handler is None:
        raise ConfigError("operation_mode", f"{mode!r} is not available in this version of stmclf yet; "
                                            f"available: {', '.join(MODES)}")
    handler(cfg)
