"""``${...}`` interpolation in config strings.

Supported forms (Hydra/OmegaConf spellings that ST configs use):
- ``${now:%Y_%m_%d_%H_%M_%S}``: the run's start time (one instant per process, so every key
  that uses it agrees);
- ``${NAME}`` and ``${oc.env:NAME}`` / ``${oc.env:NAME,default}``: an environment variable
  (the reference's rule for ``\\$\\{\\w+\\}``), an error naming the key when it is not set;
- ``${section.key}``: another value of the config: of the same ``--config`` file or of an earlier one
  (the files are read one by one, in order; :func:`begin_document`). The reference is resolved when
  its file is read, so a later file or a command-line override that sets the key it names to
  another value is refused, naming both keys (:func:`check_key_references`), instead of being
  silently ignored.

Only values are interpolated: a ``${...}`` in a mapping key is refused (the key would otherwise
stay that text, unresolved, in the run and its checkpoints).

Environment variables may hold secrets (tokens, private paths), so the loader records which
values came from them (:func:`record_env_references`): the run's ``config.yaml`` and the MLflow
parameters show ``${NAME}`` there (:func:`redact`) while the run uses the resolved values; the
hyper-parameters and checkpoints show it at the positions those values reach
(``stmclf.models.checkpoint_env``), the log lines in place of the values (:func:`redact_env_names`),
and a checkpoint's references are resolved again when it is read (:func:`resolve_env_names`).
Behind the positions, :func:`keep_env_values_out` keeps a value that a code path carried elsewhere
from being written. ``${now:...}`` and ``${section.key}`` are not secrets and stay resolved.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from typing import Any, Callable, Iterable, Optional

from stmclf.errors import ConfigError, UserError

_PATTERN = re.compile(r"\$\{([^${}]+)\}")
MAX_RESULT = 65_536
"""Characters an interpolated value may reach (the YAML file itself is at most 1 MiB)."""
MAX_TOTAL = 1 << 20
"""Characters all interpolated values of a config may reach together."""
_START = _dt.datetime.now()


def run_start() -> _dt.datetime:
    return _START


def _lookup(root: dict, dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _resolve_one(expr: str, key: str, root: dict, env_used: Optional[list] = None, keep_env: bool = False) -> str:
    """One ``${expr}``; an environment variable is appended to ``env_used`` (and, with
    ``keep_env``, left as the reference text)."""
    original = "${" + expr + "}"
    expr = expr.strip()
    if expr.startswith("now:"):
        _TIME_STAMPED_KEYS.add(key)
        return _START.strftime(expr[4:])
    if expr.startswith("oc.env:"):
        name, _, default = expr[7:].partition(",")
        if env_used is not None:
            env_used.append(name.strip())
        if keep_env:
            return original
        value = os.environ.get(name.strip())
        if value is None:
            if default:
                return default.strip()
            raise ConfigError(key, f"environment variable {name.strip()} is not set")
        return value
    if re.fullmatch(r"\w+", expr):
        if expr in os.environ:
            if env_used is not None:
                env_used.append(expr)
            return original if keep_env else os.environ[expr]
        if expr in root and not isinstance(root[expr], (dict, list)):
            return _used(key, expr, str(root[expr]))
        raise ConfigError(key, f"environment variable {expr} is not set (used as ${{{expr}}})")
    if re.fullmatch(r"[\w.]+", expr):
        try:
            value = _lookup(root, expr)
        except KeyError:
            raise ConfigError(key, f"${{{expr}}} refers to a key that does not exist"
                               + (" (in this or an earlier --config file)" if _DOCUMENT else "")) from None
        if isinstance(value, (dict, list)):
            raise ConfigError(key, f"${{{expr}}} refers to a section, not a value")
        return _used(key, expr, str(value))
    raise ConfigError(key, f"unsupported interpolation ${{{expr}}}: use ${{now:FORMAT}}, ${{ENV_VAR}} or ${{section.key}}")


def interpolate(text: str, key: str = "", root: dict | None = None, *, env_used: Optional[list] = None,
                keep_env: bool = False) -> str:
    """Resolve every ``${...}`` in ``text``; ``key`` names the config key in errors. The names of
    the environment variables used are appended to ``env_used``; ``keep_env`` leaves their
    ``${NAME}`` references in the text (what the run's written config shows)."""
    if "${" not in text:
        return text
    root = root or {}

    def replace(match: re.Match) -> str:
        value = _resolve_one(match.group(1), key, root, env_used, keep_env)
        if value == match.group(0) and not keep_env:  # name: ${dataset.name}, a reference to itself
            raise ConfigError(key, f"interpolation does not terminate ({match.group(0)} refers to itself)")
        grown[0] += len(value)
        if grown[0] > MAX_RESULT:  # references that multiply at each round: ${a}${a} with a: ${b}${b}, ...
            raise ConfigError(key, f"interpolation gives more than {MAX_RESULT:,} characters")
        return value

    for _ in range(10):  # references may themselves contain references
        grown = [len(text)]
        new = _PATTERN.sub(replace, text)
        if new == text or "${" not in new:
            return new
        text = new
    raise ConfigError(key, "interpolation does not terminate")


def interpolate_tree(data: Any, root: dict | None = None, key: str = "", *,
                     env_refs: Optional[dict] = None, path: tuple = (), _budget: Optional[list] = None) -> Any:
    """Interpolate every string of a loaded YAML document (``root`` defaults to ``data``).

    With ``env_refs``, each value that uses an environment variable is recorded there as
    ``{path tuple: the text with its ${NAME} references kept}``."""
    root = data if root is None and isinstance(data, dict) else (root or {})
    budget = _budget if _budget is not None else [MAX_TOTAL]
    if isinstance(data, dict):
        for k in data:
            if isinstance(k, str) and _PATTERN.search(k):  # a key stays text: refused, not kept unresolved
                raise ConfigError(f"{key}.{k}" if key else k, f"{_PATTERN.search(k).group(0)} in a mapping key is not "
                                  "interpolated (only values are): write the key itself")
        return {k: interpolate_tree(v, root, f"{key}.{k}" if key else str(k), env_refs=env_refs, path=(*path, k),
                                    _budget=budget) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate_tree(v, root, key, env_refs=env_refs, path=(*path, i), _budget=budget)
                for i, v in enumerate(data)]
    if isinstance(data, str):
        used: list[str] = []
        value = interpolate(data, key, root, env_used=used)
        if value is not data:
            budget[0] -= len(value)
            if budget[0] < 0:
                raise ConfigError(key, f"the interpolated values of the config exceed {MAX_TOTAL:,} characters")
        if used and env_refs is not None:
            env_refs[path] = interpolate(data, key, root, keep_env=True)
        return value
    return data


# ---------------------------------------------------------------------------------------------
# Values that came from environment variables: kept as ${NAME} in what a run writes

_ENV_REFERENCES: dict[tuple, tuple[str, Any]] = {}


_TIME_STAMPED_KEYS: set[str] = set()
"""Keys whose value used ``${now:...}`` (a ``hydra.run.dir`` that names a new folder per run)."""


def time_stamped_keys() -> frozenset[str]:
    return frozenset(_TIME_STAMPED_KEYS)


def clear_env_references() -> None:
    """Forget the recorded references (at the start of each command-line parse): the environment
    variables', the time stamps, the ``--config`` files read and their ``${section.key}`` references."""
    _ENV_REFERENCES.clear()
    _TIME_STAMPED_KEYS.clear()
    _DOCUMENTS.clear()
    _KEY_REFERENCES.clear()
    _OVERRIDES.clear()
    _DOCUMENT.clear()
    _DOCUMENT_NAMES.clear()


# ---------------------------------------------------------------------------------------------
# ${section.key} across --config files

_DOCUMENTS: list[dict] = []
"""The ``--config`` documents of this parse read so far, interpolated, in order."""
_DOCUMENT: list[int] = []
"""The index (in :data:`_DOCUMENTS`) of the document being interpolated, while it is."""
_KEY_REFERENCES: list[tuple[str, str, str, int]] = []
"""``(key, referenced key, the value used, index of the document that holds the reference)``."""
_OVERRIDES: dict[str, Any] = {}
"""The command-line overrides of this parse: ``{dotted key: value}``, the text, or for a mapping or a
list (``--dataset '{name: x}'``) the structure as loaded and interpolated (not converted, as the values of
:data:`_DOCUMENTS`)."""
_DOCUMENT_NAMES: list[str] = []
"""The names of the documents of :data:`_DOCUMENTS` (their files)."""


def lookup_root(data: dict) -> dict:
    """Where the ``${section.key}`` references of the ``--config`` document ``data`` are looked up:
    the documents read before it merged (a later file's value wins), then ``data`` itself."""
    merged: dict = {}
    for document in (*_DOCUMENTS, data):
        _merge_into(merged, document)
    return merged


def _merge_into(target: dict, source: dict) -> None:
    for k, v in source.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            target[k] = dict(target[k])
            _merge_into(target[k], v)
        else:
            target[k] = v


def begin_document(name: str) -> None:
    """The ``--config`` document ``name`` is being interpolated: its ``${section.key}`` references are recorded."""
    _DOCUMENT[:] = [len(_DOCUMENTS)]
    _DOCUMENT_NAMES.append(name)


def end_document(data: Any) -> None:
    """The document's interpolated values, for the references of the later ones."""
    _DOCUMENT.clear()
    _DOCUMENTS.append(data if isinstance(data, dict) else {})


def record_override(key: str, value: Any) -> None:
    """A command-line override ``--key value`` (checked against the references by :func:`check_key_references`)."""
    _OVERRIDES[key] = value


def _used(key: str, dotted: str, value: str) -> str:
    if _DOCUMENT:
        _KEY_REFERENCES.append((key, dotted, value, _DOCUMENT[0]))
    return value


def _holds(document: dict, dotted: str) -> bool:
    try:
        _lookup(document, dotted)
    except KeyError:
        return False
    return True


_UNTOUCHED = object()


def _setting(node: Any, root: list[str], parts: list[str],
             replaces_whole: Callable[[list[str]], bool]) -> tuple[Any, str]:
    """What a later source does to the key ``parts``: a ``--config`` document (``root`` empty) or an
    override of the key ``root``, a prefix of ``parts`` (``node``: its value). ``(the value it sets,
    "")``, ``(_UNTOUCHED, "")`` where the key keeps its value (a section given as a mapping is merged
    key by key), or ``(None, the key that it replaces without parts)``: a free mapping (``training.model``,
    ``training.callbacks.X``: ``replaces_whole``) given without the key, or a value that is no mapping
    (null, ``--training.optimizer SGD``) where the key's section was."""
    path = list(root)
    for part in parts[len(root):]:
        if not isinstance(node, dict):
            return None, ".".join(path)
        if part not in node:
            return (None, ".".join(path)) if path and replaces_whole(path) else (_UNTOUCHED, "")
        node = node[part]
        path.append(part)
    return node, ""


def check_key_references(replaces_whole: Callable[[list[str]], bool] = lambda path: False) -> None:
    """Refuse a ``${section.key}`` whose key a later ``--config`` file or a command-line override
    sets to another value, or replaces without it: the reference was resolved when its file was
    read (OmegaConf would resolve it on the merged config), so the run would silently use the older
    value. The override may name the key (``--dataset.name x``) or a mapping that holds it
    (``--dataset '{name: x}'``, ``dataset={name: x}``), as a later file's section does.
    ``replaces_whole(key path)``: whether a mapping given for that key replaces the one before
    instead of being merged into it (the free mappings: ``stmclf.config.parser.free_form_split``)."""
    for key, dotted, used, index in _KEY_REFERENCES:
        parts = dotted.split(".")
        sources = [i for i in range(min(index, len(_DOCUMENTS) - 1) + 1) if _holds(_DOCUMENTS[i], dotted)]
        later = [(f"a later --config file ({_DOCUMENT_NAMES[i]})", _setting(_DOCUMENTS[i], [], parts, replaces_whole))
                 for i in range(max(sources, default=index) + 1, len(_DOCUMENTS))]
        for override, value in _OVERRIDES.items():
            root = override.split(".")
            if root == parts[:len(root)]:
                shown = "" if root == parts else f" (--{override})"
                later.append((f"the command line{shown}", _setting(value, root, parts, replaces_whole)))
        for where, (value, replaced) in later:
            if replaced:
                raise ConfigError(key, f"${{{dotted}}} was resolved to {used!r} when its --config file was read, "
                                       f"but {where} replaces {replaced} without {dotted}: give the value itself")
            if value is not _UNTOUCHED and str(value) != used:
                raise ConfigError(key, f"${{{dotted}}} was resolved to {used!r} when its --config file was read, "
                                       f"but {where} sets {dotted} to {str(value)!r}: give the value itself")


def record_env_references(refs: dict[tuple, tuple[str, Any]]) -> None:
    """``{path: (text with ${NAME} kept, the value the config holds)}`` of one loaded file (a
    later file or override that sets the same key to another value wins: see :func:`redact`)."""
    _ENV_REFERENCES.update(refs)


def env_references() -> dict[tuple, tuple[str, Any]]:
    return dict(_ENV_REFERENCES)


def redact(data: Any, refs: dict[tuple, tuple[str, Any]], *, names: Optional[Iterable[str]] = None,
           where: str = "the written config", plain: Optional[Iterable[str]] = None) -> Any:
    """A copy of ``data`` (nested dicts/lists) with each recorded path put back to its
    ``${NAME}`` text, where the value there is still the one that came from the environment; then
    :func:`keep_env_values_out` on the rest for the variables ``names`` (by default those of
    ``refs``; ``where`` names ``data`` in its error): ``plain`` are the texts given as they are, by
    default those of ``data`` outside the recorded paths (``data`` is a config: its other strings
    are the config's own)."""
    names = env_names(refs) if names is None else set(names)
    if not refs and not names:
        return data
    placed: set[tuple] = set()

    def walk(node: Any, path: tuple) -> Any:
        ref = refs.get(path)
        if ref is not None and same_value(node, ref[1]):
            placed.add(path)
            return ref[0]
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        return node

    out = walk(data, ())
    if plain is None:
        plain = texts_of(data, skip=set(refs))
    return keep_env_values_out(out, names, plain=plain, skip=placed, where=where)[0]


def texts_of(node: Any, skip: Iterable[tuple] = (), path: tuple = ()) -> set[str]:
    """The strings of ``node`` (nested dicts/lists) outside the key paths ``skip``."""
    if path in skip:
        return set()
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return {t for k, v in node.items() for t in texts_of(v, skip, (*path, k))}
    if isinstance(node, (list, tuple)):
        return {t for i, v in enumerate(node) for t in texts_of(v, skip, (*path, i))}
    return set()


_ENV_NAME = re.compile(r"\$\{\s*(?:oc\.env:)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:,[^}]*)?\}")
MIN_REDACTED_LENGTH = 4
"""Shorter environment values are not looked for inside other text (a ``1`` or ``on`` would
blank out unrelated numbers and words)."""


def env_names(refs: dict[tuple, tuple[str, Any]]) -> set[str]:
    """The names of the environment variables that the recorded references (``refs``:
    :func:`env_references`) use."""
    return {m.group(1) for kept, _ in refs.values() if isinstance(kept, str) for m in _ENV_NAME.finditer(kept)}


def redact_env_names(data: Any, names: Iterable[str], found: Optional[set] = None) -> Any:
    """``data`` (nested dicts/lists/tuples) where every string holding the value of one of the
    environment variables ``names`` (those the config used: :func:`env_names`) shows ``${NAME}``
    instead; the names whose value was replaced somewhere are added to ``found``. By value, not by
    key path: for what the run derives from its config under other keys (a model's
    hyper-parameters, an absolute path built on a ``${PRIVATE_DIR}``). Containers where nothing
    changed are returned as they are, changed ones are new."""
    values = watched_values(names)
    if not values:
        return data

    def replace(text: str) -> str:
        for value, name in values:
            if value in text:
                text = text.replace(value, "${" + name + "}")
                if found is not None:
                    found.add(name)
        return text

    return _map_strings(data, replace)


def watched_values(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(value, name)`` of the environment variables ``names`` that are set to a value of
    :data:`MIN_REDACTED_LENGTH` characters or more, the longest first (one value inside another)."""
    return sorted(((os.environ[n], n) for n in set(names) if len(os.environ.get(n, "")) >= MIN_REDACTED_LENGTH),
                  key=lambda pair: -len(pair[0]))


def _token_starts(text: str, value: str) -> list[int]:
    """Where ``value`` occurs in ``text`` as a token of its own: each side either at the text's
    end, next to a character that is no letter or digit, or where ``value`` itself ends in one
    (``/data/x`` in ``/data/x/train``; ``2026`` in ``exp_2026``, not inside ``b16a2026fb``)."""
    starts, start = [], text.find(value)
    while start >= 0:
        end = start + len(value)
        if (start == 0 or not text[start - 1].isalnum() or not value[0].isalnum()) and \
                (end == len(text) or not text[end].isalnum() or not value[-1].isalnum()):
            starts.append(start)
        start = text.find(value, start + 1)
    return starts


def _unexplained(text: str, value: str, plain: set[str]) -> bool:
    """Whether ``value`` occurs in ``text`` as a token (:func:`_token_starts`) outside every
    occurrence of a text of ``plain`` (a path under a folder that the config names as it is)."""
    starts = _token_starts(text, value)
    if not starts:
        return False
    covered: set[int] = set()
    for known in plain:
        if value in known and known in text:
            start = text.find(known)
            while start >= 0:
                covered.update(range(start, start + len(known)))
                start = text.find(known, start + 1)
    return any(not covered.issuperset(range(start, start + len(value))) for start in starts)


def keep_env_values_out(data: Any, names: Iterable[str], *, plain: Iterable[str] = (), skip: Iterable[tuple] = (),
                        where: str) -> tuple[Any, list[tuple[tuple, str]]]:
    """The safety net of what a run writes (a checkpoint, its hyper-parameters, its config and MLflow
    parameters), after the recorded positions got their ``${NAME}`` (by provenance): the value of
    an environment variable ``names`` found in another string of ``data`` (outside the key paths
    ``skip``) was carried there by a code path that the positions do not know, maybe changed (a
    path normalised), and is not written silently:

    - a string that is the value, whole, is written as ``${NAME}`` too: ``(data with it, [(its key
      path, NAME), ...])``, for the positions a checkpoint lists (read back, it is resolved);
    - a string that holds it inside other text is refused (:class:`UserError` naming the variable,
      ``where`` and the key path; never the value): ``${NAME}`` cannot stand for part of a text
      that the config did not write so (by-value rewriting would change unrelated names).

    Not looked for: values under :data:`MIN_REDACTED_LENGTH` characters (a ``1`` or ``rgb`` is
    everywhere), a value inside a word or a number (``2026`` in a hash), the strings of ``plain``
    (what the user wrote or named as it is: the config's other values, the class names) and
    occurrences inside one of them (a path under the run folder the config names), mapping keys."""
    values = watched_values(names)
    placed: list[tuple[tuple, str]] = []
    if not values:
        return data, placed
    plain = set(plain)
    skip = set(skip)

    def check(text: str, path: tuple) -> str:
        if text in plain:
            return text
        for value, name in values:
            if text == value:
                placed.append((path, name))
                return "${" + name + "}"
            if value in text and _unexplained(text, value, plain):
                position = ".".join(str(p) for p in path) or "(top level)"
                raise UserError(f"{where}: {position}: would hold the value of environment variable {name} inside "
                                f"other text, where it cannot be written as ${{{name}}} (a run keeps its config's "
                                f"variables out of the files it writes): not written; if the value is no secret, "
                                f"give it in the config instead of ${{{name}}}")
        return text

    def visit(node: Any, path: tuple) -> Any:
        if path in skip:
            return node
        return check(node, path) if isinstance(node, str) else DESCEND

    return map_nested(data, visit), placed


_REFERENCE = re.compile(r"\$\{(\w+)\}")


def resolve_env_names(data: Any, names: Iterable[str], key: str) -> Any:
    """The inverse of :func:`redact_env_names`: every ``${NAME}`` of the variables ``names`` in
    the strings of ``data`` replaced by the variable's value (other ``${...}`` text is left as it
    is); a variable that is not set is a :class:`ConfigError` naming ``key``."""
    names = set(names)
    if not names:
        return data

    def replace(text: str) -> str:
        if "${" not in text:
            return text
        return _REFERENCE.sub(lambda m: _resolve_one(m.group(1), key, {}) if m.group(1) in names else m.group(0),
                              text)

    return _map_strings(data, replace)


DESCEND = object()
"""What a :func:`map_nested` visitor returns to keep a value and go into it if it is a container."""


def map_nested(node: Any, visit: Callable[[Any, tuple], Any], path: tuple = ()) -> Any:
    """``node`` (nested dicts/lists/tuples) rewritten top-down: ``visit(value, key_path)`` returns
    the value's replacement, or :data:`DESCEND` to keep it (a dict's or list's values visited in
    turn; keys are never visited). A container whose values did not change is returned itself (a
    torch ``state_dict`` keeps its type and metadata); a changed dict or list is a new plain one."""
    got = visit(node, path)
    if got is not DESCEND:
        return got
    if isinstance(node, dict):
        items = {k: map_nested(v, visit, (*path, k)) for k, v in node.items()}
        return node if all(items[k] is v for k, v in node.items()) else items
    if isinstance(node, (list, tuple)):
        values = [map_nested(v, visit, (*path, i)) for i, v in enumerate(node)]
        if all(a is b for a, b in zip(values, node)):
            return node
        return tuple(values) if isinstance(node, tuple) else values
    return node


def _map_strings(node: Any, replace: Callable[[str], str]) -> Any:
    """``node`` with ``replace`` applied to every string value (not to keys): :func:`map_nested`."""
    return map_nested(node, lambda value, _: replace(value) if isinstance(value, str) else DESCEND)


def same_value(value: Any, recorded: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(recorded, (list, tuple)):
        return len(value) == len(recorded) and all(same_value(a, b) for a, b in zip(value, recorded))
    return type(value) is type(recorded) and value == recorded or \
        (isinstance(value, (int, float)) and isinstance(recorded, (int, float)) and value == recorded
         and not isinstance(value, bool) and not isinstance(recorded, bool))
