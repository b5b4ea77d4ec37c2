"""What an image file is, and its metadata taken out before it is sent.

``image_format`` names the format from the first bytes (the magic numbers of the six
formats the server accepts), so that a folder's non-images are skipped without reading
them and without importing Pillow: the command line starts in a fraction of the time.
It is a first look, not a verdict; the server decodes every image and decides.

``strip_metadata(data, "gps" | "all")`` removes location, or all metadata, on the
client, before encryption, so the HMAC both sides show is of the stripped bytes. It
never decodes or re-encodes pixels: it edits the container, byte for byte.

- ``"gps"`` removes the GPS IFD from the EXIF (its entry in IFD0 and every byte it
  pointed to, zeroed in place, so nothing else moves and offsets into the file, such
  as a multi-picture JPEG's index, stay right) and every ``*:GPS*`` property of the
  XMP (blanked with spaces, same length). It does the same for the other pictures of
  a multi-picture JPEG, which carry EXIF of their own.
- ``"all"`` removes EXIF, XMP, IPTC and Photoshop blocks, comments, text chunks,
  thumbnails and trailing data, and keeps what decides how the pixels look: the ICC
  profile, JFIF and Adobe segments of a JPEG, a PNG's colour and physical-size
  chunks, and the orientation (written back as a one-entry EXIF when it is not 1, or
  the picture would show turned).

Formats: JPEG (segments), PNG (chunks), WebP (RIFF chunks), TIFF (its own tags,
removed in place), GIF (extension blocks: comments and XMP) and BMP (which has no
metadata). Anything else, or a file whose structure does not parse, raises
``ImgshareError``: when metadata was to be removed, an image is never sent with it.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from typing import Literal

from imgshare.errors import ImgshareError

StripMode = Literal["gps", "all"]
STRIP_MODES: tuple[StripMode, ...] = ("gps", "all")

#: How many leading bytes ``image_format`` needs.
SIGNATURE_BYTES = 16


def image_format(head: bytes) -> str | None:
    """The format whose magic number ``head`` starts with (Pillow's name: "JPEG",
    "PNG", "GIF", "WEBP", "TIFF", "BMP"), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    return None


def strip_metadata(data: bytes, mode: StripMode) -> bytes:
    """``data`` without its location (``"gps"``) or all its metadata (``"all"``); see
    the module docstring. Raises ``ImgshareError`` for a format it cannot edit or a
    file whose structure does not parse."""
    if mode not in STRIP_MODES:
        raise ImgshareError(f"unknown metadata mode {mode!r}: use gps or all")
    fmt = image_format(data[:SIGNATURE_BYTES])
    try:
        if fmt == "JPEG":
            return _strip_jpeg(data, mode)
        if fmt == "PNG":
            return _strip_png(data, mode)
        if fmt == "WEBP":
            return _strip_webp(data, mode)
        if fmt == "TIFF":
            return _strip_tiff_file(data, mode)
        if fmt == "GIF":
            return _strip_gif(data, mode)
        if fmt == "BMP":
            return data
    except (_Malformed, struct.error, IndexError, ValueError, zlib.error) as exc:
        raise ImgshareError(f"cannot remove its metadata: the {fmt} structure is damaged") from exc
    raise ImgshareError("cannot remove its metadata: not a JPEG, PNG, WebP, TIFF, GIF or BMP file")


class _Malformed(Exception):
    """The container does not parse: stripping refuses (never sends it unstripped)."""


# --- EXIF and TIFF: tags removed in place -----------------------------------------------

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
INTEROP_IFD = 0xA005
ORIENTATION = 0x0112
XMP_TAG = 700
#: Tags whose value is the offset of another IFD, removed with everything in it.
_POINTERS = frozenset({GPS_IFD, EXIF_IFD, INTEROP_IFD})
#: What "all" removes from a TIFF file's own IFDs: who, when, where, with what, and the
#: EXIF, XMP, IPTC and Photoshop blocks. Structure, colour and orientation stay.
_TIFF_METADATA = frozenset(
    {
        269,  # DocumentName
        270,  # ImageDescription
        271,  # Make
        272,  # Model
        285,  # PageName
        305,  # Software
        306,  # DateTime
        315,  # Artist
        316,  # HostComputer
        XMP_TAG,
        33432,  # Copyright
        33723,  # IPTC
        34377,  # Photoshop
        37724,  # ImageSourceData
        50341,  # PrintIM
        EXIF_IFD,
        GPS_IFD,
        INTEROP_IFD,
    }
)
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_IFDS = 1024  # a chain longer than this is a loop


class _Tiff:
    """A classic TIFF structure in ``buf[base:end]`` (a TIFF file, or the EXIF block
    of a JPEG, PNG or WebP), edited in place: removing a tag rewrites its IFD without
    the entry (same length: the slack is zeroed) and zeroes the bytes it pointed to."""

    def __init__(self, buf: bytearray, base: int = 0, end: int | None = None) -> None:
        self.buf, self.base = buf, base
        self.end = len(buf) if end is None else end
        order = bytes(buf[base : base + 2])
        if order == b"II":
            self.e = "<"
        elif order == b"MM":
            self.e = ">"
        else:
            raise _Malformed("no TIFF byte order")
        if self._u16(2) != 42:
            raise _Malformed("not a classic TIFF (BigTIFF is not supported)")

    def _u16(self, offset: int) -> int:
        return int(struct.unpack_from(self.e + "H", self.buf, self._at(offset, 2))[0])

    def _u32(self, offset: int) -> int:
        return int(struct.unpack_from(self.e + "I", self.buf, self._at(offset, 4))[0])

    def _at(self, offset: int, length: int) -> int:
        start = self.base + offset
        if offset < 0 or start + length > self.end:
            raise _Malformed("an offset points outside the TIFF structure")
        return start

    def ifd_chain(self) -> Iterator[int]:
        """The offsets of IFD0, IFD1, ... (relative to the TIFF header)."""
        offset, seen = self._u32(4), set[int]()
        while offset and len(seen) < _MAX_IFDS:
            if offset in seen:
                raise _Malformed("the IFD chain loops")
            seen.add(offset)
            yield offset
            offset = self._u32(offset + 2 + 12 * self._u16(offset))

    def entries(self, ifd: int) -> list[tuple[int, int, int, bytes]]:
        """(tag, type, count, the 4-byte value field) of each entry of an IFD."""
        count = self._u16(ifd)
        start = self._at(ifd + 2, 12 * count + 4)
        found = []
        for i in range(count):
            at = start + 12 * i
            tag, kind, n = struct.unpack_from(self.e + "HHI", self.buf, at)
            found.append((tag, kind, n, bytes(self.buf[at + 8 : at + 12])))
        return found

    def value_range(self, kind: int, count: int, field: bytes) -> tuple[int, int] | None:
        """Where an entry's value lies when it does not fit in its 4-byte field."""
        size = _TYPE_SIZES.get(kind)
        if size is None:
            raise _Malformed(f"unknown TIFF field type {kind}")
        length = size * count
        if length <= 4:
            return None
        offset = int(struct.unpack(self.e + "I", field)[0])
        start = self._at(offset, length)
        return start, start + length

    def short_value(self, kind: int, field: bytes) -> int | None:
        if kind != 3:
            return None
        return int(struct.unpack_from(self.e + "H", field)[0])

    def remove(self, ifd: int, tags: frozenset[int]) -> bool:
        """Remove ``tags`` from one IFD; return whether any was there."""
        entries = self.entries(ifd)
        kept = [entry for entry in entries if entry[0] not in tags]
        if len(kept) == len(entries):
            return False
        keep_ranges = self._ranges(kept)
        for tag, kind, count, field in entries:
            if tag in tags:
                self._erase(tag, kind, count, field, keep_ranges, depth=0)
        start = self._at(ifd, 2 + 12 * len(entries) + 4)
        next_ifd = self._u32(ifd + 2 + 12 * len(entries))
        table = bytearray(struct.pack(self.e + "H", len(kept)))
        for tag, kind, count, field in kept:
            table += struct.pack(self.e + "HHI", tag, kind, count) + field
        table += struct.pack(self.e + "I", next_ifd)
        table += bytes(2 + 12 * len(entries) + 4 - len(table))  # the slack, zeroed
        self.buf[start : start + len(table)] = table
        return True

    def _ranges(self, entries: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int]]:
        ranges = []
        for _tag, kind, count, field in entries:
            where = self.value_range(kind, count, field)
            if where is not None:
                ranges.append(where)
        return ranges

    def _erase(
        self,
        tag: int,
        kind: int,
        count: int,
        field: bytes,
        keep: list[tuple[int, int]],
        depth: int,
    ) -> None:
        """Zero what an entry points to (a sub-IFD with all its values, recursively),
        except bytes a kept entry also uses."""
        if depth > 4:
            raise _Malformed("IFDs nested too deep")
        where = self.value_range(kind, count, field)
        if where is not None:
            self._zero(where, keep)
        if tag in _POINTERS and kind in (4, 13) and count == 1:
            sub = int(struct.unpack(self.e + "I", field)[0])
            inner = self.entries(sub)
            for inner_tag, inner_kind, inner_count, inner_field in inner:
                self._erase(inner_tag, inner_kind, inner_count, inner_field, keep, depth + 1)
            start = self._at(sub, 2 + 12 * len(inner) + 4)
            self._zero((start, start + 2 + 12 * len(inner) + 4), keep)

    def _zero(self, where: tuple[int, int], keep: list[tuple[int, int]]) -> None:
        start, end = where
        for kept_start, kept_end in keep:
            if kept_start < end and start < kept_end:
                return  # shared with a kept value: leave it (rare, and not location)
        self.buf[start:end] = bytes(end - start)

    def orientation(self) -> int:
        for ifd in self.ifd_chain():
            for tag, kind, _count, field in self.entries(ifd):
                if tag == ORIENTATION:
                    return self.short_value(kind, field) or 1
            return 1
        return 1


def _exif_without_gps(buf: bytearray, base: int, end: int) -> None:
    """Remove the GPS IFD of the TIFF structure at ``buf[base:end]`` in place."""
    tiff = _Tiff(buf, base, end)
    for ifd in list(tiff.ifd_chain()):
        tiff.remove(ifd, frozenset({GPS_IFD}))


def _exif_orientation(exif: bytes) -> int:
    try:
        return _Tiff(bytearray(exif)).orientation()
    except (_Malformed, struct.error):
        return 1


def _orientation_exif(orientation: int) -> bytes:
    """The smallest EXIF block (TIFF structure) that keeps an orientation."""
    return (
        b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
        + struct.pack(">HHIHH", ORIENTATION, 3, 1, orientation, 0) + struct.pack(">I", 0)
    )  # fmt: skip


def _strip_tiff_file(data: bytes, mode: StripMode) -> bytes:
    buf = bytearray(data)
    tiff = _Tiff(buf)
    tags = frozenset({GPS_IFD}) if mode == "gps" else _TIFF_METADATA
    for ifd in list(tiff.ifd_chain()):
        if mode == "gps":
            for tag, kind, count, field in tiff.entries(ifd):
                if tag == XMP_TAG:
                    where = tiff.value_range(kind, count, field)
                    if where is not None:
                        buf[where[0] : where[1]] = _xmp_without_gps(bytes(buf[where[0] : where[1]]))
        tiff.remove(ifd, tags)
    return bytes(buf)


# --- XMP: GPS properties blanked, same length ------------------------------------------

_XMP_GPS_ATTRIBUTE = re.compile(rb"""\s[\w.-]+:GPS\w*\s*=\s*(?:"[^"]*"|'[^']*')""")
_XMP_GPS_ELEMENT = re.compile(rb"<([\w.-]+:GPS\w*)\b[^>]*?(?:/>|>.*?</\1\s*>)", re.DOTALL)


def _xmp_without_gps(xmp: bytes) -> bytes:
    """Every ``prefix:GPS...`` attribute and element replaced by spaces: the packet
    keeps its length (XMP is padded with whitespace by design) and stays valid XML."""

    def blank(match: re.Match[bytes]) -> bytes:
        return b" " * (match.end() - match.start())

    return _XMP_GPS_ELEMENT.sub(blank, _XMP_GPS_ATTRIBUTE.sub(blank, xmp))


# --- JPEG --------------------------------------------------------------------------------

_EXIF_ID = b"Exif\x00\x00"
_XMP_IDS = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOS, _EOI = 0xDA, 0xD9


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment after SOI up to and including EOI; the
    entropy-coded data after an SOS is part of that SOS's segment."""
    pos = 2
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            raise _Malformed("no marker where one must be")
        while data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos + 1]
        if marker == _EOI:
            yield marker, pos, pos + 2
            return
        if marker in _STANDALONE:
            yield marker, pos, pos + 2
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise _Malformed("a segment runs past the end")
        if marker == _SOS:
            end = _scan_end(data, end)
        yield marker, pos, end
        pos = end


def _scan_end(data: bytes, pos: int) -> int:
    """The end of entropy-coded data: the next marker that is not a stuffed 0xFF00 or
    a restart marker."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise _Malformed("the scan does not end")
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1 if following == 0xFF else 2
            continue
        return pos


def _strip_jpeg(data: bytes, mode: StripMode) -> bytes:
    segments = list(_jpeg_segments(data))
    if mode == "gps":
        buf = bytearray(data)
        for marker, start, end in segments:
            _jpeg_segment_without_gps(buf, marker, start, end)
        _trailing_exif_without_gps(buf, segments[-1][2])
        return bytes(buf)
    orientation = 1
    for marker, start, end in segments:
        payload = data[start + 4 : end]
        if marker == 0xE1 and payload.startswith(_EXIF_ID):
            orientation = _exif_orientation(payload[len(_EXIF_ID) :])
            break
    kept = [
        data[start:end]
        for marker, start, end in segments
        if _jpeg_keeps(marker, data[start + 4 : end])
    ]
    # JFIF must stay the first segment; the orientation follows it. Whatever follows
    # the picture's EOI (other pictures, vendors' trailers) goes.
    first = 1 if kept and kept[0].startswith(b"\xff\xe0") else 0
    kept.insert(first, _orientation_segment(orientation))
    return data[:2] + b"".join(kept)


def _orientation_segment(orientation: int) -> bytes:
    if orientation == 1:
        return b""
    exif = _EXIF_ID + _orientation_exif(orientation)
    return b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif


def _jpeg_keeps(marker: int, payload: bytes) -> bool:
    """What "all" keeps: everything but APPn and COM, except the segments that change
    how the pixels look (JFIF, the ICC profile, Adobe's colour transform)."""
    if marker == 0xFE:
        return False
    if not 0xE0 <= marker <= 0xEF:
        return True
    if marker == 0xE0:
        return payload.startswith(b"JFIF\x00")
    if marker == 0xE2:
        return payload.startswith(b"ICC_PROFILE\x00")
    if marker == 0xEE:
        return payload.startswith(b"Adobe")
    return False


def _jpeg_segment_without_gps(buf: bytearray, marker: int, start: int, end: int) -> None:
    if marker != 0xE1:
        return
    payload_start = start + 4
    payload = bytes(buf[payload_start:end])
    if payload.startswith(_EXIF_ID):
        _exif_without_gps(buf, payload_start + len(_EXIF_ID), end)
        return
    for xmp_id in _XMP_IDS:
        if payload.startswith(xmp_id):
            buf[payload_start:end] = _xmp_without_gps(payload)
            return


_TRAILING_EXIF = re.compile(rb"\xff\xe1(..)Exif\x00\x00", re.DOTALL)


def _trailing_exif_without_gps(buf: bytearray, after: int) -> None:
    """The other pictures of a multi-picture JPEG (after the first EOI) carry EXIF of
    their own; edited in place, so the index of the first picture stays right."""
    for match in _TRAILING_EXIF.finditer(buf, after):
        (length,) = struct.unpack(">H", match.group(1))
        end = match.start() + 2 + length
        if end <= len(buf):
            _exif_without_gps(buf, match.start() + 4 + len(_EXIF_ID), end)


# --- PNG ---------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Ancillary chunks "all" keeps: how the pixels look, and animation.
_PNG_KEEP = frozenset(
    {b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD", b"pHYs", b"hIST",
     b"sPLT", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCv", b"cLLi"}
)  # fmt: skip
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise _Malformed("a chunk runs past the end")
        yield kind, data[pos + 8 : pos + 8 + length]
        pos = end
        if kind == b"IEND":
            return
    raise _Malformed("no IEND chunk")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _strip_png(data: bytes, mode: StripMode) -> bytes:
    out = bytearray(_PNG_SIGNATURE)
    orientation = 1
    for kind, body in _png_chunks(data):
        if kind == b"eXIf":
            orientation = _exif_orientation(body)
        if mode == "gps":
            if not _png_drops_for_gps(kind, body):
                out += _png_chunk(kind, _png_body_without_gps(kind, body))
            continue
        if kind[0:1].isupper() or kind in _PNG_KEEP:
            if kind == b"IDAT" and orientation != 1:
                out += _png_chunk(b"eXIf", _orientation_exif(orientation))
                orientation = 1
            out += _png_chunk(kind, body)
    return bytes(out)


def _png_body_without_gps(kind: bytes, body: bytes) -> bytes:
    if kind == b"eXIf":
        buf = bytearray(body)
        _exif_without_gps(buf, 0, len(buf))
        return bytes(buf)
    if kind == b"iTXt" and body.startswith(_PNG_XMP_KEYWORD + b"\x00"):
        head, text = _itxt_parts(body)
        flag_at = len(_PNG_XMP_KEYWORD) + 1
        if head[flag_at]:  # compressed (rare): written back uncompressed, GPS blanked
            head = head[:flag_at] + b"\x00\x00" + head[flag_at + 2 :]
            text = zlib.decompress(text)
        return head + _xmp_without_gps(text)
    return body


def _png_drops_for_gps(kind: bytes, body: bytes) -> bool:
    """ImageMagick keeps copies of the EXIF and XMP as hex text ("Raw profile type
    exif"): dropped whole, as editing them in place is not worth it."""
    return kind in (b"tEXt", b"zTXt", b"iTXt") and body.startswith(b"Raw profile type ")


def _itxt_parts(body: bytes) -> tuple[bytes, bytes]:
    """An iTXt body split before its text: keyword, flags, language, translated keyword."""
    pos = body.index(b"\x00") + 3  # keyword NUL, compression flag, method
    pos = body.index(b"\x00", pos) + 1  # language tag
    pos = body.index(b"\x00", pos) + 1  # translated keyword
    return body[:pos], body[pos:]


# --- WebP --------------------------------------------------------------------------------

_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _webp_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = min(len(data), 8 + riff_size)
    pos = 12
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        (length,) = struct.unpack_from("<I", data, pos + 4)
        stop = pos + 8 + length
        if stop > end:
            raise _Malformed("a chunk runs past the end")
        yield kind, data[pos + 8 : stop]
        pos = stop + (length & 1)


def _webp_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _strip_webp(data: bytes, mode: StripMode) -> bytes:
    chunks = list(_webp_chunks(data))
    out: list[tuple[bytes, bytes]] = []
    orientation = 1
    for kind, body in chunks:
        exif_start = len(_EXIF_ID) if body.startswith(_EXIF_ID) else 0
        if kind == b"EXIF":
            orientation = _exif_orientation(body[exif_start:])
        if mode == "gps":
            if kind == b"EXIF":
                buf = bytearray(body)
                _exif_without_gps(buf, exif_start, len(buf))
                body = bytes(buf)
            elif kind == b"XMP ":
                body = _xmp_without_gps(body)
            out.append((kind, body))
        elif kind not in (b"EXIF", b"XMP "):
            out.append((kind, body))
    if mode == "all":
        flags_off = _VP8X_XMP | (0 if orientation != 1 else _VP8X_EXIF)
        out = [
            (kind, bytes([body[0] & ~flags_off]) + body[1:]) if kind == b"VP8X" else (kind, body)
            for kind, body in out
        ]
        if orientation != 1 and out and out[0][0] == b"VP8X":
            out.append((b"EXIF", _orientation_exif(orientation)))
    payload = b"WEBP" + b"".join(_webp_chunk(kind, body) for kind, body in out)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


# --- GIF ---------------------------------------------------------------------------------

_GIF_KEEP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")


def _gif_sub_blocks(data: bytes, pos: int) -> int:
    """The position after a run of sub-blocks starting at ``pos``."""
    while True:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
        if pos > len(data):
            raise _Malformed("sub-blocks run past the end")


def _strip_gif(data: bytes, mode: StripMode) -> bytes:
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    out = bytearray(data[:pos])
    while True:
        introducer = data[pos]
        if introducer == 0x3B:  # trailer
            out += data[pos : pos + 1]
            return bytes(out)
        if introducer == 0x2C:  # an image: descriptor, local colour table, LZW data
            packed = data[pos + 9]
            start = pos
            pos += 10 + (3 * (2 << (packed & 7)) if packed & 0x80 else 0)
            pos = _gif_sub_blocks(data, pos + 1)
            out += data[start:pos]
            continue
        if introducer != 0x21:
            raise _Malformed("unknown GIF block")
        label = data[pos + 1]
        start = pos
        pos = _gif_sub_blocks(data, pos + 2)
        block = data[start:pos]
        if label == 0xFE:  # comment
            keep = mode == "gps"
        elif label == 0xFF:  # application: XMP lives here, its bytes posing as sub-blocks
            identifier = block[3:14]
            if mode == "all":
                keep = identifier in _GIF_KEEP_APPS
            else:
                keep = not (identifier == b"XMP DataXMP" and b"GPS" in block)
        else:
            keep = True
        if keep:
            out += block
