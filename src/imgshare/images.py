"""Images are checked, not trusted (DESIGN decision 9).

``validate_image`` accepts a file only if Pillow, restricted to a format allow-list,
can identify it, its pixel count is within the policy, and every frame really
decodes (``verify()`` alone passes truncated JPEGs) or is proven to pass the checks
a decode makes without paying for it: uncompressed strips (TIFF, BMP) must all be
present, and a single-scan sequential JPEG gets its headers, tables and first blocks
decoded and its scan followed to the end marker (see the JPEG section below).

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

Cost, measured on the 2-core dev machine with a 12 Mpx photo: JPEG 4 MB in 5 ms
(sequential; a progressive one is decoded at 1/8 scale, ~50 ms), PNG 32 MB in 270 ms
(~9 ms/MB), WebP 6.3 MB in 560 ms (~90 ms/MB); decoding dominates, 10-50 ns a pixel.
The server validates the finished plaintext file (a path or a seekable file object);
overlapping a decode with the upload (``ImageFile.Parser``) would not lower its CPU,
which is what limits a server receiving many images at once.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import re
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
        _decode_frames(im, frames, policy, fp)
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


def _decode_frames(im: ImageFile.ImageFile, frames: int, policy: ImagePolicy, fp: BinaryIO) -> None:
    """Decode every frame (or prove what decoding would): catches truncation and
    corruption."""
    file_size = _file_size(fp)
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
            if _sequential_jpeg_sound(fp, file_size):
                continue
            # Scaled decoding (1/8) still Huffman-decodes every block, so it rejects
            # what a full decode rejects, at half the cost and 1/64 the memory.
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
        im.load()


# --- JPEG: what a decode proves, without decoding every block ------------------------
#
# Decoding a JPEG rejects a truncated file and broken headers or tables, but not
# corrupt entropy-coded data: libjpeg conceals that, at full scale as at 1/8 (40 of 40
# photos with 200 bytes of their scan overwritten passed both). Huffman-decoding the
# scan therefore proves nothing more than that it is all there, and it costs ~50 ms
# for a 4 MB photo. For the common case, one interleaved sequential scan (what cameras
# and phones write), we let libjpeg check the headers, tables and the start of the
# scan, and prove the rest present by finding the scan's end at C speed: the scan
# must run to an EOI marker with nothing but stuffed bytes and restart markers on the
# way. ~5 ms for a 4 MB photo. Anything else (progressive, several scans, DNL, ...)
# gets the decode.

_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1})  # baseline and extended, Huffman-coded
_OTHER_SOF = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are no frames
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
# A marker in entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart
# marker or another 0xFF (a fill byte).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_MAX_SEGMENTS = 4096
#: Scan bytes libjpeg decodes for real: every table in use is exercised early.
_SCAN_SAMPLE = 64 * 1024


def _sequential_jpeg_sound(fp: BinaryIO, file_size: int) -> bool:
    """True if ``fp`` is a complete single-scan sequential JPEG whose headers libjpeg
    accepts; False if it is another kind of JPEG (decode it instead). Raises
    ``ImageError`` for a truncated or malformed file."""
    scan_start = _single_scan_start(fp, file_size)
    if scan_start is None:
        return False
    fp.seek(0)
    with _file_view(fp, file_size) as data:
        end = _SCAN_END.search(data, scan_start)
        if end is None:
            raise ImageError("image is truncated or corrupt: the JPEG scan has no end")
        if data[end.start() + 1] != _EOI:
            return False  # another scan, a DNL marker...: let the decoder judge
        sample = bytes(data[: min(end.start(), scan_start + _SCAN_SAMPLE)])
    # The headers, tables and the first blocks, decoded for real (1/8 scale, the rest
    # of the scan is filled in by libjpeg after the early EOI).
    factory = Image.OPEN["JPEG"][0]  # as _identify does: no global bomb check
    with factory(io.BytesIO(sample + b"\xff\xd9"), "") as head:
        head.draft(head.mode, (max(1, head.width // 8), max(1, head.height // 8)))
        head.load()
    return True


def _single_scan_start(fp: BinaryIO, file_size: int) -> int | None:
    """Walk the segments from SOI to the first SOS; return where its entropy-coded data
    starts if the frame is sequential and the scan holds every component, else None."""
    fp.seek(0)
    if fp.read(2) != b"\xff\xd8":
        raise ImageError("image is truncated or corrupt: no JPEG start marker")
    position, components = 2, 0
    for _ in range(_MAX_SEGMENTS):
        fp.seek(position)
        head = fp.read(4)
        if len(head) < 2:
            raise ImageError("image is truncated or corrupt: JPEG segment expected")
        if head[0] != 0xFF:
            return None  # stray bytes between segments: libjpeg may skip them, let it judge
        marker = head[1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        if len(head) < 4:
            raise ImageError("image is truncated or corrupt: JPEG segment cut short")
        length = int.from_bytes(head[2:4], "big")
        end = position + 2 + length
        if length < 2 or end > file_size:
            raise ImageError("image is truncated or corrupt: JPEG segment runs past the end")
        if marker in _SEQUENTIAL_SOF:
            body = fp.read(6)
            if len(body) < 6 or components:
                return None  # a second frame header: let the decoder judge
            components = body[5]
        elif marker in _OTHER_SOF or marker == _EOI:
            return None
        elif marker == _SOS:
            count = fp.read(1)
            if not components or not count or count[0] != components:
                return None  # not one interleaved scan of a sequential frame
            return end
        position = end
    return None


@contextmanager
def _file_view(fp: BinaryIO, size: int) -> Iterator[mmap.mmap | bytes]:
    """The whole file as a buffer: mapped when it is a real file, read otherwise."""
    try:
        fd = fp.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        fd = -1
    if fd < 0 or size == 0:
        yield fp.read()
        return
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
        yield view


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
