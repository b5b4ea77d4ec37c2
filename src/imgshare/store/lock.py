"""One server per data folder: an exclusive lock, taken before anything else touches it.

Two servers on one folder would each sweep away the other's uploads in progress, so
the server takes ``DATA/server.lock`` (``flock``, exclusive, non-blocking) before the
start-up sweep and holds it until it exits. The kernel drops the lock when the
process ends, however it ends, so a crash never leaves a stale lock behind; the pid
and start time written in the file only serve the message a second server prints.

Admin commands (``imgshare user ...``) do not take the lock: they work while the
server runs and coordinate through the catalog (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from imgshare.errors import ConfigError, StorageError

LOCK_NAME = "server.lock"


class DataFolderInUse(ConfigError):
    """Another process holds the data folder's lock."""


class DataFolderLock:
    """The held lock of one data folder; ``release`` (or process exit) lets it go."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"DataFolderLock({str(self.folder)!r}, held={self._fd is not None})"

    @classmethod
    def acquire(cls, folder: Path) -> DataFolderLock:
        """Lock ``folder`` for this process.

        Raises ``DataFolderInUse`` naming the holder's pid, ``StorageError`` if the
        lock file cannot be made (a read-only folder says so), ``ConfigError`` if it
        is a symlink.
        """
        path = folder / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(f"{path} is a symbolic link; remove it") from exc
            raise StorageError(
                f"cannot write to the data folder {folder} ({exc.strerror}): the server "
                "needs a folder it can write to"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataFolderInUse(
                f"the data folder {folder} is in use by another imgshare server ({holder}); "
                "stop that one first, or give this one another --data folder"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {path}: {exc.strerror}") from exc
        lock = cls(folder, fd)
        lock._write_holder()
        return lock

    def _write_holder(self) -> None:
        assert self._fd is not None
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        text = f"pid {os.getpid()}, since {started}\n".encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text, 0)
        except OSError as exc:
            self.release()
            raise StorageError(f"cannot write to the data folder {self.folder}: {exc}") from exc

    def release(self) -> None:
        """Let the lock go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text.startswith("pid "):
            return text
    return "pid unknown"


def check_writable(*folders: Path) -> None:
    """Create and remove a file in each folder: a folder the server cannot write to
    (read-only mount, wrong owner, immutable) is refused at start, not at the first
    upload. Raises ``StorageError``."""
    for folder in folders:
        probe = folder / f".write-test-{secrets.token_hex(8)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(
                f"cannot write to {folder} ({exc.strerror}): the server needs to write "
                "there; fix its permissions or mount, or choose another --data folder"
            ) from exc
