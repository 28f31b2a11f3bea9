"""Finding and loading user images safely.

Stage 1a reads a folder of unlabeled images that nobody has checked. An image's id is its path
relative to that folder, in POSIX form, so records stay valid when the folder moves. Scanning
(:func:`scan_images`) reports the entries that cannot become ids (names that are not UTF-8, link
loops) with a one-line reason each; loading (:func:`load_image`) turns every bad file into an
:class:`ImageError` with a one-line reason, so a pipeline can skip and report it instead of dying
on image 4,812, and turns every usable mode into plain RGB.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import posixpath
import re
import stat
import struct
import unicodedata
import warnings
import zlib
from collections.abc import Iterable
from typing import NamedTuple

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


# The most elongated image accepted (long side / short side). Measured: Qwen2-VL, Qwen2.5-VL,
# Qwen3-VL and GLM-4V processors raise past 1:200; Pixtral's (Mistral3) shrinks the long side to
# 1024 px, so past about 1:64 the short side is under one 16 px patch and it raises; the other
# tiny processors of stic.testing take 1:50 (and 1x20000 images go through only where the
# processor pads them to a square). A 1:50 banner holds little to describe either way.
MAX_ASPECT_RATIO = 50.0


class ImageError(Exception):
    """An image that cannot be used; ``str(e)`` is a one-line reason that names the file."""


class ImageScan(NamedTuple):
    """What :func:`scan_images` found: the usable image ids, and what it left out and why."""

    ids: list[str]
    # printable relative name -> one-line reason that starts with that name, e.g.
    # {"loop.jpg": "loop.jpg: symbolic link loop (following it never reaches a file)"}
    skipped: dict[str, str]


def scan_images(root: str | os.PathLike, limit: int | None = None) -> ImageScan:
    """Find the image files under ``root``, and report the entries that cannot be used.

    The walk is recursive; a file is a candidate when its extension (any case) is in
    :data:`IMAGE_EXTENSIONS`. Hidden files and folders (name starting with ".") are passed over
    silently. Reported in ``skipped`` (the run goes on without them):

    - names that are not valid UTF-8 (an id must be text in the JSON records) or that hold a
      control character such as a newline (a reason must stay on one line); the name is shown
      with the bad bytes escaped, e.g. ``bad\\xff.png``;
    - symbolic links that loop, are broken, point at something that is not a file, or lead
      outside ``root`` (as :func:`resolve_image_path` refuses them);
    - symlinked folders: not entered, so a link loop (``sub/up -> ..``) cannot hang the walk;
    - entries that cannot be examined, e.g. a subfolder without read permission.

    No file is opened: a listed file may still fail :func:`load_image`.

    Args:
        root: the folder to search.
        limit: keep only the first ``limit`` ids of the sorted list (>= 1), or all if None; then
            only the skipped names that sort before the last kept id are reported.

    Returns:
        ``ImageScan(ids, skipped)``: sorted relative POSIX paths (e.g. ``["a.jpg", "sub/b.png"]``)
        and the skipped names with their reasons, sorted by name.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
        PermissionError: ``root`` cannot be read.
        ValueError: ``limit`` < 1, or no usable image was found ("no images found under ...",
            with the first skipped reasons).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
    root_path = pathlib.Path(root)
    if not root_path.exists():
        raise FileNotFoundError(f"image folder does not exist: {root_path}")
    if not root_path.is_dir():
        raise NotADirectoryError(f"image folder is not a folder: {root_path}")

    real_root = os.path.realpath(root_path)
    found: list[str] = []
    skipped: dict[str, str] = {}

    def skip(relative: str, reason: str) -> None:
        shown = _printable(relative)
        skipped[shown] = f"{shown}: {reason}"

    pending = [""]  # relative POSIX paths of folders still to scan
    while pending:
        relative_dir = pending.pop()
        try:
            with os.scandir(root_path / relative_dir) as listing:
                entries = list(listing)
        except OSError as error:
            if not relative_dir:
                raise
            skip(
                relative_dir, f"folder cannot be read ({_os_reason(error)}); its files are left out"
            )
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = posixpath.join(relative_dir, entry.name) if relative_dir else entry.name
            is_image_name = os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            try:
                if entry.is_dir(follow_symlinks=False):
                    problem = _name_problem(entry.name)
                    if problem:
                        skip(relative, f"folder {problem}; its files are left out")
                    else:
                        pending.append(relative)
                    continue
                if entry.is_symlink():
                    problem = _symlink_problem(entry, is_image_name)
                    if problem is None and is_image_name and not _inside(real_root, entry.path):
                        problem = "symbolic link that leads outside the image folder (not used)"
                    if problem:
                        skip(relative, problem)
                        continue
                if not is_image_name:
                    continue
                if not entry.is_file():
                    skip(relative, "not a regular file (a device, pipe or socket)")
                    continue
            except OSError as error:
                skip(relative, f"cannot be examined ({_os_reason(error)})")
                continue
            problem = _name_problem(entry.name)
            if problem:
                skip(relative, problem)
            else:
                found.append(relative)
    found.sort()
    if not found:
        first = "; ".join(sorted(skipped.values())[:3])
        skipped_note = f"; {len(skipped)} skipped: {first}" if skipped else ""
        raise ValueError(
            f"no images found under {root_path} (extensions: {sorted(IMAGE_EXTENSIONS)})"
            + skipped_note
        )
    if limit is not None and len(found) > limit:
        found = found[:limit]
        skipped = {name: reason for name, reason in skipped.items() if name < found[-1]}
    return ImageScan(found, dict(sorted(skipped.items())))


def list_images(root: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The ids of :func:`scan_images` (same arguments and errors), without the skipped names.

    Skipped entries are logged as warnings; use :func:`scan_images` to report them.
    """
    scan = scan_images(root, limit)
    for reason in scan.skipped.values():
        logger.warning("skipped an entry of the image folder: %s", reason)
    return scan.ids


def _printable(relative: str) -> str:
    """``relative`` as valid UTF-8 text on one line: undecodable bytes and control characters escaped."""
    text = os.fsencode(relative).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)


def _name_problem(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8 (rename it to use it)"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "name contains a control character such as a newline or tab (rename it to use it)"
    return None


def _symlink_problem(entry: os.DirEntry, is_image_name: bool) -> str | None:
    """Why a symbolic link under the image folder is left out, or None if it is a usable file.

    Links that do not carry an image extension are reported only when they lead to a folder
    (which is not entered) or loop; other such links are ignored like any non-image file.
    """
    try:
        target = os.stat(entry.path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (following it never reaches a file)"
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symbolic link (its target does not exist)" if is_image_name else None
        return f"symbolic link cannot be followed ({_os_reason(error)})"
    if stat.S_ISDIR(target.st_mode):
        return "symbolic link to a folder, not followed (a link loop would never end); its images are left out"
    return None


def _inside(real_root: str, path: str | os.PathLike) -> bool:
    """True if ``path``, with every symbolic link followed, lies inside ``real_root`` (resolved)."""
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _os_reason(error: OSError) -> str:
    return error.strerror or _one_line(error)


def resolve_image_path(root: str | os.PathLike, relative: str) -> pathlib.Path:
    """Join an image path from a record to its folder, refusing paths that would leave the folder.

    The one check every reader of user data applies (pairs, instruction data, VQA files and the
    benchmark readers): records can have been edited, so neither their text nor the files they
    name may lead outside ``root``. Refused:

    - absolute paths (``/x``, ``C:\\x``) and paths whose ``..`` parts climb above ``root``;
    - a path that leaves ``root`` once symbolic links are followed: ``root`` and the joined path
      are both resolved (a link that does not exist yet resolves as far as it exists) and the
      second must lie inside the first. A link inside ``root`` to another file inside it is fine.

    Args:
        root: the image folder (for hub tables: the data folder).
        relative: an image path as the record holds it, e.g. ``"sub/b.png"``.

    Returns:
        ``pathlib.Path(root) / relative`` (not resolved: messages show the path the user wrote).

    Raises:
        ValueError: ``relative`` is empty, absolute, or escapes ``root`` (by text or by a link).
    """
    text = relative.replace("\\", "/")  # a Windows separator must not smuggle in a "..\\"
    if text.startswith("/") or pathlib.PureWindowsPath(relative).drive or os.path.isabs(relative):
        raise ValueError(f"image path {relative!r} is absolute; expected a path relative to {root}")
    normalized = posixpath.normpath(text)
    if normalized == ".." or normalized.startswith("../"):
        raise ValueError(f"image path {relative!r} escapes the image folder {root}")
    if not text.strip() or normalized == ".":
        raise ValueError(f"image path {relative!r} does not name a file under {root}")
    path = pathlib.Path(root) / relative
    if not _inside(os.path.realpath(root), path):
        raise ValueError(
            f"image path {relative!r} is a symbolic link (or lies under one) that leads outside "
            f"the image folder {root}"
        )
    return path


def shape_problem(
    width: int, height: int, max_aspect_ratio: float | None = MAX_ASPECT_RATIO
) -> str | None:
    """Why an image of ``width`` x ``height`` pixels is refused before any processor sees it, or None.

    Refused: a zero side, and (``max_aspect_ratio`` not None) a long side more than
    ``max_aspect_ratio`` times the short one (see :data:`MAX_ASPECT_RATIO`).
    """
    if width < 1 or height < 1:
        return f"image has no pixels ({width}x{height})"
    ratio = max(width, height) / min(width, height)
    if max_aspect_ratio is not None and ratio > max_aspect_ratio:
        return (
            f"image is {width}x{height} px, an aspect ratio of 1:{ratio:.0f}, past the limit of "
            f"1:{max_aspect_ratio:g} (vision processors fail on or mangle such strips; crop it)"
        )
    return None


def image_path_problems(
    root: str | os.PathLike, references: Iterable[tuple[str, str | None]]
) -> list[str]:
    """Check the image paths of data records before any model work; one line per bad record.

    Meant for the training stages, where a bad image found by the data collator would stop
    training midway: call it on every record first and refuse the file if anything is listed.
    The path is checked (it stays under ``root`` and names a regular file) and the file's header
    is read for its size (:func:`shape_problem`); the pixels are not decoded.

    Args:
        root: the image folder the paths are relative to.
        references: ``(where, image)`` per record, ``where`` naming the record (e.g.
            ``"pairs.jsonl:2"``); ``image`` None means a text-only record and is not checked.

    Returns:
        ``"<where>: <reason>"`` for each bad record, in the order given; empty if all are fine.
    """
    problems = []
    for where, relative in references:
        if relative is None:
            continue
        try:
            path = resolve_image_path(root, relative)
        except ValueError as error:
            problems.append(f"{where}: {error}")
            continue
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                reason = "not found"
            elif error.errno == errno.ELOOP:
                reason = "is a symbolic link loop"
            else:
                reason = f"cannot be read ({_os_reason(error)})"
            problems.append(f"{where}: image {relative!r} {reason} under {root}")
            continue
        if not regular:
            problems.append(f"{where}: image {relative!r} is not a regular file under {root}")
            continue
        problem = _header_shape_problem(path)
        if problem:
            problems.append(f"{where}: image {relative!r}: {problem}")
    return problems


def _header_shape_problem(path: pathlib.Path) -> str | None:
    """:func:`shape_problem` from the file's header; a file PIL cannot open is left to load_image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as opened:
                width, height = opened.size
    except Exception:  # unreadable or not an image: load_image says why, with its own reason
        return None
    return shape_problem(width, height)


def load_image(
    path: str | os.PathLike, max_aspect_ratio: float | None = MAX_ASPECT_RATIO
) -> Image.Image:
    """Open and fully decode an image file as RGB.

    An image more elongated than ``max_aspect_ratio`` (long side / short side; None: any) is
    refused before it is decoded (see :data:`MAX_ASPECT_RATIO`): vision processors raise on
    such strips (Qwen-VL past 1:200) or cut them below one patch (Pixtral), which would stop a
    whole batch.

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
        ImageError: missing or empty file, a symbolic link that loops or is broken, not an image, truncated or corrupt data, an image
            too large to decode safely, too elongated, or a mode that cannot be made RGB.
    """
    path = pathlib.Path(path)
    try:
        info = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError(
                f"{path}: symbolic link loop (following it never reaches a file)"
            ) from error
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            broken = path.is_symlink()
            reason = (
                "broken symbolic link (its target does not exist)" if broken else "file not found"
            )
            raise ImageError(f"{path}: {reason}") from error
        raise ImageError(f"{path}: cannot be read ({_os_reason(error)})") from error
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
        raise ImageError(f"{path}: not a regular file ({kind})")
    if info.st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        # Treat PIL's "this might be a decompression bomb" warning as the error it usually is.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                problem = shape_problem(*opened.size, max_aspect_ratio)
                if problem:
                    raise ImageError(problem)
                opened.load()
                return _to_rgb(ImageOps.exif_transpose(opened))
    except ImageError as error:  # from the shape check or _to_rgb, which do not know the path
        raise ImageError(f"{path}: {error}") from error
    except PermissionError as error:
        raise ImageError(f"{path}: permission denied") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{path}: {_too_large(error)}") from error
    except UnidentifiedImageError as error:
        raise ImageError(
            f"{path}: not a recognised image file (Pillow cannot identify its contents)"
        ) from error
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


def _too_large(error: BaseException) -> str:
    """The reason for a decompression-bomb refusal, with the image's pixel count if PIL gave it."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)):,} pixels" if found else "its pixel count"
    return (
        f"image too large to decode safely: {size} is over the decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
