"""The STREAM construction that carries one image, and the image HMAC.

An image is cut into chunks of ``chunk_size`` bytes (the last one shorter) and each
chunk is sealed with AES-256-GCM under a fresh random content key:

    nonce(i)  = nonce_prefix (7) || u32(i) || u8(1 if i is the last chunk else 0)
    chunk(i)  = AES-256-GCM(content_key, nonce(i), plaintext(i), aad = upload header)

The counter stops reordering, dropping and duplication; the last flag stops
truncation and appending; the header as associated data binds every chunk to its
upload (name, size, chunk size, upload id), and the fresh key stops splicing between
uploads. ``StreamSealer`` and ``StreamOpener`` do no I/O: the caller moves the bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imgshare.errors import IntegrityError, LocalProtocolError
from imgshare.protocol import codec
from imgshare.protocol.constants import (
    DEFAULT_CHUNK_SIZE,
    HMAC_SIZE,
    KEY_SIZE,
    LABEL_IMAGE_HMAC,
    LABEL_PREFIX,
    MAX_CHUNK_SIZE,
    MAX_NAME_BYTES,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_SIZE,
    TAG_SIZE,
    UPLOAD_ID_SIZE,
    ErrorCode,
)

HEADER_VERSION = 1

Rng = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class UploadHeader:
    """What the uploader declares about one image; its encoding is the chunks' AAD.

    The name is the client's file name, kept as metadata and never used as a path.
    """

    upload_id: bytes
    nonce_prefix: bytes
    chunk_size: int
    size: int
    name: str

    def __post_init__(self) -> None:
        if len(self.upload_id) != UPLOAD_ID_SIZE:
            raise ValueError("upload_id must be 16 bytes")
        if len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError("nonce_prefix must be 7 bytes")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
        if self.size < 1:
            raise ValueError("an image has at least one byte")
        if len(self.name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"name longer than {MAX_NAME_BYTES} bytes")
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in self.name):
            raise ValueError("name has control characters")

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    def plaintext_length(self, index: int) -> int:
        """Length of chunk ``index``'s plaintext: full chunks, then the remainder."""
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.size - (self.chunk_count - 1) * self.chunk_size

    def encode(self) -> bytes:
        return b"".join(
            (
                codec.u16(HEADER_VERSION),
                self.upload_id,
                self.nonce_prefix,
                codec.u32(self.chunk_size),
                codec.u64(self.size),
                codec.var16(self.name.encode("utf-8")),
            )
        )

    @classmethod
    def parse(cls, data: bytes) -> UploadHeader:
        """Parse an encoded header; raises ``RemoteProtocolError`` (MALFORMED)."""
        reader = codec.Reader(data, "upload header")
        if reader.u16() != HEADER_VERSION:
            raise codec.malformed("upload header version")
        upload_id = reader.fixed(UPLOAD_ID_SIZE)
        prefix = reader.fixed(NONCE_PREFIX_SIZE)
        chunk_size = reader.u32()
        size = reader.u64()
        name = reader.text(reader.var16(), MAX_NAME_BYTES)
        reader.end()
        try:
            return cls(upload_id, prefix, chunk_size, size, name)
        except ValueError as exc:
            raise codec.malformed("upload header") from exc


def new_upload(
    name: str, size: int, rng: Rng, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[UploadHeader, bytes]:
    """Draw a fresh upload id, nonce prefix and content key for one image."""
    header = UploadHeader(rng(UPLOAD_ID_SIZE), rng(NONCE_PREFIX_SIZE), chunk_size, size, name)
    return header, rng(KEY_SIZE)


def image_hmac_key(content_key: bytes) -> bytes:
    """The HMAC key comes from the content key, so every holder of the image can check it."""
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=LABEL_PREFIX + LABEL_IMAGE_HMAC).derive(
        content_key
    )


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + codec.u32(index) + (b"\x01" if last else b"\x00")


class _StreamState:
    """Shared bookkeeping: position in the stream and the running HMAC."""

    def __init__(self, header: UploadHeader, content_key: bytes) -> None:
        if len(content_key) != KEY_SIZE:
            raise ValueError("content key must be 32 bytes")
        self.header = header
        self._aad = header.encode()
        self._aead = AESGCM(content_key)
        self._mac = hmac.new(image_hmac_key(content_key), digestmod="sha256")
        self.next_index = 0

    @property
    def done(self) -> bool:
        return self.next_index == self.header.chunk_count

    def _position(self) -> tuple[int, bool]:
        index = self.next_index
        return index, index == self.header.chunk_count - 1


class StreamSealer(_StreamState):
    """Seals an image chunk by chunk, in order, and computes its HMAC."""

    def seal(
        self, plaintext: bytes | bytearray | memoryview, into: memoryview | None = None
    ) -> bytes | memoryview:
        """Seal the next chunk; raises ``LocalProtocolError`` on a wrong length or extra chunk.

        With ``into`` (at least ``len(plaintext) + TAG_SIZE`` bytes), the sealed chunk
        is written there and a view of it returned: a sender that reuses one buffer
        touches no fresh memory per chunk. A smaller one raises ``ValueError`` and
        changes nothing.
        """
        if self.done:
            raise LocalProtocolError("all chunks of this upload are already sealed")
        index, last = self._position()
        if len(plaintext) != self.header.plaintext_length(index):
            raise LocalProtocolError(
                f"chunk {index} must be {self.header.plaintext_length(index)} bytes"
            )
        nonce = chunk_nonce(self.header.nonce_prefix, index, last)
        sealed: bytes | memoryview
        if into is None:
            sealed = self._aead.encrypt(nonce, plaintext, self._aad)
        else:  # ValueError if too small, before anything has moved on
            sealed = into[: len(plaintext) + TAG_SIZE]
            self._aead.encrypt_into(nonce, plaintext, self._aad, sealed)
        self._mac.update(plaintext)
        self.next_index += 1
        return sealed

    def skip(self, plaintext: bytes | bytearray | memoryview) -> None:
        """Count the next chunk into the HMAC without sealing it: a resumed upload
        (spec 7.10) passes over the chunks the server holds already. Raises
        ``LocalProtocolError`` on a wrong length or an extra chunk."""
        if self.done:
            raise LocalProtocolError("all chunks of this upload are already sealed")
        index, _ = self._position()
        if len(plaintext) != self.header.plaintext_length(index):
            raise LocalProtocolError(
                f"chunk {index} must be {self.header.plaintext_length(index)} bytes"
            )
        self._mac.update(plaintext)
        self.next_index += 1

    def finish(self) -> bytes:
        """The image HMAC, once every chunk is sealed."""
        if not self.done:
            raise LocalProtocolError("upload has chunks left to seal")
        return self._mac.digest()


class StreamOpener(_StreamState):
    """Opens an image chunk by chunk, in order, checking every tag and finally the HMAC."""

    def open(
        self, ciphertext: bytes | bytearray | memoryview, into: memoryview | None = None
    ) -> bytes | memoryview:
        """Open the next chunk; raises ``IntegrityError`` for any tampering, opaquely.

        With ``into`` (at least the chunk's plaintext length), the plaintext is written
        there and a view of it returned; after a failure its content is undefined.
        """
        if self.done:
            raise IntegrityError("stream integrity check failed", ErrorCode.INTEGRITY_FAILED)
        index, last = self._position()
        if len(ciphertext) != self.header.plaintext_length(index) + TAG_SIZE:
            raise IntegrityError("stream integrity check failed", ErrorCode.INTEGRITY_FAILED)
        nonce = chunk_nonce(self.header.nonce_prefix, index, last)
        try:
            if into is None:
                plaintext: bytes | memoryview = self._aead.decrypt(nonce, ciphertext, self._aad)
            else:
                plaintext = into[: len(ciphertext) - TAG_SIZE]
                self._aead.decrypt_into(nonce, ciphertext, self._aad, plaintext)
        except InvalidTag as exc:
            raise IntegrityError(
                "stream integrity check failed", ErrorCode.INTEGRITY_FAILED
            ) from exc
        self._mac.update(plaintext)
        self.next_index += 1
        return plaintext

    def digest(self) -> bytes:
        """The HMAC of what was opened so far (the whole image once ``done``)."""
        return self._mac.digest()

    def finish(self, expected_hmac: bytes) -> bytes:
        """Check that the stream is complete and its HMAC matches; return the HMAC."""
        actual = self._mac.digest()
        if (
            not self.done
            or len(expected_hmac) != HMAC_SIZE
            or not hmac.compare_digest(actual, expected_hmac)
        ):
            raise IntegrityError("image HMAC does not match", ErrorCode.INTEGRITY_FAILED)
        return actual


def image_hmac(content_key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of a whole image in memory (tests, vectors, small images)."""
    return hmac.new(image_hmac_key(content_key), data, hashlib.sha256).digest()
