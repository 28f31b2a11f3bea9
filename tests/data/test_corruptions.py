import colorsys
import json
import random

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from stic.data.corruptions import (
    apply_corruption,
    color_jitter,
    lower_resolution,
    sample_corruption,
)


def _checkerboard(width: int = 64, height: int = 48, cell: int = 2) -> Image.Image:
    """Fine black/white detail plus a colour tint: exactly what 20 px cannot hold."""
    image = Image.new("RGB", (width, height), (200, 60, 60))
    draw = ImageDraw.Draw(image)
    for y in range(0, height, cell):
        for x in range((y // cell) % 2 * cell, width, 2 * cell):
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(20, 20, 220))
    return image


def _gradient(width: int = 40, height: int = 30) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)]
    )
    return image


def _max_abs_diff(a: Image.Image, b: Image.Image) -> int:
    return max(high for _, high in ImageChops.difference(a, b).getextrema())


# --- lower resolution ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [((100, 50), (40, 20)), ((50, 100), (20, 40)), ((64, 64), (20, 20)), ((333, 100), (67, 20))],
)
def test_lower_resolution_shrinks_shorter_side_keeping_aspect(size, expected):
    assert lower_resolution(Image.new("RGB", size), 20).size == expected


def test_lower_resolution_leaves_small_images_unchanged_but_copies():
    image = _gradient(20, 15)
    out = lower_resolution(image, 20)
    assert out.size == (20, 15)
    assert out is not image
    assert _max_abs_diff(out, image) == 0


def test_lowres_upsampled_back_loses_detail_but_keeps_mean_colour():
    image = _checkerboard(64, 48)
    small = lower_resolution(image, 20)
    back = small.resize(image.size, Image.Resampling.BICUBIC)  # what the image processor does
    assert _max_abs_diff(back, image) > 60  # the 2-px checkerboard is gone
    for before, after in zip(ImageStat.Stat(image).mean, ImageStat.Stat(back).mean, strict=True):
        assert abs(before - after) < 8


def test_lower_resolution_rejects_bad_short_side():
    with pytest.raises(ValueError, match="short_side"):
        lower_resolution(Image.new("RGB", (10, 10)), 0)


# --- colour jitter ------------------------------------------------------------------------


def test_brightness_half_halves_pixel_values():
    image = _gradient()
    out = color_jitter(image, 0.5, 0.0)
    for before, after in zip(image.tobytes(), out.tobytes(), strict=True):
        assert abs(after - before / 2) <= 1


def test_identity_parameters_leave_pixels_untouched():
    image = _gradient()
    assert _max_abs_diff(color_jitter(image, 1.0, 0.0), image) == 0


def test_zero_hue_shift_keeps_hue():
    image = Image.new("RGB", (8, 8), (200, 120, 40))
    r, g, b = color_jitter(image, 0.8, 0.0).getpixel((0, 0))
    hue_before = colorsys.rgb_to_hsv(200 / 255, 120 / 255, 40 / 255)[0]
    hue_after = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0]
    assert abs(hue_after - hue_before) < 0.01


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_half_turn_of_hue_makes_red_cyan(shift):
    r, g, b = color_jitter(Image.new("RGB", (8, 8), (255, 0, 0)), 1.0, shift).getpixel((0, 0))
    assert r < 10 and g > 240 and b > 240


def test_small_hue_shift_moves_hue_by_that_fraction():
    r, g, b = color_jitter(Image.new("RGB", (8, 8), (255, 0, 0)), 1.0, 0.1).getpixel((0, 0))
    assert abs(colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0] - 0.1) < 0.01


@pytest.mark.parametrize(
    ("factor", "shift", "name"),
    [(-0.1, 0.0, "brightness_factor"), (1.0, 0.6, "hue_shift"), (1.0, -0.51, "hue_shift")],
)
def test_color_jitter_rejects_out_of_range(factor, shift, name):
    with pytest.raises(ValueError, match=name):
        color_jitter(Image.new("RGB", (4, 4)), factor, shift)


# --- sampling -----------------------------------------------------------------------------


def test_same_seed_same_params():
    draws_a = [sample_corruption(random.Random(7)) for _ in range(3)]
    rng_b, rng_c = random.Random(123), random.Random(123)
    assert draws_a[0] == draws_a[1] == draws_a[2]
    assert [sample_corruption(rng_b) for _ in range(20)] == [
        sample_corruption(rng_c) for _ in range(20)
    ]


def test_sampled_kinds_and_ranges():
    rng = random.Random(0)
    draws = [sample_corruption(rng) for _ in range(4000)]
    lowres = [d for d in draws if d["kind"] == "lowres"]
    jitter = [d for d in draws if d["kind"] == "color_jitter"]
    assert len(lowres) + len(jitter) == len(draws)
    assert 0.45 < len(lowres) / len(draws) < 0.55
    assert all(d == {"kind": "lowres", "short_side": 20} for d in lowres)
    factors = [d["brightness_factor"] for d in jitter]
    shifts = [d["hue_shift"] for d in jitter]
    assert all(0.5 <= f <= 1.5 for f in factors) and all(-0.3 <= h <= 0.3 for h in shifts)
    # Uniform over the whole range, not stuck near the middle.
    assert min(factors) < 0.55 and max(factors) > 1.45
    assert min(shifts) < -0.27 and max(shifts) > 0.27
    assert json.loads(json.dumps(draws)) == draws  # records store them as JSON


def test_sample_corruption_respects_arguments():
    rng = random.Random(1)
    assert all(sample_corruption(rng, lowres_prob=1.0)["kind"] == "lowres" for _ in range(50))
    assert sample_corruption(rng, lowres_prob=1.0, short_side=8)["short_side"] == 8
    draws = [sample_corruption(rng, lowres_prob=0.0, brightness=0.0, hue=0.0) for _ in range(50)]
    assert all(
        d == {"kind": "color_jitter", "brightness_factor": 1.0, "hue_shift": 0.0} for d in draws
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lowres_prob": 1.5}, "lowres_prob"),
        ({"short_side": 0}, "short_side"),
        ({"brightness": -0.1}, "brightness"),
        ({"hue": 0.7}, "hue"),
    ],
)
def test_sample_corruption_validates(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample_corruption(random.Random(0), **kwargs)


# --- apply --------------------------------------------------------------------------------


def test_apply_dispatches_by_kind():
    image = _checkerboard(100, 50)
    assert apply_corruption(image, {"kind": "lowres", "short_side": 20}).size == (40, 20)
    params = {"kind": "color_jitter", "brightness_factor": 0.5, "hue_shift": 0.0}
    assert _max_abs_diff(apply_corruption(image, params), color_jitter(image, 0.5, 0.0)) == 0


def test_apply_reproduces_stored_params_exactly():
    image = _gradient()
    rng = random.Random(5)
    for _ in range(10):
        params = sample_corruption(rng)
        stored = json.loads(json.dumps(params))
        first = apply_corruption(image, params)
        again = apply_corruption(image, stored)
        assert first.mode == "RGB"
        assert first.size == again.size
        assert _max_abs_diff(first, again) == 0


def test_apply_does_not_modify_input():
    image = _gradient()
    before = image.tobytes()
    for params in (
        {"kind": "lowres", "short_side": 20},
        {"kind": "color_jitter", "brightness_factor": 1.4, "hue_shift": -0.2},
    ):
        out = apply_corruption(image, params)
        assert out is not image
    assert image.tobytes() == before and image.size == (40, 30)


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "blur", "radius": 2},
        {"short_side": 20},
        {"kind": "lowres"},
        {"kind": "lowres", "short_side": 20, "hue_shift": 0.1},
    ],
)
def test_apply_rejects_bad_params(params):
    with pytest.raises(ValueError):
        apply_corruption(Image.new("RGB", (30, 30)), params)


# --- boundaries and messages (mutants that survived `make mutation`; see docs/mutation.md) -----


class _FixedRng:
    """An rng whose random() is a given value and whose uniform(a, b) is a."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value

    def uniform(self, a: float, b: float) -> float:
        return a


def test_lowres_is_drawn_with_probability_exactly_lowres_prob():
    # random() is uniform on [0, 1): P(random() < p) = p, so a draw equal to p is NOT lowres.
    assert sample_corruption(_FixedRng(0.5), lowres_prob=0.5)["kind"] == "color_jitter"
    assert sample_corruption(_FixedRng(0.4999), lowres_prob=0.5)["kind"] == "lowres"


def test_the_largest_hue_range_is_accepted():
    params = sample_corruption(_FixedRng(0.9), hue=0.5)
    assert params["hue_shift"] == -0.5


def test_lowres_keeps_at_least_one_pixel_on_the_longer_side():
    assert lower_resolution(Image.new("RGB", (40, 50)), 1).size == (1, 1)
    assert lower_resolution(Image.new("RGB", (50, 40)), 1).size == (1, 1)


def test_short_side_must_be_a_true_integer_of_at_least_one():
    image = Image.new("RGB", (40, 50))
    assert lower_resolution(image, 1).size == (1, 1)  # 1 is allowed
    for bad in (True, 0, 1.0):
        with pytest.raises(ValueError, match="short_side"):
            lower_resolution(image, bad)


def test_corruptions_return_rgb_for_any_input_mode():
    grey = Image.new("L", (30, 40), 100)
    assert lower_resolution(grey, 20).mode == "RGB"
    assert color_jitter(grey, 1.0, 0.0).mode == "RGB"


def test_brightness_factor_zero_gives_black_and_two_doubles():
    image = Image.new("RGB", (4, 4), (50, 60, 70))
    assert set(color_jitter(image, 0.0, 0.0).getdata()) == {(0, 0, 0)}
    assert set(color_jitter(image, 2.0, 0.0).getdata()) == {(100, 120, 140)}


def test_apply_corruption_errors_name_the_problem():
    image = Image.new("RGB", (30, 40))
    with pytest.raises(ValueError, match="no 'kind'"):
        apply_corruption(image, {"short_side": 20})
    with pytest.raises(ValueError, match="unknown corruption kind 'blur'"):
        apply_corruption(image, {"kind": "blur"})
    with pytest.raises(ValueError, match=r"missing \['short_side'\], unexpected \['size'\]"):
        apply_corruption(image, {"kind": "lowres", "size": 20})
