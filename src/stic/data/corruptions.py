"""Image corruptions for the dis-preferred side of stage 1a.

Half of the time STIC's dis-preferred description is the model's answer to a plain prompt on a
corrupted image. The corruption is, with probability 0.5, a lower resolution (the shorter side
shrunk to 20 px; the model's image processor later upsamples it back as usual), else a colour
jitter with torchvision ``ColorJitter(brightness=0.5, hue=0.3)`` ranges.

Corruptions are data: :func:`sample_corruption` draws a JSON-ready parameter dict from an explicit
``rng``, and :func:`apply_corruption` turns (image, params) into pixels deterministically. The pair
record stores the very dict that was applied, so provenance cannot drift from what the model saw.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable

import torchvision.transforms.functional as TF
from PIL import Image

logger = logging.getLogger(__name__)


def sample_corruption(
    rng: random.Random,
    *,
    lowres_prob: float = 0.5,
    short_side: int = 20,
    brightness: float = 0.5,
    hue: float = 0.3,
) -> dict:
    """Draw the parameters of one corruption.

    Args:
        rng: the only source of randomness; the same state gives the same parameters.
        lowres_prob: probability of the low-resolution corruption, in [0, 1]; otherwise colour
            jitter.
        short_side: target length in pixels of the shorter side for low resolution, >= 1.
        brightness: ColorJitter ``brightness``, >= 0: the factor is uniform in
            ``[max(0, 1 - brightness), 1 + brightness]``.
        hue: ColorJitter ``hue``, in [0, 0.5]: the shift is uniform in ``[-hue, hue]`` (fraction
            of the hue circle).

    Returns:
        ``{"kind": "lowres", "short_side": int}`` or
        ``{"kind": "color_jitter", "brightness_factor": float, "hue_shift": float}``,
        ready for :func:`apply_corruption` and for JSON.

    Raises:
        ValueError: a parameter out of range (the message names it).
    """
    if not 0.0 <= lowres_prob <= 1.0:
        raise ValueError(f"lowres_prob must be in [0, 1], got {lowres_prob!r}")
    _check_short_side(short_side)
    if brightness < 0:
        raise ValueError(f"brightness must be >= 0, got {brightness!r}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue!r}")

    # One draw decides the kind, then only that kind's parameters are drawn.
    if rng.random() < lowres_prob:
        return {"kind": "lowres", "short_side": short_side}
    return {
        "kind": "color_jitter",
        "brightness_factor": rng.uniform(max(0.0, 1.0 - brightness), 1.0 + brightness),
        "hue_shift": rng.uniform(-hue, hue),
    }


def lower_resolution(image: Image.Image, short_side: int) -> Image.Image:
    """Shrink ``image`` so that its shorter side is ``short_side`` pixels, keeping the aspect.

    The longer side is rounded to the nearest pixel (at least 1): 100x50 -> 40x20 at 20 px.
    An image whose shorter side is already <= ``short_side`` is returned as an unchanged copy.
    No upsampling happens here: the model's image processor resizes the small image back to
    its input resolution, which is what loses the detail.

    Args:
        image: a PIL image (converted to RGB if it is not).
        short_side: target shorter side in pixels, >= 1.

    Returns:
        A new RGB image; ``image`` is not modified.

    Raises:
        ValueError: ``short_side`` < 1.
    """
    _check_short_side(short_side)
    rgb = _rgb_copy(image)
    width, height = rgb.size
    shorter = min(width, height)
    if shorter <= short_side:
        return rgb
    scale = short_side / shorter
    if width <= height:
        size = (short_side, max(1, round(height * scale)))
    else:
        size = (max(1, round(width * scale)), short_side)
    # PIL's resize filters the whole support when shrinking, i.e. it is antialiased like
    # torchvision's Resize; bicubic keeps the little detail that 20 px can hold.
    return rgb.resize(size, Image.Resampling.BICUBIC)


def color_jitter(image: Image.Image, brightness_factor: float, hue_shift: float) -> Image.Image:
    """Scale brightness by ``brightness_factor``, then rotate the hue by ``hue_shift``.

    Uses ``torchvision.transforms.functional.adjust_brightness`` and ``adjust_hue`` on the PIL
    image, i.e. the operations of ``ColorJitter``, but in a fixed order (``ColorJitter`` shuffles
    it per call), so stored parameters reproduce the pixels. A factor of exactly 1 and a shift
    of exactly 0 are skipped, so they leave pixels bit-identical.

    Args:
        image: a PIL image (converted to RGB if it is not).
        brightness_factor: >= 0; 0 gives black, 1 the original, 2 doubles the values (clipped).
        hue_shift: in [-0.5, 0.5], a fraction of the hue circle; +-0.5 gives the complement.

    Returns:
        A new RGB image; ``image`` is not modified.

    Raises:
        ValueError: a parameter out of range (the message names it).
    """
    if brightness_factor < 0:
        raise ValueError(f"brightness_factor must be >= 0, got {brightness_factor!r}")
    if not -0.5 <= hue_shift <= 0.5:
        raise ValueError(f"hue_shift must be in [-0.5, 0.5], got {hue_shift!r}")
    out = _rgb_copy(image)
    if brightness_factor != 1.0:
        out = TF.adjust_brightness(out, brightness_factor)
    if hue_shift != 0.0:
        out = TF.adjust_hue(out, hue_shift)
    return out


# The corruption kinds by the name stored in the pair record.
CORRUPTIONS: dict[str, Callable[..., Image.Image]] = {
    "lowres": lower_resolution,
    "color_jitter": color_jitter,
}


def apply_corruption(image: Image.Image, params: dict) -> Image.Image:
    """Apply the corruption described by ``params`` (as returned by :func:`sample_corruption`).

    Deterministic: the same image and params always give the same pixels, so a stored record
    reproduces exactly what the model saw.

    Args:
        image: a PIL image; not modified.
        params: ``{"kind": name, **arguments}`` with ``name`` a key of :data:`CORRUPTIONS` and
            exactly that function's keyword arguments.

    Returns:
        A new RGB image.

    Raises:
        ValueError: unknown kind, missing or unexpected arguments, or values out of range.
    """
    if "kind" not in params:
        raise ValueError(f"corruption params have no 'kind': {params!r}")
    kind = params["kind"]
    fn = CORRUPTIONS.get(kind)
    if fn is None:
        raise ValueError(f"unknown corruption kind {kind!r}; known: {sorted(CORRUPTIONS)}")
    kwargs = {key: value for key, value in params.items() if key != "kind"}
    expected = list(inspect.signature(fn).parameters)[1:]  # all but the image
    missing = [name for name in expected if name not in kwargs]
    unexpected = [name for name in kwargs if name not in expected]
    if missing or unexpected:
        raise ValueError(
            f"corruption {kind!r} takes {expected}; missing {missing}, unexpected {unexpected}"
        )
    return fn(image, **kwargs)


def _check_short_side(short_side: int) -> None:
    if isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1:
        raise ValueError(f"short_side must be an integer >= 1, got {short_side!r}")


def _rgb_copy(image: Image.Image) -> Image.Image:
    # convert() always returns a new image, even when the mode is already RGB.
    return image.convert("RGB")
