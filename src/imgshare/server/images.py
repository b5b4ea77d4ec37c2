"""Images are checked, not trusted (docs/design.md, decision 9).

``validate_image`` accepts a file only if Pillow, restricted to a format allow-list,
can identify it, its size is within the policy (pixels, and the longest side), and
every frame really decodes (``verify()`` alone passes truncated JPEGs) or is proven to
pass the checks a decode makes without paying for it: uncompressed strips (TIFF, BMP)
must all be present, a PNG's zlib data is inflated (never kept) and must hold every
row with a valid filter byte, and a single-scan sequential JPEG gets its headers,
tables and first blocks decoded and its scan followed to the end marker (see the PNG
and JPEG sections below).

Missing pixels are refused even where a decode would not notice: Pillow's PNG decoder
stops without an error when the zlib stream ends before the last row (ZipDecode.c
returns the same result for "image complete" and "data ended", and the decoder object
exposes no row count), and it decodes only the TIFF strips listed, leaving rows
without a strip blank. libjpeg fills a JPEG scan that ends early with grey, as it
conceals corrupt data; only a scan too short to code every block (two bits a block at
least) is refused.

Size limits are this module's, per policy, and are checked before any pixel is
decoded. Pillow's own bomb check in ``Image.open`` uses the process-global
``Image.MAX_IMAGE_PIXELS`` (89.5 Mpx): above it, it *warns*. We identify the file the
way ``Image.open`` does internally, through the plugin registry that
``Image.register_open`` fills, but with our own check in place of the global one.

Warnings. Pillow reports some oddities of a file with ``warnings.warn`` and goes on,
so the verdict would depend on the process's warnings filter: ``-W error`` (and
pytest) turns the warning into an exception, the default filter lets Pillow go on.
Filters cannot fix that: they are process-global, ``catch_warnings`` is not
thread-safe (several threads validate at once), and a filter installed once at import
loses to any installed later (pytest's, a caller's ``catch_warnings``). So the Pillow
modules' ``warnings`` name is replaced, once, by a stand-in (``_PillowWarnings``)
that outside a validation passes every call on unchanged, and during one (a
thread-local flag) decides the same way whatever the filter:

- a ``DecompressionBombWarning`` (a GIF frame growing the canvas, an MPO frame) is
  checked against this policy's pixel limit at once, before Pillow allocates
  anything: over it, ``ImageError``; within it, Pillow goes on;
- metadata warnings are dropped and Pillow goes on, because the pixels decide: TIFF
  directory problems ("Tag data larger than file", "Corrupt EXIF data", "Metadata
  Warning": the tag is skipped; if a tag the pixels need is lost, opening or decoding
  fails), an invalid APNG control chunk (read as a plain PNG), a malformed MPO index
  (read as a plain JPEG);
- deprecation warnings are about our code, not the file: passed on unchanged;
- any other warning rejects the image (fail closed), after Pillow has finished.

Memory, measured as the peak RSS growth of one validation of a 100 Mpx picture (the
default limit): a PNG without animation and a sequential JPEG are proven without
holding the picture (4 MB and 7 MB), and so are uncompressed TIFF and BMP strips.
Decoding costs, a pixel: GIF 1 byte (96 MB); RLE BMP 3 (286 MB); compressed RGB TIFF
4 (383 MB), up to 7 when one strip holds the whole picture (668 MB: libtiff's buffer
for the strip, and the picture); progressive JPEG 3 for 4:2:0 (293 MB) to 6 for 4:4:4
(579 MB) although decoded at 1/8 scale, since libjpeg keeps every coefficient of a
progressive image; APNG 8 (764 MB: Pillow keeps a copy of the previous frame); WebP
15 (1.5 GB: Pillow decodes every WebP with libwebp's animation decoder, which keeps
canvases of its own). Pillow also keeps about 8 bytes a row: decoding a 1 x
100,000,000 grey PNG took 858 MB; ``max_side`` bounds that to 0.5 MB. The server must
bound how many validations run at once.

Cost, measured on the 2-core dev machine with a 12 Mpx photo: JPEG 4 MB in 5 ms
(sequential; a progressive one is decoded at 1/8 scale, ~50 ms), PNG 31 MB in 165 ms
(inflated; Pillow's decode took 430 ms), WebP 6.3 MB in 560 ms (~90 ms/MB); decoding
dominates, 10-50 ns a pixel. The server validates the finished plaintext file (a path
or a seekable file object); overlapping a decode with the upload
(``ImageFile.Parser``) would not lower its CPU, which is what limits a server
receiving many images at once.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import re
import struct
import sys
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, BinaryIO

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
# 65,535: the largest side a JPEG or a GIF can have, far above cameras and scanners
# (a 100 Mpx sensor is 11,648 wide; WebP stops at 16,383). Pillow keeps about 8 bytes
# a row besides the pixels: decoding a 1 x 100,000,000 grey PNG took 858 MB.
DEFAULT_MAX_SIDE = 65_535
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
# Pillow's own bomb signals (the warning only reaches us as an exception from a path
# the warnings stand-in does not cover, under an "error" filter).
_PILLOW_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


#: Peak bytes a decode holds per pixel of a frame, by format, measured at 100 Mpx
#: (rounded up): WebP 15, an APNG frame 7.6, a compressed TIFF 3.8-6.7, a progressive
#: JPEG (at 1/8 scale) 2.9-5.8, an RLE BMP 2.9, a GIF 1. Sequential JPEGs and still
#: PNGs are proven sound without a decode and hold almost nothing.
DECODE_BYTES_PER_PIXEL = {"WEBP": 16, "PNG": 8, "TIFF": 7, "JPEG": 6, "BMP": 3, "GIF": 1}
_MOST_BYTES_PER_PIXEL = max(DECODE_BYTES_PER_PIXEL.values())


def largest_decode(max_pixels: int) -> int:
    """The most memory one decode of an image of ``max_pixels`` may hold."""
    return max_pixels * _MOST_BYTES_PER_PIXEL


class DecodeMemory:
    """A budget of decode memory shared by concurrent validations; thread-safe.

    A decode reserves its worst case (``DECODE_BYTES_PER_PIXEL`` x pixels) before it
    starts and waits while the budget cannot hold it; one that needs more than the
    whole budget runs alone. So decodes together hold at most
    ``max(limit, the largest single decode)``.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError("the decode memory budget must be positive")
        self.limit = limit
        self._used = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes of the budget while the block runs."""
        with self._changed:
            self._changed.wait_for(lambda: self._used == 0 or self._used + size <= self.limit)
            self._used += size
        try:
            yield
        finally:
            with self._changed:
                self._used -= size
                self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """What an acceptable image is. Raises ``ConfigError`` for an unusable policy.

    ``decode_memory``, if given, is shared by every validation under this policy and
    bounds the memory their decodes hold together.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS  # per frame, width x height
    formats: frozenset[str] = field(default=DEFAULT_FORMATS)
    max_frames: int = DEFAULT_MAX_FRAMES
    max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS  # summed over all frames
    max_side: int = DEFAULT_MAX_SIDE  # per frame, the longer of width and height
    decode_memory: DecodeMemory | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        unknown = {f.upper() for f in self.formats} - set(KNOWN_FORMATS)
        if unknown or not self.formats:
            known = ", ".join(sorted(KNOWN_FORMATS))
            raise ConfigError(f"image formats must be among {known}; got {sorted(unknown)}")
        object.__setattr__(self, "formats", frozenset(f.upper() for f in self.formats))
        if self.max_pixels < 1 or self.max_frames < 1 or self.max_side < 1:
            raise ConfigError("image pixel, side and frame limits must be positive")
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
    pixels or frames, a side too long, truncated or corrupt); ``StorageError`` if a
    path cannot be opened; ``ConfigError`` if ``ImageFile.LOAD_TRUNCATED_IMAGES`` was
    turned on in this process (it would let truncated images pass).
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
    _init_pillow()


def sniff_extension(head: bytes | memoryview, policy: ImagePolicy | None = None) -> str | None:
    """The file extension the magic number at the start of ``head`` announces, or
    ``None`` if no allowed format claims it.

    For naming the inbox copy as soon as the first chunk arrives; only a prefix check
    (16 bytes are enough), so ``validate_image`` must still run on the whole file. It
    tries formats in the same order as ``validate_image``; the six known formats have
    distinct magic numbers, so both agree.
    """
    policy = policy or ImagePolicy()
    _init_pillow()
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
    _init_pillow()
    _current.policy, _current.warned = policy, []
    try:
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
        if _current.warned:
            raise ImageError(f"image is corrupt (Pillow warned: {_current.warned[0]})")
    finally:
        _current.policy, _current.warned = None, []
    mime, extension = KNOWN_FORMATS[fmt]
    return ImageInfo(fmt, width, height, mime, extension, frames)


@contextmanager
def opened_image(fp: BinaryIO, policy: ImagePolicy) -> Iterator[ImageFile.ImageFile]:
    """An image that passed ``validate_image``, opened to read its pixels (a
    thumbnail): the same plugins and allow-list, and the same warnings stand-in, so a
    frame over the pixel limit still stops before it is allocated. Pillow's errors
    inside the block become ``ImageError``."""
    _init_pillow()
    _current.policy, _current.warned = policy, []
    try:
        with _pillow_errors():
            _, im = _identify(fp, policy)
        with im, _pillow_errors():
            yield im
    finally:
        _current.policy, _current.warned = None, []


def check_pixels(width: int, height: int, policy: ImagePolicy) -> None:
    """Raise ``ImageError`` if a frame of ``width`` x ``height`` is over the policy."""
    _check_pixels(width, height, policy)


def decode_memory(
    policy: ImagePolicy, pixels: int, image_format: str
) -> AbstractContextManager[None]:
    """Hold the policy's decode memory for decoding ``pixels`` of ``image_format``."""
    per_pixel = DECODE_BYTES_PER_PIXEL.get(image_format, _MOST_BYTES_PER_PIXEL)
    return _decode_memory(policy, pixels * per_pixel)


# --- Pillow's warnings: one verdict whatever the warnings filter (module docstring) ---


class _Validation(threading.local):
    """The validation running on this thread, if any, as the warnings stand-in sees it."""

    policy: ImagePolicy | None = None
    warned: list[str]

    def __init__(self) -> None:
        self.warned = []


_current = _Validation()

#: Warnings about a file's metadata, by the Pillow module that emits them: dropped
#: during a validation, since the pixels decide.
_METADATA_WARNINGS = {
    # Directory entries Pillow skips or cannot finish reading (tag data past the end,
    # too many values for a tag, a directory cut short): "Tag data larger than file",
    # "Corrupt EXIF data", "Metadata Warning", "Tag offset too large"...
    "PIL.TiffImagePlugin": re.compile(r""),
    "PIL.PngImagePlugin": re.compile(r"Invalid APNG"),  # read as a plain PNG
    "PIL.JpegImagePlugin": re.compile(r"Image appears to be a malformed MPO"),
}
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_ABOUT_THE_CODE = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _PillowWarnings:
    """What one Pillow module sees as ``warnings``: the real module, except ``warn``
    during a validation on this thread, which decides without the warnings filter, so
    that a file gets one verdict in every process (see the module docstring)."""

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(warnings, name)

    def warn(
        self,
        message: str | Warning,
        category: type[Warning] | None = None,
        stacklevel: int = 1,
        source: Any = None,
        **options: Any,
    ) -> None:
        if isinstance(message, Warning):
            category = type(message)
        category = category or UserWarning
        policy = _current.policy
        if policy is None or issubclass(category, _ABOUT_THE_CODE):
            warnings.warn(message, category, stacklevel + 1, source, **options)
            return
        text = str(message)
        if issubclass(category, Image.DecompressionBombWarning):
            # Called before Pillow allocates the frame or canvas it names.
            found = _BOMB_PIXELS.search(text)
            if found is None:
                raise ImageError(f"image is too large to decode safely ({text})")
            if int(found[1]) > policy.max_pixels:
                raise ImageError(
                    f"image has a frame or canvas of {found[1]} pixels, "
                    f"limit is {policy.max_pixels}"
                )
            return
        metadata = _METADATA_WARNINGS.get(self._module)
        if category is UserWarning and metadata is not None and metadata.match(text):
            log.debug("ignored Pillow metadata warning: %s", text)
            return
        _current.warned.append(text)


_shimmed_modules = 0  # len(sys.modules) at the last sweep


def _init_pillow() -> None:
    """Register Pillow's plugins (cheap after the first time) and give every Pillow
    module loaded so far the warnings stand-in. Idempotent; concurrent sweeps only
    assign the same kind of object twice."""
    global _shimmed_modules
    Image.init()
    if len(sys.modules) == _shimmed_modules:
        return
    for name, module in list(sys.modules.items()):
        if not (name == "PIL" or name.startswith("PIL.")) or not isinstance(module, ModuleType):
            continue
        if vars(module).get("warnings") is warnings:
            vars(module)["warnings"] = _PillowWarnings(name)
    _shimmed_modules = len(sys.modules)


def _identify(fp: BinaryIO, policy: ImagePolicy) -> tuple[str, ImageFile.ImageFile]:
    """Open ``fp`` with the first allowed plugin that accepts it (as ``Image.open``
    does, minus the global bomb check); raise ``ImageError`` if none does."""
    fp.seek(0)  # _validate has registered the plugins
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


def _check_tiles_cover(im: ImageFile.ImageFile) -> None:
    """Raise ``ImageError`` unless this frame's tiles (TIFF strips or tiles, BMP rows)
    cover the whole picture.

    Pillow decodes only the tiles the file lists: a TIFF with fewer strips than its
    rows decodes without an error and leaves the rest blank. Pillow lays the tiles out
    on a grid, one layer per sample when the samples are stored apart (planar), so
    distinct extents do not overlap and their areas add up to the picture's.
    """
    width, height = im.size  # a rotated TIFF swaps them: the area is the same
    layers: dict[object, set[tuple[int, int, int, int]]] = {}  # by raw mode
    for tile in im.tile:
        args, extents = tile[3], tile[1]
        if extents is None:
            raise ImageError("image is truncated or corrupt: a tile without extents")
        rawmode = args[0] if isinstance(args, tuple) and args else args
        layers.setdefault(rawmode, set()).add(extents)
    tags = getattr(im, "tag_v2", None) or {}
    samples = tags.get(277, 1) if tags.get(284, 1) == 2 else 1  # planar: a layer each
    if len(layers) < (samples if isinstance(samples, int) else 1):
        raise ImageError("image is truncated or corrupt: samples without pixel data")
    for layer in layers.values():
        area = sum(max(0, x1 - x0) * max(0, y1 - y0) for x0, y0, x1, y1 in layer)
        if area < width * height:
            raise ImageError(
                f"image is truncated or corrupt: pixel data for {area} of {width * height} pixels"
            )


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
    if im.format == "PNG" and _png_sound(fp, file_size) and frames == 1:
        return  # every row is there and would decode; _validate checked the size
    total = 0
    for index in range(frames):
        if index:
            im.seek(index)
        width, height = im.size  # TIFF pages differ; a GIF frame may grow the canvas
        _check_pixels(width, height, policy)
        total += width * height
        _check_total(total, policy)
        if im.format in {"TIFF", "BMP"}:
            _check_tiles_cover(im)
        if _raw_tiles_fit(im, file_size):
            continue
        if im.format == "JPEG":
            if _sequential_jpeg_sound(fp, file_size):
                continue
            # Scaled decoding (1/8) still Huffman-decodes every block, so it rejects
            # what a full decode rejects, at half the cost and 1/64 the memory.
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
        per_pixel = DECODE_BYTES_PER_PIXEL.get(str(im.format), _MOST_BYTES_PER_PIXEL)
        with _decode_memory(policy, width * height * per_pixel):
            im.load()


@contextmanager
def _decode_memory(policy: ImagePolicy, size: int) -> Iterator[None]:
    if policy.decode_memory is None:
        yield
    else:
        with policy.decode_memory.reserve(size):
            yield


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
    scan = _single_scan_start(fp, file_size)
    if scan is None:
        return False
    scan_start, least = scan.start, scan.least
    fp.seek(0)
    with _file_view(fp, file_size) as data:
        end = _SCAN_END.search(data, scan_start)
        if end is None:
            raise ImageError("image is truncated or corrupt: the JPEG scan has no end")
        if data[end.start() + 1] != _EOI:
            return False  # another scan, a DNL marker...: let the decoder judge
        if end.start() - scan_start < least:
            raise ImageError(
                f"image is truncated or corrupt: the JPEG scan has {end.start() - scan_start}"
                f" bytes, its blocks need at least {least}"
            )
        sample = bytearray(data[: min(end.start(), scan_start + _SCAN_SAMPLE)])
    # The headers, tables and the first row of blocks, decoded for real: the sample's
    # frame says it is one MCU row tall, so libjpeg decodes that row and stops, instead
    # of filling in the rest of the picture (at 1/8 scale that was 2.5 ms of a 12 Mpx
    # photo's 4.8 ms check, for no more proof).
    if 0 < scan.row < scan.height:
        sample[scan.height_at : scan.height_at + 2] = scan.row.to_bytes(2, "big")
    factory = Image.OPEN["JPEG"][0]  # as _identify does: no global bomb check
    with factory(io.BytesIO(bytes(sample) + b"\xff\xd9"), "") as head:
        head.load()
    return True


@dataclass(frozen=True, slots=True)
class _Scan:
    start: int  # where the entropy-coded data starts
    least: int  # the fewest bytes that can code its blocks
    height_at: int  # where the frame header's height field is
    height: int
    row: int  # pixel rows of one MCU row


def _single_scan_start(fp: BinaryIO, file_size: int) -> _Scan | None:
    """Walk the segments from SOI to the first SOS; if the frame is sequential and the
    scan holds every component, return where its entropy-coded data starts, the
    fewest bytes that can code its blocks and where its height is, else None."""
    fp.seek(0)
    if fp.read(2) != b"\xff\xd8":
        raise ImageError("image is truncated or corrupt: no JPEG start marker")
    position, components, least, frame = 2, 0, 0, b""
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
            body = fp.read(length - 2)
            if len(body) < 6 or components:
                return None  # a second frame header: let the decoder judge
            components = body[5]
            least = _least_scan_bytes(body)
            frame, frame_at = body, position + 4
        elif marker in _OTHER_SOF or marker == _EOI:
            return None
        elif marker == _SOS:
            count = fp.read(1)
            if not components or not count or count[0] != components:
                return None  # not one interleaved scan of a sequential frame
            tallest = max((b & 15 for b in frame[7 : 6 + 3 * components : 3]), default=1)
            height = int.from_bytes(frame[1:3], "big")
            return _Scan(end, least, frame_at + 1, height, 8 * max(1, min(tallest, 4)))
        position = end
    return None


def _least_scan_bytes(frame: bytes) -> int:
    """The fewest entropy-coded bytes a sequential Huffman scan of this frame header's
    blocks can take: every 8x8 block codes its DC difference and then an end-of-block
    code or AC coefficients, each at least a 1-bit code. 0 if the header is odd (the
    decoder judges it)."""
    height, width, count = (
        int.from_bytes(frame[1:3], "big"),
        int.from_bytes(frame[3:5], "big"),
        frame[5],
    )
    factors = [(b >> 4, b & 15) for b in frame[7 : 6 + 3 * count : 3]]
    if (
        len(factors) != count
        or not factors
        or any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in factors)
    ):
        return 0
    widest, tallest = max(h for h, _ in factors), max(v for _, v in factors)
    blocks = 0
    for h, v in factors:
        columns = -(-width * h // widest)  # samples of this component, rounded up
        rows = -(-height * v // tallest)
        blocks += -(-columns // 8) * -(-rows // 8)
    return -(-2 * blocks // 8)


# --- PNG: every row present, proven by inflating the image data -----------------------
#
# Pillow's PNG decoder stops without an error when the zlib stream ends cleanly before
# the last row (ZipDecode.c gives the same result for both, the decoder object has no
# row count), so a decode proves nothing about missing rows: a 68-byte file claiming
# 1 x 100,000,000 pixels passed after 2 s and 783 MB. What a decode does check is the
# zlib data up to the last row, the filter byte starting each row (0-4), and that the
# data is there. We check exactly that, inflating the stream piece by piece without
# keeping it (its length must be what IHDR declares, for each Adam7 pass of an
# interlaced image), and skip the decode: a 31 MB, 12 Mpx PNG takes 165 ms instead of
# 430 ms, in 4 MB instead of the 48 MB picture. The file must also reach its IEND
# chunk: a file cut in the metadata after the pixels is truncated too. Animated PNGs
# (APNG, rare) get every frame checked the same way, then Pillow's decode, which
# composes the frames (seeking to a frame decodes the one before), so they are
# inflated twice.

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
#: Adam7 passes: first column, first row, column step, row step.
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_PNG_FILTERS = bytes(range(5))
_PNG_CHUNK = struct.Struct(">I4s")
_APNG_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
_INFLATE_PIECE = 1 << 20  # bytes in and out of zlib at a time


class _PngFrame:
    """One frame's zlib stream, inflated as it arrives and never kept: counts the
    bytes (rows with their filter byte) and checks each row's filter type."""

    def __init__(self, width: int, height: int, bits: int, interlaced: bool) -> None:
        self.passes = [(1 + (width * bits + 7) // 8, height)]  # (row bytes, rows)
        if interlaced:
            self.passes = [
                (1 + (columns * bits + 7) // 8, rows)
                for x0, y0, dx, dy in _ADAM7
                if (columns := (width - x0 + dx - 1) // dx) > 0
                and (rows := (height - y0 + dy - 1) // dy) > 0
            ]
        self.expected = sum(row * rows for row, rows in self.passes)
        self.produced = 0
        self._inflater = zlib.decompressobj()
        self._pass = self._in_pass = 0  # where the next inflated byte falls

    @property
    def full(self) -> bool:
        return self.produced >= self.expected or self._inflater.eof

    def feed(self, data: bytes) -> None:
        while data and not self.full:
            wanted = min(_INFLATE_PIECE, self.expected - self.produced)
            rows = self._inflater.decompress(data, wanted)  # zlib.error: corrupt
            self._check_filters(rows)
            self.produced += len(rows)
            data = self._inflater.unconsumed_tail

    def finish(self) -> None:
        if self.produced < self.expected:
            how = "its zlib stream ends" if self._inflater.eof else "its data ends"
            raise ImageError(
                f"image is truncated or corrupt: rows are missing ({how} after "
                f"{self.produced} of {self.expected} bytes)"
            )

    def _check_filters(self, rows: bytes) -> None:
        at = 0
        while at < len(rows):
            row, count = self.passes[self._pass]
            size = row * count
            take = min(len(rows) - at, size - self._in_pass)
            first = -self._in_pass % row  # the next filter byte, from ``at``
            if rows[at + first : at + take : row].translate(None, _PNG_FILTERS):
                raise ImageError("image is truncated or corrupt: unknown PNG row filter")
            at += take
            self._in_pass += take
            if self._in_pass == size:
                self._pass, self._in_pass = self._pass + 1, 0


def _png_sound(fp: BinaryIO, file_size: int) -> bool:
    """Check every frame's image data (see above). True for a plain PNG, which needs
    no decode; False for an animated one (decode it). Raises ``ImageError``."""
    position = fp.tell()
    fp.seek(0)
    with _file_view(fp, file_size) as data:
        animated = _walk_png(data)
    fp.seek(position)
    return not animated


def _walk_png(data: mmap.mmap | bytes) -> bool:
    """Follow the chunks from IHDR to IEND, feeding each frame's data to a
    ``_PngFrame``; return whether APNG chunks were found."""
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ImageError("image is truncated or corrupt: PNG without IHDR first")
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    bits = depth * _PNG_CHANNELS.get(colour, 0)
    if not bits:
        raise ImageError(f"image is truncated or corrupt: PNG colour type {colour}")
    frame: _PngFrame | None = None  # the frame whose data chunks are arriving
    announced: tuple[int, int] | None = None  # an fcTL's size, for the fdAT run after it
    kind, frame_kind, position, seen_idat, animated = b"IHDR", b"", 33, False, False
    while kind != b"IEND":
        if position + 8 > len(data):
            raise ImageError("image is truncated or corrupt: the PNG ends before IEND")
        length, kind = _PNG_CHUNK.unpack_from(data, position)
        body, end = position + 8, position + 8 + length
        if end + 4 > len(data):
            raise ImageError(f"image is truncated or corrupt: PNG {kind!r} chunk cut short")
        if frame is not None and kind != frame_kind:
            frame.finish()
            frame = None
        if kind == b"IDAT" and frame is None and not seen_idat:
            frame, frame_kind = _PngFrame(width, height, bits, interlace != 0), kind
            seen_idat, announced = True, None  # an fcTL before IDAT was about this frame
        elif kind in _APNG_CHUNKS:
            animated = True
            if kind == b"fcTL" and length >= 26:
                announced = struct.unpack_from(">II", data, body + 4)
            elif kind == b"fdAT" and length >= 4:
                body += 4  # the sequence number
                if frame is None and announced is not None:
                    frame, frame_kind = _PngFrame(*announced, bits, interlace != 0), kind
                    announced = None
        if frame is not None:
            for start in range(body, end, _INFLATE_PIECE):
                if frame.full:
                    break
                frame.feed(data[start : min(end, start + _INFLATE_PIECE)])
        position = end + 4  # after the CRC (Pillow does not check the image data's)
    if not seen_idat:
        raise ImageError("image is truncated or corrupt: PNG without image data")
    return animated


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
    if max(width, height) > policy.max_side:
        raise ImageError(
            f"image has a side of {max(width, height)} pixels ({width}x{height}), "
            f"limit is {policy.max_side}"
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
