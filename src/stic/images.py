"""Finding and loading user images safely.

Stage 1a reads a folder of unlabeled images that nobody has checked. An image's id is its path
relative to that folder, in POSIX form, so records stay valid when the folder moves. Loading
turns every bad file into an :class:`ImageError` with a one-line reason, so a pipeline can skip
and log it instead of dying on image 4,812, and turns every usable mode into plain RGB.
"""

from __future__ import annotations

import logging
import os
import pathlib
import posixpath
import struct
import warnings
import zlib

from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# What PIL's decoders raise on malformed input besides OSError (truncated files, bad chunks,
# broken compressed streams, inconsistent headers).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageError(Exception):
    """An image that cannot be used; ``str(e)`` is a one-line reason that names the file."""


def list_images(root: str | os.PathLike, limit: int | None = None) -> list[str]:
    """List the image files under ``root``; their relative POSIX paths are the image ids.

    The walk is recursive; files are kept when their extension (any case) is in
    :data:`IMAGE_EXTENSIONS`. Hidden files and folders (name starting with ".") are skipped,
    and symlinked folders are not entered, so a link loop cannot hang the walk (symlinked files
    are listed). Nothing is opened: a listed file may still fail :func:`load_image`.

    Args:
        root: the folder to search.
        limit: keep only the first ``limit`` ids of the sorted list (>= 1), or all if None.

    Returns:
        Sorted relative POSIX paths, e.g. ``["a.jpg", "sub/b.png"]``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
        ValueError: ``limit`` < 1, or no image was found ("no images found under ...").
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
    root_path = pathlib.Path(root)
    if not root_path.exists():
        raise FileNotFoundError(f"image folder does not exist: {root_path}")
    if not root_path.is_dir():
        raise NotADirectoryError(f"image folder is not a folder: {root_path}")

    found: list[str] = []
    pending = [""]  # relative POSIX paths of folders still to scan
    while pending:
        relative_dir = pending.pop()
        with os.scandir(root_path / relative_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                relative = posixpath.join(relative_dir, entry.name) if relative_dir else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append(relative)
                elif (
                    entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                ):
                    found.append(relative)
    if not found:
        raise ValueError(
            f"no images found under {root_path} (extensions: {sorted(IMAGE_EXTENSIONS)})"
        )
    found.sort()
    return found if limit is None else found[:limit]


def resolve_image_path(root: str | os.PathLike, relative: str) -> pathlib.Path:
    """Join an image id to its folder, refusing ids that would leave the folder.

    The check is on the text of ``relative`` (ids come from records that could have been
    edited): absolute paths and paths whose ``..`` parts climb above ``root`` are refused.

    Args:
        root: the image folder.
        relative: an image id as listed by :func:`list_images`, e.g. ``"sub/b.png"``.

    Returns:
        ``pathlib.Path(root) / relative``.

    Raises:
        ValueError: ``relative`` is empty, absolute, or escapes ``root``.
    """
    text = relative.replace("\\", "/")  # a Windows separator must not smuggle in a "..\\"
    if text.startswith("/") or pathlib.PureWindowsPath(relative).drive or os.path.isabs(relative):
        raise ValueError(f"image path {relative!r} is absolute; expected a path relative to {root}")
    normalized = posixpath.normpath(text)
    if normalized == ".." or normalized.startswith("../"):
        raise ValueError(f"image path {relative!r} escapes the image folder {root}")
    if not text.strip() or normalized == ".":
        raise ValueError(f"image path {relative!r} does not name a file under {root}")
    return pathlib.Path(root) / relative


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file as RGB.

    The EXIF orientation is applied (the pixels come out the way a viewer shows them). Modes
    become RGB as follows:

    - with transparency (RGBA, LA, PA, or a ``transparency`` entry, e.g. a palette image with a
      transparent index): composited on a WHITE background;
    - 16-bit grayscale (``I;16*``): scaled from 0..65535 to 0..255 (not clipped to white);
    - 32-bit ``I``: used as is if its values fit 0..255, scaled as 16-bit if they fit 0..65535,
      else stretched from its min..max;
    - float ``F``: scaled by 255 if its values fit 0..1, used as is if they fit 0..255, else
      stretched from its min..max;
    - everything else (L, 1, P, CMYK, YCbCr, LAB, ...): PIL's own conversion.

    The first frame of an animated file is used. Decompression-bomb checks use PIL's
    ``Image.MAX_IMAGE_PIXELS``; an image over that limit is refused, not just warned about.

    Args:
        path: the image file.

    Returns:
        A new, fully loaded RGB image that does not hold the file open.

    Raises:
        ImageError: missing or empty file, not an image, truncated or corrupt data, an image
            too large to decode safely, or a mode that cannot be made RGB.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        # Treat PIL's "this might be a decompression bomb" warning as the error it usually is.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                return _to_rgb(ImageOps.exif_transpose(opened))
    except ImageError as error:  # from _to_rgb, which does not know the path
        raise ImageError(f"{path}: {error}") from error
    except PermissionError as error:
        raise ImageError(f"{path}: permission denied") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(
            f"{path}: image too large to decode safely ({_one_line(error)})"
        ) from error
    except UnidentifiedImageError as error:
        raise ImageError(f"{path}: not a recognised image file") from error
    except _DECODE_ERRORS as error:
        raise ImageError(f"{path}: corrupt or truncated image ({_one_line(error)})") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image from a loaded PIL image of any mode (see :func:`load_image`)."""
    mode = image.mode
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        return _scale_to_8bit(image.convert("I"), 0, 65535)
    if mode == "I":
        low, high = image.getextrema()
        if low >= 0 and high <= 255:
            return image.convert("L").convert("RGB")
        if low >= 0 and high <= 65535:
            return _scale_to_8bit(image, 0, 65535)
        return _scale_to_8bit(image, low, high)
    if mode == "F":
        low, high = image.getextrema()
        if low >= 0 and high <= 1:
            return _scale_to_8bit(image, 0, 1)
        if low >= 0 and high <= 255:
            return _scale_to_8bit(image, 0, 255)
        return _scale_to_8bit(image, low, high)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(f"image mode {mode!r} cannot be converted to RGB") from error


def _scale_to_8bit(image: Image.Image, low: float, high: float) -> Image.Image:
    """Map values ``low..high`` of an ``I`` or ``F`` image linearly to 0..255, rounded, as RGB."""
    if high <= low:  # a constant image: nothing to stretch
        return Image.new("RGB", image.size, (0, 0, 0) if low <= 0 else (255, 255, 255))
    scale = 255.0 / (high - low)
    offset = 0.5 - low * scale  # +0.5 rounds, since the conversion to L truncates
    return image.point(lambda value: value * scale + offset).convert("L").convert("RGB")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
