"""Sealed objects and inbox copies on disk, written so that acknowledged means durable.

One mechanism, ``AtomicFile``, writes both kinds of file: a temp file in the same
file system (``O_EXCL``, mode 0600), then write, fsync, ``os.replace`` to the final
name, fsync the folder. A file is therefore either absent or complete under its final
name; a crash leaves at most a ``*.part`` temp file, which ``sweep_temp`` removes at
start-up.

Layout::

    ROOT/objects/<id[:2]>/<id>      sealed objects (ids: 32 lowercase hex digits)
    ROOT/tmp/<random>.part          temp files of the blob store
    INBOX/<username>/<name>         decrypted inbox copies (name made by the server)
    INBOX/.tmp/<random>.part        temp files of the inbox (its own file system may differ)

No path is ever built from client input: object ids, user names and inbox file names
are checked against strict patterns here even though their makers check them too.
``BlobStore`` is the interface the server codes against, so that S3-compatible
storage can replace ``FileBlobStore`` later.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self

from imgshare.errors import StorageError

log = logging.getLogger(__name__)

OBJECT_ID_RE = re.compile(r"[0-9a-f]{32}")
# Same rule as imgshare.accounts.USERNAME_RE (a test checks that they agree); checked
# again here because a user name becomes a folder name.
_USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
INBOX_NAME_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{32}\.[a-z0-9]{1,5}")
_TEMP_SUFFIX = ".part"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class BlobNotFound(StorageError):
    """The object asked for is not in the blob store."""


class BlobWriter(Protocol):
    """Writes one object; invisible until ``commit``; a context manager that aborts."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BlobStore(Protocol):
    """Where sealed objects live. Implementations are thread-safe."""

    def create(self, object_id: str) -> BlobWriter: ...
    def open(self, object_id: str) -> BinaryIO: ...
    def size(self, object_id: str) -> int: ...
    def exists(self, object_id: str) -> bool: ...
    def delete(self, object_id: str) -> bool: ...
    def iter_ids(self) -> Iterator[str]: ...
    def sweep_temp(self) -> int: ...


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a new, renamed or removed file) durable. Raises OSError."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(action: str, path: Path, exc: OSError) -> StorageError:
    if exc.errno in _DISK_FULL:
        return StorageError(f"disk full while trying to {action} {path}")
    return StorageError(f"cannot {action} {path}: {exc.strerror or exc}")


def _unlink(path: Path) -> bool:
    """Remove a file; return whether it existed. Raises ``StorageError``."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _os_error("remove", path, exc) from exc
    return True


def _make_dirs(folder: Path) -> None:
    """Create ``folder`` (and missing parents) mode 0700, durably. Raises OSError."""
    if folder.is_dir():
        return
    _make_dirs(folder.parent)
    with contextlib.suppress(FileExistsError):  # another thread may win the race
        folder.mkdir(mode=_DIR_MODE)
    fsync_dir(folder.parent)


#: Start writeback every this many bytes (see ``AtomicFile._start_writeback``).
_WRITEBACK_STEP = 8 * 1024 * 1024
_FADV_DONTNEED: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)


class AtomicFile:
    """A file that appears under ``final_path`` only complete and durable.

    ``tmp_dir`` must be on the same file system as ``final_path``. Usually made by
    ``FileBlobStore.create`` or ``Inbox.create``; one thread writes, but ``abort``
    may come from any thread. The final folder is created on commit if missing.
    """

    def __init__(self, final_path: Path, tmp_dir: Path, *, mode: int = _FILE_MODE) -> None:
        """Create the temp file; raise ``StorageError`` if it cannot be created."""
        self.final_path = final_path
        self.tmp_path = tmp_dir / f"{secrets.token_hex(16)}{_TEMP_SUFFIX}"
        self.bytes_written = 0
        self._writeback_from = 0
        self._lock = threading.Lock()
        self._state = "open"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self._fd: int | None = os.open(self.tmp_path, flags, mode)
        except OSError as exc:
            raise _os_error("create", self.tmp_path, exc) from exc

    def __repr__(self) -> str:
        return f"AtomicFile({str(self.final_path)!r}, state={self._state})"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``. On failure the temp file is removed and ``StorageError``
        raised ("disk full ..." for ENOSPC/EDQUOT)."""
        view = memoryview(data).cast("B")
        with self._lock:
            fd = self._require_open()
            try:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                    self.bytes_written += written
                self._start_writeback(fd)
            except OSError as exc:
                self._abort_locked()
                raise _os_error("write", self.final_path, exc) from exc

    def _start_writeback(self, fd: int) -> None:
        """Ask the kernel to start writing what we wrote so far, without waiting.

        The disk then works while the rest of the image streams in, and the fsync in
        ``commit`` waits only for the tail. On Linux, POSIX_FADV_DONTNEED starts
        writeback of the range (dirty pages stay cached until written).
        """
        unflushed = self.bytes_written - self._writeback_from
        if unflushed >= _WRITEBACK_STEP and _FADV_DONTNEED is not None:
            os.posix_fadvise(fd, self._writeback_from, unflushed, _FADV_DONTNEED)
            self._writeback_from = self.bytes_written

    def commit(self) -> None:
        """fsync, rename to the final name, fsync the folder. Raises ``StorageError``;
        after a failure nothing is left under the final name."""
        with self._lock:
            fd = self._require_open()
            renamed = False
            try:
                os.fsync(fd)  # a delayed-allocation ENOSPC can surface only here
                self._fd = None  # never close twice: the number may be reused at once
                os.close(fd)
                _make_dirs(self.final_path.parent)
                os.replace(self.tmp_path, self.final_path)
                renamed = True
                fsync_dir(self.final_path.parent)
            except OSError as exc:
                if renamed:
                    with contextlib.suppress(OSError):
                        os.unlink(self.final_path)
                self._abort_locked()
                raise _os_error("store", self.final_path, exc) from exc
            self._state = "committed"

    def abort(self) -> None:
        """Throw the temp file away. Idempotent; a no-op after a successful commit."""
        with self._lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # left for the start-up sweep
            log.warning("cannot remove temp file %s: %s", self.tmp_path, exc.strerror)

    def _require_open(self) -> int:
        if self._state != "open" or self._fd is None:
            raise StorageError(f"writer for {self.final_path} is already {self._state}")
        return self._fd

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


def _sweep_temp_dir(tmp_dir: Path) -> int:
    """Remove ``*.part`` files in ``tmp_dir``; return how many. Start-up only."""
    removed = 0
    for name in _names(tmp_dir, dirs=False):
        if not name.endswith(_TEMP_SUFFIX):
            continue
        try:
            os.unlink(tmp_dir / name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _os_error("remove", tmp_dir / name, exc) from exc
        removed += 1
    if removed:
        log.info("removed %d leftover temp file(s) from %s", removed, tmp_dir)
    return removed


def _names(folder: Path, *, dirs: bool) -> list[str]:
    """Names of the sub-folders (``dirs``) or regular files in ``folder``; no symlinks."""
    try:
        with os.scandir(folder) as entries:
            if dirs:
                return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            return [e.name for e in entries if e.is_file(follow_symlinks=False)]
    except OSError as exc:
        raise _os_error("list", folder, exc) from exc


def _init_dirs(*folders: Path) -> None:
    for folder in folders:
        try:
            _make_dirs(folder)
        except OSError as exc:
            raise _os_error("create folder", folder, exc) from exc


class FileBlobStore:
    """Sealed objects as files under ``root``; thread-safe (no shared mutable state)."""

    def __init__(self, root: Path) -> None:
        """Create ``root/objects`` and ``root/tmp`` if needed; raise ``StorageError``."""
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        _init_dirs(self.objects_dir, self.tmp_dir)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    def path_of(self, object_id: str) -> Path:
        """The final path of an object. Raises ``ValueError`` for a malformed id."""
        if not isinstance(object_id, str) or not OBJECT_ID_RE.fullmatch(object_id):
            raise ValueError("object id must be 32 lowercase hex digits")
        return self.objects_dir / object_id[:2] / object_id

    def create(self, object_id: str) -> AtomicFile:
        """A writer for a new object, invisible until committed. Raises ``StorageError``."""
        return AtomicFile(self.path_of(object_id), self.tmp_dir)

    def open(self, object_id: str) -> BinaryIO:
        """Open an object for reading. Raises ``BlobNotFound`` or ``StorageError``."""
        path = self.path_of(object_id)
        try:
            return open(path, "rb")  # the caller closes it
        except FileNotFoundError as exc:
            raise BlobNotFound(f"object {object_id} not found") from exc
        except OSError as exc:
            raise _os_error("open", path, exc) from exc

    def size(self, object_id: str) -> int:
        """Size in bytes. Raises ``BlobNotFound`` or ``StorageError``."""
        path = self.path_of(object_id)
        try:
            return path.stat().st_size
        except FileNotFoundError as exc:
            raise BlobNotFound(f"object {object_id} not found") from exc
        except OSError as exc:
            raise _os_error("stat", path, exc) from exc

    def exists(self, object_id: str) -> bool:
        """Whether the object is stored."""
        return self.path_of(object_id).is_file()

    def delete(self, object_id: str) -> bool:
        """Remove an object; return whether it existed. Raises ``StorageError``.

        Not fsynced: the catalog row (and its wrapped key) is what makes an object
        readable; an object that comes back after a crash is an orphan for the sweep.
        """
        return _unlink(self.path_of(object_id))

    def iter_ids(self) -> Iterator[str]:
        """Ids of the stored objects, in no particular order; skips foreign files."""
        for prefix in _names(self.objects_dir, dirs=True):
            for name in _names(self.objects_dir / prefix, dirs=False):
                if OBJECT_ID_RE.fullmatch(name) and name[:2] == prefix:
                    yield name

    def sweep_temp(self) -> int:
        """Remove temp files left by a crash; return how many. Start-up only: it would
        also remove the temp files of writers in progress."""
        return _sweep_temp_dir(self.tmp_dir)


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
        _init_dirs(self.root, self.tmp_dir)

    def __repr__(self) -> str:
        return f"Inbox({str(self.root)!r})"

    def path_of(self, username: str, filename: str) -> Path:
        """Where a user's inbox file lives. Raises ``ValueError`` for a malformed name."""
        if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
            raise ValueError("invalid user name for an inbox folder")
        if not isinstance(filename, str) or not INBOX_NAME_RE.fullmatch(filename):
            raise ValueError("invalid inbox file name")
        return self.root / username / filename

    def create(self, username: str, filename: str) -> AtomicFile:
        """A writer for a new inbox file, invisible until committed."""
        return AtomicFile(self.path_of(username, filename), self.tmp_dir)

    def delete(self, username: str, filename: str) -> bool:
        """Remove an inbox file; return whether it existed. Raises ``StorageError``."""
        return _unlink(self.path_of(username, filename))

    def iter_files(self) -> Iterator[tuple[str, str]]:
        """``(username, filename)`` of every file the server could have written.

        Anything else in the inbox (an operator's own files) is ignored.
        """
        for username in _names(self.root, dirs=True):
            if not _USERNAME_RE.fullmatch(username):
                continue
            for name in _names(self.root / username, dirs=False):
                if INBOX_NAME_RE.fullmatch(name):
                    yield username, name

    def sweep_temp(self) -> int:
        """Remove temp files left by a crash; return how many. Start-up only."""
        return _sweep_temp_dir(self.tmp_dir)
