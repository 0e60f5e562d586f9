"""Every numeric argument of every augmentation function is range-checked (review: a contrast
factor of 1e30 was accepted, and so were NaN, infinities and other absurd values).

- the whole registry: each argument of each function, set to 1e30, -1e30, NaN, inf (as numbers,
  YAML spellings or tuple elements), is one ConfigError naming ``data_augmentation.FUNC.ARG``;
- through ``stmclf fit`` (the hostile-config harness): one line naming the key and the allowed
  range, exit 2, nothing written;
- the bounds in rescaled units (brightness offset, fill value) follow preprocessing.rescaling;
- values inside the ranges (the reference's demo values, the bounds themselves) are accepted.
"""
from __future__ import annotations

import pytest

from test_hostile_configs import Case, append, run_in_process
from stmclf.augment import AUGMENTATIONS, build_augmentation
from stmclf.errors import ConfigError

PR = (-1.0, 1.0)
ABSURD = (1e30, -1e30, float("nan"), float("inf"), float("-inf"), ".nan", ".inf", "nan", (0.0, 1e30),
          (-1e30, 0.0), (0.0, float("inf")), (float("nan"), 0.5))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_every_argument_of_every_function_refuses_absurd_numbers(name):
    spec = AUGMENTATIONS[name]
    build_augmentation({name: dict(spec.example)}, PR)  # the example itself is valid
    for arg in spec.args:
        for value in ABSURD:
            section = {name: {**spec.example, arg: value}}
            with pytest.raises(ConfigError) as info:
                build_augmentation(section, PR)
            msg = str(info.value)
            assert msg.startswith(f"data_augmentation.{name}.{arg}:"), (arg, value, msg)
            assert "\n" not in msg


@pytest.mark.parametrize("section, key, allowed", [
    ({"random_contrast": {"factor": 1e30}}, "random_contrast.factor", "[0, 254]"),
    ({"random_contrast": {"factor": -0.2}}, "random_contrast.factor", "[0, 254]"),
    ({"random_contrast": {"factor": (0.5, 300)}}, "random_contrast.factor", "[-255, 255]"),
    ({"random_brightness": {"factor": 2.5}}, "random_brightness.factor", "[-2, 2]"),
    ({"random_brightness": {"factor": -0.1}}, "random_brightness.factor", "[0, inf]"),
    ({"random_gamma": {"gamma": (0.5, 1e4)}}, "random_gamma.gamma", "[0, 1600]"),
    ({"random_hue": {"delta": 1.5}}, "random_hue.delta", "[0, 1]"),
    ({"random_hsv": {"hue_delta": 0.1, "saturation_delta": (-2, 0), "value_delta": 0.1}},
     "random_hsv.saturation_delta", "[-1, 1]"),
    ({"random_sharpness": {"factor": 1e6}}, "random_sharpness.factor", "[0, 3315]"),
    ({"random_translation": {"width_factor": 1.5, "height_factor": 0.1}}, "random_translation.width_factor",
     "[0, 1]"),
    ({"random_translation": {"width_factor": 0.1, "height_factor": 0.1, "fill_value": 5.0}},
     "random_translation.fill_value", "[0, 1]"),
    ({"random_rotation": {"factor": (-3, 3)}}, "random_rotation.factor", "[-1, 1]"),
    ({"random_shear_y": {"factor": 2}}, "random_shear_y.factor", "[0, 1]"),
    ({"random_zoom": {"width_factor": (-1.5, 0.2)}}, "random_zoom.width_factor", "[-1, 8191]"),
    ({"random_zoom": {"width_factor": 1.5}}, "random_zoom.width_factor", "[0, 1]"),
    ({"random_blur": {"filter_size": 3, "padding": "constant", "constant_values": 255}},
     "random_blur.constant_values", "[0, 1]"),
    ({"random_gaussian_noise": {"stddev": (0.0, 50.0)}}, "random_gaussian_noise.stddev", "[0, 1]"),
    ({"random_rectangle_erasing": {"wh_ratio": (0.5, 1e9)}}, "random_rectangle_erasing.wh_ratio", "[0, 8192]"),
    ({"random_periodic_resizing": {"period": 10**12, "image_sizes": [24]}}, "random_periodic_resizing.period",
     "[1, 2147483647]"),
])
def test_the_error_names_the_key_and_the_allowed_range(section, key, allowed):
    with pytest.raises(ConfigError) as info:
        build_augmentation(section, PR)
    msg = str(info.value)
    assert msg.startswith(f"data_augmentation.{key}:"), msg
    assert allowed in msg, msg


def test_rescaled_unit_bounds_follow_the_pixel_range():
    # pixels in [0, 255] (scale 1, offset 0): a brightness offset of 100 and a fill value of 200 are fine
    build_augmentation({"random_brightness": {"factor": 100}}, (0.0, 255.0))
    build_augmentation({"random_rotation": {"factor": 0.1, "fill_mode": "constant", "fill_value": 200}},
                       (0.0, 255.0))
    # pixels in [0, 1]: the same values are refused, naming the range
    with pytest.raises(ConfigError, match=r"^data_augmentation\.random_brightness\.factor: .*\[-1, 1\].*"
                                          r"\(0\.0, 1\.0\)"):
        build_augmentation({"random_brightness": {"factor": 100}}, (0.0, 1.0))
    with pytest.raises(ConfigError, match=r"^data_augmentation\.random_rotation\.fill_value: .*\[0, 1\]"):
        build_augmentation({"random_rotation": {"factor": 0.1, "fill_value": 200}}, (0.0, 1.0))


def test_values_inside_the_ranges_are_accepted():
    section = {
        "random_contrast": {"factor": 0.7}, "random_brightness": {"factor": (-2.0, 2.0)},
        "random_gamma": {"gamma": (0.2, 1600)}, "random_hsv": {"hue_delta": 1, "saturation_delta": (-1, 1),
                                                               "value_delta": 0.2},
        "random_sharpness": {"factor": (1, 3315)}, "random_translation": {"width_factor": 1, "height_factor": 0.2},
        "random_rotation": {"factor": (-1, 1), "fill_value": 1.0}, "random_shear": {"factor": 0.075},
        "random_zoom": {"width_factor": (1.0, 2.0), "height_factor": 1},
        "random_gaussian_noise": {"stddev": (0.0, 1.0)},
        "random_blur": {"filter_size": 3, "padding": "constant", "constant_values": 1},
    }
    assert len(build_augmentation(section, PR).describe()) == len(section)
    # the reference's scalar contrast factors above 1 (multipliers below 0) stay accepted
    build_augmentation({"random_contrast": {"factor": 1.5}}, PR)


def augmentation(body: str):
    return append("data_augmentation:\n" + body)


CLI_CASES = [
    Case("contrast-1e30", augmentation("  random_contrast: {factor: 1e30}\n"),
         r"^data_augmentation\.random_contrast\.factor: expecting a number in \[0, 254\] or a tuple of 2 \(low, high\) "
         r"with values in \[-255, 255\]; got 1e\+30$"),
    Case("contrast-nan", augmentation("  random_contrast: {factor: .nan}\n"),
         r"^data_augmentation\.random_contrast\.factor: nan is out of bounds \(not a finite number\)"),
    Case("rotation-inf-tuple", augmentation("  random_rotation: {factor: [0, .inf]}\n"),
         r"^data_augmentation\.random_rotation\.factor: inf is out of bounds \(not a finite number\)"),
    Case("brightness-beyond-range", augmentation("  random_brightness: {factor: 5}\n"),
         r"^data_augmentation\.random_brightness\.factor: the offsets are in rescaled units and must be in "
         r"\[-2, 2\], the width of the pixel range \(-1\.0, 1\.0\) \(preprocessing\.rescaling\)"),
    Case("change-rate-above-1", augmentation("  random_flip: {mode: horizontal, change_rate: 7}\n"),
         r"^data_augmentation\.random_flip\.change_rate: expecting a number in \[0, 1\]"),
    Case("zoom-negative", augmentation("  random_zoom: {width_factor: [-4, 0.5]}\n"),
         r"^data_augmentation\.random_zoom\.width_factor: expecting values in \[-1, 8191\]"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_fit_refuses_absurd_values_up_front(case, tmp_path, image_folder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_in_process(case, tmp_path, image_folder, capsys, timed=False)
