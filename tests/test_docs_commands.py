"""Every ``stmclf ...`` command line of the documentation names a real command and real options.

README.md, docs/*.md (fenced shell blocks and inline code) and the comment lines of configs/*.yaml
are read as a user copies them; each command line is checked against the parser the command
builds (``stmclf.cli.main.command_parser``) without running it: the command (``data fetch``,
``data check`` included), every ``--option``, every ``--section.key``/``section.key=VALUE``
override (keys of the schema's sections; ``trainer.*``: Lightning's Trainer arguments), no stray
positional argument, and the name of a ``data fetch`` dataset. Placeholders in capitals
(``stmclf COMMAND --help``, ``--out DIR``) and ``[optional]`` brackets are read as the docs mean
them. A misspelled option or key in a doc fails here (see the last test), in a few seconds.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stmclf.cli.main import COMMANDS, HELP_TRAINER, command_parser
from stmclf.config.parser import convert_overrides, unknown_option
from stmclf.data.fetch import FETCHERS
from stmclf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "configs").glob("*.yaml"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHELL = ("bash", "sh", "shell", "console")
"""Fenced blocks read as command lines (untagged ones are diagrams and file trees)."""
STMCLF = re.compile(r"(?:^|[\s&;|(])((?:\S*/)?stmclf [^\n]*)")
"""``stmclf ...`` (``.venv/bin/stmclf ...`` too) to the end of its line."""
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_0-9]*$")


def command_lines(path: Path, root: Path = ROOT) -> list[tuple[str, str]]:
    """(``file:line``, command text) of every ``stmclf`` command line of ``path``."""
    text = path.read_text(encoding="utf-8")
    found: list[tuple[int, str]] = []
    if path.suffix == ".yaml":  # a shipped config says how to run it in its comments
        for line in re.finditer(r"^#.*$", text, re.M):
            found += [(line.start() + m.start(1), m.group(1)) for m in STMCLF.finditer(line.group(0))]
    else:
        for block in FENCE.finditer(text):  # shell blocks: every line, continuations joined
            if block.group(1) in SHELL:
                body = block.group(2).replace("\\\n", "  ")  # same length: positions kept
                found += [(block.start(2) + m.start(1), m.group(1)) for m in STMCLF.finditer(body)]
        prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # same positions
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):  # inline code, over a line break too
            code = " ".join(m.group(1).split("\n"))
            if code.startswith(("stmclf ", ".venv/bin/stmclf ")) and "\n\n" not in m.group(1):
                found.append((m.start(1), code))
    return [(f"{path.relative_to(root)}:{text.count(chr(10), 0, at) + 1}", command) for at, command in found]


def command_argv(command: str) -> list[str] | None:
    """The arguments after ``stmclf`` as the shell passes them (up to a pipe, redirection, ``&&``,
    ``;`` or comment; ``[...]`` marks optional parts, ``...`` elided ones); None for text that only
    quotes a message (``stmclf fit: no config given``)."""
    if command.split()[1].endswith(":"):
        return None
    lexer = shlex.shlex(command.replace("2>&1", " "), posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = []
    for word in lexer:
        if word and set(word) <= set("|&;<>"):
            break
        words.append(word)
    words = [w.strip("[]") for w in words[1:]]
    return [w for w in words if w and w not in ("...", "…")]


def _takes_value(parser, option: str) -> bool:
    for action in parser._actions:
        if option in action.option_strings:
            return action.nargs != 0
    return True  # --section.key VALUE


def problems(argv: list[str]) -> list[str]:
    """Why ``stmclf ARGV`` would be refused before it runs (empty when it parses)."""
    if PLACEHOLDER.match(argv[0]) or argv[0] in ("-h", "--help", "-V", "--version"):
        return []
    if argv[0] == "help":
        return [] if len(argv) == 1 or argv[1] in COMMANDS or PLACEHOLDER.match(argv[1]) else \
            [f"help {argv[1]}: unknown command"]
    if not argv:
        return []
    try:
        parser, args = command_parser(argv)
        config_command = any(a.dest == "print_config" for a in parser._actions)
        converted = convert_overrides([a for a in args if a not in HELP_TRAINER or not config_command])
        unknown = unknown_option(parser, converted)
    except UserError as exc:
        return [str(exc)]
    found = [unknown] if unknown else []
    positionals, value_of = [], None
    for arg in converted:
        if value_of is not None:
            value_of = None
            continue
        name, eq, _ = arg.partition("=")
        if arg.startswith("-"):
            value_of = name if not eq and _takes_value(parser, name) else None
        else:
            positionals.append(arg)
    allowed = sum(1 for a in parser._actions if not a.option_strings)
    if len(positionals) > allowed:
        found.append(f"unexpected argument(s) {positionals[allowed:]}")
    if argv[:2] == ["data", "fetch"] and positionals and not PLACEHOLDER.match(positionals[0]) \
            and positionals[0] not in FETCHERS:
        found.append(f"data fetch {positionals[0]}: no such dataset (known: {', '.join(FETCHERS)})")
    return found


LINES = [(where, command) for path in DOCS for where, command in command_lines(path)]


def test_the_docs_hold_command_lines():
    assert len(LINES) > 50, LINES
    files = {where.split(":")[0] for where, _ in LINES}
    assert {"README.md", "docs/config.md", "docs/install.md", "docs/training.md"} <= files, files


def test_every_documented_command_line_parses():
    """One test for all lines (each parse is milliseconds): every problem is listed with its file
    and line."""
    bad = []
    for where, command in LINES:
        try:
            argv = command_argv(command)
        except ValueError as exc:  # shlex: an unclosed quote
            bad.append(f"{where}: {command}\n    {exc}")
            continue
        if argv is not None:
            bad += [f"{where}: {command}\n    {problem}" for problem in problems(argv)]
    assert not bad, "documented command lines that stmclf refuses:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc, problem", [
    ("```bash\nstmclf fit --confg configs/quickstart.yaml\n```\n", "unknown option --confg (did you mean --config?)"),
    ("Run `stmclf export --run RUN --int8 --per-layr`.\n", "unknown option --per-layr (did you mean --per-layer?)"),
    ("```bash\nstmclf fit --config x.yaml training.epoch=3   # fewer epochs\n```\n",
     "training.epoch: unknown key (did you mean epochs?)"),
    ("`stmclf fit --config x.yaml --trainer.precison 32`\n", "trainer.precison: unknown key"),
    ("`stmclf fitt --config x.yaml`\n", "unknown command 'fitt' (did you mean fit?)"),
    ("`stmclf data fetch digit --out DIR`\n", "data fetch digit: no such dataset"),
    ("`stmclf data chek --config x.yaml`\n", "unknown data command 'chek'"),
    ("`stmclf fit x.yaml`\n", "unexpected argument(s) ['x.yaml']"),
    ("`stmclf run --config x.yaml generall.project_name=p`\n", "generall: unknown top-level section"),
])
def test_a_misspelled_command_line_in_a_doc_is_found(doc, problem, tmp_path):
    page = tmp_path / "page.md"
    page.write_text(doc)
    (where, command), = command_lines(page, tmp_path)
    assert where == "page.md:" + str(1 + doc[:doc.find("stmclf ")].count("\n"))
    found = problems(command_argv(command))
    assert any(problem in p for p in found), found
