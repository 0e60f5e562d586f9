"""Orchestration: the only layer that chains stages (train → quantize/export → evaluate →
benchmark → predict → report) for every ``operation_mode`` and command, in one run folder and one
MLflow parent run. Everything below it does one stage and returns a result."""
from stmclf.orchestration.commands import (benchmark_command, deploy_header_command, export_command, fit_command,
                                           predict_command)
from stmclf.orchestration.journey import Journey
from stmclf.orchestration.modes import run_mode

__all__ = ["Journey", "benchmark_command", "deploy_header_command", "export_command", "fit_command",
           "predict_command", "run_mode"]
