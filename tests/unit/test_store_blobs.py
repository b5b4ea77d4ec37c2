"""Blob store and inbox: atomic, durable writes; strict names; disk-full handling."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imgshare.errors import StorageError
from imgshare.server.accounts import USERNAME_RE
from imgshare.store.blobs import AtomicFile, BlobNotFound, FileBlobStore
from imgshare.store.copies import INBOX_NAME_RE, Inbox, InboxCopy, inbox_filename
from imgshare.store.copies import USERNAME_RE as INBOX_USERNAME_RE

MiB = 1024 * 1024


def new_id() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "data")


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox(tmp_path / "data" / "inbox")


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_layout_and_modes(store: FileBlobStore) -> None:
    object_id = new_id()
    with store.create(object_id) as writer:
        writer.write(b"sealed bytes")
        writer.commit()
    path = store.root / "objects" / object_id[:2] / object_id
    assert path.read_bytes() == b"sealed bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert files_under(store.tmp_dir) == []


def test_nothing_is_visible_before_commit(store: FileBlobStore) -> None:
    object_id = new_id()
    writer = store.create(object_id)
    writer.write(b"x" * 1000)
    assert not store.exists(object_id)
    assert list(store.iter_ids()) == []
    with pytest.raises(BlobNotFound):
        store.open(object_id)
    writer.commit()
    assert store.exists(object_id)
    assert list(store.iter_ids()) == [object_id]
    assert store.size(object_id) == 1000


def test_abort_leaves_nothing_and_is_idempotent(store: FileBlobStore) -> None:
    object_id = new_id()
    writer = store.create(object_id)
    writer.write(b"half an upload")
    writer.abort()
    writer.abort()
    assert not store.exists(object_id)
    assert files_under(store.root) == []
    with pytest.raises(StorageError, match="aborted"):
        writer.write(b"more")
    with pytest.raises(StorageError, match="aborted"):
        writer.commit()


def test_context_manager_aborts_unless_committed(store: FileBlobStore) -> None:
    object_id = new_id()
    with pytest.raises(RuntimeError), store.create(object_id) as writer:
        writer.write(b"data")
        raise RuntimeError("connection dropped")
    with store.create(new_id()) as other:
        other.write(b"never committed")
    assert files_under(store.root) == []


def test_commit_is_final(store: FileBlobStore) -> None:
    object_id = new_id()
    with store.create(object_id) as writer:
        writer.write(b"data")
        writer.commit()
        writer.abort()  # a no-op after commit
        with pytest.raises(StorageError, match="committed"):
            writer.write(b"more")
    with store.open(object_id) as reader:
        assert reader.read() == b"data"


def test_streams_in_chunks_from_bytes_and_memoryviews(store: FileBlobStore) -> None:
    object_id = new_id()
    chunks = [os.urandom(MiB) for _ in range(4)] + [b"tail"]
    with store.create(object_id) as writer:
        for index, chunk in enumerate(chunks):
            writer.write(memoryview(chunk) if index % 2 else chunk)
        writer.commit()
        assert writer.bytes_written == 4 * MiB + 4
    with store.open(object_id) as reader:
        assert reader.read() == b"".join(chunks)


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../etc/passwd",
        "0" * 31,
        "0" * 33,
        "A" * 32,
        "g" * 32,
        "/" + "0" * 31,
        "0" * 31 + "\n",
        "",
    ],
)
def test_object_ids_are_checked_strictly(store: FileBlobStore, bad_id: str) -> None:
    for call in (store.create, store.open, store.exists, store.delete, store.size):
        with pytest.raises(ValueError, match="32 lowercase hex"):
            call(bad_id)


def test_missing_object_is_distinguishable(store: FileBlobStore) -> None:
    with pytest.raises(BlobNotFound) as info:
        store.open(new_id())
    assert isinstance(info.value, StorageError)
    with pytest.raises(BlobNotFound):
        store.size(new_id())


def test_delete_and_iter_ids(store: FileBlobStore) -> None:
    ids = sorted(new_id() for _ in range(5))
    for object_id in ids:
        with store.create(object_id) as writer:
            writer.commit()
    (store.objects_dir / ids[0][:2] / "README").write_text("not an object")
    (store.objects_dir / "zz").mkdir()
    wrong_prefix = ("ff" if ids[1][:2] != "ff" else "ee") + ids[1][2:]
    (store.objects_dir / ids[1][:2] / wrong_prefix).write_bytes(b"misplaced")
    assert sorted(store.iter_ids()) == ids
    assert store.delete(ids[0]) is True
    assert store.delete(ids[0]) is False
    assert sorted(store.iter_ids()) == ids[1:]


def test_sweep_temp_removes_only_part_files(store: FileBlobStore) -> None:
    in_flight = AtomicFile(store.path_of(new_id()), store.tmp_dir)
    in_flight.write(b"crashed mid-upload")
    (store.tmp_dir / "stale.part").write_bytes(b"x")
    (store.tmp_dir / "keep.txt").write_bytes(b"x")
    assert store.sweep_temp() == 2
    assert [p.name for p in files_under(store.tmp_dir)] == ["keep.txt"]
    in_flight.abort()  # its temp file is already gone: still fine


def test_eight_threads_write_at_once(store: FileBlobStore) -> None:
    ids = [new_id() for _ in range(8)]
    payloads = {object_id: os.urandom(256 * 1024) for object_id in ids}
    barrier = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def upload(object_id: str) -> None:
        try:
            barrier.wait()
            with store.create(object_id) as writer:
                data = memoryview(payloads[object_id])
                for start in range(0, len(data), 16 * 1024):
                    writer.write(data[start : start + 16 * 1024])
                writer.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for object_id, payload in payloads.items():
        with store.open(object_id) as reader:
            assert reader.read() == payload
    assert files_under(store.tmp_dir) == []


# -- inbox -----------------------------------------------------------------------------


def test_inbox_name_format() -> None:
    when = datetime(2024, 5, 17, 8, 30, 5, tzinfo=UTC)
    name = inbox_filename("ab" * 16, "jpg", when)
    assert name == f"20240517T083005Z-{'ab' * 16}.jpg"
    with pytest.raises(ValueError):
        inbox_filename("../x", "jpg", when)
    with pytest.raises(ValueError):
        inbox_filename("ab" * 16, "j/pg", when)


def test_inbox_username_rule_matches_accounts() -> None:
    assert INBOX_USERNAME_RE.pattern == USERNAME_RE.pattern


def test_inbox_writes_atomically_per_user(inbox: Inbox) -> None:
    name = inbox_filename(new_id(), "png")
    writer = inbox.create_file("alice", name)
    writer.write(b"\x89PNG...")
    assert not inbox.path_of("alice", name).exists()
    writer.commit()
    assert inbox.path_of("alice", name).read_bytes() == b"\x89PNG..."
    assert inbox.path_of("alice", name) == inbox.root / "alice" / name
    assert list(inbox.iter_files()) == [("alice", name)]
    assert inbox.delete("alice", name) is True
    assert inbox.delete("alice", name) is False


@pytest.mark.parametrize("username", ["..", ".tmp", "Alice", "a/b", "", "a" * 33, "-x"])
def test_inbox_rejects_bad_user_names(inbox: Inbox, username: str) -> None:
    with pytest.raises(ValueError, match="user name"):
        inbox.create_file(username, inbox_filename(new_id(), "png"))
    with pytest.raises(ValueError, match="user name"):
        inbox.create(username, new_id(), "png")
    assert files_under(inbox.root) == []  # not even a temp file


def test_inbox_copy_is_named_by_the_server(inbox: Inbox) -> None:
    image_id = new_id()
    copy = inbox.create("alice", image_id, "png")
    assert isinstance(copy, InboxCopy)
    assert copy.name is not None
    assert INBOX_NAME_RE.fullmatch(copy.name)
    assert copy.name.endswith(f"-{image_id}.png")
    copy.write(b"\x89PNG")
    copy.write(memoryview(b" more"))
    with copy.reopen() as written:  # readable before the commit, for the image check
        assert written.read() == b"\x89PNG more"
    assert list(inbox.iter_files()) == []
    copy.commit()
    assert inbox.path_of("alice", copy.name).read_bytes() == b"\x89PNG more"
    assert list(inbox.iter_files()) == [("alice", copy.name)]
    assert files_under(inbox.tmp_dir) == []


def test_an_aborted_inbox_copy_leaves_nothing(inbox: Inbox) -> None:
    copy = inbox.create("alice", new_id(), "jpg")
    copy.write(b"half")
    copy.abort()
    copy.abort()
    assert files_under(inbox.root) == []


@pytest.mark.parametrize(("image_id", "extension"), [("../x", "png"), (new_id(), "p/ng")])
def test_inbox_copy_refuses_bad_ids_and_extensions(
    inbox: Inbox, image_id: str, extension: str
) -> None:
    with pytest.raises(ValueError):
        inbox.create("alice", image_id, extension)
    assert files_under(inbox.root) == []


@pytest.mark.parametrize("filename", ["../../x.png", "photo.jpg", "", "a" * 60])
def test_inbox_rejects_names_it_did_not_make(inbox: Inbox, filename: str) -> None:
    with pytest.raises(ValueError, match="inbox file name"):
        inbox.path_of("alice", filename)


def test_inbox_ignores_operator_files(inbox: Inbox) -> None:
    (inbox.root / "alice").mkdir()
    (inbox.root / "alice" / "notes.txt").write_text("mine")
    (inbox.root / "Shared").mkdir()
    (inbox.root / "Shared" / inbox_filename(new_id(), "png")).write_bytes(b"x")
    assert list(inbox.iter_files()) == []


# -- a full disk -------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, so that writes hit ENOSPC for real."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("cannot simulate a full disk: no mount command")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(
            "cannot simulate a full disk: mounting a 1 MiB tmpfs needs root with "
            f"CAP_SYS_ADMIN ({result.stderr.strip()})"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_full_disk_leaves_no_partial_file(small_fs: Path) -> None:
    store = FileBlobStore(small_fs / "data")
    inbox = Inbox(small_fs / "inbox")
    object_id = new_id()
    name = inbox_filename(object_id, "jpg")
    for writer in (store.create(object_id), inbox.create_file("alice", name)):
        with pytest.raises(StorageError, match="disk full") as info, writer:
            for _ in range(4):
                writer.write(b"\0" * 512 * 1024)
        assert isinstance(info.value.__cause__, OSError)
    assert not store.exists(object_id)
    assert not inbox.path_of("alice", name).exists()
    assert files_under(small_fs) == []
    # The space is back: a small object still fits.
    with store.create(object_id) as writer:
        writer.write(b"small")
        writer.commit()
    with store.open(object_id) as reader:
        assert reader.read() == b"small"
