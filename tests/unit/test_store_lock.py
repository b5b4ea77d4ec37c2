"""One server per data folder (``imgshare.store.lock``): a real flock, real processes,
and a really read-only folder."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import imgshare
from imgshare.errors import ConfigError, StorageError
from imgshare.store.lock import LOCK_NAME, DataFolderInUse, DataFolderLock, check_writable

WAIT = 10.0
SRC = Path(imgshare.__file__).resolve().parents[1]
HOLDER = """
import sys, time
from pathlib import Path
from imgshare.store.lock import DataFolderLock
lock = DataFolderLock.acquire(Path(sys.argv[1]))
time.sleep(60)
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


@pytest.fixture
def lock(folder: Path) -> Iterator[DataFolderLock]:
    held = DataFolderLock.acquire(folder)
    yield held
    held.release()


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write to, not even root: a read-only bind mount of itself
    (root ignores permission bits); a 0500 folder for anyone else."""
    target = tmp_path / "read-only"
    target.mkdir()
    (target / "existing.txt").write_text("kept")
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
            yield target
        finally:
            subprocess.run(["umount", str(target)], check=True)
    else:
        target.chmod(0o500)
        try:
            yield target
        finally:
            target.chmod(0o700)


def holder_text(folder: Path) -> str:
    return (folder / LOCK_NAME).read_text()


# --- in this process -------------------------------------------------------------------


def test_the_lock_file_names_this_process(folder: Path, lock: DataFolderLock) -> None:
    path = folder / LOCK_NAME
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert re.fullmatch(
        rf"pid {os.getpid()}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ\n", holder_text(folder)
    )
    assert "held=True" in repr(lock)


def test_a_second_lock_in_this_process_is_refused(folder: Path, lock: DataFolderLock) -> None:
    with pytest.raises(DataFolderInUse) as refused:
        DataFolderLock.acquire(folder)
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message
    assert str(folder) in message
    assert "stop that one first" in message
    assert "another --data folder" in message
    assert isinstance(refused.value, ConfigError)
    # The refused attempt closed its own descriptor only: the lock is still held.
    with pytest.raises(DataFolderInUse):
        DataFolderLock.acquire(folder)
    assert f"pid {os.getpid()}" in holder_text(folder)


def test_release_lets_the_lock_be_taken_again(folder: Path) -> None:
    first = DataFolderLock.acquire(folder)
    first.release()
    first.release()  # idempotent
    assert "held=False" in repr(first)
    second = DataFolderLock.acquire(folder)
    try:
        with pytest.raises(DataFolderInUse):
            DataFolderLock.acquire(folder)
    finally:
        second.release()
    DataFolderLock.acquire(folder).release()


def test_an_old_lock_file_without_a_holder_is_taken_over(folder: Path) -> None:
    (folder / LOCK_NAME).write_text("pid 999999, since 2001-01-01 00:00:00Z\nand more\n")
    lock = DataFolderLock.acquire(folder)
    try:
        text = holder_text(folder)
        assert text.startswith(f"pid {os.getpid()}, since ")
        assert "999999" not in text and "more" not in text  # rewritten, not appended
    finally:
        lock.release()


def test_a_lock_file_with_garbage_gives_pid_unknown(folder: Path, lock: DataFolderLock) -> None:
    (folder / LOCK_NAME).write_text("\x00garbage")
    with pytest.raises(DataFolderInUse, match="pid unknown"):
        DataFolderLock.acquire(folder)


# --- held by another process -----------------------------------------------------------


def test_a_lock_held_by_another_process(folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=env)
    try:
        deadline = time.monotonic() + WAIT
        while not (
            (folder / LOCK_NAME).exists() and holder_text(folder).startswith(f"pid {child.pid},")
        ):
            assert child.poll() is None, "the child died before taking the lock"
            assert time.monotonic() < deadline, "the child never took the lock"
            time.sleep(0.01)
        with pytest.raises(DataFolderInUse) as refused:
            DataFolderLock.acquire(folder)
        assert f"pid {child.pid}," in str(refused.value)
        assert f"pid {os.getpid()}," not in str(refused.value)
        assert "stop that one first, or give this one another --data folder" in str(refused.value)
        child.send_signal(signal.SIGKILL)  # no clean-up in the child at all
        assert child.wait(WAIT) == -signal.SIGKILL
        lock = DataFolderLock.acquire(folder)  # the kernel dropped the dead one's lock
        try:
            assert holder_text(folder).startswith(f"pid {os.getpid()},")
        finally:
            lock.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)


def test_the_lock_is_not_inherited_by_child_processes(folder: Path) -> None:
    lock = DataFolderLock.acquire(folder)
    # With close_fds=False the child keeps every descriptor that is not close-on-exec.
    child = subprocess.Popen(["/bin/sleep", "30"], close_fds=False)
    try:
        lock.release()
        # The kernel may finish closing the child's close-on-exec descriptors a moment
        # after Popen returns; an inherited lock would stay for the child's 30 s.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                DataFolderLock.acquire(folder).release()
                break
            except DataFolderInUse:
                assert time.monotonic() < deadline, "the child process kept the lock"
                time.sleep(0.01)
        assert child.poll() is None  # the lock was free while the child still ran
    finally:
        child.kill()
        child.wait(WAIT)


# --- refused lock files and folders ----------------------------------------------------


def test_a_symlinked_lock_file_is_refused(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("do not touch")
    (folder / LOCK_NAME).symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link") as refused:
        DataFolderLock.acquire(folder)
    assert not isinstance(refused.value, DataFolderInUse)
    assert target.read_text() == "do not touch"


def test_a_dangling_symlinked_lock_file_is_refused(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "would-be-created"
    (folder / LOCK_NAME).symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        DataFolderLock.acquire(folder)
    assert not target.exists()
    assert (folder / LOCK_NAME).is_symlink()


def test_a_read_only_folder_cannot_be_locked(read_only: Path) -> None:
    with pytest.raises(StorageError, match="cannot write to the data folder") as refused:
        DataFolderLock.acquire(read_only)
    assert str(read_only) in str(refused.value)
    assert not (read_only / LOCK_NAME).exists()


def test_a_missing_folder_cannot_be_locked(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot write to the data folder"):
        DataFolderLock.acquire(tmp_path / "missing")


def test_check_writable_passes_and_leaves_nothing(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "inbox"
    other.mkdir()
    (folder / "keep.txt").write_text("x")
    check_writable(folder, other)
    check_writable()  # no folders: nothing to check
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    assert list(other.iterdir()) == []


def test_check_writable_refuses_a_read_only_folder(folder: Path, read_only: Path) -> None:
    with pytest.raises(StorageError) as refused:
        check_writable(folder, read_only)
    message = str(refused.value)
    assert f"cannot write to {read_only} (" in message
    assert "--data folder" in message
    expected = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert expected in message
    assert isinstance(refused.value.__cause__, OSError)
    assert list(folder.iterdir()) == []  # the probe of the writable one was removed
    assert sorted(p.name for p in read_only.iterdir()) == ["existing.txt"]


def test_check_writable_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot write to"):
        check_writable(tmp_path / "missing")
