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
from imgshare.images import (
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
        "import sys; from imgshare.images import validate_image; "
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
