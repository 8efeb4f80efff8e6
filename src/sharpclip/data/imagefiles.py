"""Reading image files safely: the edge of the indexing pipeline (ARCHITECTURE.md, "ingest").

Three jobs, each a small function:

- :func:`find_images` walks files and directories and lists the image files to index, each under
  its :func:`path_key` (a symbolic link to a file under the link's own name, never its target);
- :func:`load_rgb` decodes one file into a fully loaded 8-bit RGB :class:`PIL.Image.Image`, with the
  EXIF orientation applied and every pixel mode converted correctly (alpha onto white, 16-bit
  scaled rather than clipped), or raises :class:`ImageFileError` with a machine-friendly ``reason``;
- :func:`file_fingerprint` and :func:`content_hash` tell whether a file changed since it was indexed.

Only regular files are ever read. :func:`find_images` lists names, not contents, so a listed name
may be a dangling link, a link loop, a FIFO or a device; :func:`load_rgb` and :func:`content_hash`
open with ``O_NONBLOCK`` and check the open descriptor, so such a name fails at once (``missing``,
``unreadable``, ``not_a_file``) instead of waiting for a writer or reading ``/dev/zero`` forever.

A bad file never aborts a run: the caller catches :class:`ImageFileError`, records ``path``,
``reason`` and the message, and goes on. Every failure of :func:`load_rgb` on a file is that one
exception type (a programming error, such as a negative ``max_pixels``, is a ``ValueError``);
:func:`file_fingerprint` and :func:`content_hash` raise the plain ``OSError`` the operating system
gave (a file gone between listing and hashing), like ``os.stat`` and ``open`` do, or a
:class:`NotARegularFileError` (an ``OSError``) for a FIFO, socket or device.

Formats: JPEG (and MPO), PNG, WebP, BMP, GIF and TIFF, plus HEIC/HEIF when the optional
``pillow-heif`` package is installed (``pip install 'sharpclip[heif]'``). Only those Pillow plugins
are ever tried, whatever a file's name, so a file that merely claims to be an image cannot reach
plugins that run external programs (EPS runs Ghostscript) or that this project never tested.

Global state. Importing this module registers pillow-heif's opener with Pillow when pillow-heif is
installed (that is how the plugin works; it is idempotent). Nothing else in Pillow is changed: the
pixel limit is checked here, against ``max_pixels``, before any pixel is decoded, and
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone. Pillow's own decompression-bomb guard still runs
inside ``Image.open``: its warning is silenced for the duration of the call with
``warnings.catch_warnings`` (which, before Python 3.14, edits the process-wide warnings filter while
the call runs, so concurrent *threads* could briefly see it silenced; worker processes are
unaffected), and its error (above ``2 * PIL.Image.MAX_IMAGE_PIXELS``) is reported as ``too_large``.

Every function here is a pure function of the file it is given, holds no file open after it returns
and is safe to call in worker processes; :class:`ImageFileError` pickles.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import struct
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

try:  # optional extra: sharpclip[heif]
    import pillow_heif
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_AVAILABLE = False
else:  # pragma: no cover - depends on the environment
    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True

_BASE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_HEIF_EXTENSIONS = (".heic", ".heif")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    _BASE_EXTENSIONS + (_HEIF_EXTENSIONS if HEIF_AVAILABLE else ())
)
"""Lower-case file suffixes :func:`find_images` lists (HEIC/HEIF only with pillow-heif)."""

# The Pillow plugins load_rgb lets Image.open try (JPEG covers MPO: its factory returns one).
_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF") + (
    ("HEIF",) if HEIF_AVAILABLE else ()
)
_FORMAT_NAMES = "JPEG/PNG/WebP/BMP/GIF/TIFF" + ("/HEIF" if HEIF_AVAILABLE else "")

DEFAULT_MAX_PIXELS = 178_956_970
"""Default pixel limit of :func:`load_rgb`: Pillow's own hard limit, ``2 * 89_478_485``.

Room for 150-megapixel camera files, small enough that one RGB decode stays under about 540 MB.
A limit above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` only takes effect if that is raised too.
"""

COLLECTION_MARKER = "collection.sqlite"
"""A directory holding a file of this name is a sharpclip collection; find_images skips it."""

HASH_CHUNK_BYTES = 1 << 20

REASONS = (
    "missing",  # the file does not exist (any more)
    "unreadable",  # the operating system refused to read it (permissions, a directory, I/O error,
    # a symbolic link loop)
    "empty",  # zero bytes
    "not_an_image",  # the content is none of the supported formats
    "unsupported",  # recognised, but this installation cannot decode it (e.g. HEIC without extra)
    "too_large",  # width * height over the pixel limit: a possible decompression bomb
    "truncated",  # the file ends before the image does
    "corrupt",  # the decoder failed on the content for another reason
    "not_a_file",  # a FIFO, socket or character/block device (directly or via a symbolic link)
)
"""Every ``ImageFileError.reason``; stable strings, safe to store and to group by."""


class ImageFileError(Exception):
    """One image file could not be read; ``reason`` is one of :data:`REASONS`.

    ``str(error)`` is a human sentence naming the file, what was wrong and what to do.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ImageFileError reason {reason!r}; expected one of {REASONS}")
        super().__init__(str(path), reason, detail)  # args round-trip through pickle
        self.path = str(path)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class NotARegularFileError(OSError):
    """:func:`content_hash` was given a FIFO, socket or device; ``filename`` names it.

    Built like any ``OSError``, ``(errno.EINVAL, detail, path)``, so it pickles;
    ``str(error)`` is ``"path: detail"``.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


# --------------------------------------------------------------------------------------- finding


def path_key(path: str | os.PathLike[str]) -> str:
    """The identity under which a file is stored in a collection: its absolute path, ``~``
    expanded and every parent directory resolved, the final name kept as written.

    A symbolic link to a file is keyed by the link's own path, not by its target, so a dangling
    link or a link loop has a key too. Never raises for link loops: a parent directory that loops
    is kept as ``os.path.abspath`` writes it. The file need not exist.
    """
    absolute = Path(os.path.expanduser(os.fspath(path))).absolute()
    if absolute.name in ("", ".."):  # the root directory, or a path ending in ".."
        return _resolved_dir(absolute)
    return os.path.join(_resolved_dir(absolute.parent), absolute.name)


def _resolved_dir(directory: str | os.PathLike[str]) -> str:
    try:
        return str(Path(directory).resolve())
    except (OSError, RuntimeError):  # a loop: RuntimeError before Python 3.13
        return os.path.abspath(directory)


def find_images(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    unlistable: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """List the image files under ``paths``, each as its :func:`path_key`: sorted, no duplicates.

    Directories are walked recursively. Only names whose suffix (any case) is in
    :data:`IMAGE_EXTENSIONS` are listed; below a given directory, hidden directories and files
    (names starting with ``.``, e.g. ``.git`` or macOS ``._IMG_1.jpg``) are skipped, as is every
    directory holding a :data:`COLLECTION_MARKER` file, with all it contains. Symbolic links to
    directories are not followed (no cycles); a link to a file is listed under the link's own
    path, whatever it points to (a file elsewhere, nothing, itself), as are FIFOs and devices with
    image names: :func:`load_rgb` reports them. A path given explicitly is listed if its suffix is
    an image suffix, hidden or not (a dangling link counts as existing). Directories that cannot
    be listed are logged and skipped; with ``unlistable``, each is also appended to it once, as
    ``(path_key of the directory, message)``.

    Raises:
        FileNotFoundError: a given path does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    reported: set[str] = set()
    for given in paths:
        root = Path(given).expanduser()
        if not os.path.lexists(root):
            raise FileNotFoundError(
                f"{str(given)!r}: no such file or directory to look for images in; check the path"
            )
        if root.is_dir():
            found.update(_walk(root, unlistable, reported))
        elif _is_image_name(root.name):
            found.add(Path(path_key(root)))
    return sorted(found)


def _walk(
    root: Path, unlistable: list[tuple[str, str]] | None, reported: set[str]
) -> Iterable[Path]:
    def log_error(error: OSError) -> None:
        reason = error.strerror or str(error)
        logger.warning("skipping %s: cannot list it (%s)", error.filename, reason)
        key = path_key(error.filename) if error.filename is not None else str(root)
        if unlistable is not None and key not in reported:
            reported.add(key)
            message = (
                f"{key}: cannot list this folder ({reason}); "
                "make it readable to this user or leave it out"
            )
            unlistable.append((key, message))

    for dirpath, dirnames, filenames in os.walk(root, onerror=log_error):
        if COLLECTION_MARKER in filenames:
            logger.debug("skipping sharpclip collection directory %s", dirpath)
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        directory = None  # resolved once per directory: path_key of each name in it
        for name in filenames:
            if not name.startswith(".") and _is_image_name(name):
                directory = directory or _resolved_dir(dirpath)
                yield Path(directory, name)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------- loading


def load_rgb(
    path: str | os.PathLike[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``path`` into a fully loaded 8-bit RGB image, upright, holding no open file.

    Steps: refuse anything but a regular file, at once (a FIFO or device is ``not_a_file``; it is
    opened with ``O_NONBLOCK`` and checked on the open descriptor); reject an empty file; open it
    with the supported Pillow plugins only; reject it if ``width * height > max_pixels`` *before*
    decoding any pixel; for a JPEG given ``draft_size``, let libjpeg decode at 1/2, 1/4 or 1/8
    scale while both sides stay ``>= draft_size`` (fast thumbnails; other formats decode at full
    size); decode the first frame only (animated GIF and WebP, multi-page TIFF); apply the EXIF
    orientation (unreadable EXIF is ignored, with a log line); convert to RGB (:func:`to_rgb`).

    Raises:
        ImageFileError: the file could not be read; ``reason`` says why (:data:`REASONS`).
        ValueError: ``max_pixels`` or ``draft_size`` is not a positive integer.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels}")
    if draft_size is not None and draft_size < 1:
        raise ValueError(f"draft_size must be a positive side length or None, got {draft_size}")
    path = Path(path)
    try:
        fp, size = _open_regular(path)
        with fp:
            if size == 0:
                raise ImageFileError(
                    path, "empty", "the file is empty (0 bytes); remove or replace it"
                )
            image = _upright(_decode(path, fp, max_pixels, draft_size), path)
    except OSError as error:  # opening only: _decode wraps everything Pillow raises
        raise _os_error(path, error) from error
    return to_rgb(image, path)


_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once instead of waiting for a writer
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)  # a terminal device never becomes the controlling terminal
    | getattr(os, "O_BINARY", 0)
)


def _open_regular(path: str | os.PathLike[str]) -> tuple[BinaryIO, int]:
    """``(binary file, size in bytes)`` of ``path``, opened without blocking, if a regular file.

    Checked twice: by ``os.stat`` first, so that a FIFO or device is not even opened (opening some
    devices has effects), and by ``os.fstat`` on the open descriptor, so that a file swapped in
    between is caught too.

    Raises:
        OSError: from ``os.stat`` or ``os.open`` (e.g. FileNotFoundError), IsADirectoryError for a
            directory, :class:`NotARegularFileError` for a FIFO, socket or device.
    """
    _check_regular(path, os.stat(path).st_mode)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        _check_regular(path, st.st_mode)
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)  # no effect on a regular file's reads; plain from here on
        fp = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return fp, st.st_size


def _check_regular(path: str | os.PathLike[str], mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    kind = _special_kind(mode)
    if os.path.islink(path):
        try:
            kind = f"a symbolic link to {kind} ({os.readlink(path)})"
        except OSError:
            kind = f"a symbolic link to {kind}"
    raise NotARegularFileError(
        errno.EINVAL,
        f"this is {kind}, not a regular image file; remove it or move it out of the folder",
        os.fspath(path),
    )


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


def _decode(path: Path, fp: BinaryIO, max_pixels: int, draft_size: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageFileError(
            path,
            "too_large",
            f"{error}; if the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels",
        ) from error
    except UnidentifiedImageError as error:
        raise _unidentified(path) from error
    except MemoryError:
        raise
    except Exception as error:  # any plugin may raise anything on a hostile header
        raise _decode_error(path, fp, error) from error
    width, height = image.size
    if width * height > max_pixels:
        raise ImageFileError(
            path,
            "too_large",
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(a possible decompression bomb); if the file is trusted, pass a larger max_pixels",
        )
    try:
        if draft_size is not None:
            image.draft("RGB", (draft_size, draft_size))  # a no-op except for JPEG
        image.load()  # the current frame is the first one right after open
    except MemoryError:
        raise
    except Exception as error:
        raise _decode_error(path, fp, error) from error
    return image


def _upright(image: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 -- a photo with broken EXIF is still a photo
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, error)
        return image.copy()


def _os_error(path: Path, error: OSError) -> ImageFileError:
    if isinstance(error, NotARegularFileError):
        return ImageFileError(path, "not_a_file", error.strerror)
    if isinstance(error, FileNotFoundError):
        try:
            target = os.readlink(path)
        except OSError:  # not a link (or gone too): the file itself is missing
            return ImageFileError(path, "missing", "the file does not exist (moved or deleted?)")
        return ImageFileError(
            path,
            "missing",
            f"this is a symbolic link to a missing target ({target!r}); fix or remove the link",
        )
    if error.errno == errno.ELOOP:
        what = "this is" if os.path.islink(path) else "a folder in this path is"
        return ImageFileError(
            path,
            "unreadable",
            f"{what} a symbolic link loop (ELOOP: it never reaches a file); fix or remove the link",
        )
    if isinstance(error, PermissionError):
        return ImageFileError(
            path, "unreadable", "permission denied; make the file readable to this user"
        )
    if isinstance(error, IsADirectoryError):
        return ImageFileError(path, "unreadable", "this is a directory, not an image file")
    return ImageFileError(path, "unreadable", f"cannot read the file: {error.strerror or error}")


def _unidentified(path: Path) -> ImageFileError:
    if path.suffix.lower() in _HEIF_EXTENSIONS and not HEIF_AVAILABLE:
        return ImageFileError(
            path,
            "unsupported",
            "HEIC/HEIF needs the optional pillow-heif package: pip install 'sharpclip[heif]'",
        )
    return ImageFileError(
        path,
        "not_an_image",
        f"the content is not a {_FORMAT_NAMES} image, whatever its name says; remove or rename it",
    )


def _decode_error(path: Path, fp: BinaryIO, error: Exception) -> ImageFileError:
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, EOFError) or "truncated" in str(error).lower() or _riff_short(fp):
        return ImageFileError(
            path,
            "truncated",
            f"the file ends before the image does ({message}); copy or download it again",
        )
    return ImageFileError(path, "corrupt", f"the image data cannot be decoded ({message})")


def _riff_short(fp: BinaryIO) -> bool:
    """True if ``fp`` is a RIFF (WebP) file shorter than its header says: libwebp only says
    'could not create decoder object' for a truncated file."""
    try:
        fp.seek(0)
        head = fp.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
            return False
        declared = struct.unpack("<I", head[4:8])[0] + 8
        return os.fstat(fp.fileno()).st_size < declared
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------- mode conversions

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def to_rgb(image: Image.Image, path: str | os.PathLike[str] = "<image>") -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, returning a new image.

    - alpha (RGBA, LA, PA, and L/RGB/P with a ``transparency`` entry, e.g. a GIF or PNG palette
      with a transparent index) is composited onto white;
    - 16-bit grey (``I;16*``) is scaled, ``round(v / 257)``: 0..65535 -> 0..255. Pillow's own
      ``convert("L")``/``convert("RGB")`` *clips* it instead (everything above 255 turns white);
    - 32-bit ``I`` is taken as 16-bit when its values lie in 0..65535 (Pillow decodes 16-bit PGM
      that way), otherwise stretched from its min..max; ``F`` is taken as 0..1 when it lies there,
      as 0..255 when it lies there, otherwise stretched from its min..max;
    - CMYK, 1, L, P, YCbCr and the rest go through Pillow's ``convert("RGB")`` (CMYK by Pillow's
      plain formula, ignoring any ICC profile).

    Raises:
        ImageFileError: ``unsupported``, a mode Pillow cannot convert to RGB.
    """
    mode = image.mode
    try:
        if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
            return _high_depth_to_l(image).convert("RGB")
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return image.convert("RGB")  # a copy even when already RGB
    except ValueError as error:
        raise ImageFileError(
            path, "unsupported", f"pixel mode {mode!r} cannot be converted to RGB ({error})"
        ) from error


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        low, high = 0.0, 65535.0
    elif values.size == 0:
        low, high = 0.0, 1.0
    else:
        vmin, vmax = float(values.min()), float(values.max())
        if image.mode == "I" and vmin >= 0 and vmax <= 65535:
            low, high = 0.0, 65535.0
        elif image.mode == "F" and vmin >= 0 and vmax <= 1:
            low, high = 0.0, 1.0
        elif image.mode == "F" and vmin >= 0 and vmax <= 255:
            low, high = 0.0, 255.0
        else:
            low, high = vmin, max(vmax, vmin + 1e-12)
    scaled = (values.astype(np.float64) - low) * 255.0 / (high - low)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


# ------------------------------------------------------------------------------- fingerprints


def file_fingerprint(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(size in bytes, modification time in ns)``: a cheap test for "unchanged since indexed".

    Raises:
        OSError: from ``os.stat`` (e.g. FileNotFoundError).
    """
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes as 64 hex digits, read in 1 MiB chunks (constant memory).

    SHA-256 rather than BLAKE2 so that a stored hash can be checked with ``sha256sum``.

    Only a regular file is read (see :func:`load_rgb`): a FIFO or device fails at once.

    Raises:
        OSError: from opening or reading (e.g. FileNotFoundError, PermissionError,
            IsADirectoryError), or :class:`NotARegularFileError` for a FIFO, socket or device.
    """
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    fp, _ = _open_regular(path)
    with fp:
        while n := fp.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
