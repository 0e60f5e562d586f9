"""stmclf.augment: fast CPU tests of every kernel, the pipeline, validation and custom functions."""
from __future__ import annotations

import pickle
import textwrap

import pytest
import torch
import torchvision.io  # noqa: F401  early: importing it (and triton) after TensorFlow segfaults


from stmclf.augment import AUGMENTATIONS, apply_augmentation, build_augmentation, example_section, kernel_names
from stmclf.augment.custom import build_custom_augmentation
from stmclf.errors import ConfigError
from stmclf.trust import trusting_code

PR = (-1.0, 1.0)
EPS = 1e-7  # tuples must be strictly increasing: (v, v + EPS) pins a value

# Arguments under which change_rate 1.0 must change every image of a random batch.
CHANGES_ALL = {
    "random_contrast": {"factor": (1.5, 2.0)},
    "random_brightness": {"factor": (0.1, 0.3)},
    "random_gamma": {"gamma": (1.5, 2.5)},
    "random_gamma_adjust": {"gamma": (0.2, 0.6)},
    "random_hue": {"delta": (0.1, 0.3)},
    "random_saturation": {"delta": (-0.5, -0.2)},
    "random_value": {"delta": (-0.5, -0.2)},
    "random_hsv": {"hue_delta": (0.1, 0.3), "saturation_delta": 0.1, "value_delta": 0.1},
    "random_rgb_to_hsv": {"change_rate": 1.0},
    "random_rgb_to_grayscale": {"change_rate": 1.0},
    "random_sharpness": {"factor": (1.0, 4.0)},
    "random_posterize": {"bits": (1, 4)},
    "random_invert": {"change_rate": 1.0},
    "random_solarize": {"change_rate": 1.0},
    "random_autocontrast": {"change_rate": 1.0},
    "random_equalize": {"change_rate": 1.0},
    "random_blur": {"filter_size": (3, 5)},
    "random_gaussian_noise": {"stddev": (0.05, 0.1)},
    "random_crop": {"change_rate": 1.0},
    "random_jpeg_quality": {"jpeg_quality": (10, 50)},
    "random_flip": {"mode": "horizontal_and_vertical", "change_rate": 1.0},
    "random_translation": {"width_factor": (0.1, 0.2), "height_factor": (0.1, 0.2)},
    "random_rotation": {"factor": (0.05, 0.1)},
    "random_zoom": {"width_factor": (0.2, 0.4)},
    "random_shear": {"factor": (0.05, 0.1)},
    "random_shear_x": {"factor": (0.05, 0.1)},
    "random_shear_y": {"factor": (0.05, 0.1)},
    "random_rectangle_erasing": {"nrec": (1, 3), "area": (0.1, 0.3)},
    "random_grid_cell_erasing": {"erasing_prob": 0.9, "fill_method": "mosaic"},
}
NO_CHANGE_RATE = {"random_periodic_resizing"}


def images(b=8, c=3, h=32, w=32, pr=PR, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g) * (pr[1] - pr[0]) + pr[0]


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def per_image_changed(a, b):
    return (a != b).flatten(1).any(1)


# ------------------------------------------------------------------------------------------
# every function
# ------------------------------------------------------------------------------------------
def test_registry_covers_the_reference_functions():
    expected = {
        "random_contrast", "random_brightness", "random_gamma", "random_hue", "random_saturation",
        "random_value", "random_hsv", "random_rgb_to_hsv", "random_rgb_to_grayscale", "random_sharpness",
        "random_posterize", "random_invert", "random_solarize", "random_autocontrast", "random_equalize",
        "random_blur", "random_gaussian_noise", "random_crop", "random_jpeg_quality", "random_flip",
        "random_translation", "random_rotation", "random_zoom", "random_shear", "random_shear_x",
        "random_shear_y", "random_rectangle_erasing", "random_grid_cell_erasing", "random_periodic_resizing",
    }
    assert expected <= set(AUGMENTATIONS)
    assert set(kernel_names()) == set(AUGMENTATIONS)
    assert set(CHANGES_ALL) | NO_CHANGE_RATE == set(AUGMENTATIONS)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("pr", [(-1.0, 1.0), (0.0, 1.0)])
def test_every_function_keeps_shape_dtype_range(name, pr):
    x = images(pr=pr)
    aug = build_augmentation({name: example_section(name)}, pr, channels=3)
    y = aug(x, generator=gen())
    assert y.dtype == x.dtype and y.device == x.device
    if name == "random_periodic_resizing":
        assert y.shape[:2] == x.shape[:2]
    else:
        assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.min() >= pr[0] - 1e-5 and y.max() <= pr[1] + 1e-5


@pytest.mark.parametrize("name", sorted(CHANGES_ALL))
def test_change_rate_one_changes_every_image_and_zero_none(name):
    x = images()
    args = dict(CHANGES_ALL[name], change_rate=1.0)
    y = build_augmentation({name: args}, PR)(x, generator=gen())
    assert per_image_changed(x, y).all(), name
    args["change_rate"] = 0.0
    assert torch.equal(build_augmentation({name: args}, PR)(x, generator=gen()), x)


@pytest.mark.parametrize("name", ["random_flip", "random_contrast", "random_rotation", "random_solarize"])
def test_change_rate_mixes_whole_images(name):
    x = images(b=64)
    args = dict(CHANGES_ALL[name], change_rate=1.0)
    full = build_augmentation({name: args}, PR)(x, generator=gen(5))
    args["change_rate"] = 0.5
    mixed = build_augmentation({name: args}, PR)(x, generator=gen(5))
    same = (mixed == x).flatten(1).all(1)
    aug = (mixed == full).flatten(1).all(1)
    assert (same | aug).all()
    assert 10 < int(same.sum()) < 54


def test_channels_last_is_kept():
    x = images().contiguous(memory_format=torch.channels_last)
    section = {"random_contrast": {"factor": 0.4}, "random_flip": {"mode": "horizontal"},
               "random_rotation": {"factor": 0.1}, "random_rgb_to_grayscale": {"change_rate": 1.0}}
    y = build_augmentation(section, PR)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert not y.is_contiguous()


def test_generator_makes_draws_reproducible():
    x = images()
    section = {"random_contrast": {"factor": 0.4}, "random_flip": {"mode": "horizontal_and_vertical"},
               "random_zoom": {"width_factor": 0.2}, "random_rectangle_erasing": None}
    a = build_augmentation(section, PR)(x, generator=gen(3))
    b = build_augmentation(section, PR)(x, generator=gen(3))
    c = build_augmentation(section, PR)(x, generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------
# semantics
# ------------------------------------------------------------------------------------------
def test_flip_is_an_exact_mirror():
    x = images()
    h = build_augmentation({"random_flip": {"mode": "horizontal", "change_rate": 1.0}}, PR)(x)
    assert torch.equal(h, torch.flip(x, dims=[3]))
    v = build_augmentation({"random_flip": {"mode": "vertical", "change_rate": 1.0}}, PR)(x)
    assert torch.equal(v, torch.flip(x, dims=[2]))
    hv = build_augmentation({"random_flip": {"mode": "horizontal_and_vertical", "change_rate": 1.0}}, PR)(
        images(b=64), generator=gen())
    x64 = images(b=64)
    kinds = torch.stack([(hv == torch.flip(x64, dims=d)).flatten(1).all(1) for d in ([3], [2], [2, 3])], 1)
    assert (kinds.sum(1) == 1).all()
    assert kinds.any(0).all()  # all three flips occur


def test_flip_default_change_rate_is_half():
    aug = build_augmentation({"random_flip": {"mode": "horizontal"}}, PR)
    assert aug.describe()[0][1]["change_rate"] == 0.5


def test_brightness_adds_one_constant_per_image():
    pr = (0.0, 1.0)
    x = torch.rand(16, 3, 16, 16, generator=gen(0)) * 0.4 + 0.3  # no clipping with |beta| <= 0.2
    y = build_augmentation({"random_brightness": {"factor": 0.2}}, pr)(x, generator=gen())
    d = (y - x).flatten(1)
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-6)
    assert (d[:, 0].abs() <= 0.2 + 1e-6).all() and d[:, 0].std() > 0.01


def test_contrast_keeps_channel_means():
    pr = (0.0, 1.0)
    x = torch.rand(16, 3, 16, 16, generator=gen(0)) * 0.2 + 0.4  # alpha in (0.5, 1.5): no clipping
    y = build_augmentation({"random_contrast": {"factor": 0.5}}, pr)(x, generator=gen())
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-5)
    spread = (y - y.mean((2, 3), keepdim=True)).flatten(2).std(2) / (x - x.mean((2, 3), keepdim=True)).flatten(2).std(2)
    alpha = spread[:, 0]
    assert torch.allclose(spread, alpha[:, None].expand_as(spread), atol=1e-4)  # one alpha per image
    assert (alpha > 0.5 - 1e-4).all() and (alpha < 1.5 + 1e-4).all()


def test_rotation_quarter_turn_is_counter_clockwise():
    x = torch.full((2, 3, 16, 16), -1.0)
    x[:, :, 0, 15] = 1.0  # top-right corner
    x[:, :, 2, 8] = 0.5   # near the top edge
    aug = build_augmentation({"random_rotation": {"factor": (0.25, 0.25 + EPS)}}, PR)
    y = aug(x)
    assert torch.allclose(y, torch.rot90(x, 1, dims=(2, 3)), atol=1e-4)
    assert torch.allclose(y[:, :, 0, 0], torch.ones(2, 3), atol=1e-4)   # top-right → top-left
    assert torch.allclose(y[:, :, 7, 2], torch.full((2, 3), 0.5), atol=1e-4)  # top → left


def test_translation_positive_is_right_and_down():
    x = torch.full((2, 1, 32, 32), -1.0)
    x[:, :, 5, 3] = 1.0
    aug = build_augmentation({"random_translation": {
        "width_factor": (0.25, 0.25 + EPS), "height_factor": (0.125, 0.125 + EPS),
        "interpolation": "nearest", "fill_mode": "constant"}}, PR)
    y = aug(x)
    assert (y[:, :, 9, 11] == 1.0).all()
    assert int((y == 1.0).sum()) == 2
    # constant fill (0.0) enters from the top-left
    assert (y[:, :, :4, :] == 0.0).all() and (y[:, :, :, :8] == 0.0).all()


@pytest.mark.parametrize("z", [0.5, -0.4])
def test_zoom_keeps_the_centre(z):
    x = images(b=4, c=3, h=33, w=33)
    y = build_augmentation({"random_zoom": {"width_factor": (z, z + EPS)}}, PR)(x)
    assert torch.allclose(y[:, :, 16, 16], x[:, :, 16, 16], atol=1e-4)


def test_zoom_out_makes_content_smaller():
    x = torch.full((1, 1, 33, 33), -1.0)
    x[:, :, 16, 28] = 1.0  # 12 px right of the centre
    y = build_augmentation({"random_zoom": {"width_factor": (1.0, 1.0 + EPS), "interpolation": "nearest",
                                            "fill_mode": "constant"}}, PR)(x)  # z = 2
    assert y[0, 0, 16, 22] == 1.0  # now 6 px right of the centre


def test_shear_y_is_the_transpose_of_shear_x():
    x = images(b=4, h=24, w=24)
    sx = build_augmentation({"random_shear_x": {"factor": 0.05}}, PR)(x.transpose(2, 3), generator=gen(7))
    sy = build_augmentation({"random_shear_y": {"factor": 0.05}}, PR)(x, generator=gen(7))
    assert torch.allclose(sy, sx.transpose(2, 3), atol=1e-5)
    assert not torch.allclose(sy, x)


def test_invert_maps_to_lo_plus_hi_minus_x():
    for pr in [(-1.0, 1.0), (0.0, 1.0), (0.0, 255.0)]:
        x = images(pr=pr)
        y = build_augmentation({"random_invert": {"change_rate": 1.0}}, pr)(x)
        assert torch.allclose(y, pr[0] + pr[1] - x)


def test_grayscale_output_channels_are_equal():
    x = images()
    y = build_augmentation({"random_rgb_to_grayscale": {"change_rate": 1.0}}, PR)(x)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])
    u = (x + 1) / 2
    expect = (0.299 * u[:, 0] + 0.587 * u[:, 1] + 0.114 * u[:, 2]) * 2 - 1
    assert torch.allclose(y[:, 0], expect, atol=1e-5)


def test_hue_full_turn_is_identity_and_hsv_round_trip():
    from stmclf.augment.color import hsv_to_rgb, rgb_to_hsv

    u = torch.rand(4, 3, 8, 8, generator=gen())
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(u)), u, atol=1e-5)
    y = build_augmentation({"random_hue": {"delta": (1.0 - EPS, 1.0)}}, (0.0, 1.0))(u)
    assert torch.allclose(y, u, atol=1e-4)


def test_posterize_and_solarize_in_8bit_space():
    x = torch.randint(0, 256, (8, 3, 16, 16), generator=gen()).float()
    pr = (0.0, 255.0)
    y = build_augmentation({"random_posterize": {"bits": (2, 2 + 1)}}, pr)(x, generator=gen())
    assert set(torch.unique(y.remainder(32)).tolist()) == {0.0}  # 2 or 3 bits kept: multiples of 32
    s = build_augmentation({"random_solarize": {"change_rate": 1.0}}, pr)(x, generator=gen())
    assert ((s == x) | (s == 255 - x)).all()


def test_equalize_and_autocontrast_stretch_to_full_range():
    pr = (0.0, 255.0)
    x = torch.randint(60, 120, (4, 3, 32, 32), generator=gen()).float()
    e = build_augmentation({"random_equalize": {"change_rate": 1.0}}, pr)(x)
    assert e.amax((2, 3)).min() >= 240 and e.amin((2, 3)).max() <= 20
    a = build_augmentation({"random_autocontrast": {"change_rate": 1.0, "cutoff": 1}}, pr)(x)
    assert a.amax((2, 3)).min() == 255 and a.amin((2, 3)).max() == 0
    assert torch.equal(build_augmentation({"random_autocontrast": {"change_rate": 1.0, "cutoff": 0}}, pr)(x), x)


def test_blur_and_noise_and_jpeg():
    x = torch.full((2, 3, 16, 16), 0.25)
    b = build_augmentation({"random_blur": {"filter_size": (3, 5)}}, PR)(x)
    assert torch.allclose(b, x)  # a mean filter keeps a flat image (reflect padding)
    assert torch.equal(build_augmentation({"random_blur": {"filter_size": 1}}, PR)(x), x)
    n = build_augmentation({"random_gaussian_noise": {"stddev": (0.05, 0.05 + EPS)}}, (0.0, 1.0))(
        torch.full((4, 3, 64, 64), 0.5), generator=gen())
    assert abs(float(n.std()) - 0.05) < 0.005
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    smooth = torch.stack([xx, yy, xx * yy]).expand(4, 3, 32, 32)
    errors = [float((build_augmentation({"random_jpeg_quality": {"jpeg_quality": q}}, PR)(smooth) - smooth)
                    .abs().mean()) for q in (100, 10)]
    assert errors[0] < 0.01 < errors[1]


def test_rectangle_and_grid_erasing_fill():
    x = images()
    r = build_augmentation({"random_rectangle_erasing": {"fill_method": "uniform", "nrec": (1, 3)}}, PR)(
        x, generator=gen())
    changed = r != x
    assert changed.any() and (r[changed] == -1.0).all()  # default colour black = pixels_range low
    g = build_augmentation({"random_grid_cell_erasing": {"erasing_prob": 1.0, "color": (255, 255, 255)}}, PR)(x)
    assert (g == 1.0).all()
    gray = images(c=1)
    gr = build_augmentation({"random_rectangle_erasing": {"nrec": (2, 4)}}, PR, channels=1)(gray, generator=gen())
    assert gr.shape == gray.shape and per_image_changed(gray, gr).all()
    # gray-looking RGB images get gray rectangles
    rgb_gray = images(c=1).expand(8, 3, 32, 32).contiguous()
    rr = build_augmentation({"random_rectangle_erasing": {"nrec": (2, 4)}}, PR)(rgb_gray, generator=gen())
    assert torch.equal(rr[:, 0], rr[:, 1]) and torch.equal(rr[:, 0], rr[:, 2])


def test_crop_resizes_back_and_default_change_rate():
    aug = build_augmentation({"random_crop": None}, PR)
    assert aug.describe()[0][1]["change_rate"] == 0.9
    x = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(4, 3, 32, 32).contiguous()
    y = build_augmentation({"random_crop": {"change_rate": 1.0}}, PR)(x, generator=gen())
    # a horizontal ramp stays a (steeper) horizontal ramp
    assert torch.allclose(y[:, :, 0], y[:, :, 31], atol=1e-5)
    assert (y[..., 1:] - y[..., :-1] >= -1e-6).all()


def test_periodic_resizing_holds_a_size_for_a_period():
    aug = build_augmentation({"random_periodic_resizing": {
        "period": 3, "image_sizes": [16, (24, 20), [40, 40]], "interpolation": "bilinear"}}, PR)
    x = images()
    shapes = [tuple(aug(x, generator=gen(i)).shape[-2:]) for i in range(12)]
    for start in range(0, 12, 3):
        assert len(set(shapes[start:start + 3])) == 1
    assert set(shapes) <= {(16, 16), (20, 24), (40, 40)}


def test_grayscale_runtime_skips_colour_only_functions():
    x = images(c=1)
    aug = build_augmentation({"random_hue": {"delta": 0.2}, "random_rgb_to_grayscale": {"change_rate": 1.0}}, PR)
    assert torch.equal(aug(x), x)


def test_pipeline_is_picklable_and_applies_in_order():
    section = {"random_invert": {"change_rate": 1.0}, "random_brightness": {"factor": (0.5, 0.5 + EPS)}}
    aug = pickle.loads(pickle.dumps(build_augmentation(section, (0.0, 1.0))))
    x = torch.full((2, 3, 4, 4), 0.2)
    assert torch.allclose(aug(x), torch.full_like(x, 1.0))      # invert → 0.8, +0.5 → clipped 1.0
    reordered = build_augmentation(dict(reversed(list(section.items()))), (0.0, 1.0))
    assert torch.allclose(reordered(x), torch.full_like(x, 0.3))  # 0.7, inverted → 0.3
    assert aug(x, epoch=3).shape == x.shape


def test_apply_augmentation_helper():
    x = images()
    assert torch.equal(apply_augmentation(x, "random_flip", PR, mode="vertical", change_rate=1.0),
                       torch.flip(x, dims=[2]))


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key, words", [
    ({"random_foo": None}, "data_augmentation.random_foo", ["unknown", "random_flip"]),
    ({"random_flip": {"mode": "horizontal", "prob": 0.5}}, "data_augmentation.random_flip.prob",
     ["unknown", "mode, change_rate"]),
    ({"random_flip": {"mode": "diagonal"}}, "data_augmentation.random_flip.mode", ["'horizontal'", "'vertical'"]),
    ({"random_flip": None}, "data_augmentation.random_flip.mode", ["not set"]),
    ({"random_contrast": {"factor": 0.2, "change_rate": 1.5}}, "data_augmentation.random_contrast.change_rate",
     ["[0, 1]"]),
    ({"random_contrast": {"factor": 0.2, "change_rate": -0.1}}, "data_augmentation.random_contrast.change_rate",
     ["[0, 1]"]),
    ({"random_rotation": {"factor": (0.2, 0.1)}}, "data_augmentation.random_rotation.factor", ["greater"]),
    ({"random_rotation": {"factor": [0.1, 0.1]}}, "data_augmentation.random_rotation.factor", ["greater"]),
    ({"random_rotation": {"factor": (0.1, 0.2, 0.3)}}, "data_augmentation.random_rotation.factor", ["2 elements"]),
    ({"random_contrast": {"factor": 0.2, "pixels_range": (0, 1)}},
     "data_augmentation.random_contrast.pixels_range", ["internally"]),
    ({"random_posterize": {"bits": (0, 4)}}, "data_augmentation.random_posterize.bits", ["[1, 8]"]),
    ({"random_posterize": {"bits": 4}}, "data_augmentation.random_posterize.bits", ["tuple"]),
    ({"random_posterize": {"bits": (2.5, 4)}}, "data_augmentation.random_posterize.bits", ["integer"]),
    ({"random_gamma": {"gamma": (-1.0, 2.0)}}, "data_augmentation.random_gamma.gamma", ["[0, 1600]"]),
    ({"random_translation": {"width_factor": 0.1, "height_factor": 0.1, "fill_mode": "mirror"}},
     "data_augmentation.random_translation.fill_mode", ["'reflect'", "'wrap'"]),
    ({"random_zoom": {"width_factor": 0.2, "height_factor": 1.5}}, "data_augmentation.random_zoom.height_factor",
     ["[-1, 1]"]),
    ({"random_crop": {"crop_width": 1.2}}, "data_augmentation.random_crop.crop_width", ["(0, 1)"]),
    ({"random_rectangle_erasing": {"fill_method": "random", "color": (1, 2, 3)}},
     "data_augmentation.random_rectangle_erasing.color", ["uniform"]),
    ({"random_flip": "horizontal"}, "data_augmentation.random_flip", ["mapping"]),
    ({"random_contrast": {"factor": True}}, "data_augmentation.random_contrast.factor", ["number"]),
])
def test_bad_config_is_a_one_line_config_error(section, key, words):
    with pytest.raises(ConfigError) as info:
        build_augmentation(section, PR)
    msg = str(info.value)
    assert msg.startswith(key + ":"), msg
    assert "\n" not in msg
    assert any(w in msg for w in words), msg


def test_colour_only_function_refused_for_grayscale_at_build_time():
    with pytest.raises(ConfigError, match=r"data_augmentation\.random_hue: .*3 channels"):
        build_augmentation({"random_hue": {"delta": 0.1}}, PR, channels=1)
    build_augmentation({"random_contrast": {"factor": 0.1}}, PR, channels=1)


def test_key_prefix_and_values_from_text():
    with pytest.raises(ConfigError, match=r"^cfg\.da\.random_flip\.mode:"):
        build_augmentation({"random_flip": {"mode": 3}}, PR, key="cfg.da")
    aug = build_augmentation({"random_rotation": {"factor": "(-0.1, 0.1)"}}, PR)
    assert aug.describe()[0][1]["factor"] == (-0.1, 0.1)


def test_reference_defaults():
    d = {n: a for n, a in build_augmentation({
        "random_rectangle_erasing": None, "random_autocontrast": None, "random_grid_cell_erasing": None,
        "random_translation": {"width_factor": 0.1, "height_factor": 0.2}}, PR).describe()}
    assert d["random_rectangle_erasing"] == {"nrec": (1, 1), "area": (0.05, 0.4), "wh_ratio": (0.3, 2.0),
                                             "fill_method": "random", "color": None, "mode": "image",
                                             "change_rate": 1.0}
    assert d["random_autocontrast"] == {"cutoff": 10, "change_rate": 0.25}
    assert d["random_grid_cell_erasing"]["ncells_x"] == 5 and d["random_grid_cell_erasing"]["erasing_prob"] == 0.2
    t = d["random_translation"]
    assert t["width_factor"] == (-0.1, 0.1) and t["height_factor"] == (-0.2, 0.2)
    assert (t["fill_mode"], t["interpolation"], t["fill_value"], t["change_rate"]) == ("reflect", "bilinear", 0.0, 1.0)


# ------------------------------------------------------------------------------------------
# custom functions
# ------------------------------------------------------------------------------------------
CUSTOM_SRC = textwrap.dedent("""
    CALLS = []

    def my_aug(images, config, epoch, pixels_range=None):
        CALLS.append((tuple(images.shape), config, epoch, pixels_range))
        return images * 0 + config["value"] + epoch

    def two_args(images, config):
        return images
""")


@pytest.fixture
def trusted():
    """As with ``--trust-code``: the user's augmentation file or module may be imported."""
    with trusting_code():
        yield


def test_custom_function_needs_trust_code(tmp_path):
    path = tmp_path / "aug_marker.py"
    path.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n" + CUSTOM_SRC)
    with trusting_code(False), pytest.raises(ConfigError) as info:
        build_custom_augmentation({"function_name": f"{path}:my_aug", "config": {"value": 0.0}}, PR)
    assert str(info.value) == (f"custom_data_augmentation.function_name: {path}:my_aug runs Python code from a "
                               "file named by the config; pass --trust-code if you trust it")
    assert not (tmp_path / "ran").exists()
    with trusting_code():
        build_custom_augmentation({"function_name": f"{path}:my_aug", "config": {"value": 0.0}}, PR)
    assert (tmp_path / "ran").exists()


def test_custom_function_from_a_file(tmp_path, trusted):
    path = tmp_path / "aug_mod.py"
    path.write_text(CUSTOM_SRC)
    aug = build_custom_augmentation({"function_name": f"{path}:my_aug", "config": {"value": 0.25}}, (0.0, 1.0))
    x = torch.rand(2, 3, 8, 8)
    y = aug(x, epoch=3)
    assert torch.allclose(y, torch.full_like(x, 3.25))
    calls = aug._fn.__globals__["CALLS"]
    assert calls[-1] == ((2, 3, 8, 8), {"value": 0.25}, 3, (0.0, 1.0))
    again = pickle.loads(pickle.dumps(aug))
    assert torch.allclose(again(x, epoch=1), torch.full_like(x, 1.25))
    # same entry point through build_augmentation with the custom key
    via = build_augmentation({"function_name": f"{path}:my_aug", "config": {"value": 0.0}}, (0.0, 1.0),
                             key="custom_data_augmentation")
    assert torch.allclose(via(x), torch.zeros_like(x))


def test_custom_function_from_a_module(tmp_path, monkeypatch, trusted):
    (tmp_path / "my_custom_aug_pkg.py").write_text(CUSTOM_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    aug = build_custom_augmentation({"function_name": "my_custom_aug_pkg:my_aug", "config": {"value": 1.0}}, PR)
    assert torch.allclose(aug(torch.zeros(1, 3, 2, 2), epoch=2), torch.full((1, 3, 2, 2), 3.0))


@pytest.mark.parametrize("spec, words", [
    ("my_data_augmentation", "module:function"),
    ("no/such/file.py:fn", "file not found"),
    ("no_such_module_xyz:fn", "module not found"),
    ("{file}:missing", "no attribute"),
    ("{file}:two_args", "(images, config, epoch)"),
])
def test_custom_function_errors(tmp_path, spec, words, trusted):
    path = tmp_path / "aug_mod2.py"
    path.write_text(CUSTOM_SRC)
    with pytest.raises(ConfigError) as info:
        build_custom_augmentation({"function_name": spec.format(file=path)}, PR)
    msg = str(info.value)
    assert msg.startswith("custom_data_augmentation.function_name:") and words in msg and "\n" not in msg


def test_custom_import_error_is_one_line(tmp_path, trusted):
    path = tmp_path / "broken.py"
    path.write_text("import not_a_real_module_abc\n")
    with pytest.raises(ConfigError, match=r"^custom_data_augmentation\.function_name: importing .*ModuleNotFoundError"):
        build_custom_augmentation({"function_name": f"{path}:f"}, PR)
