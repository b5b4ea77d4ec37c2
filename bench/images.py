"""Test images made by the harness with Pillow: random-noise pixels that do not compress.

- ``make_tiff``: one uncompressed RGB TIFF, ``side`` x ``side`` (8192: ~201 MB).
- ``make_jpegs``: a few 12-megapixel (4000 x 3000) noise JPEGs of about 4 MB each;
  the quality is searched so that noise lands near the target size (about 38).
  The photo clients share them round-robin: the server cannot tell, nor can nginx.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

PHOTO_SIZE = (4000, 3000)
PHOTO_TARGET_BYTES = 4_000_000


def make_tiff(path: Path, side: int) -> int:
    """Write an uncompressed ``side`` x ``side`` RGB noise TIFF; return its size."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    image.save(path, format="TIFF")  # no compression: Pillow's default for TIFF
    return path.stat().st_size


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_jpegs(folder: Path, count: int, target: int = PHOTO_TARGET_BYTES) -> list[Path]:
    """Write ``count`` different 12 Mpx noise JPEGs of about ``target`` bytes."""
    paths = []
    quality = 0
    for index in range(count):
        width, height = PHOTO_SIZE
        image = Image.frombytes("RGB", PHOTO_SIZE, os.urandom(width * height * 3))
        if not quality:
            low, high = 5, 95  # bisect once; noise of the same size behaves the same
            while low < high:
                middle = (low + high + 1) // 2
                if len(_jpeg(image, middle)) <= target:
                    low = middle
                else:
                    high = middle - 1
            quality = low
        path = folder / f"photo-{index:02d}.jpg"
        path.write_bytes(_jpeg(image, quality))
        paths.append(path)
    return paths
