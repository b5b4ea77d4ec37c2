"""Decrypted copies of stored images, behind one interface: the inbox, or a scratch file.

An upload writes its plaintext twice over: sealed into the blob store, and as a
decrypted copy that the image check reads and, unless the inbox is turned off, an
operator finds in ``INBOX/<user>/``. ``PlainCopies`` is what the store's upload
transaction codes against:

* ``Inbox``: the copy is an ``AtomicFile`` that appears as
  ``INBOX/<user>/<UTC time>-<image id>.<ext>`` when the upload commits;
* ``ScratchCopies`` (inbox turned off): an anonymous file in the blob store's temp
  folder, gone when closed, so the image can still be checked.

No symlink below the inbox folder is followed (see ``imgshare.store.blobs``).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from imgshare.protocol.constants import USERNAME_PATTERN
from imgshare.store.blobs import (
    AtomicFile,
    BlobStore,
    init_dirs,
    list_names,
    opened_folder,
    storage_error,
    sweep_temp_dir,
    unlink_in,
)

# The user name rule (imgshare.protocol.constants), checked again here because a user
# name becomes a folder name.
USERNAME_RE = re.compile(USERNAME_PATTERN)
INBOX_NAME_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{32}\.[a-z0-9]{1,5}")


class PlainCopy(Protocol):
    """One image's decrypted copy while it is written; a context manager that aborts.

    ``name`` is what the catalog records (the inbox file name), or None when the copy
    disappears with the upload.
    """

    name: str | None

    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def reopen(self) -> BinaryIO: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class PlainCopies(Protocol):
    """Where decrypted copies go. Implementations are thread-safe."""

    def create(self, owner: str, image_id: str, extension: str) -> PlainCopy: ...
    def delete(self, owner: str, name: str) -> bool: ...
    def remove_empty_folder(self, owner: str) -> bool: ...


class InboxArea(Protocol):
    """Where inbox copies live, as deletions and the sweep see it: the inbox folder
    (``Inbox``) or a bucket prefix (``imgshare.store.s3inbox.S3Inbox``)."""

    def delete(self, owner: str, name: str) -> bool: ...
    def remove_empty_folder(self, owner: str) -> bool: ...
    def iter_files(self, before: float | None = None) -> Iterator[tuple[str, str]]: ...
    def sweep_temp(self, before: float | None = None, *, pid: int | None = None) -> int: ...


def inbox_filename(image_id: str, extension: str, when: datetime | None = None) -> str:
    """The server-made inbox name ``<UTC yyyymmddTHHMMSSZ>-<image id>.<ext>``.

    Raises ``ValueError`` if the result would not match ``INBOX_NAME_RE``.
    """
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{image_id}.{extension}"
    if not INBOX_NAME_RE.fullmatch(name):
        raise ValueError("bad image id or extension for an inbox file name")
    return name


class Inbox:
    """Decrypted copies of received images, one folder per user; thread-safe."""

    def __init__(self, root: Path) -> None:
        """Create ``root`` and its temp folder if needed; raise ``StorageError``."""
        self.root = Path(root)
        # ".tmp" can never be a user folder: user names start with [a-z0-9].
        self.tmp_dir = self.root / ".tmp"
        init_dirs(self.root, (".tmp",))

    def __repr__(self) -> str:
        return f"Inbox({str(self.root)!r})"

    def path_of(self, username: str, filename: str) -> Path:
        """Where a user's inbox file lives. Raises ``ValueError`` for a malformed name."""
        check_username(username)
        if not isinstance(filename, str) or not INBOX_NAME_RE.fullmatch(filename):
            raise ValueError("invalid inbox file name")
        return self.root / username / filename

    def create_file(self, username: str, filename: str) -> AtomicFile:
        """A writer for a new inbox file, invisible until committed."""
        return AtomicFile(self.path_of(username, filename), self.tmp_dir, root=self.root)

    def create(self, owner: str, image_id: str, extension: str) -> InboxCopy:
        """The copy of image ``image_id`` in ``owner``'s inbox, named by the server."""
        name = inbox_filename(image_id, extension)
        return InboxCopy(name, self.create_file(owner, name))

    def delete(self, username: str, filename: str) -> bool:
        """Remove an inbox file; return whether it existed. Raises ``StorageError``."""
        self.path_of(username, filename)
        return unlink_in(self.root, (username,), filename)

    def remove_empty_folder(self, username: str) -> bool:
        """Remove the user's folder if it is empty; return whether it was removed.

        Safe against a concurrent upload: a folder that holds a file stays, and a
        writer that finds its folder gone makes it again. Raises ``StorageError``.
        """
        check_username(username)
        try:
            with opened_folder(self.root, ()) as root:
                os.rmdir(username, dir_fd=root)
                os.fsync(root)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                return False
            raise storage_error("remove folder", self.root / username, exc) from exc
        return True

    def iter_files(self, before: float | None = None) -> Iterator[tuple[str, str]]:
        """``(username, filename)`` of every file the server could have written (and
        that was last written before the unix time ``before``, if given).

        Anything else in the inbox (an operator's own files) is ignored.
        """
        for username in list_names(self.root, (), dirs=True):
            if not USERNAME_RE.fullmatch(username):
                continue
            for name in list_names(self.root, (username,), dirs=False, before=before):
                if INBOX_NAME_RE.fullmatch(name):
                    yield username, name

    def sweep_temp(self, before: float | None = None, *, pid: int | None = None) -> int:
        """Remove temp files left by a crash (see ``FileBlobStore.sweep_temp``)."""
        return sweep_temp_dir(self.root, (".tmp",), before, pid=pid)


class InboxCopy:
    """An inbox file on its way: an ``AtomicFile`` with the name the catalog records."""

    def __init__(self, name: str, file: AtomicFile) -> None:
        self.name: str | None = name
        self._file = file

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)

    def reopen(self) -> BinaryIO:
        return self._file.reopen()

    def commit(self) -> None:
        self._file.commit()

    def abort(self) -> None:
        self._file.abort()


class ScratchCopies:
    """Copies that only live while their upload does (the inbox is turned off).

    Deleting still reaches ``inbox``: the copies of images stored while the inbox
    was on must go with their images.
    """

    def __init__(self, blobs: BlobStore, inbox: InboxArea) -> None:
        self._blobs = blobs
        self._inbox = inbox

    def create(self, owner: str, image_id: str, extension: str) -> ScratchCopy:
        return ScratchCopy(self._blobs.scratch_file())

    def delete(self, owner: str, name: str) -> bool:
        return self._inbox.delete(owner, name)

    def remove_empty_folder(self, owner: str) -> bool:
        return self._inbox.remove_empty_folder(owner)


class ScratchCopy:
    """An anonymous file: readable until ``commit`` or ``abort`` closes it."""

    name: str | None = None

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise storage_error("write", Path("scratch file"), exc) from exc

    def reopen(self) -> BinaryIO:
        """The same file, rewound: nothing is written to it after this."""
        self._file.flush()
        again = os.fdopen(os.dup(self._file.fileno()), "rb")
        again.seek(0)
        return again

    def commit(self) -> None:
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def check_username(username: str) -> None:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise ValueError("invalid user name for an inbox folder")
