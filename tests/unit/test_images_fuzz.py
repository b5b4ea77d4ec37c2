"""Hypothesis fuzzing of the image validator (``imgshare.server.images``).

Fed any bytes (random ones, ones behind a real magic number, and small valid images of
every accepted format, made by Pillow, then bit-flipped, cut, spliced, overwritten
with boundary integers or grown by inserted bytes), ``validate_image``:

- returns an ``ImageInfo`` within the policy (allowed format, its MIME type and
  extension, pixels, frames and total pixels within the limits) that tells the truth
  (Pillow opens the bytes as that format and size), or raises ``ImageError``. Nothing
  else escapes: no ``OSError``, ``struct.error``, ``MemoryError``, no warning turned
  into an exception (every call runs under the "error" warnings filter, and again
  with warnings ignored, the other path a warning can take through Pillow);
- gives the same verdict for an in-memory file and a real one (which it memory-maps),
  and under either warnings filter;
- agrees with ``sniff_extension`` on accepted images;
- finishes fast: each call is timed (``TIME_LIMIT``). Hypothesis' own deadline is off
  because it would time the whole example, Pillow encoding the seeds on first use and
  the reference ``Image.open`` included; the explicit bound times the validator alone
  and is generous enough for a loaded 2-core CI machine.

``sniff_extension`` never raises for any bytes and only names allowed formats.

The policies are small (at most 1 Mpx a frame) so that a mutated header claiming a
huge picture costs little to decode: what this file fuzzes is the parsing and the
error mapping, not the cost of big pictures.

Two issues found while writing this file are pinned at the end as regression tests:
the verdict depended on the warnings filter, and a PNG with rows missing passed.

Whole file: 6-10 s on the 2-core dev machine. For long runs: fuzz/README.md (atheris).
"""

from __future__ import annotations

import functools
import io
import random
import struct
import tempfile
import threading
import time
import warnings
import zlib
from typing import BinaryIO, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import BmpImagePlugin, Image

from imgshare.errors import ImageError
from imgshare.server.images import (
    KNOWN_FORMATS,
    ImageInfo,
    ImagePolicy,
    sniff_extension,
    validate_image,
)

FUZZ = settings(
    max_examples=1000,
    deadline=None,  # see the module docstring: TIME_LIMIT times the validator alone
    suppress_health_check=[HealthCheck.too_slow],
)
#: Seconds one validation of a tiny file may take (they take ~0.1-5 ms here).
TIME_LIMIT = 2.0

POLICIES = [
    ImagePolicy(max_pixels=1 << 14, max_frames=4, max_total_pixels=1 << 15),
    ImagePolicy(max_pixels=1 << 20, max_frames=64, max_total_pixels=1 << 22),
    ImagePolicy(max_pixels=1 << 16, formats=frozenset({"PNG", "GIF", "TIFF"})),
    ImagePolicy(max_pixels=1 << 16, formats=frozenset({"JPEG", "WEBP", "BMP"})),
]
policies = st.sampled_from(POLICIES)

# --- seeds: small valid images of every accepted format, in several flavours ----------


def _picture(mode: str, size: tuple[int, int], seed: int = 1) -> Image.Image:
    """Noise pixels (so lossy encoders emit real entropy-coded data)."""
    rng = random.Random(seed)
    width, height = size
    if mode == "P":
        return Image.frombytes("L", size, rng.randbytes(width * height)).convert("P")
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, rng.randbytes(width * height * bands))


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


SEED_NAMES = [
    "jpeg-baseline",
    "jpeg-progressive",
    "jpeg-grey-restarts",
    "png-rgb",
    "png-palette-interlaced",
    "png-rgba",
    "gif-animated",
    "webp-lossy",
    "webp-lossless",
    "webp-animated",
    "tiff-raw",
    "tiff-lzw",
    "tiff-deflate-2-pages",
    "tiff-jpeg",
    "bmp-24bit",
    "bmp-8bit",
    # Over the smallest policy's limits (1 << 14 pixels, 4 frames): each must be refused
    # there, and accepted by the larger policies.
    "png-over-the-pixel-limit",
    "gif-over-the-frame-limit",
    "gif-over-the-total-limit",
]


@functools.cache
def seeds() -> dict[str, bytes]:
    rgb = _picture("RGB", (16, 12))
    palette = _picture("P", (12, 10))
    gradient = Image.linear_gradient("L").convert("P")  # 256 x 256, compresses well
    made = {
        "jpeg-baseline": _encode(rgb, "JPEG", quality=80),
        "jpeg-progressive": _encode(rgb, "JPEG", progressive=True),
        "jpeg-grey-restarts": _encode(_picture("L", (16, 12)), "JPEG", restart_marker_blocks=1),
        "png-rgb": _encode(rgb, "PNG"),
        "png-palette-interlaced": _encode(_picture("P", (16, 12)), "PNG", interlace=1),
        "png-rgba": _encode(_picture("RGBA", (9, 7)), "PNG"),
        "gif-animated": _encode(
            palette, "GIF", save_all=True, append_images=[_picture("P", (12, 10), 2)]
        ),
        "webp-lossy": _encode(rgb, "WEBP", quality=50),
        "webp-lossless": _encode(rgb, "WEBP", lossless=True),
        "webp-animated": _encode(
            rgb, "WEBP", save_all=True, append_images=[_picture("RGB", (16, 12), 3)], lossless=True
        ),
        "tiff-raw": _encode(rgb, "TIFF"),
        "tiff-lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate-2-pages": _encode(
            rgb,
            "TIFF",
            compression="tiff_adobe_deflate",
            save_all=True,
            append_images=[_picture("L", (8, 8))],
        ),
        "tiff-jpeg": _encode(rgb, "TIFF", compression="jpeg"),
        "bmp-24bit": _encode(rgb, "BMP"),
        "bmp-8bit": _encode(_picture("P", (16, 12)), "BMP"),
        "png-over-the-pixel-limit": _encode(Image.new("L", (160, 120), 90), "PNG"),
        "gif-over-the-frame-limit": _encode(
            _picture("P", (8, 8)),
            "GIF",
            save_all=True,
            append_images=[_picture("P", (8, 8), n) for n in range(2, 7)],
        ),
        "gif-over-the-total-limit": _encode(  # 3 x 12100 pixels, over 1 << 15 in all
            gradient.crop((0, 0, 110, 110)),
            "GIF",
            save_all=True,
            append_images=[gradient.crop((n, n, n + 110, n + 110)) for n in (60, 120)],
        ),
    }
    assert sorted(made) == sorted(SEED_NAMES)
    return made


# --- running the validator -------------------------------------------------------------

Outcome = ImageInfo | type[ImageError]
Filter = Literal["error", "ignore"]


def _validate(data: bytes, policy: ImagePolicy, real_file: bool, warning_filter: Filter) -> Outcome:
    """One validation, timed; only ``ImageError`` is caught, anything else fails the test."""
    with warnings.catch_warnings(), tempfile.TemporaryFile() as spool:
        warnings.simplefilter(warning_filter)
        source: BinaryIO
        if real_file:
            spool.write(data)
            spool.flush()
            source = spool
        else:
            source = io.BytesIO(data)
        started = time.perf_counter()
        try:
            outcome: Outcome = validate_image(source, policy)
        except ImageError:
            outcome = ImageError
        elapsed = time.perf_counter() - started
    assert elapsed < TIME_LIMIT, f"validate_image took {elapsed:.2f} s on {len(data)} bytes"
    return outcome


def _check_accepted(info: ImageInfo, data: bytes, policy: ImagePolicy) -> None:
    """An accepted image is within the policy, and is what the validator says it is."""
    assert info.format in policy.formats
    assert (info.mime, info.extension) == KNOWN_FORMATS[info.format]
    assert info.width >= 1 and info.height >= 1
    assert info.width * info.height <= policy.max_pixels
    assert 1 <= info.frames <= policy.max_frames
    assert info.frames * info.width * info.height <= policy.max_total_pixels
    assert sniff_extension(data[:16], policy) == info.extension
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            opened_as = "JPEG" if im.format == "MPO" else im.format  # as images.py names it
            assert opened_as == info.format
            assert im.size == (info.width, info.height)


def check_validator(data: bytes, policy: ImagePolicy) -> Outcome:
    """Every invariant of this module, for one input and one policy."""
    strict = _validate(data, policy, real_file=False, warning_filter="error")
    if isinstance(strict, ImageInfo):
        _check_accepted(strict, data, policy)
    assert _validate(data, policy, real_file=True, warning_filter="error") == strict
    # Warnings ignored: Pillow would go on where it raised, were the verdict not the
    # module's own whatever the filter.
    lenient = _validate(data, policy, real_file=False, warning_filter="ignore")
    assert lenient == strict
    return strict


# --- random bytes -------------------------------------------------------------------------

#: The magic numbers of the accepted formats (and near misses), to get past identification.
MAGICS = [
    b"",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x00\x01\x00\x00WEBPVP8L",
    b"RIFF\x00\x01\x00\x00WEBPVP8X",
    b"II*\x00\x08\x00\x00\x00",
    b"MM\x00*\x00\x00\x00\x08",
    b"BM",
    b"BM\x00\x01\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
]


@FUZZ
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=2048), policy=policies)
def test_random_bytes_are_rejected_or_valid(magic: bytes, tail: bytes, policy: ImagePolicy) -> None:
    check_validator(magic + tail, policy)


# --- mutated valid images ---------------------------------------------------------------

#: Values that often sit on a parser's boundary, written over a length or a dimension.
BOUNDARY = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]
EDIT_KINDS = ["flip", "truncate", "insert", "replace", "splice", "integer", "duplicate"]

Edit = tuple[str, int, bytes, str, int]


@st.composite
def edits(draw: st.DrawFn) -> list[Edit]:
    """0-4 edits: (kind, position, bytes, another seed for a splice, integer). No edit
    checks the seed itself against every policy (a narrowed allow-list, low limits)."""
    one = st.tuples(
        st.sampled_from(EDIT_KINDS),
        st.integers(0, 1 << 16),
        st.binary(min_size=1, max_size=16),
        st.sampled_from(SEED_NAMES),
        st.sampled_from(BOUNDARY) | st.integers(0, (1 << 32) - 1),
    )
    return draw(st.lists(one, max_size=4))


def mutate(data: bytes, edit: Edit) -> bytes:
    kind, pos, extra, other, value = edit
    at = pos % (len(data) + 1)
    if kind == "flip" and data:
        at = pos % len(data)
        return data[:at] + bytes((data[at] ^ (1 << pos % 8),)) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + extra + data[at:]
    if kind == "replace":
        return data[:at] + extra + data[at + len(extra) :]
    if kind == "splice":  # a piece of another image (its headers, its pixels...)
        donor = seeds()[other]
        start = value % len(donor)
        return data[:at] + donor[start : start + 1 + pos % 512] + data[at:]
    if kind == "integer":  # 1, 2 or 4 bytes, either byte order, over what is there
        size = (1, 2, 4)[pos % 3]
        number = value & ((1 << (8 * size)) - 1)
        packed = number.to_bytes(size, "big" if value & 1 else "little")
        return data[:at] + packed + data[at + size :]
    if kind == "duplicate" and data:
        start = value % len(data)
        return data[:at] + data[start : start + 1 + pos % 64] + data[at:]
    return data


@FUZZ
@given(name=st.sampled_from(SEED_NAMES), changes=edits(), policy=policies)
def test_mutated_images_are_rejected_or_valid(
    name: str, changes: list[Edit], policy: ImagePolicy
) -> None:
    data = seeds()[name]
    for change in changes:
        data = mutate(data, change)
    check_validator(data, policy)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_every_seed_is_accepted(name: str) -> None:
    """The mutations start from valid images (else the fuzzing above proves less)."""
    info = check_validator(seeds()[name], POLICIES[1])
    assert isinstance(info, ImageInfo), name
    assert info.format == name.split("-")[0].upper()
    over = "over-the" in name
    assert check_validator(seeds()[name], POLICIES[0]) == (ImageError if over else info)


# --- sniff_extension ----------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    head=st.builds(lambda m, t: m + t, st.sampled_from(MAGICS), st.binary(max_size=32)),
    policy=st.none() | policies,
    as_view=st.booleans(),
)
def test_sniff_extension_never_raises(
    head: bytes, policy: ImagePolicy | None, as_view: bool
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = sniff_extension(memoryview(head) if as_view else head, policy)
    allowed = (policy or ImagePolicy()).formats
    assert found is None or found in {KNOWN_FORMATS[fmt][1] for fmt in allowed}
    assert sniff_extension(head[:16], policy) == found  # a prefix check: 16 bytes decide


# --- issues found by this file (fixed) ------------------------------------------------


def tiff_with_an_overlong_tag() -> bytes:
    """A valid 2x2 grey uncompressed TIFF whose Software tag (305) claims 4 KiB of text
    at an offset past the end of the file. Pillow skips the tag with a UserWarning
    ("Tag data larger than file"); the pixels are all there."""
    entries = [  # (tag, type: 2 ASCII 3 SHORT 4 LONG, count, value or offset)
        (256, 3, 1, 2),  # width
        (257, 3, 1, 2),  # height
        (258, 3, 1, 8),  # bits per sample
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1),  # black is zero
        (273, 4, 1, 8 + 2 + 12 * 10 + 4),  # strip offset: right after the IFD
        (277, 3, 1, 1),  # samples per pixel
        (278, 3, 1, 2),  # rows per strip
        (279, 4, 1, 4),  # strip byte count
        (305, 2, 4096, 0xFFFF),  # Software: past the end
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)  # no next IFD
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes([0, 64, 128, 255])


def test_verdict_does_not_depend_on_the_warnings_filter() -> None:
    """A Pillow warning (here TIFF "Tag data larger than file") rejected the image under
    -W error (pytest) while a server with the default filter accepted it. Metadata
    warnings now never decide: the pixels are all there, so it passes either way."""
    data = tiff_with_an_overlong_tag()
    policy = ImagePolicy()
    lenient = _validate(data, policy, real_file=False, warning_filter="ignore")
    strict = _validate(data, policy, real_file=False, warning_filter="error")
    assert strict == lenient == ImageInfo("TIFF", 2, 2, "image/tiff", "tif")


def test_a_metadata_warning_outside_validation_still_reaches_the_caller() -> None:
    """The stand-in decides only during a validation; Pillow's other callers keep their
    warnings."""
    data = tiff_with_an_overlong_tag()
    assert validate_image(io.BytesIO(data)).width == 2
    with pytest.warns(UserWarning, match="Tag data larger than file"), Image.open(io.BytesIO(data)):
        pass


def gif_growing_its_canvas() -> bytes:
    """A 40x40 GIF frame on a 10x10 logical screen: Pillow grows the canvas to 40x40
    when it reads the frame, after its bomb check on the new size."""
    data = bytearray(_encode(_picture("P", (40, 40)), "GIF"))
    data[6:10] = struct.pack("<HH", 10, 10)
    return bytes(data)


@pytest.mark.parametrize("warning_filter", ["error", "ignore"])
def test_pillows_bomb_warning_is_judged_by_the_policy(
    monkeypatch: pytest.MonkeyPatch, warning_filter: Filter
) -> None:
    """Pillow warns above its global limit (here 1,000 pixels); our policy decides, at
    the moment Pillow warns (before it allocates), whatever the warnings filter."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = gif_growing_its_canvas()
    within = _validate(data, ImagePolicy(max_pixels=2000), False, warning_filter)
    assert within == ImageInfo("GIF", 40, 40, "image/gif", "gif")
    with pytest.raises(ImageError, match=r"frame or canvas of 1600 pixels, limit is 1500"):
        validate_image(io.BytesIO(data), ImagePolicy(max_pixels=1500))


def test_threads_validating_at_once_each_apply_their_own_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = gif_growing_its_canvas()
    start = threading.Barrier(2)
    verdicts: dict[int, set[object]] = {1500: set(), 2000: set()}

    def validate(limit: int) -> None:
        start.wait()
        for _ in range(40):
            try:
                verdicts[limit].add(validate_image(io.BytesIO(data), ImagePolicy(max_pixels=limit)))
            except ImageError:
                verdicts[limit].add(ImageError)

    threads = [threading.Thread(target=validate, args=(limit,)) for limit in verdicts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verdicts == {1500: {ImageError}, 2000: {ImageInfo("GIF", 40, 40, "image/gif", "gif")}}


@pytest.mark.parametrize("warning_filter", ["error", "ignore"])
def test_an_unexpected_pillow_warning_rejects_whatever_the_filter(
    monkeypatch: pytest.MonkeyPatch, warning_filter: Filter
) -> None:
    """A warning the module has not classified (here one a future Pillow might emit
    while opening a BMP) fails closed."""
    opener = BmpImagePlugin.BmpImageFile._open

    def open_and_warn(self: BmpImagePlugin.BmpImageFile) -> None:
        opener(self)
        Image.warnings.warn("something odd about this file")  # what Pillow's code calls

    data = seeds()["bmp-24bit"]
    assert _validate(data, POLICIES[1], False, warning_filter) != ImageError
    monkeypatch.setattr(BmpImagePlugin.BmpImageFile, "_open", open_and_warn)
    assert _validate(data, POLICIES[1], False, warning_filter) == ImageError


def png_with_rows_missing(width: int = 640, height: int = 480, rows: int = 1) -> bytes:
    """An RGB PNG whose IHDR says ``width`` x ``height`` but whose zlib stream, complete
    and well formed, carries only the first ``rows`` rows (a file cut short and then
    "repaired", or made to look big): 1989 bytes with the defaults."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rng = random.Random(5)
    scanlines = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


def test_png_with_rows_missing_is_rejected() -> None:
    """The zlib stream ends cleanly after 1 row of 480: Pillow's PNG decoder stops there
    without an error, so only the length of the inflated data tells."""
    data = png_with_rows_missing()
    with pytest.raises(ImageError, match=r"rows are missing \(its zlib stream ends"):
        validate_image(io.BytesIO(data))
    assert validate_image(io.BytesIO(png_with_rows_missing(64, 48, 48))).height == 48
