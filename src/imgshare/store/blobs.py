"""Sealed objects and inbox copies on disk, written so that acknowledged means durable.

One mechanism, ``AtomicFile``, writes both kinds of file: a temp file in the same
file system (``O_EXCL``, mode 0600), then write, fsync, ``os.replace`` to the final
name, fsync the folder. A file is therefore either absent or complete under its final
name; a crash leaves at most a ``*.part`` temp file, which ``sweep_temp`` removes at
start-up.

Layout::

    ROOT/objects/<id[:2]>/<id>      sealed objects (ids: 32 lowercase hex digits)
    ROOT/tmp/<random>.part          temp files of the blob store
    ROOT/partial/<id>               resumable uploads' objects, durable in part
    INBOX/<username>/<name>         decrypted inbox copies (name made by the server)
    INBOX/.tmp/<random>.part        temp files of the inbox (its own file system may differ)

No path is ever built from client input: object ids, user names and inbox file names
are checked against strict patterns here even though their makers check them too.

No symlink inside a store is followed. A store's root (the data folder, the inbox
folder) may be a link, the operator's choice; below it every folder is opened with
``O_NOFOLLOW`` relative to its parent's descriptor (``open_folder``) and every file
is created, opened, renamed and removed relative to its folder's descriptor, so a
link planted at ``inbox/<user>``, ``inbox/.tmp`` or ``objects/<xx>`` is refused with
a clear error instead of sending files outside the 0700 tree.
``BlobStore`` is the interface the server codes against, so that S3-compatible
storage can replace ``FileBlobStore`` later.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self

from imgshare.errors import StorageError

log = logging.getLogger(__name__)

OBJECT_ID_RE = re.compile(r"[0-9a-f]{32}")
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
    def open(self, object_id: str) -> io.BufferedIOBase: ...
    def size(self, object_id: str) -> int: ...
    def exists(self, object_id: str) -> bool: ...
    def delete(self, object_id: str) -> bool: ...
    def iter_ids(self, before: float | None = None) -> Iterator[str]: ...
    def sweep_temp(self, before: float | None = None, *, pid: int | None = None) -> int: ...
    def scratch_file(self) -> BinaryIO: ...


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a new, renamed or removed file) durable. Raises OSError."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def open_folder(root: Path, parts: tuple[str, ...] = (), *, create: bool = False) -> int:
    """A descriptor of ``root/parts...``, reached without following a symlink below
    ``root``. With ``create``, missing folders are made (mode 0700) and their parents
    fsynced. The caller closes it. Raises OSError: ELOOP (or ENOTDIR) where a part is
    a link (or a file), FileNotFoundError where one is missing.
    """
    fd = os.open(root, _FOLDER_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # another thread may win
                    os.mkdir(part, _DIR_MODE, dir_fd=fd)
                os.fsync(fd)
                child = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def opened_folder(root: Path, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
    fd = open_folder(root, parts, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def _parts(root: Path, folder: Path) -> tuple[str, ...]:
    return folder.relative_to(root).parts


def storage_error(action: str, path: Path, exc: OSError) -> StorageError:
    if exc.errno in _DISK_FULL:
        return StorageError(f"disk full while trying to {action} {path}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return StorageError(
            f"cannot {action} {path}: a symbolic link (or a file) stands where a folder "
            "of the data folder should be; imgshare never follows links inside its data "
            "folder: replace it with a real folder"
        )
    return StorageError(f"cannot {action} {path}: {exc.strerror or exc}")


def unlink_in(root: Path, parts: tuple[str, ...], name: str) -> bool:
    """Remove ``root/parts/name``; return whether it existed. Raises ``StorageError``."""
    path = root.joinpath(*parts, name)
    try:
        with opened_folder(root, parts) as fd:
            os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise storage_error("remove", path, exc) from exc
    return True


#: Start writeback every this many bytes (see ``AtomicFile._start_writeback``).
_WRITEBACK_STEP = 8 * 1024 * 1024
_FADV_DONTNEED: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)


class AtomicFile:
    """A file that appears under ``final_path`` only complete and durable.

    ``tmp_dir`` must be on the same file system as ``final_path``. Below ``root`` (the
    store's root; by default the two folders themselves) no symlink is followed. Usually
    made by ``FileBlobStore.create`` or ``Inbox.create``; one thread writes, but
    ``abort`` may come from any thread. The final folder is created on commit if
    missing.
    """

    def __init__(
        self, final_path: Path, tmp_dir: Path, *, root: Path | None = None, mode: int = _FILE_MODE
    ) -> None:
        """Create the temp file; raise ``StorageError`` if it cannot be created."""
        self.final_path = final_path
        # The writer's pid first: when a worker process dies, the supervisor removes
        # exactly its temp files (``sweep_temp_dir(..., pid=...)``).
        self._tmp_name = f"{os.getpid()}-{secrets.token_hex(16)}{_TEMP_SUFFIX}"
        self.tmp_path = tmp_dir / self._tmp_name
        self._final_root = final_path.parent if root is None else root
        self._final_parts = _parts(self._final_root, final_path.parent)
        self.bytes_written = 0
        self._writeback_from = 0
        self._lock = threading.Lock()
        self._state = "open"
        self._fd: int | None = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            tmp_root = tmp_dir if root is None else root
            self._tmp_dir_fd: int | None = open_folder(tmp_root, _parts(tmp_root, tmp_dir))
            self._fd = os.open(self._tmp_name, flags, mode, dir_fd=self._tmp_dir_fd)
        except OSError as exc:
            self._close_tmp_dir()
            raise storage_error("create", self.tmp_path, exc) from exc

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
                raise storage_error("write", self.final_path, exc) from exc

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
            folder: int | None = None
            try:
                os.fsync(fd)  # a delayed-allocation ENOSPC can surface only here
                self._fd = None  # never close twice: the number may be reused at once
                os.close(fd)
                folder = self._rename_into_place()
                renamed = True
                os.fsync(folder)
            except OSError as exc:
                if renamed and folder is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(self.final_path.name, dir_fd=folder)
                self._abort_locked()
                raise storage_error("store", self.final_path, exc) from exc
            finally:
                if folder is not None:
                    os.close(folder)
            self._state = "committed"
            self._close_tmp_dir()

    def _rename_into_place(self) -> int:
        """Rename the temp file to its final name; return the final folder's descriptor
        (the caller closes it). A folder removed while this file was on its way to it
        (a purge empties and removes a user's inbox folder) is made again, once."""
        name = self.final_path.name
        for attempt in (1, 2):
            folder = open_folder(self._final_root, self._final_parts, create=True)
            try:
                os.replace(self._tmp_name, name, src_dir_fd=self._tmp_dir_fd, dst_dir_fd=folder)
            except FileNotFoundError:
                os.close(folder)
                if attempt == 2:
                    raise
                continue
            except BaseException:
                os.close(folder)
                raise
            return folder
        raise AssertionError("unreachable")

    def reopen(self) -> BinaryIO:
        """The temp file's content, for reading before ``commit`` (the caller closes
        it). Raises ``StorageError``."""
        with self._lock:
            self._require_open()
            try:
                fd = os.open(self._tmp_name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._tmp_dir_fd)
            except OSError as exc:
                raise storage_error("read", self.tmp_path, exc) from exc
        return os.fdopen(fd, "rb")

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
            os.unlink(self._tmp_name, dir_fd=self._tmp_dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:  # left for the start-up sweep
            log.warning("cannot remove temp file %s: %s", self.tmp_path, exc.strerror)
        self._close_tmp_dir()

    def _close_tmp_dir(self) -> None:
        fd, self._tmp_dir_fd = getattr(self, "_tmp_dir_fd", None), None
        if fd is not None:
            os.close(fd)

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


class PartialFile(AtomicFile):
    """An object on its way that may outlive its writer: a resumable upload's.

    It starts as an ``AtomicFile`` temp file. ``sync`` makes what was written so far
    durable (fsync) and, the first time, moves the file to ``ROOT/partial/<id>``,
    where no sweep of temp files touches it and a writer in another process can take
    it up again (``FileBlobStore.open_partial``). ``park`` lets go of it without
    removing it; ``commit`` and ``abort`` work as an ``AtomicFile``'s, from wherever
    the file is.
    """

    def __init__(self, final_path: Path, tmp_dir: Path, partial_dir: Path, *, root: Path) -> None:
        super().__init__(final_path, tmp_dir, root=root)
        self._partial_parts = _parts(root, partial_dir)
        self.durable_bytes = 0
        self.moved = False

    @classmethod
    def take_up(
        cls, final_path: Path, partial_dir: Path, *, root: Path, length: int
    ) -> PartialFile:
        """Take up the partial file ``partial_dir/<final name>`` again, cut to its first
        ``length`` bytes (its durable part). Raises ``StorageError`` (``BlobNotFound``
        when it is gone, or shorter than that)."""
        self = cls.__new__(cls)
        name = final_path.name
        self.final_path = final_path
        self._tmp_name = name
        self.tmp_path = partial_dir / name
        self._final_root = root
        self._final_parts = _parts(root, final_path.parent)
        self._partial_parts = _parts(root, partial_dir)
        self._lock = threading.Lock()
        self._state = "open"
        self._fd = None
        self._tmp_dir_fd = None
        self.moved = True
        try:
            self._tmp_dir_fd = open_folder(root, self._partial_parts)
            self._fd = os.open(
                name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._tmp_dir_fd
            )
            if os.fstat(self._fd).st_size < length:
                raise BlobNotFound(f"partial object {name} is shorter than its durable part")
            os.ftruncate(self._fd, length)
            os.lseek(self._fd, length, os.SEEK_SET)
        except FileNotFoundError as exc:
            self._let_go()
            raise BlobNotFound(f"partial object {name} not found") from exc
        except OSError as exc:
            self._let_go()
            raise storage_error("reopen", self.tmp_path, exc) from exc
        except BaseException:
            self._let_go()
            raise
        self.bytes_written = self._writeback_from = self.durable_bytes = length
        return self

    def sync(self) -> None:
        """Make everything written so far durable (the first time, under its partial
        name). Raises ``StorageError``; then the file is gone."""
        with self._lock:
            fd = self._require_open()
            try:
                os.fsync(fd)
                if not self.moved:
                    self._move_to_partial()
            except OSError as exc:
                self._abort_locked()
                raise storage_error("sync", self.tmp_path, exc) from exc
            self.durable_bytes = self.bytes_written

    def _move_to_partial(self) -> None:
        name = self.final_path.name
        folder = open_folder(self._final_root, self._partial_parts, create=True)
        try:
            os.replace(self._tmp_name, name, src_dir_fd=self._tmp_dir_fd, dst_dir_fd=folder)
            os.fsync(folder)
        except BaseException:
            os.close(folder)
            raise
        old, self._tmp_dir_fd = self._tmp_dir_fd, folder
        if old is not None:
            os.close(old)
        self._tmp_name = name
        self.tmp_path = self._final_root.joinpath(*self._partial_parts, name)
        self.moved = True

    def park(self) -> None:
        """Let go of the file and keep it (the upload may be resumed). Idempotent; a
        no-op once committed or aborted."""
        with self._lock:
            if self._state == "open":
                self._state = "parked"
                self._let_go()

    def _let_go(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._close_tmp_dir()


def sweep_temp_dir(
    root: Path, parts: tuple[str, ...], before: float | None = None, *, pid: int | None = None
) -> int:
    """Remove ``*.part`` files in ``root/parts`` (only those last written before the
    unix time ``before``, or only those of the process ``pid``, if given); return how
    many."""
    removed = 0
    folder = root.joinpath(*parts)
    for name in list_names(root, parts, dirs=False, before=before):
        if not name.endswith(_TEMP_SUFFIX):
            continue
        if pid is not None and not name.startswith(f"{pid}-"):
            continue
        if unlink_in(root, parts, name):
            removed += 1
    if removed:
        log.info("removed %d leftover temp file(s) from %s", removed, folder)
    return removed


def list_names(
    root: Path, parts: tuple[str, ...], *, dirs: bool, before: float | None = None
) -> list[str]:
    """Names of the sub-folders (``dirs``) or regular files in ``root/parts``; no
    symlinks, neither listed nor followed on the way. With ``before``, only files last
    modified before that unix time (a file being written is younger)."""
    try:
        with opened_folder(root, parts) as fd, os.scandir(fd) as entries:
            if dirs:
                return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            return [
                e.name
                for e in entries
                if e.is_file(follow_symlinks=False)
                and (before is None or e.stat(follow_symlinks=False).st_mtime < before)
            ]
    except OSError as exc:
        raise storage_error("list", root.joinpath(*parts), exc) from exc


def init_dirs(root: Path, *folders: tuple[str, ...]) -> None:
    """Create ``root`` (following links to it) and ``folders`` below it (never)."""
    try:
        root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error("create folder", root, exc) from exc
    for parts in folders:
        try:
            os.close(open_folder(root, parts, create=True))
        except OSError as exc:
            raise storage_error("create folder", root.joinpath(*parts), exc) from exc


class FileBlobStore:
    """Sealed objects as files under ``root``; thread-safe (no shared mutable state)."""

    def __init__(self, root: Path) -> None:
        """Create ``root/objects`` and ``root/tmp`` if needed; raise ``StorageError``."""
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        init_dirs(self.root, ("objects",), ("tmp",))  # partial/: made when first needed

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    def path_of(self, object_id: str) -> Path:
        """The final path of an object. Raises ``ValueError`` for a malformed id."""
        if not isinstance(object_id, str) or not OBJECT_ID_RE.fullmatch(object_id):
            raise ValueError("object id must be 32 lowercase hex digits")
        return self.objects_dir / object_id[:2] / object_id

    def _folder_of(self, object_id: str) -> tuple[str, ...]:
        return ("objects", self.path_of(object_id).parent.name)

    def create(self, object_id: str) -> AtomicFile:
        """A writer for a new object, invisible until committed. Raises ``StorageError``."""
        return AtomicFile(self.path_of(object_id), self.tmp_dir, root=self.root)

    def open(self, object_id: str) -> io.BufferedIOBase:
        """Open an object for reading. Raises ``BlobNotFound`` or ``StorageError``."""
        path = self.path_of(object_id)
        try:
            with opened_folder(self.root, self._folder_of(object_id)) as folder:
                fd = os.open(object_id, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"object {object_id} not found") from exc
        except OSError as exc:
            raise storage_error("open", path, exc) from exc
        return os.fdopen(fd, "rb")  # the caller closes it

    def size(self, object_id: str) -> int:
        """Size in bytes. Raises ``BlobNotFound`` or ``StorageError``."""
        path = self.path_of(object_id)
        try:
            with opened_folder(self.root, self._folder_of(object_id)) as folder:
                info = os.stat(object_id, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"object {object_id} not found") from exc
        except OSError as exc:
            raise storage_error("stat", path, exc) from exc
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(f"{path} is not a regular file")
        return info.st_size

    def exists(self, object_id: str) -> bool:
        """Whether the object is stored (as a regular file, not a link). Raises
        ``StorageError`` if its folder cannot be read."""
        try:
            with opened_folder(self.root, self._folder_of(object_id)) as folder:
                info = os.stat(object_id, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error("stat", self.path_of(object_id), exc) from exc
        return stat.S_ISREG(info.st_mode)

    def delete(self, object_id: str) -> bool:
        """Remove an object; return whether it existed. Raises ``StorageError``.

        Not fsynced: the catalog row (and its wrapped key) is what makes an object
        readable; an object that comes back after a crash is an orphan for the sweep.
        """
        return unlink_in(self.root, self._folder_of(object_id), object_id)

    def iter_ids(self, before: float | None = None) -> Iterator[str]:
        """Ids of the stored objects (committed before the unix time ``before``, if
        given), in no particular order; skips foreign files."""
        for prefix in list_names(self.root, ("objects",), dirs=True):
            for name in list_names(self.root, ("objects", prefix), dirs=False, before=before):
                if OBJECT_ID_RE.fullmatch(name) and name[:2] == prefix:
                    yield name

    def sweep_temp(self, before: float | None = None, *, pid: int | None = None) -> int:
        """Remove temp files left by a crash (written before ``before``, or by the
        process ``pid``, if given); return how many. With neither it would also remove
        the temp files of writers in progress: only while nothing writes."""
        return sweep_temp_dir(self.root, ("tmp",), before, pid=pid)

    # -- resumable uploads (imgshare.store.images: PendingImage) ----------------------------

    def create_resumable(self, object_id: str) -> PartialFile:
        """Like ``create``, but the writer can make its part durable and outlive this
        process (``PartialFile``). Raises ``StorageError``."""
        return PartialFile(
            self.path_of(object_id), self.tmp_dir, self.root / "partial", root=self.root
        )

    def open_partial(self, object_id: str, length: int) -> PartialFile:
        """Take up a parked partial object again at its durable ``length``. Raises
        ``BlobNotFound`` or ``StorageError``."""
        return PartialFile.take_up(
            self.path_of(object_id), self.root / "partial", root=self.root, length=length
        )

    def read_partial(self, object_id: str) -> io.BufferedIOBase:
        """Read a partial object (the caller closes it). Raises ``BlobNotFound``."""
        self.path_of(object_id)  # checks the id
        try:
            with opened_folder(self.root, ("partial",)) as folder:
                fd = os.open(object_id, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"partial object {object_id} not found") from exc
        except OSError as exc:
            raise storage_error("open", self.root / "partial" / object_id, exc) from exc
        return os.fdopen(fd, "rb")

    def delete_partial(self, object_id: str) -> bool:
        """Remove a partial object; return whether it existed. Raises ``StorageError``."""
        self.path_of(object_id)
        return unlink_in(self.root, ("partial",), object_id)

    def partial_ids(self, before: float | None = None) -> Iterator[str]:
        """Ids of the partial objects (last written before ``before``, if given)."""
        if not (self.root / "partial").is_dir():
            return
        for name in list_names(self.root, ("partial",), dirs=False, before=before):
            if OBJECT_ID_RE.fullmatch(name):
                yield name

    def scratch_file(self) -> BinaryIO:
        """An anonymous private file in the store's temp folder, gone when closed (for
        checking an image that gets no inbox copy). Raises ``StorageError``."""
        try:
            with opened_folder(self.root, ("tmp",)) as folder:
                fd = os.open(
                    ".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, _FILE_MODE, dir_fd=folder
                )
        except OSError as exc:
            raise storage_error("create a scratch file in", self.tmp_dir, exc) from exc
        return os.fdopen(fd, "w+b")
