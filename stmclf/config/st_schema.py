"""ST's schema in a resolved config: which keys ST's service knows (a run's ``config.yaml`` holds
only these, so it goes back to ST's service unchanged) and which are stmclf's (the ``trainer:``
section, stmclf's keys inside ST's sections: a run's ``stmclf_extras.yaml``).

:func:`split_config` makes the two parts; :func:`merge_config` puts them back together.
"""
from __future__ import annotations

from typing import Any

import yaml


def _keys(prefix: str, names: str) -> set[str]:
    return {f"{prefix}.{name}" for name in names.split()}


ST_KEYS = frozenset({
    "operation_mode", "data_augmentation", "hydra",
    *_keys("general", "project_name model_path logs_dir saved_models_dir deterministic_ops display_figures "
                      "global_seed gpu_memory_limit num_threads_tflite"),
    *_keys("dataset", "name class_names training_path validation_path validation_split test_path quantization_path "
                      "quantization_split check_image_files seed"),
    *_keys("preprocessing", "rescaling.scale rescaling.offset resizing.aspect_ratio resizing.interpolation "
                            "color_mode"),
    *_keys("custom_data_augmentation", "function_name config"),
    *_keys("training", "model batch_size epochs optimizer dropout frozen_layers callbacks resume_training_from "
                       "trained_model_path"),
    *_keys("quantization", "quantizer quantization_type quantization_input_type quantization_output_type export_dir "
                           "granularity target_opset optimize extra_options"),
    *_keys("evaluation", "gen_npy_input gen_npy_output npy_in_name npy_out_name target"),
    *_keys("prediction", "test_files_path seed target"),
    *_keys("tools", "path_to_cubeIDE"),
    *_keys("tools.stedgeai", "version optimization on_cloud path_to_stedgeai"),
    *_keys("tools.stm32ai", "version optimization on_cloud path_to_stm32ai"),
    *_keys("benchmarking", "board"),
    *_keys("deployment", "c_project_path IDE verbosity hardware_setup label_file_path board_deploy_path"),
    *_keys("mlflow", "uri"),
})
"""The key paths ST's service knows (the reference service's config checker); the whole value of each is ST's
(``training.model``, ``data_augmentation``, ``hydra`` are free mappings). Any other key is stmclf's."""

_ST_GROUPS = frozenset(".".join(key.split(".")[:n]) for key in ST_KEYS for n in range(1, key.count(".") + 1))
"""Sections and sub-sections that hold ST keys (``tools``, ``tools.stedgeai``, ``training``, ...)."""


def split_config(data: dict[str, Any], _path: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(st, extras)``: the keys of ST's schema, and the rest in the same nested layout, so that
    ``merge_config(st, extras) == data``. A section that is null stays with ST's keys."""
    st: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in data.items():
        path = ".".join((*_path, str(key)))
        if path in ST_KEYS:
            st[key] = value
        elif path in _ST_GROUPS and isinstance(value, dict):
            inner, rest = split_config(value, (*_path, str(key)))
            if inner or not rest:
                st[key] = inner
            if rest:
                extras[key] = rest
        elif path in _ST_GROUPS:  # a null section of ST's
            st[key] = value
        else:
            extras[key] = value
    return st, extras


def merge_config(base: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """``extras`` over ``base``, mappings merged key by key (the inverse of :func:`split_config`)."""
    out = dict(base)
    for key, value in extras.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def config_yaml(data: Any) -> str:
    """The YAML text stmclf writes for a config (keys in order, Unicode kept)."""
    return yaml.safe_dump(data, default_flow_style=False, allow_unicode=True, sort_keys=False)


def split_yaml(resolved: str) -> tuple[str, str]:
    """The texts of ``config.yaml`` and ``stmclf_extras.yaml`` for a resolved config's YAML
    (``("", "")`` for an empty one)."""
    data = yaml.safe_load(resolved) if resolved.strip() else None
    if not isinstance(data, dict):
        return resolved, ""
    st, extras = split_config(data)
    return config_yaml(st), config_yaml(extras)
