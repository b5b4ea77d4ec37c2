"""The start-up sweep removes exactly what a crash left half-done."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgshare.store import (
    FileBlobStore,
    ImageRecord,
    Inbox,
    SQLiteCatalog,
    StorageKey,
    User,
    generate_storage_key,
    inbox_filename,
    sweep,
)


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


def upload(data: Data, *, object: bool = True, inbox: bool = True, row: bool = True) -> str:
    """Do the steps of an upload in the server's order, stopping where told to."""
    image_id = secrets.token_hex(16)
    name = inbox_filename(image_id, "png")
    if object:
        with data.blobs.create(image_id) as writer:
            writer.write(b"header+ciphertext")
            writer.commit()
    if inbox:
        with data.inbox.create("alice", name) as writer:
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
        data.inbox.create("alice", inbox_filename(secrets.token_hex(16), "jpg")),
    ]
    in_flight[0].write(b"crash mid-object")
    (data.blobs.tmp_dir / "old.part").write_bytes(b"x")
    operator_file = data.inbox.root / "alice" / "my notes.txt"
    operator_file.write_text("not ours")
    lost = upload(data)
    data.blobs.delete(lost)  # a row whose object vanished

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
    report = sweep(data.blobs, data.inbox, data.catalog)
    assert report.clean


def test_sweep_without_inbox_leaves_inbox_alone(data: Data) -> None:
    upload(data, row=False)
    report = sweep(data.blobs, None, data.catalog)
    assert len(report.orphan_objects_removed) == 1
    assert report.orphan_inbox_files_removed == ()
    assert len(list(data.inbox.iter_files())) == 1
