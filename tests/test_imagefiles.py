"""sharpclip.data.imagefiles: every file is generated in tmp_path."""

import hashlib
import io
import multiprocessing
import os
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from sharpclip.data import imagefiles as imf
from sharpclip.data.imagefiles import ImageFileError, find_images, load_rgb, to_rgb

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _close(pixel, expected, tol=12):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _halves(size=(16, 12)):
    """Left half red, right half blue."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


def _noise(size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _peek(path):
    """(format, mode, n_frames) as Pillow sees the file."""
    with Image.open(path) as image:
        return image.format, image.mode, getattr(image, "n_frames", 1)


def _reason(path, **kwargs):
    with pytest.raises(ImageFileError) as info:
        load_rgb(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value.reason


def _png_header_only(path, width, height):
    """A PNG that declares width x height but carries almost no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
    return path


# ------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "save_kwargs"),
    [
        ("a.jpg", {"quality": 95}),
        ("a.JPEG", {"format": "JPEG", "quality": 95}),
        ("a.png", {}),
        ("a.webp", {"lossless": True}),
        ("a.bmp", {}),
        ("a.gif", {}),
        ("a.tif", {}),
        ("a.tiff", {"compression": "tiff_lzw"}),
    ],
)
def test_each_format_loads_as_rgb(tmp_path, name, save_kwargs):
    path = tmp_path / name
    _halves().save(path, **save_kwargs)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (16, 12)
    assert _close(image.getpixel((2, 6)), RED) and _close(image.getpixel((13, 6)), BLUE)
    assert getattr(image, "fp", None) is None  # fully loaded, no file held open


def test_animated_gif_and_webp_give_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, (0, 255, 0), BLUE)]
    for name, kwargs in [("anim.gif", {}), ("anim.webp", {"lossless": True})]:
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0, **kwargs)
        assert _peek(path)[2] == 3
        image = load_rgb(path)
        assert image.size == (8, 8) and _close(image.getpixel((4, 4)), RED, tol=2), name


def test_multipage_tiff_gives_first_page(tmp_path):
    path = tmp_path / "pages.tiff"
    first, second = Image.new("RGB", (10, 6), RED), Image.new("RGB", (30, 20), BLUE)
    first.save(path, save_all=True, append_images=[second])
    assert _peek(path)[2] == 2
    image = load_rgb(path)
    assert image.size == (10, 6) and image.getpixel((5, 3)) == RED


def test_format_is_sniffed_from_content_not_name(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    _halves().save(path, format="PNG")
    assert load_rgb(path).getpixel((2, 6)) == RED


def test_formats_outside_the_list_are_refused(tmp_path):
    # Pillow can read PPM, but load_rgb never tries plugins outside its list (EPS would run
    # Ghostscript), whatever the file is called.
    path = tmp_path / "photo.png"
    _halves().save(path, format="PPM")
    assert _peek(path)[0] == "PPM"
    assert _reason(path) == "not_an_image"


@pytest.mark.skipif(imf.HEIF_AVAILABLE, reason="pillow-heif installed")
def test_heic_without_the_extra_says_how_to_install(tmp_path):
    path = tmp_path / "phone.heic"
    path.write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 64)
    with pytest.raises(ImageFileError) as info:
        load_rgb(path)
    assert info.value.reason == "unsupported" and "sharpclip[heif]" in str(info.value)
    assert ".heic" not in imf.IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- EXIF and draft


def test_exif_orientation_6_is_applied(tmp_path):
    stored = Image.new("RGB", (20, 10), WHITE)
    stored.paste(RED, (0, 0, 5, 5))  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    image = load_rgb(path)
    # Clockwise by 90: stored (x, y) -> displayed (H - 1 - y, x); top-left -> top-right.
    assert image.size == (10, 20)
    assert _close(image.getpixel((8, 1)), RED)
    assert _close(image.getpixel((1, 1)), WHITE)
    assert _close(image.getpixel((8, 18)), WHITE) and _close(image.getpixel((1, 18)), WHITE)


def test_jpeg_draft_decodes_smaller_but_not_below_the_request(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1000, 800), (200, 120, 40)).save(path, quality=90)
    full = load_rgb(path)
    draft = load_rgb(path, draft_size=64)
    assert full.size == (1000, 800)
    assert draft.size[0] < 1000 and min(draft.size) >= 64
    # The fast path against the slow one: the draft matches a full decode shrunk to its size.
    reference = np.asarray(full.resize(draft.size, Image.Resampling.BOX), dtype=np.int16)
    assert np.abs(np.asarray(draft, dtype=np.int16) - reference).mean() < 3


def test_draft_is_ignored_for_other_formats(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), RED).save(path)
    assert load_rgb(path, draft_size=16).size == (300, 200)


# ------------------------------------------------------------------------------------ modes


def test_grayscale_and_bilevel(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert load_rgb(tmp_path / "grey.png").getpixel((0, 0)) == (77, 77, 77)
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.jpg")
    assert _close(load_rgb(tmp_path / "grey.jpg").getpixel((0, 0)), (77, 77, 77), tol=2)
    bilevel = Image.new("1", (4, 4), 0)
    bilevel.putpixel((1, 1), 1)
    bilevel.save(tmp_path / "bw.bmp")
    image = load_rgb(tmp_path / "bw.bmp")
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((1, 1)) == WHITE


@pytest.mark.parametrize("name", ["pal.png", "pal.gif"])
def test_palette_with_transparency_goes_onto_white(tmp_path, name):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # 0: red, 1: green (transparent)
    image.putpixel((3, 3), 1)
    path = tmp_path / name
    image.save(path, transparency=1)
    loaded = load_rgb(path)
    assert loaded.getpixel((0, 0)) == RED and loaded.getpixel((3, 3)) == WHITE


def test_rgba_and_la_composite_onto_white(tmp_path):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(0, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    image.save(tmp_path / "rgba.png")
    loaded = load_rgb(tmp_path / "rgba.png")
    assert loaded.getpixel((0, 0)) == WHITE  # fully transparent black -> white
    assert loaded.getpixel((1, 0)) == BLUE
    assert _close(loaded.getpixel((2, 0)), (127, 127, 127), tol=1)
    grey_alpha = Image.new("LA", (2, 1), (0, 0))
    grey_alpha.putpixel((1, 0), (50, 255))
    grey_alpha.save(tmp_path / "la.png")
    loaded = load_rgb(tmp_path / "la.png")
    assert loaded.getpixel((0, 0)) == WHITE and loaded.getpixel((1, 0)) == (50, 50, 50)


@pytest.mark.parametrize("name", ["cmyk.jpg", "cmyk.tif"])
def test_cmyk_pure_cyan_stays_cyan(tmp_path, name):
    path = tmp_path / name
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(path)
    assert _peek(path)[1] == "CMYK"
    red, green, blue = load_rgb(path).getpixel((4, 4))
    assert red < 30 and green > 225 and blue > 225


@pytest.mark.parametrize("name", ["deep.png", "deep.tif"])
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, name):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / name
    Image.fromarray(values).save(path)
    assert _peek(path)[1].startswith("I")  # stays 16-bit in the file
    loaded = np.asarray(load_rgb(path))
    assert loaded[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (loaded == loaded[..., :1]).all()  # grey


def test_to_rgb_on_32_bit_and_float_modes():
    as_16_bit = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert as_16_bit.mode == "I"
    assert np.asarray(to_rgb(as_16_bit))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))  # outside 0..65535
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]
    byte_range = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert np.asarray(to_rgb(byte_range))[0, :, 0].tolist() == [0, 100, 255]


# -------------------------------------------------------------------------------- bad files


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _reason(tmp_path / "empty.jpg") == "empty"


@pytest.mark.parametrize(("name", "kwargs"), [("cut.jpg", {}), ("cut.png", {}), ("cut.webp", {})])
def test_truncated_files(tmp_path, name, kwargs):
    buffer = io.BytesIO()
    _noise().save(buffer, format=name.rsplit(".", 1)[1].replace("jpg", "jpeg"), **kwargs)
    data = buffer.getvalue()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # global Pillow state left alone


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n")
    assert _reason(path) == "not_an_image"


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "modest.png"
    Image.new("RGB", (100, 100), RED).save(path)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self)
    )
    with pytest.raises(ImageFileError) as info:
        load_rgb(path, max_pixels=5_000)
    assert info.value.reason == "too_large" and "max_pixels" in str(info.value)
    assert decoded == []
    assert load_rgb(path, max_pixels=10_000).size == (100, 100) and decoded  # at the limit: fine


def test_bomb_headers_are_too_large_without_warnings(tmp_path):
    # 144 megapixels declared, a few bytes of data: decoding would say "truncated" instead.
    bomb = _png_header_only(tmp_path / "bomb.png", 12_000, 12_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        assert _reason(bomb, max_pixels=100_000_000) == "too_large"
    # 400 megapixels: above Pillow's own hard limit too, still reported the same way.
    assert _reason(_png_header_only(tmp_path / "huge.png", 20_000, 20_000)) == "too_large"
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # global Pillow state left alone


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_permissions(tmp_path):
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4), RED).save(path)
    path.chmod(0)
    try:
        assert _reason(path) == "unreadable"
        with pytest.raises(PermissionError):
            imf.content_hash(path)
    finally:
        path.chmod(0o644)


def test_permission_error_is_unreadable(tmp_path, monkeypatch):
    # The same path as the chmod test, exercised even as root.
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4), RED).save(path)

    real_open = os.open

    def refuse(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert _reason(path) == "unreadable"
    with pytest.raises(PermissionError):
        imf.content_hash(path)


def test_missing_file_and_directory(tmp_path):
    assert _reason(tmp_path / "gone.jpg") == "missing"
    (tmp_path / "dir.jpg").mkdir()
    assert _reason(tmp_path / "dir.jpg") == "unreadable"


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="max_pixels"):
        load_rgb(tmp_path / "x.png", max_pixels=0)
    with pytest.raises(ValueError, match="draft_size"):
        load_rgb(tmp_path / "x.png", draft_size=0)


def test_error_pickles_and_names_the_file(tmp_path):
    error = ImageFileError(tmp_path / "a.jpg", "truncated", "the file ends early")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, copy.detail) == (error.path, "truncated", error.detail)
    assert str(copy) == f"{tmp_path / 'a.jpg'}: the file ends early"
    with pytest.raises(ValueError, match="reason"):
        ImageFileError("a.jpg", "bad", "x")


def _load_or_reason(path):
    try:
        return load_rgb(path).size
    except ImageFileError as error:
        return error.reason


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_worker_processes(tmp_path):
    Image.new("RGB", (5, 3), RED).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_text("nope")
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_load_or_reason, [tmp_path / "good.png", tmp_path / "bad.jpg"])
    assert results == [(5, 3), "not_an_image"]


# ------------------------------------------------------------------------------- find_images


def test_find_images_walks_filters_and_skips(tmp_path):
    root = tmp_path / "photos"
    files = {
        "a.jpg": True,
        "b.PNG": True,
        "sub/deeper/c.TiFf": True,
        "sub/d.webp": True,
        "sub/e.gif": True,
        "sub/f.bmp": True,
        "sub/g.jpeg": True,
        "notes.txt": False,
        "raw.cr2": False,
        ".hidden.jpg": False,
        "._a.jpg": False,
        ".git/objects/h.png": False,
        "sub/.thumbs/i.jpg": False,
        "index/collection.sqlite": False,
        "index/j.png": False,
        "index/vectors/k.png": False,
    }
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    expected = sorted((root / name).resolve() for name, listed in files.items() if listed)

    assert find_images([root]) == expected
    assert find_images(str(root)) == expected  # a single path, not iterated character by character
    # Duplicates (the directory, a file inside it, a relative spelling) collapse.
    again = find_images([root, root / "a.jpg", root / "sub" / ".." / "a.jpg"])
    assert again == expected and all(p.is_absolute() for p in again)
    # An explicit file is listed if it has an image suffix, even hidden; others are not.
    assert find_images([root / ".hidden.jpg", root / "notes.txt"]) == [
        (root / ".hidden.jpg").resolve()
    ]
    assert find_images([root / "index"]) == []  # a collection directory itself


def test_find_images_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        find_images([tmp_path, tmp_path / "no-such-dir"])


def test_image_extensions_are_lower_case_suffixes():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= (
        imf.IMAGE_EXTENSIONS
    )
    assert all(e.startswith(".") and e == e.lower() for e in imf.IMAGE_EXTENSIONS)
    assert ({".heic", ".heif"} <= imf.IMAGE_EXTENSIONS) == imf.HEIF_AVAILABLE


# ------------------------------------------------------------------------------ fingerprints


def test_content_hash_is_streamed_sha256(tmp_path):
    data = np.random.default_rng(1).bytes(imf.HASH_CHUNK_BYTES * 2 + 12345)  # crosses chunks
    path = tmp_path / "blob.jpg"
    path.write_bytes(data)
    assert imf.content_hash(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert imf.content_hash(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_file_fingerprint_changes_with_the_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"12345")
    size, mtime_ns = imf.file_fingerprint(path)
    assert size == 5 and mtime_ns == path.stat().st_mtime_ns
    os.utime(path, ns=(mtime_ns, mtime_ns + 10**9))
    assert imf.file_fingerprint(path) == (5, mtime_ns + 10**9)
    # Plain OSErrors, like os.stat and open: ingest catches them for files gone mid-run.
    with pytest.raises(FileNotFoundError):
        imf.file_fingerprint(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError):
        imf.content_hash(tmp_path / "gone.png")


# --------------------------------------------------------------------- links and special files


def _call_and_send(send, function, args):
    try:
        outcome = ("returned", function(*args))
    except BaseException as error:  # noqa: BLE001 -- sent back to the test to inspect
        outcome = ("raised", error)
    send.send(outcome)


def _promptly(function, *args, seconds=5.0):
    """``(how, value)`` of ``function(*args)`` run in a forked child: ``("returned", result)`` or
    ``("raised", exception)``, pickled back. Fails the test if the call takes over ``seconds``
    (it blocked), and kills the child, so a regression hangs nowhere."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_call_and_send, args=(send, function, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(seconds):
            child.kill()
            pytest.fail(f"{function.__name__}{args} did not return within {seconds} s")
        return receive.recv()
    finally:
        child.join()
        receive.close()


needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork"
)


def _links(tmp_path):
    """d/ with a link loop (a.jpg, b.jpg), a dangling link (gone.jpg), a link to a file outside
    (out.jpg -> elsewhere/x.jpg), a link to a directory (dirlink.jpg) and a plain file."""
    d, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    d.mkdir()
    elsewhere.mkdir()
    Image.new("RGB", (4, 4), RED).save(elsewhere / "x.jpg")
    Image.new("RGB", (4, 4), BLUE).save(d / "plain.png")
    os.symlink("b.jpg", d / "a.jpg")
    os.symlink("a.jpg", d / "b.jpg")
    os.symlink("missing.jpg", d / "gone.jpg")
    os.symlink(elsewhere / "x.jpg", d / "out.jpg")
    os.symlink(elsewhere, d / "dirlink.jpg", target_is_directory=True)
    return d, elsewhere


def test_path_key_keeps_the_final_name_and_resolves_the_directories(tmp_path, monkeypatch):
    d, _ = _links(tmp_path)
    real = d.resolve()
    os.symlink(d, tmp_path / "alias", target_is_directory=True)
    # A link to a file is keyed by its own name, in its resolved directory.
    assert imf.path_key(tmp_path / "alias" / "out.jpg") == str(real / "out.jpg")
    assert imf.path_key(d / "gone.jpg") == str(real / "gone.jpg")
    assert imf.path_key(d / "a.jpg") == str(real / "a.jpg")  # a loop itself: no error
    assert imf.path_key(d / "no-such.jpg") == str(real / "no-such.jpg")  # need not exist
    # ".." after a linked directory goes up from its target, as the operating system does.
    assert imf.path_key(d / "dirlink.jpg" / ".." / "z.jpg") == str(tmp_path.resolve() / "z.jpg")
    monkeypatch.chdir(d)
    assert imf.path_key("out.jpg") == str(real / "out.jpg")
    monkeypatch.setenv("HOME", str(tmp_path / "alias"))
    assert imf.path_key("~/out.jpg") == str(real / "out.jpg")
    assert imf.path_key(imf.path_key("out.jpg")) == imf.path_key("out.jpg")


def test_path_key_never_raises_on_directory_loops(tmp_path):
    os.symlink("l2", tmp_path / "l1")
    os.symlink("l1", tmp_path / "l2")
    key = imf.path_key(tmp_path / "l1" / "x.jpg")  # resolving l1 loops: kept as written
    assert key == os.path.join(os.path.abspath(tmp_path / "l1"), "x.jpg")
    assert imf.path_key(tmp_path / "l1") == str(tmp_path.resolve() / "l1")
    with pytest.raises(ImageFileError) as info:
        load_rgb(tmp_path / "l1" / "x.jpg")
    assert info.value.reason == "unreadable"
    assert "a folder in this path is a symbolic link loop" in str(info.value)


def test_find_images_lists_links_under_their_own_names(tmp_path):
    d, elsewhere = _links(tmp_path)
    real = d.resolve()
    expected = [real / name for name in ("a.jpg", "b.jpg", "gone.jpg", "out.jpg", "plain.png")]
    assert find_images([d]) == expected  # the link to a directory is neither followed nor listed
    # Given explicitly, the same names; a dangling link or a loop is a name that exists.
    assert find_images([d / "out.jpg", d / "gone.jpg", d / "a.jpg", d / "plain.png"]) == [
        real / "a.jpg",
        real / "gone.jpg",
        real / "out.jpg",
        real / "plain.png",
    ]
    assert find_images([d, d / "out.jpg", elsewhere]) == expected + [elsewhere.resolve() / "x.jpg"]


def test_link_loop_and_dangling_link_say_what_the_link_is(tmp_path):
    d, _ = _links(tmp_path)
    with pytest.raises(ImageFileError) as info:
        load_rgb(d / "a.jpg")
    assert info.value.reason == "unreadable" and str(d / "a.jpg") in str(info.value)
    assert "symbolic link loop" in str(info.value) and "fix or remove the link" in str(info.value)
    with pytest.raises(ImageFileError) as info:
        load_rgb(d / "gone.jpg")
    assert info.value.reason == "missing" and str(d / "gone.jpg") in str(info.value)
    assert "symbolic link to a missing target" in str(info.value)
    assert "'missing.jpg'" in str(info.value)
    assert load_rgb(d / "out.jpg").getpixel((1, 1)) != WHITE  # a link to a file reads its target
    with pytest.raises(OSError):
        imf.content_hash(d / "a.jpg")
    with pytest.raises(FileNotFoundError):
        imf.content_hash(d / "gone.jpg")


def _special_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "pipe.jpg")
    files = [d / "pipe.jpg"]
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", d / "zero.jpg")
        files.append(d / "zero.jpg")
    return d, files


@needs_fork
def test_fifos_and_devices_are_refused_without_blocking(tmp_path):
    d, files = _special_files(tmp_path)
    assert find_images([d]) == [d.resolve() / p.name for p in files]  # listed, to be recorded
    for path in files:
        how, error = _promptly(load_rgb, path)
        assert how == "raised" and isinstance(error, ImageFileError), (path, how, error)
        assert error.reason == "not_a_file" and str(path) in str(error)
        assert "not a regular image file" in str(error) and "move it out" in str(error)
        how, error = _promptly(imf.content_hash, path)
        assert how == "raised" and isinstance(error, OSError), (path, how, error)
        assert isinstance(error, imf.NotARegularFileError) and error.errno is not None
        assert str(path) in str(error) and "not a regular" in str(error)
    assert "FIFO" in str(_promptly(load_rgb, d / "pipe.jpg")[1])
    if len(files) > 1:
        message = str(_promptly(load_rgb, d / "zero.jpg")[1])
        assert "character device" in message and "/dev/zero" in message


@needs_fork
def test_a_file_swapped_after_stat_is_caught_on_the_open_descriptor(tmp_path, monkeypatch):
    d, _ = _special_files(tmp_path)
    regular = d / "real.png"
    Image.new("RGB", (4, 4), RED).save(regular)
    pipe = str(d / "pipe.jpg")
    real_stat = os.stat

    def stale_stat(path, *args, **kwargs):  # what stat said before the FIFO was swapped in
        return real_stat(regular if os.fspath(path) == pipe else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stale_stat)
    how, error = _promptly(load_rgb, pipe)
    assert how == "raised" and getattr(error, "reason", None) == "not_a_file", (how, error)
    how, error = _promptly(imf.content_hash, pipe)
    assert how == "raised" and isinstance(error, imf.NotARegularFileError), (how, error)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list a chmod 000 folder")
def test_unlistable_folder_is_reported(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    locked.chmod(0)
    try:
        unlistable = []
        assert find_images([tmp_path], unlistable=unlistable) == [tmp_path.resolve() / "b.jpg"]
        assert [key for key, _ in unlistable] == [imf.path_key(locked)]
        assert "Permission denied" in unlistable[0][1]
    finally:
        locked.chmod(0o755)


def test_unlistable_folder_is_reported_even_as_root(tmp_path, monkeypatch, caplog):
    locked = tmp_path / "sub" / "locked"
    locked.mkdir(parents=True)
    (locked / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    real_scandir = os.scandir

    def refuse(path="."):
        if os.path.abspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    unlistable = []
    with caplog.at_level("WARNING", logger=imf.__name__):
        found = find_images([tmp_path, tmp_path / "sub"], unlistable=unlistable)
    assert found == [tmp_path.resolve() / "b.jpg"]
    key = imf.path_key(locked)
    message = (
        f"{key}: cannot list this folder (Permission denied); "
        "make it readable to this user or leave it out"
    )
    assert unlistable == [(key, message)]  # once, though two given paths reach it
    assert str(locked) in caplog.text
    assert find_images([tmp_path]) == found  # without the list: logged and skipped, as before
