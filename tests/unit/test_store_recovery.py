"""The sweep removes exactly what a crash left half-done, and only once it is old.

Files without a catalog row are removed only when older than ``after`` seconds (by
mtime): an object another process committed a moment ago has no row yet, and must
survive. The tests age files with ``os.utime`` instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgshare.store import (
    DEFAULT_SWEEP_AFTER,
    FileBlobStore,
    ImageRecord,
    Inbox,
    SQLiteCatalog,
    StorageKey,
    StoreConfig,
    User,
    generate_storage_key,
    inbox_filename,
    open_store,
    sweep,
)
from imgshare.store.copies import ScratchCopies

HOUR = 3600.0


@dataclass
class Data:
    blobs: FileBlobStore
    inbox: Inbox
    catalog: SQLiteCatalog
    key: StorageKey
    alice: User


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Data]:
    with SQLiteCatalog(tmp_path / "catalog.sqlite") as catalog:
        yield Data(
            FileBlobStore(tmp_path),
            Inbox(tmp_path / "inbox"),
            catalog,
            generate_storage_key(),
            catalog.add_user("alice", "h"),
        )


def age(*paths: Path, seconds: float = 2 * HOUR) -> None:
    """Make files (every file below a folder) look last written ``seconds`` ago."""
    when = time.time() - seconds
    for path in paths:
        for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
            os.utime(file, (when, when))


def object_path(data: Data, image_id: str) -> Path:
    return data.blobs.path_of(image_id)


def inbox_file_of(data: Data, image_id: str) -> Path:
    (path,) = (data.inbox.root / "alice").glob(f"*-{image_id}.png")
    return path


def upload(data: Data, *, object: bool = True, inbox: bool = True, row: bool = True) -> str:
    """Do the steps of an upload in the server's order, stopping where told to."""
    image_id = secrets.token_hex(16)
    name = inbox_filename(image_id, "png")
    if object:
        with data.blobs.create(image_id) as writer:
            writer.write(b"header+ciphertext")
            writer.commit()
    if inbox:
        with data.inbox.create_file("alice", name) as writer:
            writer.write(b"\x89PNG plaintext")
            writer.commit()
    if row:
        wrapped = data.key.wrap(secrets.token_bytes(32), bytes.fromhex(image_id))
        record = ImageRecord(
            id=image_id,
            owner_id=data.alice.id,
            name="a.png",
            size=14,
            hmac=bytes(32),
            format="PNG",
            width=1,
            height=1,
            header=b"header",
            wrapped_key=wrapped,
            inbox_name=name,
            created_at=0,
        )
        data.catalog.add_image(record)
    return image_id


def test_sweep_removes_exactly_the_orphans(data: Data, caplog: pytest.LogCaptureFixture) -> None:
    complete = upload(data)
    no_inbox_copy = upload(data, inbox=False)
    crashed_before_row = upload(data, row=False)  # object + inbox file, no row
    inbox_only = upload(data, object=False, row=False)
    # Writers that a crash interrupted: their temp files stay behind.
    in_flight = [
        data.blobs.create(secrets.token_hex(16)),
        data.inbox.create_file("alice", inbox_filename(secrets.token_hex(16), "jpg")),
    ]
    in_flight[0].write(b"crash mid-object")
    (data.blobs.tmp_dir / "old.part").write_bytes(b"x")
    operator_file = data.inbox.root / "alice" / "my notes.txt"
    operator_file.write_text("not ours")
    lost = upload(data)
    data.blobs.delete(lost)  # a row whose object vanished
    age(data.blobs.root)  # the crash was long ago: everything is older than the bound

    with caplog.at_level(logging.INFO, logger="imgshare.store"):
        report = sweep(data.blobs, data.inbox, data.catalog)

    for writer in in_flight:
        writer.abort()  # only closes the descriptors: the sweep removed the files
    assert report.temp_files_removed == 3
    assert report.orphan_objects_removed == (crashed_before_row,)
    orphan_names = {name for _, name in report.orphan_inbox_files_removed}
    assert {n.split("-")[1].split(".")[0] for n in orphan_names} == {
        crashed_before_row,
        inbox_only,
    }
    assert report.missing_objects == (lost,)
    assert sorted(data.blobs.iter_ids()) == sorted([complete, no_inbox_copy])
    assert len(list(data.inbox.iter_files())) == 2  # complete + lost (rows exist)
    assert operator_file.exists()
    assert list(data.blobs.tmp_dir.iterdir()) == []
    assert list(data.inbox.tmp_dir.iterdir()) == []
    assert data.catalog.get_image(lost) is not None  # reported, never deleted
    assert any(r.levelno == logging.ERROR and lost in r.getMessage() for r in caplog.records)

    again = sweep(data.blobs, data.inbox, data.catalog)
    assert again.missing_objects == (lost,)
    assert (again.temp_files_removed, again.orphan_objects_removed) == (0, ())


def test_sweep_of_a_clean_store_does_nothing(data: Data) -> None:
    upload(data)
    age(data.blobs.root)
    report = sweep(data.blobs, data.inbox, data.catalog, exclusive=True)
    assert report.clean
    assert len(list(data.blobs.iter_ids())) == 1
    assert len(list(data.inbox.iter_files())) == 1


def test_the_default_bound_is_an_hour() -> None:
    assert DEFAULT_SWEEP_AFTER == HOUR


# --- the age bound -----------------------------------------------------------------------


def test_an_object_committed_a_moment_ago_by_another_process_survives(tmp_path: Path) -> None:
    """Another process's store committed an object; its row is not committed yet."""
    config = StoreConfig(data=tmp_path / "data", storage_key=generate_storage_key())
    with open_store(config) as sweeper, open_store(config) as other:
        image_id = secrets.token_hex(16)
        with other.blobs.create(image_id) as writer:
            writer.write(b"sealed")
            writer.commit()
        copy = other.inbox.create("alice", image_id, "png")
        copy.write(b"\x89PNG")
        copy.commit()
        assert copy.name is not None

        report = sweeper.sweep()

        assert report.clean
        assert other.blobs.exists(image_id)
        assert list(other.inbox.iter_files()) == [("alice", copy.name)]
        # Had the other process died there, the same files are orphans an hour later.
        age(sweeper.blobs.objects_dir, sweeper.inbox.root)
        later = sweeper.sweep()
        assert later.orphan_objects_removed == (image_id,)
        assert later.orphan_inbox_files_removed == (("alice", copy.name),)
        assert not other.blobs.exists(image_id)
        assert list(other.inbox.iter_files()) == []


def test_young_orphans_survive_and_old_ones_go(data: Data) -> None:
    young, old = upload(data, row=False), upload(data, row=False)
    young_copy, old_copy = inbox_file_of(data, young), inbox_file_of(data, old)
    age(object_path(data, old), old_copy, seconds=HOUR + 60)
    age(object_path(data, young), young_copy, seconds=HOUR - 60)

    report = sweep(data.blobs, data.inbox, data.catalog, after=HOUR)

    assert report.orphan_objects_removed == (old,)
    assert report.orphan_inbox_files_removed == (("alice", old_copy.name),)
    assert list(data.blobs.iter_ids()) == [young]
    assert list(data.inbox.iter_files()) == [("alice", young_copy.name)]


def test_the_bound_is_the_after_argument(data: Data) -> None:
    orphan = upload(data, row=False)
    age(object_path(data, orphan), inbox_file_of(data, orphan), seconds=120)
    assert sweep(data.blobs, data.inbox, data.catalog, after=HOUR).clean
    assert data.blobs.exists(orphan)
    report = sweep(data.blobs, data.inbox, data.catalog, after=60)
    assert report.orphan_objects_removed == (orphan,)
    assert len(report.orphan_inbox_files_removed) == 1
    assert not data.blobs.exists(orphan)
    assert list(data.inbox.iter_files()) == []


def test_young_temp_files_survive_unless_exclusive(data: Data) -> None:
    blob_writer = data.blobs.create(secrets.token_hex(16))
    blob_writer.write(b"on its way")
    inbox_writer = data.inbox.create_file("alice", inbox_filename(secrets.token_hex(16), "png"))
    inbox_writer.write(b"on its way too")
    old_blob_temp = data.blobs.tmp_dir / "crashed.part"
    old_inbox_temp = data.inbox.tmp_dir / "crashed.part"
    for path in (old_blob_temp, old_inbox_temp):
        path.write_bytes(b"left by a crash")
        age(path)

    report = sweep(data.blobs, data.inbox, data.catalog)

    assert report.temp_files_removed == 2
    assert not old_blob_temp.exists() and not old_inbox_temp.exists()
    assert blob_writer.tmp_path.exists() and inbox_writer.tmp_path.exists()
    # The writers were not disturbed: they still commit.
    blob_writer.commit()
    assert data.blobs.exists(blob_writer.final_path.name)
    inbox_writer.commit()
    assert inbox_writer.final_path.exists()


def test_an_exclusive_sweep_removes_every_leftover_whatever_its_age(data: Data) -> None:
    """At start-up under the lock nothing else writes: young leftovers go too."""
    writer = data.blobs.create(secrets.token_hex(16))
    writer.write(b"a writer the start-up sweep does not expect")
    orphan = upload(data, row=False)  # young
    complete = upload(data)  # young, with its row

    report = sweep(data.blobs, data.inbox, data.catalog, exclusive=True)

    assert report.temp_files_removed == 1
    assert not writer.tmp_path.exists()
    assert report.orphan_objects_removed == (orphan,)
    assert len(report.orphan_inbox_files_removed) == 1
    assert list(data.blobs.iter_ids()) == [complete]
    assert len(list(data.inbox.iter_files())) == 1
    writer.abort()


def test_a_store_sweeps_with_its_configured_bound(tmp_path: Path) -> None:
    config = StoreConfig(data=tmp_path / "data", storage_key=generate_storage_key(), sweep_after=60)
    with open_store(config) as store:
        image_id = secrets.token_hex(16)
        with store.blobs.create(image_id) as blob:
            blob.commit()
        age(store.blobs.path_of(image_id), seconds=30)
        assert store.sweep().clean  # younger than its 60 s
        age(store.blobs.path_of(image_id), seconds=90)
        assert store.sweep().orphan_objects_removed == (image_id,)


def test_a_missing_object_is_reported_however_young_its_row(data: Data) -> None:
    lost = upload(data)
    data.blobs.delete(lost)
    report = sweep(data.blobs, data.inbox, data.catalog)
    assert report.missing_objects == (lost,)
    assert data.catalog.get_image(lost) is not None


def test_iter_ids_and_iter_files_filter_by_age(data: Data) -> None:
    old, young = upload(data), upload(data)
    age(object_path(data, old), inbox_file_of(data, old))
    before = time.time() - HOUR
    assert list(data.blobs.iter_ids(before)) == [old]
    assert sorted(data.blobs.iter_ids()) == sorted([old, young])
    assert [name for _, name in data.inbox.iter_files(before)] == [inbox_file_of(data, old).name]
    assert len(list(data.inbox.iter_files())) == 2


# --- the inbox is swept even when copies are off ------------------------------------------


def test_a_store_without_inbox_copies_still_sweeps_the_inbox(tmp_path: Path) -> None:
    """Copies turned off after they were on: the inbox's orphans still go."""
    on = StoreConfig(data=tmp_path / "data", storage_key=generate_storage_key())
    with open_store(on) as store:
        alice = store.catalog.add_user("alice", "h")
        kept = store.inbox.create("alice", secrets.token_hex(16), "png")
        kept.write(b"\x89PNG")
        kept.commit()
        orphan = store.inbox.create("alice", secrets.token_hex(16), "png")
        orphan.write(b"\x89PNG")
        orphan.commit()
        assert kept.name is not None and orphan.name is not None
        record = make_row(alice, kept.name)
        store.catalog.add_image(record)
        with store.blobs.create(record.id) as writer:
            writer.commit()
    off = StoreConfig(data=tmp_path / "data", storage_key=on.storage_key, inbox=False)
    with open_store(off) as store:
        assert isinstance(store.copies, ScratchCopies)
        age(store.inbox.root, store.blobs.objects_dir)
        report = store.sweep()
        assert report.orphan_inbox_files_removed == (("alice", orphan.name),)
        assert report.orphan_objects_removed == ()
        assert list(store.inbox.iter_files()) == [("alice", kept.name)]


def make_row(owner: User, inbox_name: str) -> ImageRecord:
    image_id = inbox_name.split("-")[1].split(".")[0]
    return ImageRecord(
        id=image_id,
        owner_id=owner.id,
        name="a.png",
        size=5,
        hmac=bytes(32),
        format="PNG",
        width=1,
        height=1,
        header=b"header",
        wrapped_key=b"wrapped",
        inbox_name=inbox_name,
        created_at=0,
    )
