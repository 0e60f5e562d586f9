"""The one list of operation modes: each ``operation_mode`` is a sequence of stages.

Stages (run by :mod:`stmclf.orchestration`, in this order within a mode):

| stage | what |
|---|---|
| ``train`` | fit a model, then evaluate the best one on the validation (and test) set |
| ``evaluate`` | accuracy of the mode's model (float model before ``quantize``; every exported file after it) |
| ``quantize`` | int8 export (``quantization.quantizer``), each file checked against the source model |
| ``benchmark`` | footprint (and latency) of the int8 model on an STM32 board |
| ``predict`` | classify a folder of images |
| ``deploy`` | build and flash the board application (not available in stmclf) |

The reference's rule groups ("which sections does this mode need") are derived from this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STAGES = ("train", "evaluate", "quantize", "benchmark", "predict", "deploy")


@dataclass(frozen=True)
class OperationMode:
    name: str
    stages: tuple[str, ...]
    description: str

    @property
    def available(self) -> bool:
        return "deploy" not in self.stages

    def has(self, stage: str) -> bool:
        return stage in self.stages


MODES: dict[str, OperationMode] = {m.name: m for m in (
    OperationMode("training", ("train",), "train a model"),
    OperationMode("evaluation", ("evaluate",), "evaluate a model on the test (else validation) set"),
    OperationMode("quantization", ("quantize", "evaluate"), "int8 model of general.model_path, then its accuracy"),
    OperationMode("prediction", ("predict",), "classify prediction.test_files_path"),
    OperationMode("benchmarking", ("benchmark",), "footprint of general.model_path on an STM32 board"),
    OperationMode("deployment", ("deploy",), "build and flash the application"),
    OperationMode("chain_tqeb", ("train", "quantize", "evaluate", "benchmark"), "train, quantize, evaluate, benchmark"),
    OperationMode("chain_tqe", ("train", "quantize", "evaluate"), "train, quantize, evaluate"),
    OperationMode("chain_eqe", ("evaluate", "quantize", "evaluate"), "evaluate, quantize, evaluate"),
    OperationMode("chain_eqeb", ("evaluate", "quantize", "evaluate", "benchmark"),
                  "evaluate, quantize, evaluate, benchmark"),
    OperationMode("chain_qb", ("quantize", "benchmark"), "quantize, benchmark"),
    OperationMode("chain_qd", ("quantize", "deploy"), "quantize, deploy"),
)}
OPERATION_MODES = tuple(MODES)
OperationModeName = Literal[OPERATION_MODES]  # type: ignore[valid-type]


def modes_with(stage: str) -> tuple[str, ...]:
    """The modes that run ``stage`` (the reference's TRAINING_GROUP, QUANTIZATION_GROUP, ...)."""
    return tuple(name for name, mode in MODES.items() if mode.has(stage))
