"""Run ``benchmarks/gpu_check.sh`` on a bare GPU machine that has PyTorch but not stmclf's set-up.

The lent GPU machines (the workplace's ``device`` tool) start from one image with Python 3.12,
PyTorch, Lightning, torchmetrics, timm and the usual scientific stack, and reach no network: the
README set-up cannot run there. Four pure-Python packages stmclf's training path imports are not
in that image; they travel as wheels in ``.whl/`` (git-ignored), installed into a folder on
``PYTHONPATH`` before the check:

    .venv/bin/python benchmarks/gpu_device.py wheels        # here: download them into .whl/
    .venv/bin/python benchmarks/gpu_device.py command       # the command to give the machine (carry .whl)
    .venv/bin/python benchmarks/gpu_device.py site DIR      # a folder of this venv's packages limited to
                                                            # the image's + the wheels' (the test's emulation)

``tests/test_gpu_check.py`` runs ``gpu_check.py --smoke`` with ``python -S`` on such a folder, so a
new import of a package the image lacks (mlflow, TensorFlow, …) on the training path fails the
suite here rather than the few minutes of a GPU loan.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
PYTHON_VERSION = "3.12"  # the image's python3

#: The distributions of the GPU machines' image ('cuda', read 2026-11-17; the device tool's KINDS.md).
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

#: What stmclf's training path needs beyond the image (LightningCLI's parser and its extras).
CARRIED = ("jsonargparse", "docstring-parser", "omegaconf", "typeshed-client")


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def carried_pins() -> list[str]:
    """The carried packages at the versions installed here (what the tests ran with)."""
    return [f"{name}=={md.version(name)}" for name in CARRIED]


def download_wheels(dest: Path = WHEELS) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    PYTHON_VERSION, "--implementation", "cp", *platforms, "-d", str(dest), *carried_pins()], check=True)
    return sorted(dest.glob("*.whl"))


def device_command(out: str = "$OUT/gpu_check.json") -> str:
    """The one command for the machine (``carry: [".whl"]``): install the wheels beside the image's
    packages, then the check with the image's python3."""
    return ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
            ".whl/*.whl && export PYTHONPATH=/tmp/site PYTHON=python3 && bash benchmarks/gpu_check.sh "
            f"--out {out}")


def emulated_site(target: Path, site_packages: Path | None = None) -> Path:
    """``target``: links to the top-level entries of this environment's distributions that the
    image has or that are carried; with ``python -S`` and ``PYTHONPATH=target`` only those import."""
    site_packages = site_packages or Path(md.distribution("torch").locate_file(""))
    allowed = {normalise(n) for n in IMAGE_PACKAGES | set(CARRIED)}
    target.mkdir(parents=True, exist_ok=True)
    linked: set[str] = set()
    for dist in md.distributions(path=[str(site_packages)]):
        if normalise(dist.metadata["Name"]) not in allowed:
            continue
        for file in dist.files or ():
            top = file.parts[0]
            if top in linked or top in ("..", "__pycache__") or not (site_packages / top).exists():
                continue
            os.symlink(site_packages / top, target / top)
            linked.add(top)
    return target


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from stmclf.config.parser import ScriptParser  # stmclf's parsing: no prefixes, "did you mean"

    parser = ScriptParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("wheels", help=f"download the carried wheels for Python {PYTHON_VERSION} into .whl/")
    sub.add_parser("command", help="print the command to run on the GPU machine (carry .whl)")
    site = sub.add_parser("site", help="build the emulated image site in DIR")
    site.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.what == "wheels":
        for wheel in download_wheels():
            print(wheel.relative_to(ROOT))
    elif args.what == "command":
        print(device_command())
    else:
        print(emulated_site(args.dir))


if __name__ == "__main__":
    main()
