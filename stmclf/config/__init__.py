"""Config: the ST model-zoo YAML schema, parsed by jsonargparse (see docs/config.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import yaml

from stmclf.config import rules
from stmclf.config.interpolate import (env_names, env_references, interpolate, redact, redact_env_names, texts_of,
                                      time_stamped_keys)
from stmclf.config.st_schema import config_yaml, split_yaml
from stmclf.config.sections import (DEFAULT_RUN_DIR, Benchmarking, CustomDataAugmentation, Dataset,
                                    Deployment, Evaluation, General, Mlflow, Prediction,
                                    Preprocessing, Quantization, Tools, Training)
from stmclf.errors import ConfigError, UserError
from stmclf.trust import set_code_trust, set_model_file_trust


@dataclass
class RunConfig:
    """A parsed, validated config: the ST sections plus Lightning's ``trainer`` options."""

    general: General = field(default_factory=General)
    operation_mode: Optional[str] = None
    dataset: Optional[Dataset] = None
    preprocessing: Optional[Preprocessing] = None
    data_augmentation: Optional[dict[str, Optional[dict[str, Any]]]] = None
    custom_data_augmentation: Optional[CustomDataAugmentation] = None
    training: Optional[Training] = None
    quantization: Optional[Quantization] = None
    evaluation: Optional[Evaluation] = None
    prediction: Optional[Prediction] = None
    tools: Optional[Tools] = None
    benchmarking: Optional[Benchmarking] = None
    deployment: Optional[Deployment] = None
    mlflow: Mlflow = field(default_factory=Mlflow)
    hydra: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    config_files: list[str] = field(default_factory=list)
    resolved_yaml: str = ""
    """The whole resolved config (what ``--print_config`` shows); a run writes it split in two:
    :meth:`written_files`."""
    trust_model_file: bool = False
    """Command line only: allow a pickled torch module as general.model_path."""
    trust_code: bool = False
    """Command line only (``--trust-code``): allow the Python code the config names (custom model,
    custom augmentation, callback class paths outside lightning./torch./stmclf.)."""
    offline: bool = False
    """Command line only: benchmark with the offline estimate (no account, no network)."""

    @property
    def run_dir(self) -> Path:
        run = self.hydra.get("run") or {}
        text = run.get("dir") or DEFAULT_RUN_DIR
        return Path(interpolate(str(text), "hydra.run.dir"))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("config_files", "resolved_yaml", "trust_model_file", "trust_code", "offline"):
                continue
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    env_references: ClassVar[dict[tuple, tuple[str, Any]]] = {}
    """Values that came from environment variables: ``{key path: (text with ${NAME}, value)}``
    (set per instance by :func:`from_namespace`)."""
    time_stamped_keys: ClassVar[frozenset[str]] = frozenset()
    """Keys whose value came from ``${now:...}`` (set per instance by :func:`from_namespace`)."""

    def redacted_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the values that came from environment variables shown as their
        ``${NAME}`` references (what MLflow parameters and written configs may show)."""
        return redact(self.to_dict(), self.env_references, names=self.env_names, plain=self.plain_texts(),
                      where="the run's config (MLflow parameters)")

    literal_texts: ClassVar[frozenset[str]] = frozenset()
    """The config's strings that came from no environment variable, as parsed (set per instance by
    :func:`from_namespace`, before any code path could change a value)."""

    def plain_texts(self) -> frozenset[str]:
        """The texts a run writes as they are, whatever the values of the variables its config used
        (``stmclf.config.interpolate.keep_env_values_out``): the config's strings that came from no
        variable, the run folder (absolute) where ``hydra.run.dir`` used none, and the current
        directory (relative paths are resolved there)."""
        texts = set(self.literal_texts)
        if ("hydra", "run", "dir") not in self.env_references:
            texts.add(str(self.run_dir.resolve()))
        texts.add(str(Path.cwd().resolve()))
        return frozenset(texts)

    checkpoint_env_names: ClassVar[frozenset[str]] = frozenset()
    """The environment variables a checkpoint the run rebuilds its model from stores as ``${NAME}``
    (``stmclf.models.checkpoint_env``; set per instance by the training that reads it)."""

    @property
    def env_names(self) -> frozenset[str]:
        """The environment variables whose values the run keeps out of what it writes: those the
        config used and those of :attr:`checkpoint_env_names`."""
        return frozenset(env_names(self.env_references)) | self.checkpoint_env_names

    def without_env_values(self, data: Any) -> Any:
        """``data`` (derived from this config under other keys: a model's hyper-parameters) with
        the values of the environment variables :attr:`env_names` shown as ``${NAME}``."""
        return redact_env_names(data, self.env_names)

    def written_files(self) -> tuple[str, str]:
        """The texts of a run's ``config.yaml`` (ST's schema only) and ``stmclf_extras.yaml``
        (``trainer`` and stmclf's keys), split from :attr:`resolved_yaml` (stmclf/config/st_schema.py)."""
        return split_yaml(self.resolved_yaml)


CONFIG_KEYS = frozenset(f.name for f in dataclasses.fields(RunConfig)) - {"config_files", "resolved_yaml",
                                                                        "trust_model_file", "trust_code",
                                                                        "offline"}
"""Top-level keys of a resolved config: the YAML sections and ``trainer`` (a run writes them to
``config.yaml`` and ``stmclf_extras.yaml``); command-line options are not among them."""


def resolved_yaml(parser, ns, *, skip_default: bool = False, skip_unset: bool = False) -> str:
    """The resolved config of a parsed namespace as YAML: the sections and ``trainer``, without
    the command-line options (``--offline``, ``--trust-*``, ``--ckpt_path``, ``--print_config``);
    values from environment variables stay ``${NAME}``."""
    config_ns = ns.clone()
    for key in list(config_ns.keys()):
        if "." not in key and key not in CONFIG_KEYS:  # command-line options (--offline, --ckpt_path, ...)
            config_ns.pop(key, None)
    resolved = parser.dump(config_ns, skip_unset=skip_unset, skip_default=skip_default, skip_validation=True)
    refs = env_references()  # environment-variable values stay ${NAME} in the written config
    if refs:
        resolved = config_yaml(redact(yaml.safe_load(resolved), refs))
    return resolved


def from_namespace(parser, ns) -> RunConfig:
    """Turn a parsed jsonargparse namespace into a validated :class:`RunConfig`."""
    resolved = resolved_yaml(parser, ns)
    refs = env_references()
    try:
        init = parser.instantiate_classes(ns)
    except (ValueError, TypeError) as exc:  # a trainer class spec (strategy, plugins) that cannot be built
        from stmclf.config.parser import one_line_error

        raise UserError(one_line_error(str(exc))) from None
    values = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in ("config_files", "resolved_yaml", "trainer", "trust_model_file", "trust_code", "offline"):
            continue
        value = init.get(f.name)
        if value is not None:
            values[f.name] = value
    trainer = ns.get("trainer")  # None for an empty `trainer:` section
    if trainer is not None and not hasattr(trainer, "as_dict"):
        raise ConfigError("trainer", f"expected a mapping of Lightning Trainer arguments, got {trainer!r}")
    values["trainer"] = trainer.as_dict() if trainer is not None else {}
    values["config_files"] = [str(p) for p in (ns.get("config") or [])]
    values["resolved_yaml"] = resolved
    values["trust_model_file"] = bool(ns.get("trust_model_file", False))
    set_model_file_trust(values["trust_model_file"])  # process-wide: also models a checkpoint rebuilds
    values["trust_code"] = bool(ns.get("trust_code", False))
    set_code_trust(values["trust_code"])  # process-wide: also checkpoints that rebuild a custom model
    values["offline"] = bool(ns.get("offline", False))
    cfg = RunConfig(**values)
    cfg.env_references = refs
    cfg.literal_texts = frozenset(texts_of(cfg.to_dict(), skip=set(refs)))
    cfg.time_stamped_keys = time_stamped_keys()
    rules.check_common(cfg)
    return cfg


def load_config(argv: Sequence[str], prog: str = "stmclf") -> RunConfig:
    """Parse ``--config FILE`` plus overrides, as the CLI does (for scripts and tests)."""
    from stmclf.config.parser import build_parser, parse_args

    parser = build_parser(prog)
    return from_namespace(parser, parse_args(parser, argv))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)
