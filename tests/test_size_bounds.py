"""Sizes and counts with upper bounds (review s16 D5, D7, D8).

- augmentation sizes (grid cells, blur filter, periodic resizing, rectangles): refused at config
  time with one line naming the key, exit 2, nothing written (the hostile-config harness);
  an allocation failure inside the augmentation pipeline is one ConfigError naming the function;
- a 10,000-class confusion-matrix figure: a bounded number of tick labels, no per-cell text,
  written in seconds;
- a self-referencing interpolation and a huge integer: one line naming the key.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from test_hostile_configs import Case, append, run_in_process, sub
from stmclf.errors import ConfigError

BIG = "1" * 5000


def augmentation(body: str):
    return append("data_augmentation:\n" + body)


CASES = [
    # absolute bounds (any input size)
    Case("grid-cells-1e9", augmentation("  random_grid_cell_erasing: {ncells_x: 1000000000, ncells_y: 1000000000}\n"),
         r"^data_augmentation\.random_grid_cell_erasing\.ncells_x: expecting an integer in \[1, 8192\]; got 1000000000$"),
    Case("blur-filter-1e8", augmentation("  random_blur: {filter_size: 100000000}\n"),
         r"^data_augmentation\.random_blur\.filter_size: expecting an integer in \[1, 8192\]; got 100000000$"),
    Case("periodic-resizing-60000", augmentation("  random_periodic_resizing: {period: 1, image_sizes: [[60000, 60000]]}\n"),
         r"^data_augmentation\.random_periodic_resizing\.image_sizes: .*integers from 1 to 8192; got \(60000, 60000\)"),
    Case("rectangles-1e9", augmentation("  random_rectangle_erasing: {nrec: 1000000000}\n"),
         r"^data_augmentation\.random_rectangle_erasing\.nrec: expecting .* in \[0, 100\]"),
    # bounds from the model input (32x32x3) and the batch size
    Case("blur-filter-above-image", augmentation("  random_blur: {filter_size: [2, 33]}\n"),
         r"^data_augmentation\.random_blur\.filter_size: must be at most the image side, 32 \(the model input is "
         r"32x32\); got 33$"),
    Case("grid-cells-above-width", augmentation("  random_grid_cell_erasing: {ncells_x: 33, ncells_y: 2}\n"),
         r"^data_augmentation\.random_grid_cell_erasing\.ncells_x: must be at most the image width, 32"),
    Case("grid-cells-above-height", augmentation("  random_grid_cell_erasing: {ncells_x: 2, ncells_y: 40}\n"),
         r"^data_augmentation\.random_grid_cell_erasing\.ncells_y: must be at most the image height, 32"),
    Case("periodic-resizing-beyond-memory",
         lambda t, f: augmentation("  random_periodic_resizing: {period: 1, image_sizes: [24, [8192, 8000]]}\n")(
             t.replace("batch_size: 8", "batch_size: 65536"), f),
         r"^data_augmentation\.random_periodic_resizing\.image_sizes: a batch of 65,536 images of 8000x8192x3 needs "
         r"at least .* GiB .*: use smaller sizes"),
    # D8
    Case("interpolation-self-reference", sub("  training_path:", "  name: ${dataset.name}\n  training_path:"),
         r"^dataset\.name: interpolation does not terminate \(\$\{dataset\.name\} refers to itself\)$"),
    Case("integer-of-5000-digits", sub("  seed: 3\n", f"  seed: {BIG}\n"),
         r"config\.yaml: invalid YAML \(line \d+, column \d+\): dataset\.seed: a 5,000-digit integer is too large "
         r"for any config value$"),
    Case("override-integer-of-5000-digits", lambda t, _: t,
         r"^dataset\.seed: a 5,000-digit integer is too large for any config value$", args=(f"dataset.seed={BIG}",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_up_front(case, tmp_path, image_folder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_in_process(case, tmp_path, image_folder, capsys, timed=False)  # imports may be cold here


def test_sizes_within_the_bounds_are_accepted():
    from stmclf.augment import ImageSize, build_augmentation

    size = ImageSize(32, 24, 3, batch_size=8)
    pipe = build_augmentation({"random_blur": {"filter_size": 32}, "random_grid_cell_erasing": {"ncells_x": 24,
                                                                                                  "ncells_y": 32},
                               "random_periodic_resizing": {"period": 1, "image_sizes": [[64, 48]]}},
                              (0.0, 1.0), channels=3, size=size)
    out = pipe(torch.rand(2, 3, 32, 24), torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 48, 64)


def test_allocation_failure_in_the_pipeline_is_one_config_error():
    """The backstop: a batch the kernel cannot allocate (here a size overflow: an expanded batch of
    2**40 images resized to 8192x8192, nothing actually allocated) → ConfigError naming the function."""
    from stmclf.augment import build_augmentation

    pipe = build_augmentation({"random_periodic_resizing": {"period": 1, "image_sizes": [8192]}}, (0.0, 1.0))
    images = torch.zeros(1, 1, 2, 2).expand(2**40, 1, 2, 2)
    with pytest.raises(ConfigError) as info:
        pipe(images)
    message = str(info.value)
    assert message.startswith("data_augmentation.random_periodic_resizing: the augmentation of a batch of "
                              "(1099511627776, 1, 2, 2) ran out of memory (")
    assert "\n" not in message and message.endswith("lower its sizes or training.batch_size")


def test_other_kernel_errors_are_not_disguised():
    """Only allocation failures become the one-line error: torch's other errors stay what they are."""
    from stmclf.augment import build_augmentation

    pipe = build_augmentation({"random_blur": {"filter_size": 3}}, (0.0, 1.0))
    with pytest.raises(RuntimeError, match="index_select") as info:
        pipe(torch.zeros(2, 3, 0, 4))  # images of height 0
    assert not isinstance(info.value, ConfigError)


# --------------------------------------------------------------------------------------------
# D7: the confusion matrix of many classes

def _confusion(n: int) -> np.ndarray:
    confusion = np.zeros((n, n), dtype=np.int64)
    confusion[0, 0], confusion[1, 0], confusion[1, 1], confusion[n - 1, n - 2] = 5, 2, 3, 1
    return confusion


@pytest.mark.parametrize("n, labels, texts", [(3, 3, 4), (40, 40, 0), (100, 100, 0), (2000, 50, 0), (10_002, 50, 0)])
def test_confusion_figure_scales_with_the_class_count(n, labels, texts):
    import matplotlib.pyplot as plt

    from stmclf.evaluate.confusion import confusion_figure

    fig = confusion_figure(_confusion(n), [f"class_{i}" for i in range(n)], "title")
    try:
        ax = fig.axes[0]
        assert len(ax.get_xticks()) == len(ax.get_yticks()) == labels
        assert len(ax.texts) == texts  # per-cell rates only for a few dozen classes
        assert ax.get_xticklabels()[0].get_text() == "class_0"
        image = ax.get_images()[0].get_array()
        assert max(image.shape) <= 1000
        assert image[0, 0] == 1.0  # a block keeps its largest rate: one hit stays visible
    finally:
        plt.close(fig)


def test_ten_thousand_class_figure_is_written_in_seconds(tmp_path):
    from PIL import Image

    from stmclf.evaluate.confusion import plot_confusion_matrix

    n = 10_002
    start = time.monotonic()
    out = plot_confusion_matrix(_confusion(n), [f"e{i}" for i in range(n)], "many", tmp_path / "cm.png")
    assert time.monotonic() - start < 30  # was 348 s (20,004 tick labels)
    assert Image.open(out).size[0] <= 2400


@pytest.mark.parametrize("n", [3, 10_002])
def test_results_json_keeps_a_large_confusion_matrix_as_its_cells(tmp_path, n):
    """results.json held 10⁸ numbers for 10,002 classes (gigabytes, minutes): above 256 classes it
    keeps the non-zero cells, and the report's per-class table reads both forms alike."""
    from stmclf.evaluate.report import _class_counts
    from stmclf.evaluate.results import read_results, record_results

    confusion = _confusion(n)
    names = [f"c{i}" for i in range(n)]
    record_results(tmp_path, "float", "Float model", {"validation_set": {"accuracy": 72.7, "count": 11,
                                                                         "confusion": confusion}}, names)
    assert (tmp_path / "results.json").stat().st_size < 400_000  # names included
    (record,) = read_results(tmp_path)
    assert isinstance(record["confusion"], list if n == 3 else dict)
    totals, correct = _class_counts(record["confusion"])
    assert totals.tolist() == confusion.sum(axis=1).tolist()
    assert correct.tolist() == np.diagonal(confusion).tolist()
