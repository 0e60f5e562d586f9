"""The command-line/config parser: jsonargparse over the section dataclasses.

``stmclf fit --config x.yaml --training.epochs 3 --print_config`` is parsed here. Config files
go through :func:`load_yaml` (YAML → ``${...}`` interpolation → safe value conversion), so an
ST config runs unchanged. Lightning's own Trainer options sit in a ``trainer:`` section.
Parse errors are rewritten into one line that names the key path.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Optional, Sequence

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_loader

from stmclf.config import sections
from stmclf.config.interpolate import interpolate_tree
from stmclf.config.values import convert_values
from stmclf.errors import UserError

PARSER_MODE = "stmclf_yaml"

# Trainer arguments that stmclf owns (set from the ST sections or by the run itself).
TRAINER_SKIP = {"logger", "callbacks", "max_epochs", "min_epochs", "enable_checkpointing",
                "deterministic", "default_root_dir", "plugins", "profiler", "enable_autolog_hparams",
                "model_registry", "fast_dev_run"}


def load_yaml(text: str) -> Any:
    """jsonargparse loader: YAML, then ``${...}`` interpolation, then safe value conversion."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if isinstance(data, (dict, list, str)):
        data = interpolate_tree(data)
    return convert_values(data)


set_loader(PARSER_MODE, load_yaml, exceptions=(UserError,))


def build_parser(prog: str, description: str = "") -> ArgumentParser:
    """The parser for commands that take a run config (fit, run, ...)."""
    import lightning

    parser = ArgumentParser(prog=prog, description=description, parser_mode=PARSER_MODE,
                            exit_on_error=False, default_meta=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="ST model-zoo YAML config file (may be given more than once)")
    parser.add_argument("--trust-model-file", "--trust_model_file", dest="trust_model_file", action="store_true",
                        default=False, help="allow general.model_path to be a pickled torch module (runs code "
                                            "from the file: only for files you trust)")
    parser.add_argument("--offline", action="store_true", default=False,
                        help="benchmarks use the offline footprint estimate (no account or network needed)")
    for name, type_ in sections.SECTIONS.items():
        parser.add_argument(f"--{name}", type=type_, default=None,
                            help=f"the '{name}' section of the config")
    parser.add_method_arguments(lightning.Trainer, "__init__", "trainer", skip=TRAINER_SKIP,
                                fail_untyped=False)
    return parser


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


def one_line_error(message: str) -> str:
    """Rewrite a (possibly nested, multi-line) jsonargparse error into ``key.path: problem``."""
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
        got = f", got {given!r}" if given is not None else ""
        return f"{key}: expected {' or '.join(shown)}{got}"
    leaf = leaf or message.strip().splitlines()[0]
    m = re.match(r"Option '([^']+)' is not accepted", leaf) or re.match(r'Key "([^"]+)" is not expected', leaf)
    if m:
        return _unknown_key(leaf_path, m.group(1))
    m = re.match(r"the following arguments are required: (.+)", leaf)
    if m:
        missing = ", ".join(f"{key}.{k.strip().lstrip('-')}" if key else k.strip().lstrip('-') for k in m.group(1).split(","))
        return f"missing required key {missing}"
    m = re.match(r"Unrecognized arguments: (.+)", leaf)
    if m:
        return f"unknown argument(s) {m.group(1).strip()}: see --help"
    return f"{key}: {leaf}" if key else leaf


def _unknown_key(path: list[str], bad: str) -> str:
    parts = bad.lstrip("-").split(".")
    full = path + parts
    holder = _section_type(full[:-1]) if len(full) > 1 else None
    if not full[:-1]:
        allowed = list(sections.SECTIONS) + ["trainer"]
        return (f"{full[-1]}: unknown top-level section; allowed: {', '.join(allowed)}")
    if dataclasses.is_dataclass(holder):
        allowed = [f.name for f in dataclasses.fields(holder)]
        return f"{'.'.join(full)}: unknown key; allowed in {'.'.join(full[:-1])}: {', '.join(allowed)}"
    return f"{'.'.join(full)}: unknown key"


def _convert_override(key: str, value: str) -> str:
    """``--preprocessing.rescaling.scale 1/255`` → ``0.00392…``: overrides get the same safe value
    conversion as config files (jsonargparse parses scalars itself, without our loader)."""
    import json

    from stmclf.config.values import is_text_key, parse_value

    if key in ("config", "print_config") or is_text_key(key.rsplit(".", 1)[-1]):
        return value
    parsed = parse_value(value)
    if isinstance(parsed, str) or isinstance(parsed, bool):
        return value
    return json.dumps(parsed)


def convert_overrides(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    key: Optional[str] = None
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            out.append(f"--{name}={_convert_override(name, value)}" if eq else arg)
            key = None if eq else name
        elif key is not None:
            out.append(_convert_override(key, arg))
            key = None
        else:
            out.append(arg)
    return out


def parse_args(parser: ArgumentParser, argv: Sequence[str]) -> Namespace:
    """Parse ``argv``; any problem becomes a one-line :class:`UserError`."""
    try:
        return parser.parse_args(convert_overrides(argv))
    except UserError:
        raise
    except Exception as exc:  # jsonargparse raises ArgumentError/TypeError subclasses
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        message = re.sub(r"^Problems parsing config\s*:\s*", "", str(exc))
        raise UserError(one_line_error(message)) from None
