"""Images are checked, not trusted (DESIGN decision 9).

``validate_image`` accepts a file only if Pillow, restricted to a format allow-list,
can identify it, its pixel count is within the policy, and every frame really
decodes (``verify()`` alone passes truncated JPEGs).

Pixel limits are this module's, per policy, and are checked before any pixel is
decoded. Pillow's own bomb check in ``Image.open`` uses the process-global
``Image.MAX_IMAGE_PIXELS`` (89.5 Mpx): above it, it *warns*, which pytest and
``-W error`` turn into an exception, so the same file would pass or fail depending on
the warnings filter. We therefore identify the file the way ``Image.open`` does
internally, through the plugin registry that ``Image.register_open`` fills, but with
our own check in place of the global one. The few Pillow paths that still consult the
global (a GIF frame growing the canvas, MPO frames) are mapped to ``ImageError``.

Decoding holds one frame in memory (about 4 bytes a pixel: 400 MB at the default
100 Mpx), so the server must bound how many validations run at once.

Cost, measured on the 2-core dev machine with a 12 Mpx photo: JPEG 6.3 MB in 120 ms
(~20 ms/MB), PNG 32 MB in 270 ms (~9 ms/MB), WebP 6.3 MB in 560 ms (~90 ms/MB);
decoding dominates, 10-50 ns a pixel. Seam for issue 5: the server can overlap this
with the upload by feeding ``ImageFile.Parser`` chunk by chunk; until then it
validates the finished plaintext file (a path or a seekable file object).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from PIL import Image, ImageFile

from imgshare.errors import ConfigError, ImageError, StorageError

log = logging.getLogger(__name__)

# Formats we know how to name: Pillow format -> (MIME type, inbox file extension).
# A policy may allow only formats listed here.
KNOWN_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "GIF": ("image/gif", "gif"),
    "WEBP": ("image/webp", "webp"),
    "TIFF": ("image/tiff", "tif"),
    "BMP": ("image/bmp", "bmp"),
}
DEFAULT_FORMATS = frozenset(KNOWN_FORMATS)
# 100 Mpx: above every common camera and scanner (an 8192x8192 RGB TIFF is 67 Mpx).
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_FRAMES = 10_000
# Bounds the decode work of an animation: 1 Gpx is a few seconds of CPU.
DEFAULT_MAX_TOTAL_PIXELS = 1_000_000_000

# Pillow's signals that a file is malformed, while identifying or decoding.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)
# Pillow's own bomb signals, and the warnings it emits for odd files, which become
# exceptions under a "error" warnings filter.
_PILLOW_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """What an acceptable image is. Raises ``ConfigError`` for an unusable policy."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # per frame, width x height
    formats: frozenset[str] = field(default=DEFAULT_FORMATS)
    max_frames: int = DEFAULT_MAX_FRAMES
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS  # summed over all frames

    def __post_init__(self) -> None:
        unknown = {f.upper() for f in self.formats} - set(KNOWN_FORMATS)
        if unknown or not self.formats:
            known = ", ".join(sorted(KNOWN_FORMATS))
            raise ConfigError(f"image formats must be among {known}; got {sorted(unknown)}")
        object.__setattr__(self, "formats", frozenset(f.upper() for f in self.formats))
        if self.max_pixels < 1 or self.max_frames < 1:
            raise ConfigError("image pixel and frame limits must be positive")
        if self.max_total_pixels < self.max_pixels:
            raise ConfigError("the total pixel limit must be at least the per-frame limit")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What validation learnt about an accepted image."""

    format: str  # a key of KNOWN_FORMATS (a multi-picture JPEG is "JPEG")
    width: int
    height: int
    mime: str
    extension: str  # without the dot, for the server-made inbox name
    frames: int = 1


def validate_image(
    source: str | os.PathLike[str] | BinaryIO, policy: ImagePolicy | None = None
) -> ImageInfo:
    """Check that ``source`` (a path or a seekable binary file) is an acceptable image.

    Raises ``ImageError`` with the reason (not an image, format not allowed, too many
    pixels or frames, truncated or corrupt); ``StorageError`` if a path cannot be
    opened; ``ConfigError`` if ``ImageFile.LOAD_TRUNCATED_IMAGES`` was turned on in
    this process (it would let truncated images pass).
    """
    policy = policy or ImagePolicy()
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; refusing to validate")
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as fp:
                return _validate(fp, policy)
        except OSError as exc:
            raise StorageError(f"cannot read {source}: {exc.strerror}") from exc
    return _validate(source, policy)


def load_plugins() -> None:
    """Import Pillow's format plugins once, before many threads need them at once."""
    Image.init()


def sniff_extension(head: bytes | memoryview, policy: ImagePolicy | None = None) -> str | None:
    """The file extension the magic number at the start of ``head`` announces, or
    ``None`` if no allowed format claims it.

    For naming the inbox copy as soon as the first chunk arrives; only a prefix check
    (16 bytes are enough), so ``validate_image`` must still run on the whole file. It
    tries formats in the same order as ``validate_image``; the six known formats have
    distinct magic numbers, so both agree.
    """
    policy = policy or ImagePolicy()
    Image.init()
    prefix = bytes(head[:16])
    for fmt in sorted(policy.formats):
        if fmt not in Image.OPEN:
            continue
        accept = Image.OPEN[fmt][1]
        accepted = True if accept is None else accept(prefix)
        if accepted and not isinstance(accepted, str):
            return KNOWN_FORMATS[fmt][1]
    return None


def _validate(fp: BinaryIO, policy: ImagePolicy) -> ImageInfo:
    with _pillow_errors():
        fmt, im = _identify(fp, policy)
    with im, _pillow_errors():
        width, height = im.size
        _check_pixels(width, height, policy)
        # n_frames walks a GIF without decoding it (and without Pillow's bomb check).
        frames = int(getattr(im, "n_frames", 1))
        if frames > policy.max_frames:
            raise ImageError(f"image has {frames} frames, limit is {policy.max_frames}")
        _check_total(frames * width * height, policy)
        _decode_frames(im, frames, policy, _file_size(fp))
    mime, extension = KNOWN_FORMATS[fmt]
    return ImageInfo(fmt, width, height, mime, extension, frames)


def _identify(fp: BinaryIO, policy: ImagePolicy) -> tuple[str, ImageFile.ImageFile]:
    """Open ``fp`` with the first allowed plugin that accepts it (as ``Image.open``
    does, minus the global bomb check); raise ``ImageError`` if none does."""
    Image.init()  # registers every plugin once; cheap afterwards
    fp.seek(0)
    prefix = fp.read(16)
    failure = ""
    for fmt in sorted(policy.formats):
        if fmt not in Image.OPEN:  # e.g. Pillow built without WebP
            continue
        factory, accept = Image.OPEN[fmt]
        if accept is not None:
            accepted = accept(prefix)
            if not accepted or isinstance(accepted, str):
                continue
        fp.seek(0)
        try:
            return fmt, factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error) as exc:
            failure = f": not a valid {fmt} file ({exc})"
    if failure:
        raise ImageError(f"unreadable image{failure}")
    allowed = ", ".join(sorted(policy.formats))
    raise ImageError(f"not an image in an accepted format ({allowed})")


def _file_size(fp: BinaryIO) -> int:
    position = fp.tell()
    size = fp.seek(0, os.SEEK_END)
    fp.seek(position)
    return size


def _raw_tiles_fit(im: ImageFile.ImageFile, file_size: int) -> bool:
    """True if every tile of this frame is uncompressed and lies inside the file.

    Uncompressed pixels (a scanner's TIFF, a BMP) cannot be corrupt, only missing, so
    checking that every byte is present proves as much as decoding would, without
    allocating the whole picture (256 MB for an 8192x8192 RGB TIFF). Raises
    ``ImageError`` if a tile runs past the end of the file; returns False for any
    other kind of tile, which then gets a real decode.
    """
    if not im.tile:
        return False
    for tile in im.tile:
        name, extents, offset, args = tile[0], tile[1], tile[2], tile[3]
        if name != "raw" or not isinstance(args, tuple) or not args or extents is None:
            return False
        x0, y0, x1, y1 = extents
        try:
            line = len(Image.new(im.mode, (x1 - x0, 1)).tobytes("raw", args[0]))
        except (ValueError, OSError, KeyError, TypeError):
            return False  # a raw mode Pillow cannot pack: decode instead
        stride = args[1] if len(args) > 1 and isinstance(args[1], int) and args[1] > 0 else line
        if stride < line:
            return False
        if offset + stride * (y1 - y0 - 1) + line > file_size:
            raise ImageError("image is truncated or corrupt: pixel data runs past the end")
    return True


def _decode_frames(
    im: ImageFile.ImageFile, frames: int, policy: ImagePolicy, file_size: int
) -> None:
    """Decode every frame: the only check that catches truncation and corruption."""
    total = 0
    for index in range(frames):
        if index:
            im.seek(index)
        width, height = im.size  # TIFF pages differ; a GIF frame may grow the canvas
        _check_pixels(width, height, policy)
        total += width * height
        _check_total(total, policy)
        if _raw_tiles_fit(im, file_size):
            continue
        if im.format == "JPEG":
            # Scaled decoding (1/8) still Huffman-decodes every block, so it rejects
            # what a full decode rejects (truncation, broken tables), at half the cost
            # and 1/64 the memory. Neither rejects corrupt entropy-coded data: libjpeg
            # conceals it (measured: 40 of 40 JPEGs with 200 bytes of their scan
            # overwritten passed both), so this proves the structure, not the pixels.
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
        im.load()


def _check_pixels(width: int, height: int, policy: ImagePolicy) -> None:
    pixels = width * height
    if width < 1 or height < 1:
        raise ImageError(f"image has invalid size {width}x{height}")
    if pixels > policy.max_pixels:
        raise ImageError(
            f"image has {pixels} pixels ({width}x{height}), limit is {policy.max_pixels}"
        )


def _check_total(pixels: int, policy: ImagePolicy) -> None:
    if pixels > policy.max_total_pixels:
        raise ImageError(
            f"image frames have {pixels} pixels in all, limit is {policy.max_total_pixels}"
        )


@contextmanager
def _pillow_errors() -> Iterator[None]:
    """Turn Pillow's exceptions (and warnings raised as errors) into ``ImageError``."""
    try:
        yield
    except ImageError:
        raise
    except _PILLOW_BOMB as exc:
        raise ImageError(f"image is too large to decode safely ({exc})") from exc
    except MemoryError as exc:
        raise ImageError("image is too large to decode in available memory") from exc
    except (*_DECODE_ERRORS, Warning) as exc:
        raise ImageError(f"image is truncated or corrupt ({exc})") from exc
