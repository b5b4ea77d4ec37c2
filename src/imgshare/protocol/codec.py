"""Bounds-checked reading and writing of the wire's integer and length-prefixed fields.

Every parse goes through ``Reader``, so every length is checked before slicing and every
failure is one ``RemoteProtocolError`` with code MALFORMED, never ``struct.error`` or
``IndexError``.
"""

from __future__ import annotations

import struct

from imgshare.errors import RemoteProtocolError
from imgshare.protocol.constants import ErrorCode

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def malformed(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed {what}", ErrorCode.MALFORMED)


def u8(value: int) -> bytes:
    return bytes((value,))


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def var8(data: bytes) -> bytes:
    if len(data) > 0xFF:
        raise ValueError("field longer than 255 bytes")
    return u8(len(data)) + data


def var16(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("field longer than 65535 bytes")
    return u16(len(data)) + data


class Reader:
    """Reads fields from one message body; raises MALFORMED on any overrun or leftover."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def fixed(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise malformed(self._what)
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self.fixed(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.fixed(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.fixed(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.fixed(8))[0])

    def var8(self) -> bytes:
        return self.fixed(self.u8())

    def var16(self) -> bytes:
        return self.fixed(self.u16())

    def text(self, raw: bytes, max_bytes: int) -> str:
        """Decode a UTF-8 field; over-long or invalid text is MALFORMED / TOO_LARGE."""
        if len(raw) > max_bytes:
            raise RemoteProtocolError(f"{self._what}: text field too long", ErrorCode.TOO_LARGE)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise malformed(self._what) from exc

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def end(self) -> None:
        if self._pos != len(self._data):
            raise malformed(self._what)
