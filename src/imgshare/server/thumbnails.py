"""Thumbnails: a small picture of each stored image, sealed like the image.

What a thumbnail is (docs/protocol.md, 7.11): the image's first frame, turned as its
EXIF orientation says, scaled to at most ``MAX_SIDE`` pixels on its long side, saved
as JPEG (or PNG when it has transparency) with no metadata at all: no EXIF, no GPS,
no ICC profile, no comments. It is kept sealed (AES-256-GCM) under a key derived
from the image's content key, so the only key that opens it is the wrapped content
key in the image's row: deleting the row shreds the thumbnail too, and the image's
deletion removes its object.

When it is made (docs/design.md, decision 19). A 4 MB JPEG photo costs about 40 ms of
CPU for its thumbnail even decoded at 1/8 scale (libjpeg still Huffman-decodes every
block), twice what storing the photo costs the server; made inline it would halve
the photo throughput. So uploads do not wait for it: each worker process runs one
``ThumbnailMaker`` thread, at the lowest CPU priority (nice 19), that works only
while its process receives no upload, and makes thumbnails of images that have none,
oldest first. Makers in several processes or nodes claim images through the catalog
(``Catalog.claim_thumbnail``), so each image is made once; a claim whose maker died
lapses after ``CLAIM_SECONDS``. A THUMBNAIL request for an image whose thumbnail is
not made yet makes it on the spot.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from PIL import Image, ImageOps

from imgshare.errors import ImageError, IntegrityError, StorageError
from imgshare.protocol import StreamOpener, codec
from imgshare.protocol.constants import (
    KEY_SIZE,
    LABEL_PREFIX,
    LABEL_THUMBNAIL_KEY,
    MAX_THUMBNAIL_BYTES,
    TAG_SIZE,
    ErrorCode,
)
from imgshare.server import images
from imgshare.store import ImageRecord, ImageStore
from imgshare.store.blobs import BlobNotFound
from imgshare.store.catalog import now_ms
from imgshare.store.thumbnails import NONE, PENDING, STORED

log = logging.getLogger(__name__)

#: The long side of a thumbnail, in pixels.
MAX_SIDE = 256
JPEG_QUALITY = 80
#: A maker holds an image this long; one that died lets go when it lapses (s).
CLAIM_SECONDS = 300.0
#: How often an idle maker looks for work (s).
POLL_INTERVAL = 1.0
#: Images up to this size are decrypted into memory for the thumbnail, larger ones
#: into a scratch file.
IN_MEMORY_UP_TO = 32 * 1024 * 1024
_NONCE_SIZE = 12
_AAD = LABEL_PREFIX + b"thumbnail "


@dataclass(frozen=True, slots=True)
class Thumb:
    """A thumbnail in the clear: what THUMBNAIL_DATA carries."""

    data: bytes = field(repr=False)
    media_type: str
    width: int
    height: int

    def encode(self) -> bytes:
        return (
            codec.u16(self.width)
            + codec.u16(self.height)
            + codec.var8(self.media_type.encode("ascii"))
            + self.data
        )

    @classmethod
    def parse(cls, data: bytes) -> Thumb:
        reader = codec.Reader(data, "thumbnail")
        width, height = reader.u16(), reader.u16()
        media_type = reader.var8().decode("ascii", "replace")
        return cls(reader.rest(), media_type, width, height)


def thumbnail_key(content_key: bytes) -> bytes:
    """The key that seals an image's thumbnail: from its content key, under a label of
    its own (it never encrypts anything else)."""
    return HKDF(
        hashes.SHA256(), KEY_SIZE, salt=None, info=LABEL_PREFIX + LABEL_THUMBNAIL_KEY
    ).derive(content_key)


def seal(content_key: bytes, image_id: bytes, thumb: Thumb) -> bytes:
    """``nonce (12) || AES-256-GCM(thumbnail key, nonce, thumb, aad = label || id)``."""
    nonce = os.urandom(_NONCE_SIZE)
    return nonce + AESGCM(thumbnail_key(content_key)).encrypt(
        nonce, thumb.encode(), _AAD + image_id
    )


def unseal(content_key: bytes, image_id: bytes, sealed: bytes) -> Thumb:
    """Open a sealed thumbnail; raises ``IntegrityError`` if it does not verify."""
    try:
        plain = AESGCM(thumbnail_key(content_key)).decrypt(
            sealed[:_NONCE_SIZE], sealed[_NONCE_SIZE:], _AAD + image_id
        )
        return Thumb.parse(plain)
    except (InvalidTag, ValueError) as exc:
        raise IntegrityError(
            f"the thumbnail of {image_id.hex()} does not verify", ErrorCode.INTEGRITY_FAILED
        ) from exc


def make_thumbnail(source: BinaryIO, policy: images.ImagePolicy) -> Thumb:
    """The thumbnail of an image that passed ``validate_image``: its first frame,
    oriented, at most ``MAX_SIDE`` px, no metadata. Raises ``ImageError``."""
    with images.opened_image(source, policy) as im:
        width, height = im.size
        images.check_pixels(width, height, policy)
        if im.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding: 1/64 of the pixels.
            im.draft("RGB" if im.mode not in ("L", "CMYK") else im.mode, (MAX_SIDE, MAX_SIDE))
        scaled_w, scaled_h = im.size
        with images.decode_memory(policy, scaled_w * scaled_h, str(im.format)):
            im.load()
            picture = ImageOps.exif_transpose(im) or im
            picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return _encode(picture)


def _bare(picture: Image.Image, mode: str) -> Image.Image:
    """The pixels alone: Pillow carries a comment, an ICC profile and more over from
    ``info`` into what it saves."""
    converted = picture.convert(mode)
    converted.info = {}
    return converted


def _encode(picture: Image.Image) -> Thumb:
    transparent = picture.mode in ("RGBA", "LA", "PA") or (
        picture.mode == "P" and "transparency" in picture.info
    )
    out = io.BytesIO()
    if transparent:
        _bare(picture, "RGBA").save(out, "PNG", optimize=True)
        media_type = "image/png"
    else:
        _bare(picture, "RGB").save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        media_type = "image/jpeg"
    data = out.getvalue()
    if len(data) > MAX_THUMBNAIL_BYTES:  # a noisy PNG: a JPEG is always far smaller
        out = io.BytesIO()
        _bare(picture, "RGB").save(out, "JPEG", quality=JPEG_QUALITY)
        data, media_type = out.getvalue(), "image/jpeg"
    width, height = picture.size
    return Thumb(data, media_type, width, height)


class Thumbnails:
    """Makes, stores and reads thumbnails (thread-safe)."""

    def __init__(
        self,
        store: ImageStore,
        policy: images.ImagePolicy,
        validations: threading.BoundedSemaphore,
    ) -> None:
        self.store = store
        self.policy = policy
        self._validations = validations

    @property
    def enabled(self) -> bool:
        return self.store.thumbs is not None

    def get(self, record: ImageRecord) -> Thumb | None:
        """The image's thumbnail, made now if it is not yet; None if it has none.
        Raises ``StorageError``."""
        thumbs = self.store.thumbs
        state = self.store.catalog.thumbnail_state(record.id)
        if thumbs is None or state is None or state == NONE:
            return None
        image_id = bytes.fromhex(record.id)
        if state == STORED:
            try:
                with thumbs.open(record.id) as stored:
                    sealed = stored.read()
                return unseal(self._content_key(record), image_id, sealed)
            except (BlobNotFound, IntegrityError) as exc:
                log.warning("thumbnail of %s unreadable, made again: %s", record.id, exc)
        return self.make(record)

    def _content_key(self, record: ImageRecord) -> bytes:
        return self.store.key.unwrap(record.wrapped_key, bytes.fromhex(record.id))

    def make(self, record: ImageRecord) -> Thumb | None:
        """Make and store the image's thumbnail; None (and the image marked as having
        none) if its picture cannot be read. Raises ``StorageError``."""
        thumbs = self.store.thumbs
        if thumbs is None:
            return None
        try:
            with self._plaintext(record) as plain, self._validations:
                thumb = make_thumbnail(plain, self.policy)
        except (ImageError, IntegrityError) as exc:
            log.warning("no thumbnail for image %s: %s", record.id, exc)
            self.store.catalog.set_thumbnail(record.id, NONE)
            return None
        sealed = seal(self._content_key(record), bytes.fromhex(record.id), thumb)
        with thumbs.create(record.id) as writer:
            writer.write(sealed)
            writer.commit()
        if not self.store.catalog.set_thumbnail(record.id, STORED):
            thumbs.delete(record.id)  # the image was deleted meanwhile
            return None
        return thumb

    @contextlib.contextmanager
    def _plaintext(self, record: ImageRecord) -> Iterator[BinaryIO]:
        """The image in the clear, decrypted from its sealed object (every tag and the
        HMAC checked). Raises ``IntegrityError``, ``StorageError``."""
        opened = self.store.open(record)
        header = opened.header
        opener = StreamOpener(header, opened.content_key)
        out: BinaryIO = (
            io.BytesIO() if header.size <= IN_MEMORY_UP_TO else self.store.blobs.scratch_file()
        )
        try:
            with opened.sealed as stored:
                for index in range(header.chunk_count):
                    want = header.plaintext_length(index) + TAG_SIZE
                    chunk = stored.read(want)
                    if len(chunk) != want:
                        raise StorageError(f"stored object {record.id} is truncated")
                    out.write(opener.open(chunk))
            opener.finish(record.hmac)
            out.seek(0)
            yield out
        finally:
            out.close()

    def pending(self) -> int:
        return self.store.catalog.pending_thumbnails()


class ThumbnailMaker:
    """One thread per process that makes the thumbnails nobody has made yet, at the
    lowest priority and only while ``idle()`` says so (see the module docstring)."""

    def __init__(self, thumbnails: Thumbnails, idle: Callable[[], bool]) -> None:
        self.thumbnails = thumbnails
        self._idle = idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thumbnails", daemon=True)
        self.made = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # Linux: nice applies to this thread alone
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        wait = POLL_INTERVAL
        while not self._stop.wait(wait):
            wait = POLL_INTERVAL
            if not self._idle():
                continue
            try:
                if self.make_one():
                    wait = 0.0  # more may wait: go on while idle
            except StorageError as exc:
                log.warning("thumbnail maker: %s", exc)
            except Exception:  # a bug must not end the thread for good
                log.exception("thumbnail maker failed")

    def make_one(self) -> bool:
        """Claim one image without a thumbnail and make it; False if there was none."""
        now = now_ms()
        catalog = self.thumbnails.store.catalog
        record = catalog.claim_thumbnail(now, now + int(CLAIM_SECONDS * 1000))
        if record is None:
            return False
        if self.thumbnails.make(record) is not None:
            self.made += 1
        return True


__all__ = [
    "MAX_SIDE",
    "NONE",
    "PENDING",
    "STORED",
    "Thumb",
    "ThumbnailMaker",
    "Thumbnails",
    "make_thumbnail",
    "seal",
    "thumbnail_key",
    "unseal",
]
