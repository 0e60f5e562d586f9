"""The command-line/config parser: jsonargparse over the section dataclasses.

``stmclf fit --config x.yaml --training.epochs 3 --print_config`` is parsed here. Config files
go through :func:`load_yaml` (YAML → ``${...}`` interpolation → safe value conversion), so an
ST config runs unchanged. Lightning's own Trainer options sit in a ``trainer:`` section.
Parse errors are rewritten into one line that names the key path.
"""
from __future__ import annotations

import argparse
import contextvars
import dataclasses
import logging
import os
import re
import stat
import sys
import typing
from typing import Any, Callable, Collection, Optional, Sequence

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_loader, set_parsing_settings

from stmclf.config import sections
from stmclf.config.interpolate import (begin_document, check_key_references, clear_env_references, end_document,
                                      interpolate_tree, lookup_root, record_env_references, record_override)
from stmclf.config.values import convert_values
from stmclf.errors import ConfigError, UserError, closest, did_you_mean, is_text, one_line, printable_path
from stmclf.trust import TRUSTED_PACKAGES, UNTRUSTED_IMPORTS

PARSER_MODE = "stmclf_yaml"

# Trainer arguments that stmclf owns (set from the ST sections or by the run itself).
TRAINER_SKIP = {"logger", "callbacks", "max_epochs", "min_epochs", "enable_checkpointing",
                "deterministic", "default_root_dir", "plugins", "profiler", "enable_autolog_hparams",
                "model_registry", "fast_dev_run"}


# ---------------------------------------------------------------------------------------------
# YAML: bounded (size, nesting, nodes, aliases), duplicate keys refused

MAX_CONFIG_BYTES = 1 << 20
"""A config file is at most 1 MiB (ST configs are a few KiB)."""
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 5_000
"""Nodes of the document with every alias expanded (a 1,000-class ``class_names`` is 1,000)."""
MAX_YAML_ALIASES = 100
MAX_INT_CHARS = 1000
"""Digits a YAML integer may have (Python refuses to convert more than 4,300; configs need ~10)."""


class YamlLimitError(yaml.MarkedYAMLError):
    """A document beyond the bounds (or with a duplicate key): the message names the line."""


class MisreadYamlError(YamlLimitError):
    """Valid YAML that does not say what was meant (:func:`cut_tuple_problem`, :func:`glued_colon_problem`):
    not "invalid YAML"."""


def _tuple_piece(node: Any) -> str:
    """``"open"`` for a plain scalar that starts a tuple without closing it (``(32``), ``"close"`` for
    one that ends a tuple it did not open (``3)``), else ``""``: the pieces YAML leaves of a tuple
    in a flow mapping or list (a quoted scalar is what the user wrote). Brackets cannot be pieces: inside
    ``{...}`` or ``[...]`` a plain scalar holds no ``[``/``]`` (``[`` opens a list, a stray ``]`` is invalid YAML)."""
    if not isinstance(node, yaml.ScalarNode) or node.style not in (None, "") or not isinstance(node.value, str):
        return ""
    text = node.value.strip()
    if text.startswith("(") and ")" not in text:
        return "open"
    if text.endswith(")") and "(" not in text:
        return "close"
    return ""


_CUT_HOW = "at a comma inside a {{...}} mapping; write it in quotes, {name}: '{text}', or the mapping one key per line"
_CUT_IN_LIST_HOW = "at a comma inside a [...] list; write it in quotes, '{text}', or as a list, [{inner}]"


def cut_tuple_problem(path: Sequence[Any], node: Any) -> Optional[tuple[str, Any]]:
    """(message, mark) when the flow mapping (``{...}``) or flow list (``[...]``) ``node`` at ``path``
    holds the pieces of a tuple that YAML cut at its commas, else None:
    ``{input_shape: (32, 32, 3)}`` is ``input_shape: '(32'``, ``'32': null``, ``'3)': null``, and
    ``image_sizes: [(24, 24), (32, 32)]`` is ``['(24', '24)', '(32', '32)']``, which the checks
    downstream would report as a bad value or an unknown key ``3)``, never saying why. Every flow
    collection of a config (files and override values) passes here, whatever its key."""
    if isinstance(node, yaml.SequenceNode):
        return _cut_in_list(path, node.value)
    pairs = node.value
    for index, (key_node, value_node) in enumerate(pairs):
        if _tuple_piece(value_node) == "open":
            name, pieces = str(key_node.value).strip(), [value_node.value.strip()]
            for later_key, later_value in pairs[index + 1:]:
                if later_value.tag != "tag:yaml.org,2002:null" or not isinstance(later_key, yaml.ScalarNode):
                    break
                pieces.append(str(later_key.value).strip())
                if _tuple_piece(later_key) == "close":
                    break
            text = one_line(", ".join(pieces), 80)
            where = ".".join(str(p) for p in (*path, name))
            how = _CUT_HOW.format(name=one_line(name, 40), text=text)
            return f"{where}: YAML cut the tuple {text} {how}", value_node.start_mark
        if _tuple_piece(key_node):  # no key before it: '{factor: 0.2, 0.5)}', '{(0.2, 0.5): x}'
            piece = one_line(str(key_node.value).strip(), 40)
            where = ".".join(str(p) for p in (*path, piece))
            how = _CUT_HOW.format(name="KEY", text="(A, B)")
            return f"{where}: a piece of a tuple that YAML cut {how}", key_node.start_mark
    return None


_GLUED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):([^\s/].*)", re.S)
"""``steps:1``: a name, a colon and no space, then a value (not ``//``: a URL may be a key)."""


def glued_colon_problem(path: Sequence[Any], node: Any) -> Optional[tuple[str, Any]]:
    """(message, mark) when the flow mapping ``node`` at ``path`` holds a key with no value whose
    text is a name glued to a value by a colon without a space: YAML reads ``{steps:1}`` as the key
    ``'steps:1'`` with no value, which the checks downstream would report as a missing value
    (``expected bool or float, got 'None'``) or an unknown key, never saying why."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.style not in (None, "") or \
                value_node.tag != "tag:yaml.org,2002:null" or (value_node.value or "").strip():
            continue
        glued = _GLUED.fullmatch(str(key_node.value).strip())
        if glued:
            name, value = glued.group(1), one_line(glued.group(2), 40)
            where = ".".join(str(p) for p in (*path, name))
            return (f"{where}: YAML read '{one_line(key_node.value, 60)}' as one key without a value (no space after "
                    f"its colon); write {name}: {value}"), key_node.start_mark
    return None


def _cut_in_list(path: Sequence[Any], items: Sequence[Any]) -> Optional[tuple[str, Any]]:
    """:func:`cut_tuple_problem` for the items of a flow list, named by the list's key."""
    where = ".".join(str(p) for p in path) or "the list"
    for index, item in enumerate(items):
        piece = _tuple_piece(item)
        if piece == "open":
            pieces = [item.value.strip()]
            for later in items[index + 1:]:
                if not isinstance(later, yaml.ScalarNode) or _tuple_piece(later) == "open":
                    break
                pieces.append(str(later.value).strip())
                if _tuple_piece(later) == "close":
                    break
            text = one_line(", ".join(pieces), 80)
            inner = text[1:-1] if text.endswith(")") else text[1:]
            return f"{where}: YAML cut the tuple {text} {_CUT_IN_LIST_HOW.format(text=text, inner=inner)}", item.start_mark
        if piece == "close":  # no opening piece before it: '[24, 24), (32, 32)]'
            text = one_line(str(item.value).strip(), 40)
            return (f"{where}: '{text}' is a piece of a tuple that YAML cut "
                    f"{_CUT_IN_LIST_HOW.format(text='(A, B)', inner='A, B')}"), item.start_mark
    return None


class _BoundedComposer(yaml.composer.Composer):
    """PyYAML's composer (libyaml events), counting what the document expands to: nesting
    depth, nodes with aliases expanded (billion-laughs bombs), aliases; duplicate mapping keys
    are refused with the key path and both lines (PyYAML would keep the last one silently)."""

    def __init__(self, path: Sequence[str] = ()) -> None:
        super().__init__()
        self._depth = 0
        self._nodes = 0
        self._aliases = 0
        self._sizes: dict[int, int] = {}
        self._path: list[Any] = list(path)  # the keys above the document (an override's key)

    def _limit(self, problem: str, mark: Any) -> YamlLimitError:
        return YamlLimitError(problem=problem, problem_mark=mark)

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_YAML_NODES:
            raise self._limit(f"the document has more than {MAX_YAML_NODES:,} values (aliases expanded); "
                              f"a config needs far fewer", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if self._depth >= MAX_YAML_DEPTH:
            raise self._limit(f"nesting deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise self._limit(f"YAML anchors/aliases are limited to {MAX_YAML_ALIASES} per file", event.start_mark)
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise self._limit(f"alias *{event.anchor} refers to a value that contains it (a cycle)",
                                      event.start_mark)
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        before = self._nodes
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1, event.start_mark)
        self._sizes[id(node)] = self._nodes - before
        return node

    def compose_scalar_node(self, anchor: Any) -> Any:
        node = super().compose_scalar_node(anchor)
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_CHARS:
            where = ".".join(str(p) for p in self._path)
            raise self._limit(f"{where}: a {len(node.value):,}-digit integer is too large for any config value",
                              node.start_mark)
        return node

    def _open_collection(self, node_class: type, anchor: Any) -> Any:
        """The empty sequence/mapping node of the next start event (PyYAML's own opening steps)."""
        start = self.get_event()
        tag = start.tag if start.tag not in (None, "!") else self.resolve(node_class, None, start.implicit)
        node = node_class(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        return node

    def compose_sequence_node(self, anchor: Any) -> Any:
        node = self._open_collection(yaml.SequenceNode, anchor)
        index = 0
        while not self.check_event(yaml.SequenceEndEvent):
            self._path.append(index)
            node.value.append(self.compose_node(node, index))
            self._path.pop()
            index += 1
        node.end_mark = self.get_event().end_mark
        problem = cut_tuple_problem(self._path, node) if node.flow_style else None
        if problem is not None:
            raise MisreadYamlError(problem=problem[0], problem_mark=problem[1])
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = self._open_collection(yaml.MappingNode, anchor)
        seen: dict[tuple[str, str], int] = {}  # (tag, text) of each scalar key → its line
        while not self.check_event(yaml.MappingEndEvent):
            key_node = self.compose_node(node, None)
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if name is not None and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                first = seen.get((key_node.tag, name))
                if first is not None:
                    where = ".".join(str(p) for p in (*self._path, name))
                    raise YamlLimitError(problem=f"duplicate key {where} (lines {first} and {line}): "
                                                 f"each key may appear once in a mapping",
                                         problem_mark=key_node.start_mark)
                seen[(key_node.tag, name)] = line
            self._path.append(name if name is not None else "?")
            value_node = self.compose_node(node, key_node)
            self._path.pop()
            node.value.append((key_node, value_node))
        node.end_mark = self.get_event().end_mark
        problem = (cut_tuple_problem(self._path, node) or glued_colon_problem(self._path, node)) \
            if node.flow_style else None
        if problem is not None:
            raise MisreadYamlError(problem=problem[0], problem_mark=problem[1])
        return node


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class BoundedLoader(_BoundedComposer, _BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML loader: libyaml's parser (fast) with :class:`_BoundedComposer`."""

    def __init__(self, stream: str, path: Sequence[str] = ()) -> None:
        _BaseLoader.__init__(self, stream)
        _BoundedComposer.__init__(self, path)


def _yaml_error(exc: yaml.YAMLError, source: str) -> UserError:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(exc, "problem", None) or exc
    if isinstance(exc, MisreadYamlError):  # valid YAML, not what was meant
        return UserError(f"{source} (line {mark.line + 1}): {one_line(problem, 250)}")
    return UserError(f"{source}: invalid YAML{where}: {one_line(problem, 200)}")


_CONFIG_FILE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("stmclf_config_file", default=None)
_INLINE_CONFIG: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("stmclf_inline_config", default=None)


def _source_name(path: Optional[str]) -> str:
    return _CONFIG_FILE.get() or (f"--config {path}" if path else "--config")


def _parse_yaml(text: str, source: str, key: str = "") -> Any:
    """``text`` loaded with :class:`BoundedLoader` (no interpolation, no value conversion); a
    problem is one line naming ``source`` (and ``key``, the config key an override's value is for)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"{source}: more than {MAX_CONFIG_BYTES // 1024} KiB of config text; a config is a few KiB")
    try:
        loader = BoundedLoader(text, key.split(".") if key else ())
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except RecursionError:  # not expected with the depth bound; a guard all the same
        raise UserError(f"{source}: invalid YAML: nesting too deep") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise UserError(f"{source}: invalid value in the YAML: {one_line(exc, 200)}") from None


def load_yaml(text: str, path: Optional[str] = None, *, key: str = "") -> Any:
    """jsonargparse loader: YAML, then ``${...}`` interpolation, then safe value conversion.

    jsonargparse calls it for a whole config (``path`` given: the file name, or ``""`` for a
    config string) and for single values of ``Any``-typed keys (``path`` None). A single value
    that is a plain one-line string stays that string (``'lambda epoch, lr: lr * 0.95'`` is a
    schedule, not a ``{'lambda epoch, lr': ...}`` mapping); flow collections (``[..]``, ``{..}``)
    and multi-line text are still loaded. The YAML is bounded: see :class:`BoundedLoader`.
    ``key``: the config key an override's value is for (named in interpolation errors).
    """
    document = path is not None or text == _INLINE_CONFIG.get()
    if not document and "\n" not in text and not text.lstrip().startswith(("{", "[")):
        # A one-line string value: already loaded and converted with its file (jsonargparse's own
        # YAML round trips end with a newline). 'lambda epoch, lr: lr * 0.95' stays a schedule
        # instead of becoming a {'lambda epoch, lr': ...} mapping; quoted 'yes' stays text.
        return text
    source = _source_name(path) if document else (f"--{key}" if key else "value")
    data = _parse_yaml(text, source, "" if document else key)
    if document and not isinstance(data, dict):
        if path is None:  # jsonargparse asking whether a --config value is a config string or a file name
            return data
        kind = {type(None): "nothing (an empty file)", list: "a list", str: "text"}.get(type(data), type(data).__name__)
        raise UserError(f"{source}: expecting a YAML mapping of sections (general:, dataset:, training:, ...) at the "
                        f"top level, found {kind}")
    if document:
        for name in data:
            if not isinstance(name, str):
                raise UserError(f"{source}: top-level key {one_line(repr(name), 60)} is not a section name "
                                f"(general, dataset, training, ...)")
    refs: dict[tuple, str] = {}
    if document:  # a ${section.key} may name a key of this file or of an earlier --config file
        begin_document(source)
        try:
            data = interpolate_tree(data, lookup_root(data), env_refs=refs)
        finally:
            end_document(data)
    elif isinstance(data, (dict, list, str)):
        data = interpolate_tree(data, key=key)
    data = convert_values(data)
    if document:
        check_class_specs(data)
        check_section_shapes(data)
    if refs:
        record_env_references({p: (kept, _at(data, p)) for p, kept in refs.items()})
    return data


def check_class_specs(data: Any, key: str = "") -> None:
    """Refuse jsonargparse's ``{class_path: ..., init_args: ...}`` for a class outside lightning.,
    torch. and stmclf., anywhere in config data: jsonargparse imports the module it names (code
    runs) to check it. The code a config may name needs ``--trust-code`` and its own keys
    (``training.callbacks``, ``training.model.custom_model``)."""
    from stmclf.trust import is_trusted_class_path

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, dict):
            target = node.get("class_path")
            if target is not None and not (isinstance(target, str) and is_trusted_class_path(target)):
                raise ConfigError(".".join(str(p) for p in (*([key] if key else []), *path, "class_path")),
                                  f"{one_line(repr(target), 80)}: stmclf builds no class a config names "
                                  "outside lightning., torch. and stmclf. (a callback of your own: "
                                  "training.callbacks with --trust-code)")
            for name, value in node.items():
                walk(value, (*path, name))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*path, index))

    walk(data, ())


COMMAND_LINE_ONLY = {"trust_code": "--trust-code", "trust_model_file": "--trust-model-file", "offline": "--offline",
                     "ckpt_path": "--ckpt_path", "config": "--config", "print_config": "--print_config"}
"""Options of the command line that a config file may not set (the grants above all)."""


def check_section_shapes(data: dict) -> None:
    """Sections that hold keys must be mappings, and ``trainer:`` may only hold the Lightning
    Trainer arguments stmclf passes on: one-line errors naming the section or the key and what is
    allowed (jsonargparse's own messages name another section or no key)."""
    for name in data:
        option = COMMAND_LINE_ONLY.get(str(name).replace("-", "_"))
        if option is not None:  # a config from elsewhere must not grant itself the right to run code
            raise ConfigError(str(name), f"a command-line option ({option}), not a config key: give it on the "
                                         "command line")
    for name, value in data.items():
        kind = _unwrap(sections.SECTIONS.get(name)) if name != "trainer" else dict
        if value is None or isinstance(value, dict) or not (dataclasses.is_dataclass(kind) or _is_mapping_type(kind)):
            continue
        keys = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else []
        allowed = f"keys ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})" if keys else \
            "Lightning Trainer arguments" if name == "trainer" else "keys"
        raise ConfigError(name, f"expected a mapping of {allowed}, got {one_line(repr(value), 60)}")
    for name in data:
        if name not in sections.SECTIONS and name != "trainer":  # generall: {...} named generall.project_name
            raise UserError(unknown_section(str(name)))
    for key in (data.get("trainer") or {}):
        if (problem := trainer_key_problem(str(key))) is not None:
            raise ConfigError(f"trainer.{key}", problem)
    training = data.get("training")
    for key, value in (("data_augmentation", data.get("data_augmentation")),
                       ("training.optimizer", training.get("optimizer") if isinstance(training, dict) else None),
                       ("training.callbacks", training.get("callbacks") if isinstance(training, dict) else None)):
        check_args_by_name(key, value)


ARGS_BY_NAME = {"data_augmentation": ("augmentation", "{factor: 0.2}"),
                "training.optimizer": ("optimizer", "{learning_rate: 0.001}"),
                "training.callbacks": ("callback", "{monitor: val_loss, patience: 5}")}
"""The keys that hold ``{Name: {argument: value}}`` mappings: what each names, an example of arguments."""


def check_args_by_name(key: str, value: Any) -> None:
    """``training.optimizer: {Adam: [0.001]}``: one line naming the entry and what it may hold
    (jsonargparse's message was 'Does not validate against any of the Union subtypes')."""
    if key not in ARGS_BY_NAME or not isinstance(value, dict):
        return
    what, example = ARGS_BY_NAME[key]
    for name, args in value.items():
        if args is not None and not isinstance(args, dict):
            raise ConfigError(f"{key}.{name}", f"the {what}'s arguments must be a mapping of argument names to "
                                               f"values, e.g. {name}: {example}, or nothing (null) for the "
                                               f"defaults; got {one_line(repr(args), 60)}")


def _is_mapping_type(kind: Any) -> bool:
    return kind is dict or typing.get_origin(kind) is dict


TRAINER_SET_BY = {"max_epochs": "training.epochs", "min_epochs": "training.epochs", "callbacks": "training.callbacks",
                  "logger": "the mlflow section (TensorBoard is always on)",
                  "deterministic": "general.deterministic_ops", "default_root_dir": "hydra.run.dir"}
"""The Trainer arguments stmclf sets itself (``TRAINER_SKIP``), and the key that sets each."""


def trainer_key_problem(key: str) -> Optional[str]:
    """Why ``trainer.<key>`` is refused, or None for an argument of Lightning's Trainer that
    stmclf passes on."""
    import inspect

    import lightning

    if key in TRAINER_SET_BY:
        return f"stmclf sets it from {TRAINER_SET_BY[key]}: give it there"
    if key in TRAINER_SKIP:
        return "stmclf does not pass it on to Lightning (it runs checkpoints, profiling and plugins itself)"
    if key not in inspect.signature(lightning.Trainer.__init__).parameters or key == "self":
        return ("unknown key; allowed: the Lightning Trainer arguments, e.g. accelerator, devices, strategy, "
                "num_nodes, precision, max_time (all of them: --help-trainer)")
    return None


def _at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


set_loader(PARSER_MODE, load_yaml, exceptions=(UserError,))


def _config_file_meant(name: str) -> str:
    """`` (did you mean DIR/x.yaml?)`` for the YAML file beside ``name`` closest to it, else ``""``."""
    import itertools

    folder = os.path.dirname(name) or "."
    try:
        entries = [e.name for e in itertools.islice(os.scandir(folder), 1000) if e.name.endswith((".yaml", ".yml"))]
    except OSError:
        return ""
    match = closest(os.path.basename(name), entries)
    return f" (did you mean {printable_path(os.path.join(os.path.dirname(name), match))}?)" if match else ""


class ConfigFileAction(ActionConfigFile):
    """``--config FILE``: a regular file of at most 1 MiB of UTF-8 text, else a one-line error
    naming the file (then jsonargparse's own config-file handling; errors name the file)."""

    def __call__(self, parser, cfg, values, option_string=None):
        name = str(values)
        is_file = os.path.lexists(name)
        if is_file:
            check_config_file(name)
        elif ":" not in name and "\n" not in name:  # a path (inline YAML holds a colon): the file meant
            raise UserError(f"--config {printable_path(name)}: no such file{_config_file_meant(name)}")
        tokens = (_CONFIG_FILE.set(name if is_file else None), _INLINE_CONFIG.set(None if is_file else name))
        try:
            super().__call__(parser, cfg, values, option_string)
        finally:
            _CONFIG_FILE.reset(tokens[0])
            _INLINE_CONFIG.reset(tokens[1])


def check_config_file(name: str) -> None:
    """Refuse, naming the file, what is not a small UTF-8 text file (a directory, a device or FIFO,
    more than 1 MiB, binary or non-UTF-8 bytes) before anything reads it whole."""
    try:
        info = os.stat(name)
    except OSError as exc:
        raise UserError(f"{name}: cannot read the file ({one_line(exc.strerror or exc)})") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{name}: not a regular file (expecting a YAML config file)")
    if info.st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{name}: {info.st_size / 2**20:.1f} MiB is too large for a config file "
                        f"(at most {MAX_CONFIG_BYTES // 2**20} MiB)")
    try:
        with open(name, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UserError(f"{name}: cannot read the file ({one_line(exc.strerror or exc)})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{name}: more than {MAX_CONFIG_BYTES // 2**20} MiB, too large for a config file")
    if b"\0" in data:
        raise UserError(f"{name}: a binary file (NUL bytes), expecting a YAML config file")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                        f"save the config as UTF-8") from None


def build_parser(prog: str, description: str = "") -> ArgumentParser:
    """The parser for commands that take a run config (fit, run, ...), without the ``trainer``
    section yet: :func:`parse_args` adds it (:func:`add_trainer_arguments`) before it parses, so that
    building the parser, ``--help`` and a misspelled option do not import Lightning (seconds)."""
    # A value of a free-form key (Any: hydra.job, a model spec, ...) that looks like
    # {class_path: ..., init_args: ...} stays data: jsonargparse would otherwise import and call it.
    # Nor does a value make it import a module (code runs): a class path, a Callable or a type named by a
    # value (trainer.strategy.init_args.ddp_comm_hook: pwn.hook) is imported only under lightning., torch.
    # and stmclf. (jsonargparse's import path policy; check_class_specs gives the one-line error first).
    set_parsing_settings(instantiate_subclass_spec_in_any=False, import_path_denylist=["*", *UNTRUSTED_IMPORTS],
                         import_path_allowlist=list(TRUSTED_PACKAGES))
    parser = ArgumentParser(prog=prog, description=description, parser_mode=PARSER_MODE,
                            exit_on_error=False, default_meta=False, print_config=None, allow_abbrev=False)
    parser.add_argument("-c", "--config", action=ConfigFileAction,
                        help="ST model-zoo YAML config file (may be given more than once)")
    parser.add_argument("--print_config", type=Optional[str], default=None, metavar="[=st|extras]",
                        help="print the resolved config and exit; =st: ST's schema only (the run's config.yaml), "
                             "=extras: the rest (stmclf_extras.yaml); flags skip_default, skip_unset may follow "
                             "after a comma")
    parser.add_argument("--trust-model-file", "--trust_model_file", dest="trust_model_file", action="store_true",
                        default=False, help="allow general.model_path to be a pickled torch module, or a "
                                            "TorchScript / torch.export model whose code does more than compute "
                                            "(runs code from the file: only for files you trust)")
    parser.add_argument("--trust-code", "--trust_code", dest="trust_code", action="store_true", default=False,
                        help="allow the Python code the config names: training.model.custom_model, "
                             "custom_data_augmentation.function_name, callback class paths outside lightning., "
                             "torch. and stmclf. (only for configs you trust)")
    parser.add_argument("--offline", action="store_true", default=False,
                        help="benchmarks use the offline footprint estimate (no account or network needed)")
    for name, type_ in sections.SECTIONS.items():
        parser.add_argument(f"--{name}", type=type_, default=None,
                            help=f"the '{name}' section of the config")
    section_action = _section_action_class()
    for action in parser._actions:
        if action.dest in sections.SECTIONS and isinstance(action, section_action.__bases__[0]):
            action.__class__ = section_action
    return parser


def add_trainer_arguments(parser: ArgumentParser) -> ArgumentParser:
    """Add the ``trainer`` section (the arguments of Lightning's ``Trainer``, less
    ``TRAINER_SKIP``) to a parser of :func:`build_parser`, once; it imports Lightning."""
    if not any(action.dest.startswith("trainer.") for action in parser._actions):
        import lightning

        parser.add_method_arguments(lightning.Trainer, "__init__", "trainer", skip=TRAINER_SKIP,
                                    fail_untyped=False)
    return parser


def unknown_option(parser: ArgumentParser, argv: Sequence[str]) -> Optional[str]:
    """The one-line error for the first argument of ``argv`` (as :func:`convert_overrides` writes
    it) that is an option ``parser`` does not have, or a key of a section's schema that does not
    exist, known without the ``trainer`` section: ``--X`` or ``--X=V`` that is none of its options
    (an abbreviation of one included: the parsers take none); ``--section.key...`` whose keys leave the
    section's dataclasses (a free-form mapping, a value's type and ``trainer.key`` are the full
    parser's to judge). None when there is none. argparse refuses such an argument wherever it
    stands (a value of an option cannot start with ``--``, but after ``--``; one with a space is a
    positional)."""
    options = _option_strings(parser)
    for arg in argv:
        if arg == "--":
            return None
        name = arg.partition("=")[0]
        if not name.startswith("--") or len(name) == 2 or " " in arg or name in options:
            continue
        path = name[2:].rstrip("+").split(".")  # --dataset.class_names+ VALUE appends to a list
        if path[0] == "trainer":
            continue
        if path[0] in sections.SECTIONS:
            problem = _unknown_section_key(path)
            if problem is not None:
                return problem
            continue
        return argument_error(parser, f"unrecognized arguments: {arg}")
    return None


def _unknown_section_key(path: Sequence[str]) -> Optional[str]:
    """The error for the last key of ``path`` (``[section, key, ...]``) when its section's
    dataclasses hold every key before it and not that one, as the full parser words it; None
    otherwise (a key that leaves the dataclasses, or an unknown key with keys below it, whose
    error is the full parser's)."""
    holder = _section_type(path[:-1])
    if len(path) > 1 and dataclasses.is_dataclass(holder) and \
            path[-1] not in {f.name for f in dataclasses.fields(holder)}:
        return _unknown_key([], ".".join(path))
    return None


# ---------------------------------------------------------------------------------------------
# Overrides of one key inside a free-form mapping (training.optimizer.Adam.beta_1=0.8)

def free_form_split(parts: Sequence[str]) -> Optional[tuple[list[str], list[str]]]:
    """``(field, inner)`` when the key path ``parts`` goes inside a free-form mapping (a dict- or
    Any-typed key of the schema: ``training.optimizer``, ``training.callbacks``, ``training.model``,
    ``data_augmentation``, ``hydra``, ...): ``field`` is the path of that key below its section,
    ``inner`` the keys inside it (at least one); None for a key of the schema itself."""
    if not parts or parts[0] not in sections.SECTIONS:
        return None
    node: Any = sections.SECTIONS[parts[0]]
    field: list[str] = []
    for index in range(1, len(parts) + 1):
        kind = _unwrap(node)
        if dataclasses.is_dataclass(kind):
            if index == len(parts):
                return None
            node = typing.get_type_hints(kind).get(parts[index])
            if node is None:
                return None
            field.append(parts[index])
            continue
        if index < len(parts) and _holds_mapping(node):
            return field, list(parts[index:])
        return None
    return None


def _holds_mapping(kind: Any) -> bool:
    if kind is Any or _is_mapping_type(kind):
        return True
    return typing.get_origin(kind) is typing.Union and any(_holds_mapping(k) for k in typing.get_args(kind))


def _override_leaf(text: Any, key: str) -> Any:
    """The value of ``key=text`` inside a free-form mapping, as the same text in a YAML file gives
    (``None``/``null`` → None, ``0.8`` → 0.8, ``1/255`` → 0.0039…, ``{a: 1}`` → a mapping); names and
    paths (``monitor``, ``*_path``) stay text."""
    from stmclf.config.values import is_text_key, parse_value

    if not isinstance(text, str):
        return text
    name = key.rsplit(".", 1)[-1]
    stripped = text.strip()
    if stripped in ("None", "null", "Null", "NULL", "~"):  # None in every spelling, also for names and paths
        return None
    if is_text_key(name):
        return text
    if stripped.startswith(("{", "[")):
        return load_yaml(text, key=key)  # bounded, interpolated, converted (class specs already checked)
    try:
        scalar = yaml.safe_load(stripped)
    except yaml.YAMLError:
        scalar = None
    if isinstance(scalar, (bool, int, float)):  # true/false, 0.8, 1e-3 (YAML's scalars)
        return convert_values(scalar, name, key)
    return parse_value(text, key)


_DELETE = "\0stmclf:delete"
"""The value of Hydra's ``~key`` (delete) on its way through jsonargparse: no argument holds NUL."""


def _set_inner(value: Any, inner: Sequence[str], leaf: Any, key: str) -> dict:
    """A copy of the mapping ``value`` (or a new one) with ``inner`` set to ``leaf`` (or removed for
    :data:`_DELETE`), the rest of it unchanged."""
    import copy

    out = copy.deepcopy(value) if isinstance(value, dict) else {}
    node = out
    for depth, part in enumerate(inner[:-1]):
        child = node.get(part)
        if child is not None and not isinstance(child, dict):  # as Hydra: a value holds no keys
            below = len(inner) - depth - 1
            raise ConfigError(key, f"{key.rsplit('.', below)[0]} is {one_line(repr(child), 60)}, not a mapping: "
                                   f"it holds no key {inner[depth + 1]!r}")
        if child is None:  # absent or None: a mapping holding the new key
            if leaf is _DELETE:
                break
            child = node[part] = {}
        node = child
    else:
        if leaf is not _DELETE:
            node[inner[-1]] = leaf
            return out
        if inner[-1] in node:
            del node[inner[-1]]
            return out
    raise ConfigError(key, "nothing to delete (~): the key is not in the config")


def _field_value(section: Any, field: Sequence[str]) -> Any:
    """The value at ``field`` of a section as jsonargparse holds it while parsing (a dataclass
    section is a ``{class_path, init_args}`` namespace)."""
    node = section
    for part in field:
        if isinstance(node, Namespace) and "init_args" in node:
            node = node["init_args"]
        if isinstance(node, (Namespace, dict)):
            node = node.get(part)
        else:
            return None
    return node.as_dict() if isinstance(node, Namespace) else node


_SECTION_ACTION: Optional[type] = None


def _section_action_class() -> type:
    """jsonargparse's action for a section, except that an override of one key inside a free-form
    mapping (``--training.optimizer.Adam.beta_1 0.8``, ``training.callbacks.EarlyStopping.patience=5``)
    changes only that key: jsonargparse replaces the whole entry below the mapping's first level
    (``{Adam: {beta_1: 0.8}}``, learning_rate lost). The merged mapping is then checked by
    jsonargparse as the whole value of its key."""
    global _SECTION_ACTION
    if _SECTION_ACTION is None:
        from jsonargparse._typehints import ActionTypeHint as _Base

        class SectionAction(_Base):
            def __call__(self, *args, **kwargs):
                if len(args) == 4 and isinstance(args[3], str):
                    parser, cfg, val, opt_str = args
                    option = self.get_option_string_base(opt_str)
                    split = free_form_split([self.dest, *opt_str[len(option) + 1:].split(".")]) if option else None
                    if split is not None:
                        field, inner = split
                        name = ".".join([self.dest, *field])
                        key = ".".join([name, *inner])
                        leaf = _DELETE if val == _DELETE else _override_leaf(val, key)
                        merged = _set_inner(_field_value(cfg.get(self.dest), field), inner, leaf, key)
                        check_args_by_name(name, merged)
                        return super().__call__(parser, cfg, merged, f"--{name}")
                return super().__call__(*args, **kwargs)

        _SECTION_ACTION = SectionAction
    return _SECTION_ACTION


# ---------------------------------------------------------------------------------------------
# One-line errors

_STRUCTURAL = ("Does not validate", "Subtypes:", "Errors:", "Given value type:",
               "- Problem with given class_path", "Given value:")


def _section_type(path: Sequence[str]) -> Any:
    """The dataclass (if any) that holds the keys at ``path``."""
    node: Any = sections.SECTIONS.get(path[0]) if path else None
    for part in list(path[1:]) + [None]:
        node = _unwrap(node)
        if part is None:
            return node
        if not dataclasses.is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        node = hints.get(part)
    return node


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(text: str) -> str:
    text = text.strip()
    m = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", text)
    if m:
        return {"NoneType": "None", "str": "text", "dict": "a mapping", "list": "a list"}.get(m.group(1), m.group(1))
    m = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if m:
        return "one of " + ", ".join(v.strip().strip("'\"") for v in m.group(1).split(","))
    return re.sub(r"typing\.|<class '|'>|__main__\.|stmclf\.config\.sections\.", "", text)


def _literal_choices(expected: Sequence[str]) -> list[str]:
    """The values of the ``one of a, b, c`` types (:func:`_type_name` of a ``Literal``) in ``expected``."""
    return [value.strip() for kind in expected if kind.startswith("one of ")
            for value in kind[len("one of "):].split(",")]


def one_line_error(message: str) -> str:
    """Rewrite a (possibly nested, multi-line) jsonargparse error into ``key.path: problem`` (the
    problem line made short by :func:`stmclf.errors.one_line`)."""
    stack: list[tuple[int, str]] = []
    leaf_path: list[str] = []
    expected: list[str] = []
    given: Optional[str] = None
    leaf: Optional[str] = None
    for line in message.splitlines():
        text = line.strip()
        if not text:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        m = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if m:
            stack.append((indent, m.group(1)))
            text = m.group(2)
            if not text:
                continue
        path = [k for _, k in stack]
        if text.startswith("Given value:") and path == leaf_path and given is None:
            given = text.split(":", 1)[1].strip()
            continue
        if text.startswith(_STRUCTURAL):
            continue
        if text.startswith("- "):
            text = text[2:]
        m = re.match(r"Expected an? (.+?)(?:\. Got value: (.*))?$", text)
        if m:
            if "NoneType" in m.group(1) and leaf is None and expected:
                continue
            if len(path) >= len(leaf_path) and leaf is None:
                if path != leaf_path:
                    expected, given = [], None
                leaf_path = path
                expected.append(_type_name(m.group(1)))
                if m.group(2) is not None:
                    given = m.group(2)
            continue
        if leaf is None or len(path) > len(leaf_path):
            leaf, leaf_path, expected = text, path, []
    key = ".".join(leaf_path)
    if leaf is None and expected:
        shown = [e for e in expected if e != "None"] or expected
        nested = re.fullmatch(r"""["']?NestedArg\(key='([^']*)', val=.*""", given or "")
        if nested:  # --training.batch_size.x 1: a key below a value of the schema that holds none
            return (f"{key}.{nested.group(1)}: {key} expects {' or '.join(shown)}, not a mapping: it holds no key "
                    f"{nested.group(1)!r}")
        # a misspelled choice (operation_mode: trainig) is named with the closest one, as keys are
        got = f", got {given!r}{did_you_mean(given, _literal_choices(expected))}" if given is not None else ""
        return f"{key}: expected {' or '.join(shown)}{got}"
    leaf = one_line(leaf or message)
    m = re.match(r"Option '([^']+)' is not accepted", leaf) or re.match(r'Key "([^"]+)" is not expected', leaf)
    if m:
        return _unknown_key(leaf_path, m.group(1))
    m = re.match(r"the following arguments are required: (.+)", leaf)
    if m:
        names = [k.strip().lstrip("-") for k in m.group(1).split(",")]
        missing = ", ".join(f"{key}.{name}" if key else name for name in names)
        return f"missing required key {missing}"
    m = re.match(r"Unrecognized arguments: (.+)", leaf)
    if m:
        return f"unknown argument(s) {m.group(1).strip()}: see --help"
    m = re.match(r"Exceeds the limit \(\d+ digits\) for integer string conversion: value has (\d+) digits", leaf)
    if m:  # Python's advice (sys.set_int_max_str_digits) is not the user's fix
        leaf = f"a {int(m.group(1)):,}-digit integer is too large for any config value"
    m = re.search(r"Importing '([^']*)' is not allowed", leaf)
    if m:  # jsonargparse's import path policy (build_parser): a Callable, type or class a value names
        leaf = (f"{one_line(repr(m.group(1)), 80)}: stmclf imports nothing a config names outside lightning., "
                "torch. and stmclf. (importing a module runs its code)")
    return f"{key}: {leaf}" if key else leaf


def argument_error(parser: ArgumentParser, message: str) -> str:
    """One line for a parse error of ``parser``'s command line: an argument it does not know is
    named with the closest option it has (``--confg`` → ``--config``), as git names a misspelled
    command; any other problem as :func:`one_line_error` writes it."""
    m = re.match(r"unrecognized arguments: (.+)", message.strip(), re.DOTALL)
    if m is None:
        return one_line_error(message)
    first = m.group(1).split()[0]
    shown = printable_path(first)
    help_hint = f"see '{parser.prog} --help'"
    if first.startswith("-"):
        name = first.partition("=")[0]
        options = [o for o in _option_strings(parser) if "." in name or "." not in o]
        return f"unknown option {printable_path(name)}{_option_meant(parser, name, options)}; {help_hint}"
    takes_config = any("--config" in action.option_strings for action in parser._actions)
    if takes_config and first.endswith((".yaml", ".yml")):
        return f"unexpected argument '{shown}': a config file is given as --config {shown}"
    return f"unexpected argument '{shown}'; {help_hint}"


class ScriptParser(argparse.ArgumentParser):
    """argparse for the scripts beside the ``stmclf`` command (``benchmarks/*.py``, ``python -m
    stmclf.augment.bench``), with its behaviour: no option taken from a prefix of its name
    (``allow_abbrev`` is off); an error is one line, exit code 2, an unknown option named with the
    option(s) meant as :func:`argument_error` names them (``unknown option --batchs (did you mean
    --batches?); see 'x.py --help'``), a misspelled choice with the closest one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        line = argument_error(self, message) if message.startswith("unrecognized arguments:") else message
        choice = re.match(r"argument .+?: invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if choice:  # a misspelled choice is named with the closest one, as a config value is
            line += did_you_mean(choice.group(1), [c.strip().strip("'") for c in choice.group(2).split(",")])
        self.exit(2, f"{self.prog}: error: {line}\n")


def _option_meant(parser: ArgumentParser, name: str, options: Sequence[str]) -> str:
    """`` (did you mean X?)`` for an unknown option ``name``: a truncated option (prefixes are not
    taken: adding an option would change what an old command line means) names the options it
    begins (``--int`` → ``--int8``; ``--trust`` → ``--trust-model-file or --trust-code``); any
    other the closest option (git's "did you mean")."""
    begun: list[str] = []
    for action in _actions(parser) if len(name) > 2 else ():
        option = next((o for o in action.option_strings if o.startswith(name) and o in options), None)
        if option is not None and option not in begun:
            begun.append(option)
    if 1 <= len(begun) <= 3:
        return f" (did you mean {' or '.join(begun)}?)"
    return did_you_mean(name, options)


def _actions(parser: ArgumentParser) -> list:
    """The actions of ``parser`` and of its subcommands (``stmclf data fetch``'s options are
    refused by ``stmclf data``'s parser)."""
    actions = []
    for action in parser._actions:
        actions.append(action)
        if isinstance(getattr(action, "choices", None), dict):
            for sub in action.choices.values():
                if isinstance(sub, argparse.ArgumentParser):  # jsonargparse's, or a script's (ScriptParser)
                    actions += _actions(sub)
    return actions


def _option_strings(parser: ArgumentParser) -> list[str]:
    """Every option of ``parser`` and of its subcommands."""
    return [option for action in _actions(parser) for option in action.option_strings]


def _unknown_key(path: list[str], bad: str) -> str:
    parts = bad.lstrip("-").split(".")
    full = path + parts
    holder = _section_type(full[:-1]) if len(full) > 1 else None
    if not full[:-1]:
        return unknown_section(full[-1])
    if full[0] not in sections.SECTIONS and full[0] != "trainer":
        return unknown_section(full[0])
    if dataclasses.is_dataclass(holder):
        allowed = [f.name for f in dataclasses.fields(holder)]
        return (f"{'.'.join(full)}: unknown key{did_you_mean(full[-1], allowed, 0.75)}; allowed in "
                f"{'.'.join(full[:-1])}: {', '.join(allowed)}")
    return f"{'.'.join(full)}: unknown key"


def unknown_section(name: str) -> str:
    """The one-line error for a top-level key that is no section, with the closest section name."""
    allowed = list(sections.SECTIONS) + ["trainer"]
    return f"{name}: unknown top-level section{did_you_mean(name, allowed, 0.75)}; allowed: {', '.join(allowed)}"


def _convert_override(key: str, value: str) -> str:
    """``--preprocessing.rescaling.scale 1/255`` → ``0.00392…``: overrides get the same safe value
    conversion as config files (jsonargparse parses scalars itself, without our loader)."""
    import json

    from stmclf.config.values import is_text_key, parse_value

    if not is_text(value):  # bytes of another encoding (kept as lone surrogates): no UTF-8 file can hold them
        raise ConfigError(key, f"'{printable_path(value)}' is not UTF-8 text")
    _record_override_env(key, value)
    if key in ("config", "print_config"):
        return value
    record_override(key, value)  # a key that a ${section.key} of a config file names: check_key_references
    _check_override_references(key, value)
    # A section is a mapping: jsonargparse would load --trainer FILE (a FIFO: a hang; any size) or import
    # --training MODULE.Class (a class path shorthand)
    if (key in sections.SECTIONS or key == "trainer") and not value.lstrip().startswith(("{", "[")) and \
            (key == "trainer" or value.strip() not in _NONE_TEXT):
        check_section_shapes({key: value})
    holder, _, leaf = key.rpartition(".")
    if leaf == "class_path" and value.strip() not in _NONE_TEXT:  # jsonargparse would import it
        check_class_specs({"class_path": value.strip()}, holder)
    if is_text_key(leaf):  # a name or path stays text; None is none, as in a file
        return "null" if value.strip() == "None" else value
    if value.lstrip().startswith(("{", "[")):  # a structure: jsonargparse would import a class_path it names
        structure = load_yaml(value, key=key)
        check_class_specs(structure, key)
        check_args_by_name(key, structure)
        # what a ${section.key} below it is checked against: the values as a --config file's are
        record_override(key, interpolate_tree(_parse_yaml(value, "value"), key=key))
    parsed = parse_value(value, key)
    if isinstance(parsed, str) or isinstance(parsed, bool):
        return value
    return json.dumps(parsed)


_NONE_TEXT = ("", "null", "None", "~")
"""Override values that mean "none" (a section or class path unset)."""


def _check_override_references(key: str, value: str) -> None:
    """An override's ``${...}`` is resolved as in a file, but jsonargparse keeps the raw text of a
    text key whose value fails to resolve: check it here, so that ``--dataset.name '${NOT_SET}'`` is
    the file's one-line error, not the literal text. A reference to another key cannot be resolved
    on the command line (the config is not merged yet): refused, naming what works. A mapping is
    interpolated as a file's values are, so a ``${...}`` in one of its keys is named as such first."""
    if "${" not in value:
        return
    from stmclf.config.interpolate import interpolate, interpolate_tree

    for expr in re.findall(r"\$\{\s*([\w.]+)\s*\}", value):
        if "." in expr:
            raise ConfigError(key, f"${{{expr}}}: a command-line value cannot refer to another key of the config; "
                                   f"give the value itself (${{ENV_VAR}}, ${{oc.env:ENV_VAR,default}} and "
                                   f"${{now:FORMAT}} work)")
    if value.lstrip().startswith(("{", "[")):
        interpolate_tree(load_yaml(value, key=key), key=key)
    else:
        interpolate(value, key, {})


def _record_override_env(key: str, value: str) -> None:
    """An override that uses an environment variable (``--dataset.name 'x${TOKEN}'``) is written
    back as ``${TOKEN}`` too, as the same value from a config file is."""
    if "${" not in value or key in ("config", "print_config"):
        return
    from stmclf.config.interpolate import interpolate

    used: list[str] = []
    try:
        resolved = interpolate(value, key, {}, env_used=used)
        kept = interpolate(value, key, {}, keep_env=True)
    except UserError:  # ${section.key} references: resolved with the config later, nothing secret
        return
    if used:
        from stmclf.config.values import is_text_key, parse_value

        held = resolved if is_text_key(key.rsplit(".", 1)[-1]) else parse_value(resolved, key)
        record_env_references({tuple(key.split(".")): (kept, held)})


def convert_overrides(argv: Sequence[str], flags: Collection[str] = ()) -> list[str]:
    """``argv`` with the Hydra forms (``training.epochs=3``, ``~key``) as options; ``flags``: the
    options that take no value (``--offline``, ``--trust-code``): the argument after one is not its value."""
    out: list[str] = []
    key: Optional[str] = None
    for arg in argv:
        if arg.startswith("--print-config"):  # the spelling of stmclf's other options (--trust-code)
            arg = "--print_config" + arg[len("--print-config"):]
        if arg == "--print_config":  # no flags: the whole config (flags only as --print_config=FLAGS)
            out.append("--print_config=")
            key = None
        elif arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            _check_section(name)
            _check_trainer_override(name)
            out.append(f"--{name}={_convert_override(name, value)}" if eq else arg)
            key = None if eq or arg in flags else name
        elif key is not None:
            out.append(_convert_override(key, arg))
            key = None
        elif HYDRA_OVERRIDE.match(arg):  # ST's documented (Hydra) form: training.epochs=3, +key=value, ++key=value
            name, _, value = arg.lstrip("+").partition("=")
            _check_section(name)
            _check_trainer_override(name)
            out.append(f"--{name}={_convert_override(name, value)}")
        elif arg.startswith("~"):  # Hydra's delete: ~training.callbacks.EarlyStopping
            out.append(_delete_override(arg))
        else:
            if not is_text(arg):
                raise UserError(f"command-line argument '{printable_path(arg)}' is not UTF-8 text")
            out.append(arg)
    return out


def _check_section(name: str) -> None:
    """``--generall.project_name x``: the misspelled section named as in a config file."""
    section, dot, _ = name.partition(".")
    if dot and section not in sections.SECTIONS and section != "trainer":
        raise UserError(unknown_section(section))


def _check_trainer_override(name: str) -> None:
    section, dot, rest = name.partition(".")
    key = rest.split(".")[0].rstrip("+")  # --trainer.devices+ appends to a list
    if section == "trainer" and dot and (problem := trainer_key_problem(key)) is not None:
        raise ConfigError(f"trainer.{key}", problem)


HYDRA_OVERRIDE = re.compile(r"^\+{0,2}[A-Za-z_][\w-]*(\.[\w-]+)*=")
"""``key.path=value`` on the command line (Hydra's override syntax), read as ``--key.path=value``; Hydra's
``+key=value`` (add) and ``++key=value`` (add or override) mean the same: the schema says which keys exist."""
HYDRA_FORMS = ("key=value, +key=value, ++key=value (all three set the key), ~key (deletes a key inside a free "
               "mapping such as training.callbacks.EarlyStopping, or sets a key of the schema to null)")


def _delete_override(arg: str) -> str:
    """Hydra's ``~key``: a key inside a free mapping (``~training.callbacks.EarlyStopping``) is removed;
    a key of the schema that may be null (``~training.callbacks``, ``~data_augmentation``) becomes
    null; anything else is refused with the forms stmclf reads."""
    name = arg[1:]
    if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[\w-]+)*", name):
        raise UserError(f"{arg}: Hydra's ~key=value (delete if equal) is not supported; the override forms are "
                        f"{HYDRA_FORMS}" if "=" in name else
                        f"{arg}: not an override; the forms are {HYDRA_FORMS}")
    _check_section(name)
    parts = name.split(".")
    if free_form_split(parts) is not None:
        return f"--{name}={_DELETE}"
    kind = _section_type(parts[:-1]) if len(parts) > 1 else None
    hint = typing.get_type_hints(kind).get(parts[-1]) if dataclasses.is_dataclass(kind) else \
        sections.SECTIONS.get(name) if len(parts) == 1 else None
    if hint is None or type(None) not in typing.get_args(hint):
        raise ConfigError(name, f"cannot be deleted (~): it must have a value; set it instead ({name}=VALUE). "
                                f"The override forms are {HYDRA_FORMS}")
    return f"--{name}=null"


def parse_args(parser: ArgumentParser, argv: Sequence[str],
               check: Optional[Callable[[Any, Namespace], None]] = None) -> Namespace:
    """Parse ``argv``; any problem becomes a one-line :class:`UserError`. With ``--print_config``
    the config is checked as every command checks it first (:func:`stmclf.config.from_namespace`),
    then by ``check(cfg, ns)`` (the command's refusals that need the config alone: ``stmclf fit``
    and ``run`` refuse there what they would refuse before training; its warnings are not shown:
    stdout is the YAML), then printed (:func:`print_config_text`) and the process exits with code
    0; the checks that need the dataset, a model file or the machine (class folders, checkpoints,
    devices) are the command's."""
    clear_env_references()  # filled by load_yaml, read by stmclf.config.from_namespace
    try:
        args = convert_overrides(argv, {s for a in parser._actions if a.nargs == 0 for s in a.option_strings})
        unknown = unknown_option(parser, args)
    except Exception as exc:  # noqa: BLE001 - one line, as the parser's own errors
        raise _parse_error(parser, exc) from None
    if unknown is not None:  # named before Lightning is imported for the trainer section
        raise UserError(unknown)
    add_trainer_arguments(parser)
    try:
        ns = parser.parse_args(args)
    except Exception as exc:  # noqa: BLE001 - jsonargparse raises ArgumentError/TypeError subclasses
        raise _parse_error(parser, exc) from None
    # a ${section.key} resolved before a later file or override changed its key (or replaced a free mapping without it)
    check_key_references(lambda path: free_form_split([*path, "_"]) is not None)
    flags = ns.get("print_config")
    if flags is not None:
        from stmclf.config import from_namespace

        cfg = from_namespace(parser, ns)  # the config's own checks (value ranges, splits): a bad value is not printed
        if check is not None:
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                check(cfg, ns)
            finally:
                logging.disable(previous)
        sys.stdout.write(print_config_text(parser, ns, flags))
        raise SystemExit(0)
    return ns


def _parse_error(parser: ArgumentParser, exc: Exception) -> UserError:
    """The one-line error of a failed parse of ``parser``'s command line."""
    if isinstance(exc, UserError):
        return exc
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, UserError):
        return UserError(str(cause))
    message = re.sub(r"^Problems parsing config\s*:\s*", "", str(exc))
    return UserError(argument_error(parser, message))


PRINT_CONFIG_FORMS = ("st", "extras")
"""``--print_config=st``: what the run's ``config.yaml`` holds; ``=extras``: its ``stmclf_extras.yaml``."""
PRINT_CONFIG_FLAGS = {"skip_default": "skip_default", "skip_unset": "skip_unset", "skip_null": "skip_unset"}
"""jsonargparse's ``--print_config`` flags, kept (``skip_null`` is its old name of ``skip_unset``)."""


def print_config_text(parser: ArgumentParser, ns: Namespace, flags: str) -> str:
    """The YAML ``--print_config=FLAGS`` prints: the whole resolved config (no form), ST's schema
    only (``st``) or the rest (``extras``); the command-line options are never part of it."""
    from stmclf.config import resolved_yaml
    from stmclf.config.st_schema import split_yaml

    words = [w.strip() for w in flags.split(",") if w.strip()]
    forms = [w for w in words if w in PRINT_CONFIG_FORMS]
    bad = [w for w in words if w not in PRINT_CONFIG_FORMS and w not in PRINT_CONFIG_FLAGS]
    if bad or len(forms) > 1:
        raise UserError(f"--print_config={flags}: {'unknown flag ' + repr(bad[0]) if bad else 'st and extras together'}"
                        f"; allowed: --print_config, --print_config=st or =extras, optionally with "
                        f"{', '.join(PRINT_CONFIG_FLAGS)} after a comma")
    options = {PRINT_CONFIG_FLAGS[w]: True for w in words if w in PRINT_CONFIG_FLAGS}
    text = resolved_yaml(parser, ns, **options)
    if not forms:
        return text
    st, extras = split_yaml(text)
    return st if forms[0] == "st" else extras
