"""The server's storage key: it wraps every image's content key at rest.

The sealed object on disk is the ciphertext exactly as the client sent it; what
protects it at rest is the content key, re-wrapped under this storage key and kept
in the catalog row. Deleting the row destroys the only copy of the wrapped key
(crypto-shredding).

Wrapped key format (61 bytes)::

    key_id (1) = 1 || nonce (12) || AES-256-GCM(content key (32)) + tag (16)

with associated data ``b"imgshare storage key wrap v1" || key_id || image_id``, so a
wrapped key only opens for the image it was made for. ``key_id`` names the storage
key generation; only 1 exists today, a key ring can come with rotation.

The key bytes never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imgshare.errors import ConfigError, StorageError
from imgshare.store.blobs import fsync_dir

log = logging.getLogger(__name__)

KEY_SIZE = 32
CONTENT_KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
WRAPPED_KEY_SIZE = 1 + NONCE_SIZE + CONTENT_KEY_SIZE + TAG_SIZE  # 61
CURRENT_KEY_ID = 1
_AD_LABEL = b"imgshare storage key wrap v1"


class StorageKey:
    """A 32-byte AES-256-GCM key that wraps content keys; thread-safe (immutable)."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes, key_id: int = CURRENT_KEY_ID) -> None:
        """Raise ``ConfigError`` if ``key`` is not 32 bytes or ``key_id`` not one byte."""
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ConfigError(f"a storage key must be exactly {KEY_SIZE} bytes")
        if not 0 < key_id < 256:
            raise ConfigError("a storage key id must be between 1 and 255")
        self._aead = AESGCM(key)
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"StorageKey(key_id={self.key_id}, key=<hidden>)"

    __str__ = __repr__

    def wrap(self, content_key: bytes, image_id: bytes) -> bytes:
        """Wrap ``content_key`` for ``image_id`` under a fresh random nonce (61 bytes)."""
        return self._wrap(os.urandom(NONCE_SIZE), content_key, image_id)

    def _wrap(self, nonce: bytes, content_key: bytes, image_id: bytes) -> bytes:
        # Deterministic core of wrap() so that test vectors can pin every byte.
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        if len(content_key) != CONTENT_KEY_SIZE:
            raise ValueError(f"content key must be {CONTENT_KEY_SIZE} bytes")
        _check_image_id(image_id)
        sealed = self._aead.encrypt(nonce, content_key, self._ad(image_id))
        return bytes([self.key_id]) + nonce + sealed

    def unwrap(self, wrapped: bytes, image_id: bytes) -> bytes:
        """Return the content key; raise ``StorageError`` (opaque) if it does not verify."""
        _check_image_id(image_id)
        if len(wrapped) != WRAPPED_KEY_SIZE or wrapped[0] != self.key_id:
            raise StorageError("stored key does not verify")
        nonce, sealed = wrapped[1 : 1 + NONCE_SIZE], wrapped[1 + NONCE_SIZE :]
        try:
            return self._aead.decrypt(nonce, sealed, self._ad(image_id))
        except InvalidTag as exc:
            raise StorageError("stored key does not verify") from exc

    def _ad(self, image_id: bytes) -> bytes:
        # The label and key id come first with fixed lengths, so image_id needs no
        # length prefix to keep the encoding unambiguous.
        return _AD_LABEL + bytes([self.key_id]) + image_id


def _check_image_id(image_id: bytes) -> None:
    if not isinstance(image_id, bytes) or not 0 < len(image_id) <= 64:
        raise ValueError("image id must be 1 to 64 bytes")


def generate_storage_key() -> StorageKey:
    """A fresh random storage key (for tests and for key files)."""
    return StorageKey(secrets.token_bytes(KEY_SIZE))


def storage_key_from_env(value: str) -> StorageKey:
    """Parse ``IMGSHARE_STORAGE_KEY``: base64 (standard or URL-safe) of 32 bytes.

    Raises ``ConfigError``, which never quotes the value.
    """
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("IMGSHARE_STORAGE_KEY is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"IMGSHARE_STORAGE_KEY must be base64 of exactly {KEY_SIZE} bytes")
    return StorageKey(key)


def load_or_create_storage_key(path: Path) -> StorageKey:
    """Load the key file at ``path``, creating it (mode 0600, fsynced) if it is missing.

    Creation is atomic: the key is written to a 0600 temp file that is then hard-linked
    to ``path``, so a concurrent starter or a crash never sees a short key file, and an
    existing key is never overwritten. The parent folder must exist.

    Raises ``ConfigError`` if the file is not a regular file, is readable by group or
    others, or has the wrong length; ``StorageError`` if it cannot be read or written.
    """
    path = Path(path)
    try:
        return _load_key_file(path)
    except FileNotFoundError:
        pass
    _create_key_file(path)
    return _load_key_file(path)


def _load_key_file(path: Path) -> StorageKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot open storage key file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"storage key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"storage key file {path} is readable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        data = os.read(fd, KEY_SIZE + 1)
    except OSError as exc:
        raise StorageError(f"cannot read storage key file {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        raise ConfigError(f"storage key file {path} must hold exactly {KEY_SIZE} bytes")
    return StorageKey(data)


def _create_key_file(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        # Mode 0600 from the first instant: O_EXCL creation with the mode given here
        # (the umask can only take bits away).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, secrets.token_bytes(KEY_SIZE)) != KEY_SIZE:
                raise StorageError(f"short write creating storage key file {path}")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another starter won the race: keep theirs
            log.info("created storage key file %s", path)
        except FileExistsError:
            pass
        fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(f"cannot create storage key file {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
