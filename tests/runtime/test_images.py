import io
import os
import pathlib

import pytest
from PIL import Image

from stic.runtime.images import (
    IMAGE_EXTENSIONS,
    MAX_ASPECT_RATIO,
    ImageError,
    ImageScan,
    image_path_problems,
    list_images,
    load_image,
    resolve_image_path,
    scan_images,
    shape_problem,
)

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")


def _touch_image(path: pathlib.Path, color=(10, 20, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), None)
    Image.new("RGB", (4, 4), color).save(path, format=fmt)


def _assert_one_line_reason(error: pytest.ExceptionInfo, path: pathlib.Path) -> None:
    message = str(error.value)
    assert message.strip() and "\n" not in message
    assert str(path) in message


# --- listing ------------------------------------------------------------------------------


def test_list_images_recursive_sorted_and_filtered(tmp_path):
    for name in ["b.png", "a.JPG", "sub/deeper/c.webp", "sub/a.jpeg", "z/d.tiff"]:
        _touch_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "data.json").write_text("{}")
    (tmp_path / "noext").write_bytes(b"")
    assert list_images(tmp_path) == [
        "a.JPG",
        "b.png",
        "sub/a.jpeg",
        "sub/deeper/c.webp",
        "z/d.tiff",
    ]
    assert list_images(str(tmp_path), limit=2) == ["a.JPG", "b.png"]
    assert list_images(tmp_path, limit=100) == list_images(tmp_path)


def test_list_images_skips_hidden_files_and_folders(tmp_path):
    _touch_image(tmp_path / "keep.png")
    _touch_image(tmp_path / ".hidden.png")
    _touch_image(tmp_path / ".cache" / "x.png")
    _touch_image(tmp_path / "sub" / ".ipynb_checkpoints" / "y.png")
    assert list_images(tmp_path) == ["keep.png"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_list_images_does_not_follow_symlinked_folders(tmp_path):
    _touch_image(tmp_path / "sub" / "a.png")
    try:
        (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not permitted here")
    assert list_images(tmp_path) == ["sub/a.png"]


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "file.png")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.md").write_text("hi")
    with pytest.raises(ValueError, match="no images found under"):
        list_images(empty)
    with pytest.raises(ValueError, match="limit"):
        list_images(tmp_path, limit=0)


def _symlink(link: pathlib.Path, target: str, directory: bool = False) -> None:
    try:
        link.symlink_to(target, target_is_directory=directory)
    except OSError:
        pytest.skip("symlinks not permitted here")


def _assert_one_line_reasons(skipped: dict[str, str]) -> None:
    for name, reason in skipped.items():
        assert reason.startswith(f"{name}: ") and "\n" not in reason
        reason.encode("utf-8")  # printable in a UTF-8 summary or log


def test_scan_without_problems_equals_list_images(tmp_path):
    for name in ["b.png", "sub/a.jpg"]:
        _touch_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored silently")
    assert scan_images(tmp_path) == ImageScan(["b.png", "sub/a.jpg"], {})
    assert list_images(tmp_path) == ["b.png", "sub/a.jpg"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_scan_reports_names_that_are_not_utf8(tmp_path):
    _touch_image(tmp_path / "good.png")
    root = os.fsencode(tmp_path)
    try:
        with open(root + b"/bad\xff.png", "wb") as f:
            f.write(b"anything")
        os.mkdir(root + b"/dir\xfe")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    Image.new("RGB", (2, 2)).save(os.fsdecode(root + b"/dir\xfe/inside.png"))
    scan = scan_images(tmp_path)
    assert scan.ids == ["good.png"]
    assert set(scan.skipped) == {"bad\\xff.png", "dir\\xfe"}
    assert "not valid UTF-8" in scan.skipped["bad\\xff.png"]
    assert "its files are left out" in scan.skipped["dir\\xfe"]
    _assert_one_line_reasons(scan.skipped)
    assert list_images(tmp_path) == ["good.png"]


def test_scan_reports_names_with_control_characters(tmp_path):
    _touch_image(tmp_path / "good.png")
    try:
        _touch_image(tmp_path / "two\nlines.png")
    except OSError:
        pytest.skip("this file system refuses newlines in names")
    scan = scan_images(tmp_path)
    assert scan.ids == ["good.png"]
    assert list(scan.skipped) == ["two\\nlines.png"]
    assert "control character" in scan.skipped["two\\nlines.png"]
    _assert_one_line_reasons(scan.skipped)


@needs_symlinks
def test_scan_reports_link_loops_broken_links_and_linked_folders(tmp_path):
    _touch_image(tmp_path / "good.png")
    _touch_image(tmp_path / "sub" / "inner.png")
    _symlink(tmp_path / "loop.jpg", "loop.jpg")  # points at itself
    _symlink(tmp_path / "a.jpg", "b.jpg")  # a two-link cycle
    _symlink(tmp_path / "b.jpg", "a.jpg")
    _symlink(tmp_path / "gone.png", "missing.png")
    _symlink(tmp_path / "sub" / "up", "..", directory=True)  # a folder loop
    _symlink(tmp_path / "alias.png", "good.png")  # a link to an image: listed
    _symlink(tmp_path / "readme", "missing.txt")  # not an image name: ignored
    scan = scan_images(tmp_path)
    assert scan.ids == ["alias.png", "good.png", "sub/inner.png"]
    assert set(scan.skipped) == {"a.jpg", "b.jpg", "gone.png", "loop.jpg", "sub/up"}
    assert "symbolic link loop" in scan.skipped["loop.jpg"]
    assert "symbolic link loop" in scan.skipped["a.jpg"]
    assert "broken symbolic link" in scan.skipped["gone.png"]
    assert "symbolic link to a folder, not followed" in scan.skipped["sub/up"]
    _assert_one_line_reasons(scan.skipped)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_scan_and_load_refuse_a_named_pipe(tmp_path):
    _touch_image(tmp_path / "good.png")
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block forever
    scan = scan_images(tmp_path)
    assert scan.ids == ["good.png"]
    assert "not a regular file" in scan.skipped["pipe.jpg"]
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "pipe.jpg")


def test_scan_reports_an_unreadable_subfolder(tmp_path, monkeypatch):
    """The listing of one subfolder fails (as without read permission): its files are left out
    and the folder is reported. Made to fail by patching the listing, not by permissions, which
    root (as in CI containers) ignores."""
    _touch_image(tmp_path / "good.png")
    _touch_image(tmp_path / "locked" / "x.png")
    _touch_image(tmp_path / "open" / "y.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if pathlib.Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_images(tmp_path)
    assert scan.ids == ["good.png", "open/y.png"]
    assert list(scan.skipped) == ["locked"]
    assert "folder cannot be read" in scan.skipped["locked"]
    assert "ermission denied" in scan.skipped["locked"]
    _assert_one_line_reasons(scan.skipped)


def test_scan_of_an_unreadable_root_raises(tmp_path, monkeypatch):
    _touch_image(tmp_path / "good.png")

    def scandir(path="."):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError):
        scan_images(tmp_path)


def test_scan_limit_reports_only_skips_before_the_cut(tmp_path):
    for name in ["a.png", "c.png", "e.png"]:
        _touch_image(tmp_path / name)
    for name in ["b\tx.png", "d\tx.png"]:
        _touch_image(tmp_path / name)
    scan = scan_images(tmp_path, limit=2)
    assert scan.ids == ["a.png", "c.png"]
    assert list(scan.skipped) == ["b\\tx.png"]
    assert len(scan_images(tmp_path).skipped) == 2


def test_scan_with_only_unusable_entries_says_why(tmp_path):
    _touch_image(tmp_path / "tab\there.png")
    with pytest.raises(ValueError, match=r"no images found under .*1 skipped: tab"):
        scan_images(tmp_path)


@needs_symlinks
def test_load_image_names_link_problems(tmp_path):
    _symlink(tmp_path / "loop.jpg", "loop.jpg")
    _symlink(tmp_path / "gone.png", "missing.png")
    with pytest.raises(ImageError, match="symbolic link loop") as error:
        load_image(tmp_path / "loop.jpg")
    _assert_one_line_reason(error, tmp_path / "loop.jpg")
    with pytest.raises(ImageError, match="broken symbolic link") as error:
        load_image(tmp_path / "gone.png")
    _assert_one_line_reason(error, tmp_path / "gone.png")


def test_extensions_are_lowercase_with_dot():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)


# --- path resolution ----------------------------------------------------------------------


def test_resolve_image_path_joins_relative_ids(tmp_path):
    assert resolve_image_path(tmp_path, "sub/a.png") == tmp_path / "sub" / "a.png"
    assert resolve_image_path(str(tmp_path), "sub/../a.png") == tmp_path / "sub/../a.png"


@pytest.mark.parametrize(
    "relative", ["../x.jpg", "sub/../../x.jpg", "..", "/etc/passwd", "..\\x.jpg", "", "."]
)
def test_resolve_image_path_refuses_escapes(tmp_path, relative):
    with pytest.raises(ValueError, match=r"absolute|escapes|does not name"):
        resolve_image_path(tmp_path, relative)


def test_image_path_problems_names_each_bad_record(tmp_path):
    root = tmp_path / "images"
    _touch_image(root / "ok.png")
    _touch_image(tmp_path / "outside.jpg")
    (root / "folder.png").mkdir()
    problems = image_path_problems(
        root,
        [
            ("data.jsonl:1", "ok.png"),
            ("data.jsonl:2", "../outside.jpg"),
            ("data.jsonl:3", str(tmp_path / "outside.jpg")),
            ("data.jsonl:4", "missing.png"),
            ("data.jsonl:5", None),  # a text-only record
            ("data.jsonl:6", "folder.png"),
        ],
    )
    assert [p.split(": ", 1)[0] for p in problems] == [
        "data.jsonl:2",
        "data.jsonl:3",
        "data.jsonl:4",
        "data.jsonl:6",
    ]
    assert "escapes the image folder" in problems[0]
    assert "is absolute" in problems[1]
    assert "not found" in problems[2]
    assert "not a regular file" in problems[3]
    assert all("\n" not in p for p in problems)
    assert image_path_problems(root, [("x", "ok.png")]) == []


# --- loading ------------------------------------------------------------------------------


def test_load_rgb_png(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (5, 3), (12, 34, 56)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 3)
    assert image.getpixel((4, 2)) == (12, 34, 56)


def test_load_rgba_composites_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.getpixel((1, 0)) == (255, 255, 255)


def test_load_la_composites_on_white(tmp_path):
    path = tmp_path / "la.png"
    image = Image.new("LA", (2, 1), (0, 255))
    image.putpixel((1, 0), (0, 0))
    image.save(path)
    loaded = load_image(path)
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.getpixel((1, 0)) == (255, 255, 255)


def test_load_palette_with_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)  # index 0 black, 1 green
    image.putpixel((1, 0), 1)
    image.save(path, transparency=0)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)  # the transparent index -> white
    assert loaded.getpixel((1, 0)) == (0, 200, 0)


def test_load_palette_gif_without_transparency(tmp_path):
    path = tmp_path / "plain.gif"
    Image.new("RGB", (3, 3), (255, 0, 0)).convert("P").save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((1, 1)) == (255, 0, 0)


def test_load_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    image = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # full cyan ink
    image.paste((0, 0, 0, 0), (0, 0, 4, 8))  # no ink: white
    image.save(path, quality=95)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    white, cyan = loaded.getpixel((1, 4)), loaded.getpixel((6, 4))
    assert all(channel > 235 for channel in white)
    assert cyan[0] < 30 and cyan[1] > 225 and cyan[2] > 225


def test_load_16bit_grayscale_scales_not_clips(tmp_path):
    path = tmp_path / "gray16.png"
    image = Image.new("I;16", (3, 1), 32768)
    image.putpixel((0, 0), 0)
    image.putpixel((2, 0), 65535)
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert all(abs(channel - 128) <= 1 for channel in loaded.getpixel((1, 0)))
    assert loaded.getpixel((2, 0)) == (255, 255, 255)


def test_load_grayscale_and_float_tiff(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (2, 2), 77).save(gray)
    assert load_image(gray).getpixel((0, 0)) == (77, 77, 77)
    floats = tmp_path / "float.tif"
    Image.new("F", (2, 2), 0.5).save(floats)
    assert all(abs(channel - 128) <= 1 for channel in load_image(floats).getpixel((0, 0)))


def test_load_image_returns_a_detached_image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (2, 2), (1, 2, 3)).save(path)
    image = load_image(path)
    path.unlink()  # the file is not held open and the pixels are already decoded
    assert image.getpixel((0, 0)) == (1, 2, 3)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="not found") as error:
        load_image(path)
    _assert_one_line_reason(error, path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as error:
        load_image(path)
    _assert_one_line_reason(error, path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_text("this is not a jpeg\nat all\n")
    with pytest.raises(ImageError, match="not a recognised image") as error:
        load_image(path)
    _assert_one_line_reason(error, path)


def test_truncated_png(tmp_path):
    buffer = io.BytesIO()
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    noise.save(buffer, format="PNG")
    data = buffer.getvalue()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated") as error:
        load_image(path)
    _assert_one_line_reason(error, path)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError) as error:
        load_image(tmp_path)
    _assert_one_line_reason(error, tmp_path)


@pytest.mark.parametrize("max_pixels", [60, 150])  # 150: over the warning limit, not the error one
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, max_pixels):
    path = tmp_path / "big.png"
    Image.new("RGB", (10, 20), (0, 0, 0)).save(path)  # 200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", max_pixels)
    with pytest.raises(ImageError, match="too large") as error:
        load_image(path)
    _assert_one_line_reason(error, path)


# --- shapes no processor takes ------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (2, 101), (600, 11)])
def test_load_image_refuses_strips_past_the_aspect_limit_in_one_line(tmp_path, size):
    path = tmp_path / "strip.png"
    Image.new("RGB", size, (9, 9, 9)).save(path)
    with pytest.raises(
        ImageError, match=r"aspect ratio of 1:\d+, past the limit of 1:50"
    ) as caught:
        load_image(path)
    _assert_one_line_reason(caught, path)
    assert f"{size[0]}x{size[1]} px" in str(caught.value)


def test_aspect_limit_is_inclusive_and_adjustable(tmp_path):
    path = tmp_path / "banner.png"
    Image.new("RGB", (500, 10), (9, 9, 9)).save(path)  # exactly 1:50
    assert load_image(path).size == (500, 10)
    assert shape_problem(500, 10) is None and shape_problem(501, 10) is not None
    with pytest.raises(ImageError, match="limit of 1:20"):
        load_image(path, max_aspect_ratio=20)
    assert load_image(tmp_path / "banner.png", max_aspect_ratio=None).size == (500, 10)
    assert MAX_ASPECT_RATIO == 50


def test_image_path_problems_reads_the_shape_from_the_header(tmp_path):
    Image.new("RGB", (1, 20000)).save(tmp_path / "thin.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "fine.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")  # left to load_image to explain
    problems = image_path_problems(
        tmp_path, [("r:1", "thin.png"), ("r:2", "fine.png"), ("r:3", "junk.png")]
    )
    assert len(problems) == 1
    assert problems[0].startswith("r:1: image 'thin.png': image is 1x20000 px")
