"""``stmclf data check``: read every file of a folder dataset and list what is wrong with it.

Unlike the loader (:mod:`stmclf.data.folder`), which stops at the first structural problem,
the check walks every given path (training, validation, test, quantization), collects every
problem with the path it concerns, and decodes every image file in a process pool with the
loader's own decoders (:func:`stmclf.data.decode.decode_for_resize`), so a file that passes here
decodes during training.

Problems (``CheckReport.ok`` is False if there is any):

- ``missing-root``: a given path is not a directory; ``no-classes``: it has no class folders;
- ``missing-class``: a class folder of the classes (``dataset.class_names``, else the first
  path's folders) that a path lacks; ``class-name``: a class folder whose name is not UTF-8 text;
- ``empty-class``: a class folder with no files;
- ``sub-folder``: a folder inside a class folder, at any depth (the loader refuses them);
- ``not-image``: a file whose extension is not .jpg/.jpeg/.png/.bmp/.gif, or whose content is
  not JPEG, PNG, GIF or BMP;
- ``empty-file``: a zero-byte file; ``corrupt``: a file that fails to decode (truncated, ...);
  ``unreadable``: a file or folder that cannot be opened (permissions, ...);
- ``bomb``: a decompression bomb, more pixels than ``$STMCLF_MAX_IMAGE_PIXELS`` (default 50 MP),
  refused from its header.

Training skips every such file (logged once, its place in a batch taken by another image).

Warnings (reported, not broken): ``imbalance`` (largest / smallest class count above a ratio),
``extra-class`` (a class folder of a later path that is not among the first path's classes: the
loader ignores it, with a warning) and ``stray-file`` (files directly under a dataset root, which
the loader ignores); and files
that are read but suspicious: ``symlink-outside`` (a symbolic link, or a file in a linked class
folder, whose target is outside the dataset root: training reads it, with one warning line),
``format-mismatch`` (a PNG named .jpg, ...: read by content), ``16-bit`` (reduced to 8 bits),
``cmyk`` (converted to RGB without its colour profile) and ``palette-alpha`` (a palette image with
transparency: the alpha is dropped unless color_mode is rgba).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from stmclf.data.files import CLASS_NAME_USE, IMAGE_SUFFIXES, class_name_problem, is_dir_entry, outside_root
from stmclf.cpus import ProcessMap, available_cpus
from stmclf.errors import UserError, printable_path

log = logging.getLogger("stmclf.data")

DATASET_KEYS = ("training_path", "validation_path", "test_path", "quantization_path")
BUILTIN_DATASETS = ("cifar10", "cifar100", "emnist")  # as stmclf.config.rules: not folder datasets
PROBLEM_KINDS = ("missing-root", "no-classes", "missing-class", "class-name", "empty-class", "sub-folder",
                 "unreadable", "not-image", "empty-file", "corrupt", "bomb")
WARNING_KINDS = ("imbalance", "extra-class", "stray-file", "symlink-outside", "format-mismatch", "16-bit", "cmyk",
                 "palette-alpha")
DEFAULT_IMBALANCE_RATIO = 3.0
INLINE_MAX_FILES = 32
"""Fewer files than this are decoded in this process (a pool costs more than it saves)."""

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"BM", "BMP"))
_SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP"}


@dataclass(frozen=True)
class Problem:
    """One finding: what (``kind``), where (``path``, in the set ``key``) and why (``detail``)."""

    kind: str
    path: str
    key: str
    detail: str = ""

    @property
    def broken(self) -> bool:
        return self.kind not in WARNING_KINDS


@dataclass
class FolderSummary:
    """Per-class image counts of one dataset path; ``bad`` counts the files reported as problems."""

    key: str
    root: str
    counts: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class CheckReport:
    """Everything ``check_dataset`` found. ``ok`` ignores warnings."""

    folders: list[FolderSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    files_checked: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def paths(self, kind: Optional[str] = None) -> list[str]:
        """The paths of the problems (of one ``kind``), in report order."""
        return [p.path for p in self.problems if kind is None or p.kind == kind]

    def by_kind(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for problem in self.problems:
            out.setdefault(problem.kind, []).append(problem)
        return out

    @property
    def location(self) -> str:
        roots = list(dict.fromkeys(f.root for f in self.folders))
        if len(roots) > 1:
            try:
                common = os.path.commonpath([os.path.abspath(r) for r in roots])
            except ValueError:
                common = ""
            if common and common != os.path.dirname(common):  # not the file-system root
                relative = os.path.relpath(common)
                return relative if not relative.startswith("..") else common
            return ", ".join(roots)
        return roots[0] if roots else "the dataset"

    def summary(self) -> str:
        if self.ok:
            warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
            return f"dataset check: {self.files_checked} files in {self.location}, no problems{warned}"
        count = len(self.problems)
        return f"dataset check found {count} problem{'s' if count != 1 else ''} in {self.location}"

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"ok": self.ok, **asdict(self)}


# ---------------------------------------------------------------------------------------------
# One file (runs in the pool's worker processes)

def _sniff(head: bytes) -> Optional[str]:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _describe_content(data: bytes) -> str:
    """What a file that is not JPEG/PNG/GIF/BMP looks like, for the message (from the bytes already
    read: the path is not opened again, it may have become a FIFO or another file since)."""
    from stmclf.data.decode import other_format

    known = other_format(data)
    if known:
        return known
    head = data[:16]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text content, not an image"
    return "content is not a JPEG, PNG, GIF or BMP image"


Finding = tuple[str, str]  # (kind, detail)


def inspect_image(path: str, color_mode: str = "rgb", max_pixels=None) -> tuple[Optional[Finding], list[Finding]]:
    """What is wrong with one image file (``(kind, detail)``, None if it decodes) and what is
    suspicious about a file that decodes (a list of ``(kind, detail)`` warnings); decoded by the
    loader's own functions (:mod:`stmclf.data.decode`). ``max_pixels``: the decompression-bomb
    limit (default: :func:`~stmclf.data.decode.max_image_pixels`, read now)."""
    from stmclf.data.decode import ImageDecodeError, decode_for_resize, max_image_pixels, open_image, read_file

    if max_pixels is None:
        max_pixels = max_image_pixels()
    elif max_pixels == 0:  # "no limit", as a value that survives the trip to a pool worker
        max_pixels = None

    try:
        data = read_file(path)
    except ImageDecodeError as exc:
        return (exc.kind, exc.reason), []
    if not data:
        return ("empty-file", "zero-byte file"), []
    found = _sniff(data[:16])
    if found is None:
        return ("not-image", _describe_content(data)), []
    try:
        with open_image(data, path, max_pixels) as image:
            notes = _suspicious(path, data, found, image, color_mode)
        decode_for_resize(data, color_mode, path)  # the loader's decoders: it reads what passes here
    except ImageDecodeError as exc:
        return (exc.kind, exc.reason), []
    except Exception as exc:  # noqa: BLE001 - a checker reports, it does not crash
        return ("corrupt", f"{type(exc).__name__}: {exc}"), []
    return None, notes


def _suspicious(path: str, data: bytes, found: str, image, color_mode: str) -> list[Finding]:
    notes: list[Finding] = []
    suffix = os.path.splitext(path)[1].lower()
    expected = _SUFFIX_FORMATS.get(suffix)
    if expected is not None and expected != found:
        notes.append(("format-mismatch", f"{found} content in a {suffix} file (read by its content)"))
    if (found == "PNG" and data[12:16] == b"IHDR" and len(data) > 24 and data[24] == 16) or \
            image.mode in ("I;16", "I;16B", "I;16L", "I"):
        notes.append(("16-bit", f"16-bit {found}: reduced to 8 bits per channel"))
    if image.mode == "CMYK":
        notes.append(("cmyk", f"CMYK {found}: converted to RGB without its colour profile (colours may be off)"))
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        notes.append(("palette-alpha", "palette image with transparency: " +
                      ("read as RGBA" if color_mode == "rgba" else
                       f"the transparency is dropped in {color_mode} (transparent pixels take their palette colour)")))
    return notes


def inspect_file(path: str, color_mode: str = "rgb") -> tuple[Optional[str], str]:
    """``(kind, detail)`` of what is wrong with one image file, ``(None, "")`` if it decodes."""
    problem, _ = inspect_image(path, color_mode)
    return problem if problem is not None else (None, "")


# ---------------------------------------------------------------------------------------------
# Folder walk (collects problems instead of raising)

def _entries(folder: str) -> tuple[list[os.DirEntry], Optional[str]]:
    """Non-hidden entries of ``folder`` sorted by name, or the error that stopped the listing."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name), None
    except OSError as exc:
        return [], exc.strerror or str(exc)


@dataclass
class _Folder:
    key: str
    root: str
    classes: dict[str, list[str]] = field(default_factory=dict)  # class → candidate image files
    bad: dict[str, int] = field(default_factory=dict)


def _sub_folder(entry: os.DirEntry, path: str, key: str, problems: list[Problem]) -> None:
    """Report a folder found inside a class folder and every folder below it, depth first in name
    order, without recursion (a dataset may nest thousands of folders); a link to a folder (perhaps
    to one above it: a loop) is named, not followed."""
    pending = [(entry.is_symlink(), path)]
    while pending:
        link, folder = pending.pop()
        if link:
            problems.append(Problem("sub-folder", folder, key, "a link to a folder inside a class folder (not followed)"))
            continue
        entries, error = _entries(folder)
        files = sum(1 for e in entries if not is_dir_entry(e))
        if error:
            problems.append(Problem("unreadable", folder, key, error))
        problems.append(Problem("sub-folder", folder, key,
                                f"folders are not allowed inside class folders ({files} file(s) here are not read)"))
        pending.extend((e.is_symlink(), str(Path(folder) / e.name)) for e in reversed(entries) if is_dir_entry(e))


def _scan_class(folder: _Folder, name: str, problems: list[Problem], warnings: list[Problem]) -> None:
    directory = Path(folder.root) / name
    entries, error = _entries(str(directory))
    if error:
        problems.append(Problem("unreadable", str(directory), folder.key, error))
    images: list[str] = []
    bad = 0
    files = 0
    real_root = os.path.realpath(folder.root)
    linked_folder = outside_root(str(directory), real_root) is not None
    for entry in entries:
        path = str(directory / entry.name)
        if is_dir_entry(entry):
            _sub_folder(entry, path, folder.key, problems)
            continue
        files += 1
        suffix = Path(entry.name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            problems.append(Problem("not-image", path, folder.key,
                                    f"extension {suffix or '(none)'} is not .jpg, .jpeg, .png, .bmp or .gif"))
            bad += 1
            continue
        if linked_folder or entry.is_symlink():
            target = outside_root(path, real_root)
            if target is not None:
                warnings.append(Problem("symlink-outside", path, folder.key,
                                        f"links to {printable_path(target)}, outside the dataset root {real_root} "
                                        "(training reads it)"))
        images.append(path)
    if files == 0 and not error:
        problems.append(Problem("empty-class", str(directory), folder.key, "class folder has no files"))
    folder.classes[name] = images
    folder.bad[name] = bad


def _class_dirs(key: str, root: str, problems: list[Problem], warnings: list[Problem]) -> Optional[list[str]]:
    if not os.path.isdir(root):
        problems.append(Problem("missing-root", root, key, "not a directory" if os.path.exists(root)
                                else "directory not found"))
        return None
    entries, error = _entries(root)
    if error:
        problems.append(Problem("unreadable", root, key, error))
        return None
    names = [e.name for e in entries if is_dir_entry(e)]
    stray = [e.name for e in entries if not is_dir_entry(e)]
    for name in [n for n in names if class_name_problem(n)]:
        problems.append(Problem("class-name", printable_path(os.path.join(root, name)), key,
                                f"the class folder's name {class_name_problem(name)}: rename it ({CLASS_NAME_USE})"))
        names.remove(name)
    if stray:
        shown = ", ".join(stray[:3]) + (f", ... ({len(stray)} in all)" if len(stray) > 3 else "")
        warnings.append(Problem("stray-file", root, key, f"files outside class folders are ignored: {shown}"))
    if not names:
        problems.append(Problem("no-classes", root, key, "expecting class sub-folders under the dataset root"))
        return None
    return names


# ---------------------------------------------------------------------------------------------
# The check

def default_workers() -> int:
    return available_cpus()


def _pool_context():
    import multiprocessing

    # fork is fastest (workers inherit the imports) but unsafe once other threads run (MLflow,
    # loggers); then use a fork server.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _decode_all(paths: Sequence[str], color_mode: str, workers: int, progress: bool,
                max_pixels: int) -> list[tuple[Optional[Finding], list[Finding]]]:
    bar = _progress_bar(progress, len(paths))
    results: list[tuple[Optional[Finding], list[Finding]]] = []
    try:
        if workers <= 1 or len(paths) < INLINE_MAX_FILES:
            iterator: Iterable = map(inspect_image, paths, repeat(color_mode), repeat(max_pixels))
        else:
            workers = min(workers, len(paths))
            chunk = max(1, min(64, len(paths) // (workers * 8)))
            iterator = ProcessMap(inspect_image, zip(paths, repeat(color_mode), repeat(max_pixels)),
                                  workers=workers, context=_pool_context(), chunksize=chunk, label="data check",
                                  instead="checking", log=log)
        for result in iterator:
            results.append(result)
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    return results


def _progress_bar(enabled: bool, total: int):
    if not enabled or total == 0:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    progress = Progress(TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True)
    progress.start()
    return progress, progress.add_task("check", total=total)


def dataset_paths(dataset) -> list[tuple[str, str]]:
    """(key, path) of the folder datasets a ``dataset`` section names, in the reference's order."""
    builtin = (getattr(dataset, "name", "") or "").lower() in BUILTIN_DATASETS
    out = []
    for attr in DATASET_KEYS:
        path = getattr(dataset, attr, None)
        if not path or (builtin and attr in ("training_path", "validation_path")):
            continue
        out.append((f"dataset.{attr}", str(path)))
    return out


def check_dataset(dataset, color_mode: str = "rgb", workers: Optional[int] = None,
                  imbalance_ratio: Optional[float] = DEFAULT_IMBALANCE_RATIO,
                  progress: bool = False) -> CheckReport:
    """Check every folder path of a ``dataset`` config section; never raises for a dataset problem.

    ``workers``: decoding processes (default: one per core; 0 or 1 decodes in this process).
    ``imbalance_ratio``: warn when a path's largest class has more than this many times the
    images of its smallest (None: no imbalance warning). ``progress``: a progress bar on a terminal.
    """
    from stmclf.data.decode import max_image_pixels

    max_pixels = max_image_pixels() or 0  # read here (a wrong value: one line), passed to the decoding processes
    report = CheckReport()
    problems, warnings = report.problems, report.warnings
    builtin = (getattr(dataset, "name", "") or "").lower() in BUILTIN_DATASETS
    if builtin:
        report.notes.append(f"dataset.name {dataset.name}: training_path/validation_path are not folder datasets "
                            "and are not checked")
    given = dataset_paths(dataset)
    if not given:
        report.notes.append("no folder dataset path given")
        return report

    class_filter = sorted(dataset.class_names) if getattr(dataset, "class_names", None) else None
    folders: list[_Folder] = []
    present: dict[str, list[str]] = {}
    for key, root in given:
        names = _class_dirs(key, root, problems, warnings)
        folder = _Folder(key, root)
        folders.append(folder)
        if names is None:
            continue
        present[key] = names
    # The loader's class names: dataset.class_names, else the folders of the first path given
    # (other paths' extra folders are ignored there, with a warning: the same here).
    class_source = None if class_filter is not None else next(iter(present), None)
    class_names = class_filter if class_filter is not None else sorted(present.get(class_source, []))
    report.class_names = list(class_names)
    for key, names in present.items():
        extra = sorted(set(names) - set(class_names))
        if extra and class_source is not None and key != class_source:
            warnings.append(Problem("extra-class", dict(given)[key], key,
                                    f"class folder(s) {', '.join(extra)} are not among the {len(class_names)} classes "
                                    f"found in {class_source}: ignored"))

    for folder in folders:
        if folder.key not in present:
            continue
        available = set(present[folder.key])
        for name in class_names:
            if name not in available:
                source = "dataset.class_names" if class_filter is not None else \
                    ", ".join(k for k, names in present.items() if name in names)
                problems.append(Problem("missing-class", str(Path(folder.root) / name), folder.key,
                                        f"class folder {name!r} is missing (listed in {source})"))
                continue
            _scan_class(folder, name, problems, warnings)

    unique = list(dict.fromkeys(p for f in folders for files in f.classes.values() for p in files))
    results = dict(zip(unique, _decode_all(unique, color_mode, default_workers() if workers is None else workers,
                                           progress, max_pixels)))
    report.files_checked = len(unique) + sum(sum(f.bad.values()) for f in folders)

    for folder in folders:
        summary = FolderSummary(folder.key, folder.root)
        report.folders.append(summary)
        for name, files in folder.classes.items():
            good = 0
            bad = folder.bad.get(name, 0)
            for path in files:
                problem, notes = results[path]
                if problem is None:
                    good += 1
                    warnings.extend(Problem(kind, path, folder.key, detail) for kind, detail in notes)
                else:
                    bad += 1
                    problems.append(Problem(problem[0], path, folder.key, problem[1]))
            summary.counts[name] = good
            summary.bad[name] = bad
        _imbalance(summary, imbalance_ratio, warnings)

    order = {key: i for i, (key, _) in enumerate(given)}
    kinds = {kind: i for i, kind in enumerate(PROBLEM_KINDS + WARNING_KINDS)}
    problems.sort(key=lambda p: (order.get(p.key, 99), p.path, kinds.get(p.kind, 99)))
    warnings.sort(key=lambda p: (order.get(p.key, 99), kinds.get(p.kind, 99), p.path))
    return report


def _imbalance(summary: FolderSummary, ratio: Optional[float], warnings: list[Problem]) -> None:
    counts = {name: n for name, n in summary.counts.items() if n > 0}
    if ratio is None or len(counts) < 2:
        return
    largest = max(counts, key=counts.get)
    smallest = min(counts, key=counts.get)
    value = counts[largest] / counts[smallest]
    if value > ratio:
        warnings.append(Problem("imbalance", summary.root, summary.key,
                                f"largest class {largest!r} has {counts[largest]} images, smallest {smallest!r} "
                                f"{counts[smallest]} (ratio {value:.1f} > {ratio:g})"))


# ---------------------------------------------------------------------------------------------
# Output

_KIND_LABELS = {"missing-root": "missing path", "no-classes": "no class folders", "missing-class": "missing class",
                "class-name": "class name",
                "empty-class": "empty class", "sub-folder": "sub-folder", "unreadable": "unreadable",
                "not-image": "not an image", "empty-file": "zero-byte file", "corrupt": "corrupt image",
                "bomb": "decompression bomb", "imbalance": "class imbalance",
                "extra-class": "extra class", "stray-file": "stray files",
                "symlink-outside": "link out of root", "format-mismatch": "format ≠ extension",
                "16-bit": "16-bit image", "cmyk": "CMYK image", "palette-alpha": "palette + alpha"}


def _short(key: str) -> str:
    return key.removeprefix("dataset.").removesuffix("_path")


def print_report(report: CheckReport, console=None, max_rows: Optional[int] = 200) -> None:
    """Rich tables: images per class and path, then problems and warnings (``max_rows`` each;
    None for all). Names and paths are plain text (a file named ``b]x.png`` in a folder ``c[``
    is no Rich markup tag), their non-printable characters escaped (:func:`printable_path`)."""
    from rich.table import Table
    from rich.text import Text

    from stmclf.console import data_console

    if console is None:  # redirected: one line per problem, paths unbroken (data_console)
        console = data_console()
    for note in report.notes:
        console.print(Text(printable_path(note), style="dim"))
    folders = [f for f in report.folders if f.counts]
    if folders:
        table = Table(title="Images per class")
        table.add_column("class")
        for folder in folders:
            table.add_column(Text(f"{_short(folder.key)}\n{printable_path(folder.root)}"), justify="right",
                             overflow="fold")
        for name in report.class_names:
            row = [Text(printable_path(name))]
            for folder in folders:
                if name not in folder.counts:
                    row.append(Text("missing", style="red"))
                    continue
                text = Text(str(folder.counts[name]), style="red" if folder.counts[name] == 0 else "")
                if folder.bad.get(name):
                    text.append(f" (+{folder.bad[name]} bad)", style="red")
                row.append(text)
            table.add_row(*row)
        table.add_row(Text("total", style="bold"), *[Text(str(f.total), style="bold") for f in folders])
        console.print(table)
    for title, items, style in (("Problems", report.problems, "red"), ("Warnings", report.warnings, "yellow")):
        if not items:
            continue
        shown = items if max_rows is None else items[:max_rows]
        table = Table(title=f"{title} ({len(items)})", title_style=style)
        table.add_column("problem" if title == "Problems" else "warning", style=style, no_wrap=True)
        table.add_column("set", no_wrap=True)
        table.add_column("path", overflow="fold")
        table.add_column("detail", overflow="fold")
        for item in shown:
            table.add_row(_KIND_LABELS.get(item.kind, item.kind), _short(item.key), Text(printable_path(item.path)),
                          Text(printable_path(item.detail)))
        console.print(table)
        if len(shown) < len(items):
            console.print(f"[{style}]... and {len(items) - len(shown)} more {title.lower()} "
                          f"(--max_rows 0 lists all)[/{style}]")
    if report.ok:  # else the caller's one error line says it (exit code 2)
        console.print(Text(report.summary(), style="green"))


def check_image_files(dataset, color_mode: str = "rgb", workers: Optional[int] = None, console=None) -> CheckReport:
    """What ``dataset.check_image_files: True`` does before training: check every file; if
    anything is broken, print the report and raise :class:`UserError` (exit code 2)."""
    report = check_dataset(dataset, color_mode, workers, progress=True)
    if not report.ok:
        print_report(report, console)
        raise UserError(f"{report.summary()} (see above); dataset.check_image_files is True")
    for warning in report.warnings:
        log.warning("%s: %s", printable_path(warning.path), printable_path(warning.detail))
    log.info("%s", report.summary())
    return report
