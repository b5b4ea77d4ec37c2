"""Image validation with real images made by Pillow (and a hand-made bomb)."""

from __future__ import annotations

import io
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from imgshare.errors import ConfigError, ImageError, StorageError
from imgshare.server.images import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    ImagePolicy,
    _sequential_jpeg_sound,
    sniff_extension,
    validate_image,
)

FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "GIF": ("image/gif", "gif"),
    "WEBP": ("image/webp", "webp"),
    "TIFF": ("image/tiff", "tif"),
    "BMP": ("image/bmp", "bmp"),
}


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A small picture with some detail, so lossy encoders emit real entropy data."""
    rng = random.Random(7)
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def zero_png(width: int, height: int) -> bytes:
    """A complete 1-bit PNG of an all-black image, built by hand: huge pixel counts
    compress about 1000:1, so a 900 Mpx bomb is ~100 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    rows_per_block = max(1, 4_000_000 // len(row))
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * min(rows_per_block, height - start))
             for start in range(0, height, rows_per_block)]  # fmt: skip
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_allowed_format_is_accepted(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"picture.{FORMATS[fmt][1]}"
    photo().save(path, fmt)
    expected = ImageInfo(fmt, 96, 64, *FORMATS[fmt])
    assert validate_image(path) == expected
    assert validate_image(str(path)) == expected
    with path.open("rb") as fp:
        assert validate_image(fp) == expected


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sniff_extension_from_the_first_bytes(fmt: str) -> None:
    head = encode(photo(), fmt)[:64]
    assert sniff_extension(head) == FORMATS[fmt][1]
    assert sniff_extension(head, ImagePolicy(formats=frozenset({fmt}))) == FORMATS[fmt][1]
    others = frozenset(FORMATS) - {fmt}
    assert sniff_extension(head, ImagePolicy(formats=others)) is None


@pytest.mark.parametrize("head", [b"", b"hello", encode(photo(8, 8), "PCX")[:64]])
def test_sniff_extension_of_non_images(head: bytes) -> None:
    assert sniff_extension(head) is None


def test_one_pixel_png() -> None:
    data = encode(Image.new("RGB", (1, 1), "white"), "PNG")
    assert validate_image(io.BytesIO(data)) == ImageInfo("PNG", 1, 1, "image/png", "png")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_truncated_images_are_rejected(fmt: str) -> None:
    data = encode(photo(), fmt)
    with pytest.raises(ImageError, match=r"truncated or corrupt|unreadable"):
        validate_image(io.BytesIO(data[: len(data) // 2]))


def test_truncated_jpeg_is_rejected_although_verify_passes() -> None:
    data = encode(photo(256, 256), "JPEG", quality=95)
    cut = data[: len(data) // 2]
    with Image.open(io.BytesIO(cut)) as image:
        image.verify()  # Pillow's verify() is not enough: it accepts this
    with pytest.raises(ImageError, match="truncated"):
        validate_image(io.BytesIO(cut))


def test_corrupt_png_is_rejected() -> None:
    data = bytearray(encode(photo(), "PNG"))
    data[len(data) // 2] ^= 0xFF  # inside IDAT: bad CRC, bad deflate data
    with pytest.raises(ImageError):
        validate_image(io.BytesIO(bytes(data)))


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    bomb = zero_png(30_000, 30_000)
    assert len(bomb) < 200_000
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"^image has 900000000 pixels \(30000x30000\)"):
        validate_image(io.BytesIO(bomb))
    assert time.perf_counter() - start < 0.5


def test_own_limit_not_pillows_global_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    # 90 Mpx is above Pillow's global 89.5 Mpx warning threshold (an error under
    # pytest's warnings filter) and within our 100 Mpx default.
    assert validate_image(io.BytesIO(zero_png(10_000, 9_000))).width == 10_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert validate_image(io.BytesIO(encode(photo(), "PNG"))).height == 64


def test_large_scanner_tiff_is_accepted(tmp_path: Path) -> None:
    # 8192 x 8192 RGB = 67 Mpx: must pass the default limit (compressed to keep the
    # test file small; the pixel count is what matters).
    path = tmp_path / "scan.tif"
    Image.new("RGB", (8192, 8192), (10, 20, 30)).save(path, "TIFF", compression="tiff_deflate")
    info = validate_image(path)
    assert (info.width, info.height) == (8192, 8192)
    assert 8192 * 8192 < DEFAULT_MAX_PIXELS


def test_pixel_limit_of_a_policy() -> None:
    data = encode(photo(100, 100), "PNG")
    assert validate_image(io.BytesIO(data), ImagePolicy(max_pixels=10_000)).width == 100
    with pytest.raises(ImageError, match=r"image has 10000 pixels .* limit is 9999"):
        validate_image(io.BytesIO(data), ImagePolicy(max_pixels=9_999))


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_formats_outside_the_allow_list_are_rejected(fmt: str) -> None:
    with pytest.raises(ImageError, match="not an image in an accepted format"):
        validate_image(io.BytesIO(encode(photo(32, 32), fmt)))


def test_policy_can_narrow_the_allow_list() -> None:
    policy = ImagePolicy(formats=frozenset({"png"}))
    assert policy.formats == frozenset({"PNG"})
    with pytest.raises(ImageError, match=r"accepted format \(PNG\)"):
        validate_image(io.BytesIO(encode(photo(), "JPEG")), policy)


@pytest.mark.parametrize(
    "data",
    [
        b"just some text, not an image\n" * 20,
        random.Random(1234).randbytes(4096),
        b"",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
        b"GIF89a" + b"\xff" * 10,
    ],
    ids=["text", "random", "empty", "png-magic-only", "gif-magic-only"],
)
def test_non_images_are_rejected(data: bytes) -> None:
    with pytest.raises(ImageError):
        validate_image(io.BytesIO(data))


def test_text_file_path_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("the name says JPEG, the bytes do not")
    with pytest.raises(ImageError, match="not an image"):
        validate_image(path)


def test_missing_file_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        validate_image(tmp_path / "absent.png")


def animated_gif(frames: int, size: int = 50) -> bytes:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    images = [Image.new("RGB", (size, size), colors[i % len(colors)]) for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=50)


def test_every_frame_is_decoded_and_limited() -> None:
    data = animated_gif(3)
    assert validate_image(io.BytesIO(data)).frames == 3
    with pytest.raises(ImageError, match="3 frames, limit is 2"):
        validate_image(io.BytesIO(data), ImagePolicy(max_frames=2))
    policy = ImagePolicy(max_pixels=2_500, max_total_pixels=5_000)
    with pytest.raises(ImageError, match="7500 pixels in all, limit is 5000"):
        validate_image(io.BytesIO(data), policy)


def test_truncated_last_frame_is_rejected() -> None:
    frames = [photo(64, 64) for _ in range(3)]
    frames[1:] = [frame.rotate(90 * i) for i, frame in enumerate(frames[1:], 1)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert validate_image(io.BytesIO(data)).frames == 3
    with pytest.raises(ImageError, match="truncated"):
        validate_image(io.BytesIO(data[: len(data) - 40]))  # inside the last frame


def test_each_tiff_page_is_checked() -> None:
    pages = [photo(10, 10), photo(200, 200)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert validate_image(io.BytesIO(data)).frames == 2
    with pytest.raises(ImageError, match=r"40000 pixels \(200x200\)"):
        validate_image(io.BytesIO(data), ImagePolicy(max_pixels=10_000))


def test_load_truncated_images_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError, match="LOAD_TRUNCATED_IMAGES"):
        validate_image(io.BytesIO(encode(photo(), "PNG")))


@pytest.mark.parametrize(
    "options",
    [
        {"formats": frozenset({"PCX"})},
        {"formats": frozenset()},
        {"max_pixels": 0},
        {"max_frames": 0},
        {"max_side": 0},
        {"max_pixels": 100, "max_total_pixels": 99},
    ],
)
def test_unusable_policies_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ImagePolicy(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["TIFF", "BMP"])
def test_uncompressed_image_missing_its_last_byte_is_rejected(fmt: str) -> None:
    data = encode(photo(64, 48), fmt)
    assert validate_image(io.BytesIO(data)).format == fmt
    with pytest.raises(ImageError, match="truncated"):
        validate_image(io.BytesIO(data[:-1] if fmt == "BMP" else _cut_pixels(data)))


def _cut_pixels(tiff: bytes) -> bytes:
    """A TIFF whose strip is one byte short (Pillow writes the IFD after the pixels)."""
    with Image.open(io.BytesIO(tiff)) as image:
        offset = image.tile[0][2]
    pixels_end = offset + 64 * 48 * 3
    return tiff[: pixels_end - 1] + tiff[pixels_end:]


def test_big_uncompressed_tiff_is_checked_without_decoding_it(tmp_path: Path) -> None:
    """A 6000x6000 RGB TIFF needs 144 MB to decode; its bytes alone prove it sound."""
    import subprocess
    import sys

    path = tmp_path / "scan.tif"
    Image.new("RGB", (6000, 6000), "gray").save(path)
    script = (
        "import sys; from imgshare.server.images import validate_image; "
        "info = validate_image(sys.argv[1]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print(info.width, info.height, int(hwm.split()[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:2] == ["6000", "6000"]
    assert int(out[2]) < 100 * 1024, f"peak RSS {out[2]} KiB: the pixels were decoded"


# --- JPEG: a single sequential scan is proven complete, not Huffman-decoded --------


def scan_bounds(data: bytes) -> tuple[int, int]:
    """Where the first scan's entropy-coded data starts, and where EOI is."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return start, data.rindex(b"\xff\xd9")


def decodes(data: bytes) -> bool:
    """Pillow's own verdict: a full decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


@pytest.mark.parametrize(
    "options",
    [{}, {"restart_marker_blocks": 3}, {"subsampling": 0}, {"progressive": True}],
    ids=["baseline", "restart-markers", "4:4:4", "progressive"],
)
def test_sequential_and_progressive_jpegs_pass(options: dict[str, object]) -> None:
    data = encode(photo(160, 120), "JPEG", quality=85, **options)
    assert validate_image(io.BytesIO(data)).format == "JPEG"


def test_grayscale_and_cmyk_jpegs_pass() -> None:
    for image in (photo().convert("L"), photo().convert("CMYK")):
        assert validate_image(io.BytesIO(encode(image, "JPEG"))).format == "JPEG"


def test_jpeg_without_its_end_marker_is_rejected() -> None:
    data = encode(photo(160, 120), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        validate_image(io.BytesIO(data[:-2]))


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_jpeg_cut_anywhere_in_its_scan_is_rejected(fraction: float) -> None:
    data = encode(photo(160, 120), "JPEG")
    start, end = scan_bounds(data)
    cut = data[: start + int((end - start) * fraction)]
    with pytest.raises(ImageError, match="truncated"):
        validate_image(io.BytesIO(cut))


def test_jpeg_with_a_bogus_huffman_table_is_rejected_like_a_decode_does() -> None:
    data = bytearray(encode(photo(160, 120), "JPEG"))
    dht = data.index(b"\xff\xc4")
    data[dht + 5] = 0xFF  # 255 one-bit codes: no such prefix code
    assert not decodes(bytes(data))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        validate_image(io.BytesIO(bytes(data)))


def test_jpeg_segment_running_past_the_end_is_rejected() -> None:
    data = bytearray(encode(photo(160, 120), "JPEG"))
    app = data.index(b"\xff\xe0")  # JFIF APP0
    data[app + 2 : app + 4] = (60000).to_bytes(2, "big")
    with pytest.raises(ImageError, match=r"truncated or corrupt|unreadable"):
        validate_image(io.BytesIO(bytes(data)))


def test_a_foreign_marker_inside_the_scan_gets_the_decoders_verdict() -> None:
    data = encode(photo(160, 120), "JPEG")
    start, end = scan_bounds(data)
    middle = (start + end) // 2
    spliced = data[:middle] + b"\xff\xc4" + data[middle:]
    verdict = decodes(spliced)
    if verdict:
        validate_image(io.BytesIO(spliced))
    else:
        with pytest.raises(ImageError):
            validate_image(io.BytesIO(spliced))


def test_stray_bytes_between_jpeg_segments_get_the_decoders_verdict() -> None:
    data = encode(photo(160, 120), "JPEG")
    dqt = data.index(b"\xff\xdb")
    padded = data[:dqt] + b"\x00\x00" + data[dqt:]
    assert _sequential_jpeg_sound(io.BytesIO(padded), len(padded)) is False
    if decodes(padded):
        validate_image(io.BytesIO(padded))
    else:
        with pytest.raises(ImageError):
            validate_image(io.BytesIO(padded))


def test_corrupt_scan_data_passes_as_it_does_a_full_decode() -> None:
    # What neither check can see: libjpeg conceals corrupt entropy-coded data.
    data = bytearray(encode(photo(160, 120), "JPEG"))
    start, end = scan_bounds(bytes(data))
    rng = random.Random(3)
    for _ in range(50):
        at = rng.randrange(start + 1, end - 1)
        if 0xFF not in (data[at - 1], data[at]):
            data[at] = rng.randrange(0xFF)
    assert decodes(bytes(data))
    assert validate_image(io.BytesIO(bytes(data))).format == "JPEG"


def test_trailing_bytes_after_the_jpeg_end_pass_as_they_do_a_decode() -> None:
    data = encode(photo(160, 120), "JPEG") + b"camera trailer" * 10
    assert decodes(data)
    assert validate_image(io.BytesIO(data)).format == "JPEG"


@pytest.mark.parametrize(
    ("options", "structural"),
    [({}, True), ({"restart_marker_blocks": 3}, True), ({"progressive": True}, False)],
    ids=["baseline", "restart-markers", "progressive"],
)
def test_which_jpegs_are_proven_by_structure(options: dict[str, object], structural: bool) -> None:
    # One interleaved sequential scan (what cameras write) is walked, not decoded;
    # anything else falls back to the decode.
    data = encode(photo(160, 120), "JPEG", **options)
    assert _sequential_jpeg_sound(io.BytesIO(data), len(data)) is structural


# --- pixel data shorter than the header declares -------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk after the signature."""
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append((kind, data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, body) for kind, body in chunks)


def png_rows(width: int, height: int, interlace: bool) -> list[tuple[int, int]]:
    """(pixels a row, rows) of each pass with pixels, as the PNG specification lays out
    Adam7 (written out here apart from images.py)."""
    if not interlace:
        return [(width, height)]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
    passes.append((0, 1, 1, 2))
    sizes = [(len(range(x, width, dx)), len(range(y, height, dy))) for x, y, dx, dy in passes]
    return [(columns, rows) for columns, rows in sizes if columns and rows]


def handmade_png(
    width: int,
    height: int,
    *,
    interlace: bool = False,
    rows: int | None = None,
    row_filter: int = 0,
    after_pixels: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """An RGB PNG of random bytes, every row behind filter ``row_filter``; ``rows``
    keeps only that many rows in all (or adds some), in a well-formed zlib stream."""
    rng = random.Random(11)
    scanlines = [
        bytes([row_filter]) + rng.randbytes(columns * 3)
        for columns, count in png_rows(width, height, interlace)
        for _ in range(count)
    ]
    if rows is not None:
        scanlines = (scanlines * 2)[:rows]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlace))
    chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(b"".join(scanlines)))]
    return png_from([*chunks, *(after_pixels or []), (b"IEND", b"")])


@pytest.mark.parametrize("interlace", [False, True], ids=["sequential", "interlaced"])
def test_png_with_its_last_rows_missing_is_rejected_though_it_decodes(interlace: bool) -> None:
    """Pillow's PNG decoder stops without an error where the zlib stream ends."""
    whole = handmade_png(37, 23, interlace=interlace)
    assert decodes(whole)
    assert validate_image(io.BytesIO(whole)) == ImageInfo("PNG", 37, 23, "image/png", "png")
    rows = sum(count for _, count in png_rows(37, 23, interlace))
    for kept in (rows - 1, rows // 2, 1):
        short = handmade_png(37, 23, interlace=interlace, rows=kept)
        assert decodes(short)  # what a decode alone would say
        with pytest.raises(ImageError, match=r"rows are missing \(its zlib stream ends"):
            validate_image(io.BytesIO(short))


def test_png_claiming_a_huge_picture_with_no_data_is_rejected_at_once() -> None:
    """68 bytes claiming 1 x 100,000,000 grey pixels: accepted after 2 s and 783 MB
    before. The side limit refuses it first; without it, the data's length does."""
    data = bytes.fromhex(
        "89504e470d0a1a0a0000000d494844520000000105f5e1000800000000a9e9ba320000000b49444154"
        "789c636080000000080001b75873950000000049454e44ae426082"
    )
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"side of 100000000 pixels \(1x100000000\)"):
        validate_image(io.BytesIO(data))
    with pytest.raises(ImageError, match=r"rows are missing .* after 8 of 200000000 bytes"):
        validate_image(io.BytesIO(data), ImagePolicy(max_side=100_000_000))
    assert time.perf_counter() - start < 0.2


def test_png_with_an_unknown_row_filter_is_rejected_as_a_decode_does() -> None:
    data = handmade_png(16, 8, row_filter=5)
    assert not decodes(data)
    with pytest.raises(ImageError, match="unknown PNG row filter"):
        validate_image(io.BytesIO(data))
    with pytest.raises(ImageError, match="unknown PNG row filter"):  # in the 7th pass
        validate_image(io.BytesIO(handmade_png(16, 8, interlace=True, row_filter=5)))


def test_png_with_more_data_than_rows_passes_as_it_does_a_decode() -> None:
    data = handmade_png(16, 8, rows=12)
    assert decodes(data)
    assert validate_image(io.BytesIO(data)).height == 8


def test_png_cut_after_its_pixels_is_rejected() -> None:
    text = (b"tEXt", b"Comment\x00" + b"x" * 100)
    whole = handmade_png(16, 8, after_pixels=[text])
    assert validate_image(io.BytesIO(whole + b"trailer after IEND")).width == 16
    without_iend = whole[:-12]
    cut_in_text = whole[: whole.index(b"tEXt") + 50]
    for data in (without_iend, cut_in_text):
        with pytest.raises(ImageError, match="truncated"):
            validate_image(io.BytesIO(data))


def test_png_whose_image_data_is_interrupted_is_rejected() -> None:
    """IDAT chunks must follow each other: Pillow stops at the first other chunk."""
    chunks = png_chunks(handmade_png(16, 8))
    idat = chunks[1][1]
    split = [chunks[0], (b"IDAT", idat[:40]), (b"tEXt", b"a\x00b"), (b"IDAT", idat[40:])]
    data = png_from([*split, chunks[-1]])
    assert not decodes(data)
    with pytest.raises(ImageError, match=r"rows are missing \(its data ends"):
        validate_image(io.BytesIO(data))


def test_big_png_is_checked_without_decoding_it(tmp_path: Path) -> None:
    """A 6000x6000 RGB PNG needs 144 MB to decode; inflating its data proves it sound."""
    import subprocess
    import sys

    row = bytes(1 + 6000 * 3)
    compressor = zlib.compressobj(1)
    idat = b"".join(compressor.compress(row * 500) for _ in range(12)) + compressor.flush()
    header = struct.pack(">IIBBBBB", 6000, 6000, 8, 2, 0, 0, 0)
    path = tmp_path / "big.png"
    path.write_bytes(png_from([(b"IHDR", header), (b"IDAT", idat), (b"IEND", b"")]))
    script = (
        "import sys; from imgshare.server.images import validate_image; "
        "info = validate_image(sys.argv[1]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print(info.width, info.height, int(hwm.split()[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:2] == ["6000", "6000"]
    assert int(out[2]) < 100 * 1024, f"peak RSS {out[2]} KiB: the pixels were decoded"


def test_animated_png_frame_with_rows_missing_is_rejected() -> None:
    frames = [photo(16, 12), photo(16, 12).rotate(180)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert validate_image(io.BytesIO(data)).frames == 2
    chunks = png_chunks(data)
    at = next(i for i, (kind, _) in enumerate(chunks) if kind == b"fdAT")
    fctl = next(body for kind, body in chunks[:at][::-1] if kind == b"fcTL")
    width = int.from_bytes(fctl[4:8], "big")
    rows = zlib.compress((b"\x00" + bytes(width * 3)) * 3)  # 3 rows, a complete stream
    chunks[at] = (b"fdAT", chunks[at][1][:4] + rows)
    with pytest.raises(ImageError, match="rows are missing"):
        validate_image(io.BytesIO(png_from(chunks)))


def grey_tiff(width: int, height: int, strips: list[bytes], rows_per_strip: int) -> bytes:
    """An uncompressed 8-bit grey TIFF, built by hand with the strips given."""
    entries = [(256, width), (257, height), (258, 8), (259, 1), (262, 1), (273, None)]
    entries += [(277, 1), (278, rows_per_strip), (279, None)]
    count = len(strips)
    arrays = 8 + 2 + 12 * len(entries) + 4  # strip offsets, then strip byte counts
    pixels = arrays + 8 * count
    offsets = [pixels + sum(map(len, strips[:i])) for i in range(count)]
    ifd = struct.pack("<H", len(entries))
    for tag, value in entries:
        if tag in (273, 279):
            single = offsets[0] if tag == 273 else len(strips[0])
            where = arrays if tag == 273 else arrays + 4 * count
            ifd += struct.pack("<HHII", tag, 4, count, single if count == 1 else where)
        else:
            ifd += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    ifd += struct.pack("<I", 0)
    tables = struct.pack(f"<{count}I", *offsets) + struct.pack(f"<{count}I", *map(len, strips))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + tables + b"".join(strips)


def test_tiff_with_strips_missing_is_rejected_though_it_decodes() -> None:
    """Pillow decodes the strips a TIFF lists and leaves the rows of missing ones blank."""
    strips = [bytes([row]) * 16 * 4 for row in range(0, 16, 4)]  # 4 strips of 4 rows
    assert validate_image(io.BytesIO(grey_tiff(16, 16, strips, 4))).height == 16
    half = grey_tiff(16, 16, strips[:2], 4)
    assert decodes(half)
    with pytest.raises(ImageError, match=r"pixel data for 128 of 256 pixels"):
        validate_image(io.BytesIO(half))


def test_planar_tiff_missing_a_sample_plane_is_rejected() -> None:
    """RGB stored as three planes; with only the red one, Pillow decodes green and blue
    as zeros."""

    def planar(planes: list[bytes]) -> bytes:
        count = len(planes)
        entries = [(256, 3, 1, 4), (257, 3, 1, 3), (258, 3, 3, 0), (259, 3, 1, 1)]
        entries += [(262, 3, 1, 2), (273, 4, count, 0), (277, 3, 1, 3), (278, 3, 1, 3)]
        entries += [(279, 4, count, 0), (284, 3, 1, 2)]
        tables = 8 + 2 + 12 * len(entries) + 4  # bits per sample, offsets, byte counts
        pixels = tables + 6 + 8 * count
        offsets = [pixels + 12 * i for i in range(count)]
        values = {258: tables, 273: tables + 6 if count > 1 else offsets[0]}
        values[279] = tables + 6 + 4 * count if count > 1 else 12
        ifd = struct.pack("<H", len(entries))
        for tag, kind, number, value in entries:
            value = values.get(tag, value)
            packed = (
                struct.pack("<HH", value, 0)
                if kind == 3 and number == 1
                else struct.pack("<I", value)
            )
            ifd += struct.pack("<HHI", tag, kind, number) + packed
        ifd += struct.pack("<I", 0) + struct.pack("<3H", 8, 8, 8)
        ifd += struct.pack(f"<{count}I", *offsets) + struct.pack(f"<{count}I", *[12] * count)
        return b"II*\x00" + struct.pack("<I", 8) + ifd + b"".join(planes)

    planes = [bytes([value]) * 12 for value in (10, 20, 30)]
    with Image.open(io.BytesIO(planar(planes))) as image:
        assert image.getpixel((0, 0)) == (10, 20, 30)
    assert validate_image(io.BytesIO(planar(planes))).width == 4
    assert decodes(planar(planes[:1]))
    with pytest.raises(ImageError, match="samples without pixel data"):
        validate_image(io.BytesIO(planar(planes[:1])))


def test_jpeg_scan_too_short_for_its_blocks_is_rejected_though_it_decodes() -> None:
    """libjpeg fills a scan that ends early with grey; 100 bytes cannot code the 7,200
    blocks of a 640x480 4:2:0 picture (2 bits a block at least)."""
    data = encode(photo(640, 480), "JPEG")
    start, _ = scan_bounds(data)
    short = data[: start + 100] + b"\xff\xd9"
    assert decodes(short)
    with pytest.raises(ImageError, match="scan has 100 bytes, its blocks need at least 1800"):
        validate_image(io.BytesIO(short))


def test_jpeg_cut_and_closed_passes_as_it_does_a_decode() -> None:
    # What the check cannot see (a known limit): a scan cut short, closed with an end
    # marker and still long enough for its blocks, as libjpeg conceals it.
    data = encode(photo(160, 120), "JPEG")
    start, end = scan_bounds(data)
    closed = data[: (start + end) // 2] + b"\xff\xd9"
    assert decodes(closed)
    assert validate_image(io.BytesIO(closed)).format == "JPEG"


# --- the longest side -----------------------------------------------------------------


def test_side_limit_refuses_degenerate_shapes_before_decoding() -> None:
    """Pillow keeps about 8 bytes a row besides the pixels: a 1 x 100,000,000 picture
    took 858 MB. 65,535 is JPEG's and GIF's own limit."""
    assert validate_image(io.BytesIO(zero_png(65_535, 1))).width == 65_535
    assert validate_image(io.BytesIO(zero_png(1, 65_535))).height == 65_535
    for width, height in ((65_536, 1), (1, 65_536)):
        with pytest.raises(ImageError, match=r"side of 65536 pixels .* limit is 65535"):
            validate_image(io.BytesIO(zero_png(width, height)))
    data = encode(photo(101, 10), "GIF")
    with pytest.raises(ImageError, match=r"side of 101 pixels \(101x10\), limit is 100"):
        validate_image(io.BytesIO(data), ImagePolicy(max_side=100))
