"""Packaging (issue 13): pyproject.toml declares compatible ranges, constraints.txt the exact
tested versions, and what the code imports is what the package declares.

The fresh-venv install itself (non-editable, with dependencies, then a real fit and int8 TFLite
export) is ``scripts/check_install.sh``, a CI step (``.ci/run``): minutes, not a unit test.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
RUNTIME = [Requirement(text) for text in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(text) for text in reqs] for name, reqs in PROJECT["optional-dependencies"].items()}
DEV_TOOLS = {"pytest", "ruff", "import-linter"}

# Imported by stmclf but declared by the distribution on the right, which requires it (checked below):
# triton is loaded before TensorFlow only where torch's Linux wheels bring it (stmclf/export/tflite.py).
COMES_WITH = {"triton": "torch"}


def constraints() -> dict[str, Requirement]:
    """constraints.txt: canonical name → its ``==`` pin."""
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt:{number}: {line!r} is not an exact pin"
        assert not req.extras, f"constraints.txt:{number}: pip refuses extras in constraints ({line!r})"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt:{number}: {req.name} pinned twice"
        pins[name] = req
    return pins


def declared(reqs) -> set[str]:
    return {canonicalize_name(req.name) for req in reqs}


def closure(reqs) -> set[str]:
    """The distributions ``reqs`` pull in, following the installed distributions' metadata
    (markers evaluated for this interpreter and the requested extras)."""
    seen: dict[str, set[str]] = {}
    stack = list(reqs)
    while stack:
        req = stack.pop()
        name, extras = canonicalize_name(req.name), set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in {""} | extras):
                stack.append(sub)
    return set(seen)


def imported_modules(files) -> dict[str, set[str]]:
    """Top-level third-party module → the files importing it (anywhere: module level or lazily)."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(path.name)
    return found


@functools.cache
def module_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    return {canonicalize_name(d) for d in module_distributions().get(module, [])}


def test_every_declared_requirement_has_a_pin_inside_its_range():
    pins = constraints()
    for req in RUNTIME + [r for reqs in EXTRAS.values() for r in reqs]:
        assert not any(spec.operator in ("==", "===") for spec in req.specifier), \
            f"pyproject.toml: {req} is an exact pin; ranges go in pyproject.toml, pins in constraints.txt"
        assert req.specifier, f"pyproject.toml: {req.name} has no version range"
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"constraints.txt does not pin {req.name}"
        version = next(iter(pin.specifier)).version
        assert req.specifier.contains(version, prereleases=True), \
            f"constraints.txt pins {req.name}=={version}, outside pyproject.toml's {req.specifier}"


def test_every_pin_is_something_the_package_installs():
    wanted = closure(RUNTIME + [r for reqs in EXTRAS.values() for r in reqs])
    for name in constraints():
        assert name in wanted, f"constraints.txt pins {name}, which neither pyproject.toml nor its dependencies ask for"


def test_every_third_party_import_of_stmclf_is_a_declared_runtime_or_tflite_dependency():
    allowed = declared(RUNTIME) | declared(EXTRAS["tflite"])
    imports = imported_modules(sorted((ROOT / "stmclf").rglob("*.py")))
    imports.pop("stmclf", None)
    assert {"torch", "lightning", "onnx2tf"} <= set(imports)  # the scan sees the code
    for module, files in sorted(imports.items()):
        dists = distributions_of(module)
        assert dists, f"stmclf imports {module} ({', '.join(sorted(files))}), which no installed distribution provides"
        if module in COMES_WITH:
            parent = COMES_WITH[module]
            assert parent in allowed and dists & closure([Requirement(parent)]), \
                f"{module} is expected to come with {parent}, which does not require it"
            continue
        assert dists & allowed, (f"stmclf imports {module} ({', '.join(sorted(files))}) from {', '.join(sorted(dists))}: "
                                 f"not declared in pyproject.toml's dependencies or tflite extra")


def test_the_tflite_extra_covers_what_onnx2tf_imports():
    """onnx2tf 1.28 declares no dependencies: everything it imports must come from our lists."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None:
        pytest.skip("onnx2tf is not installed (the tflite extra)")
    package = Path(next(iter(spec.submodule_search_locations)))
    imports = imported_modules(sorted(package.rglob("*.py")))
    imports.pop("onnx2tf", None)
    assert {"tensorflow", "onnx_graphsurgeon", "sng4onnx", "sne4onnx", "psutil"} <= set(imports)
    available = closure(RUNTIME + EXTRAS["tflite"])
    for module, files in sorted(imports.items()):
        dists = distributions_of(module)
        assert dists & available, (f"onnx2tf imports {module} ({', '.join(sorted(files)[:3])}), which neither "
                                   f"stmclf's dependencies nor its tflite extra install")


def test_pytest_and_the_tools_are_dev_only():
    runtime = declared(RUNTIME)
    assert not runtime & DEV_TOOLS, f"runtime dependencies include {runtime & DEV_TOOLS}"
    for extra, reqs in EXTRAS.items():
        if extra != "dev":
            assert not declared(reqs) & DEV_TOOLS, f"the {extra} extra includes {declared(reqs) & DEV_TOOLS}"
    assert declared(EXTRAS["dev"]) == DEV_TOOLS


def test_the_set_up_scripts_name_files_that_exist():
    """The install scripts and guide use constraints.txt and only name files that exist."""
    texts = {name: (ROOT / name).read_text(encoding="utf-8")
             for name in ("scripts/setup_env.sh", "scripts/check_install.sh", ".ci/run", "docs/install.md")}
    for name in ("scripts/setup_env.sh", "scripts/check_install.sh"):
        assert "constraints.txt" in texts[name] and re.search(r"(?i)pip\"? install\b[^\n]* -c \S", texts[name]), \
            f"{name} does not install with -c constraints.txt"
    assert "scripts/check_install.sh" in texts[".ci/run"]
    for name, text in texts.items():
        named = re.findall(r"(?<![\w/.])((?:docs|scripts|configs|benchmarks|tests)/[\w./-]*\w|[\w-]+\.txt)\b", text)
        for path in set(named):
            assert (ROOT / path).exists(), f"{name} names {path}, which does not exist"
