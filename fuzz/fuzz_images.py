"""Coverage-guided fuzzing of the image validator, ``imgshare.server.images.validate_image``.

Run with atheris (see fuzz/README.md); ``test_one_input`` also runs without it, and
tests/unit/test_fuzz_harnesses.py feeds it the seed corpus on every test run.

An input is the file itself, so any image can go into the corpus as it is. Each input
is validated three ways: from memory under the "error" warnings filter (as pytest
runs), from a real file (which the validator memory-maps), and from memory with
warnings ignored (as a server runs, more or less: Pillow then goes on where it would
have raised). The invariant (the same as tests/unit/test_images_fuzz.py):

- only ``ImageError`` escapes; anything else (``OSError``, ``struct.error``,
  ``MemoryError``, a warning turned into an exception...) is a crash;
- an accepted image is within the policy: an allowed format with its MIME type and
  extension, at most ``max_pixels`` a frame, ``max_frames`` frames and
  ``max_total_pixels`` in all, and ``sniff_extension`` names the same extension;
- the in-memory and the real file get the same verdict.

Not checked: that the verdict is the same whatever the warnings filter. It is not
today (a TIFF tag that Pillow skips with a warning: see test_images_fuzz.py), and the
fuzzer would stop at the first such file.

The policy is small (1 Mpx a frame) so that a header claiming a huge picture costs
little to decode: this fuzzes the parsing and the error mapping, not the cost of big
pictures. Run with ``-timeout=10`` so that a slow input is reported.
"""

from __future__ import annotations

import io
import sys
import tempfile
import warnings
from typing import BinaryIO, Literal

from imgshare.errors import ImageError
from imgshare.server.images import (
    KNOWN_FORMATS,
    ImageInfo,
    ImagePolicy,
    sniff_extension,
    validate_image,
)

POLICY = ImagePolicy(max_pixels=1 << 20, max_frames=64, max_total_pixels=1 << 22)

Verdict = ImageInfo | None  # None: rejected with ImageError
Filter = Literal["error", "ignore"]


def validate(data: bytes, real_file: bool, warning_filter: Filter) -> Verdict:
    """One validation; only ``ImageError`` is caught."""
    with warnings.catch_warnings(), tempfile.TemporaryFile() as spool:
        warnings.simplefilter(warning_filter)
        source: BinaryIO
        if real_file:
            spool.write(data)
            spool.flush()
            source = spool
        else:
            source = io.BytesIO(data)
        try:
            return validate_image(source, POLICY)
        except ImageError:
            return None


def check_accepted(info: ImageInfo, data: bytes) -> None:
    problems = []
    if info.format not in POLICY.formats:
        problems.append("format not allowed")
    if (info.mime, info.extension) != KNOWN_FORMATS.get(info.format):
        problems.append("wrong MIME type or extension")
    if not (1 <= info.width and 1 <= info.height):
        problems.append("empty picture")
    if info.width * info.height > POLICY.max_pixels:
        problems.append("too many pixels")
    if not 1 <= info.frames <= POLICY.max_frames:
        problems.append("frame count out of bounds")
    if info.frames * info.width * info.height > POLICY.max_total_pixels:
        problems.append("too many pixels in all")
    if sniff_extension(data[:16], POLICY) != info.extension:
        problems.append("sniff_extension disagrees")
    if problems:
        raise AssertionError(f"accepted {info}: {', '.join(problems)}")


def run_one(data: bytes) -> Verdict:
    """One input: every check above; returns the strict verdict."""
    strict = validate(data, real_file=False, warning_filter="error")
    if strict is not None:
        check_accepted(strict, data)
    from_file = validate(data, real_file=True, warning_filter="error")
    if from_file != strict:
        raise AssertionError(f"in memory: {strict}, from a file: {from_file}")
    lenient = validate(data, real_file=False, warning_filter="ignore")
    if lenient is not None:
        check_accepted(lenient, data)
    return strict


def test_one_input(data: bytes) -> None:
    run_one(data)


def main() -> None:
    import atheris  # type: ignore[import-untyped]  # fuzzing only: tests run without it
    from PIL import Image

    Image.init()  # load every format plugin now, so that instrument_all covers them
    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
