"""Decrypted inbox copies in an S3 bucket, for several nodes: ``S3Inbox``.

With several nodes the inbox cannot stay on one node's disk (the node that took the
upload is not the one whose disk an operator looks at, nor the one that deletes it).
``inbox_location = "s3://bucket/prefix"`` puts the copies in a bucket::

    <prefix>/inbox/<username>/<UTC time>-<image id>.<ext>

the same names as the inbox folder (``imgshare.store.copies``), made by the server
and checked here again, never taken from client input.

A copy streams up as the image arrives (a multipart upload, as the sealed object's:
``S3BlobWriter``, at most one part in memory) and, for the image check, into a
scratch file on this node (anonymous, mode 0600, gone when closed): the check reads
the scratch file, and the copy becomes visible only when the upload commits. A crash
leaves at most an unfinished multipart upload, which the sweep aborts by age.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

from imgshare.errors import StorageError
from imgshare.store.copies import INBOX_NAME_RE, USERNAME_RE, check_username, inbox_filename
from imgshare.store.s3 import S3BlobStore, S3BlobWriter


class S3Inbox:
    """Inbox copies under ``<prefix>/inbox/`` of a bucket; thread-safe."""

    def __init__(self, store: S3BlobStore, prefix: str) -> None:
        """``store`` reaches the bucket (its own objects area is not touched here);
        ``prefix`` is the configured key prefix ("" for the bucket's top)."""
        self.store = store
        self.prefix = f"{prefix}/inbox/" if prefix else "inbox/"

    def __repr__(self) -> str:
        return f"S3Inbox('s3://{self.store.config.bucket}/{self.prefix}')"

    def key_of(self, username: str, filename: str) -> str:
        """The key of a user's copy. Raises ``ValueError`` for a malformed name."""
        check_username(username)
        if not isinstance(filename, str) or not INBOX_NAME_RE.fullmatch(filename):
            raise ValueError("invalid inbox file name")
        return f"{self.prefix}{username}/{filename}"

    def check(self) -> None:
        """One request that proves the bucket answers. Raises ``StorageError``."""
        self.store.check()

    # -- PlainCopies ------------------------------------------------------------------

    def create(self, owner: str, image_id: str, extension: str) -> S3InboxCopy:
        name = inbox_filename(image_id, extension)
        key = self.key_of(owner, name)
        scratch = self.store.scratch_file()
        return S3InboxCopy(name, self.store.writer(key, f"inbox copy {owner}/{name}"), scratch)

    def create_file(self, owner: str, name: str) -> S3BlobWriter:
        """A writer for the copy named ``name`` (``imgshare migrate`` keeps the names
        the catalog has)."""
        return self.store.writer(self.key_of(owner, name), f"inbox copy {owner}/{name}")

    def size(self, owner: str, name: str) -> int | None:
        """The copy's size, or None if there is none. Raises ``StorageError``."""
        return self.store.key_size(self.key_of(owner, name), f"inbox copy {owner}/{name}")

    def delete(self, owner: str, name: str) -> bool:
        """Remove a copy; return whether it existed. Raises ``StorageError``."""
        return self.store.delete_key(self.key_of(owner, name), f"inbox copy {owner}/{name}")

    def remove_empty_folder(self, owner: str) -> bool:
        """A bucket has no folders: nothing to remove."""
        check_username(owner)
        return False

    # -- what the sweep needs -----------------------------------------------------------

    def iter_files(self, before: float | None = None) -> Iterator[tuple[str, str]]:
        """``(username, filename)`` of every copy the server could have written (last
        modified before the unix time ``before``, if given); other keys are ignored."""
        for key in self.store.list_keys(self.prefix, before):
            username, slash, filename = key[len(self.prefix) :].partition("/")
            if slash and USERNAME_RE.fullmatch(username) and INBOX_NAME_RE.fullmatch(filename):
                yield username, filename

    def sweep_temp(self, before: float | None = None, *, pid: int | None = None) -> int:
        """Abort unfinished uploads of copies that began before ``before`` (see
        ``S3BlobStore.sweep_temp``: ``pid`` alone aborts nothing)."""
        if pid is not None and before is None:
            return 0
        return self.store.abort_uploads(self.prefix, before)


class S3InboxCopy:
    """One copy on its way: a multipart upload, and a scratch file for the check."""

    def __init__(self, name: str, writer: S3BlobWriter, scratch: BinaryIO) -> None:
        self.name: str | None = name
        self._writer = writer
        self._scratch = scratch

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._scratch.write(data)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot write a scratch file: {exc.strerror or exc}") from exc
        self._writer.write(data)

    def reopen(self) -> BinaryIO:
        """The plaintext so far, from the scratch file (the caller closes it)."""
        self._scratch.flush()
        again = os.fdopen(os.dup(self._scratch.fileno()), "rb")
        again.seek(0)
        return again

    def commit(self) -> None:
        """Make the copy visible (complete its upload). Raises ``StorageError``."""
        try:
            self._writer.commit()
        finally:
            self._scratch.close()

    def abort(self) -> None:
        self._writer.abort()
        with contextlib.suppress(OSError):
            self._scratch.close()
