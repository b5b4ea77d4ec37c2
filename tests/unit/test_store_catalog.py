"""SQLite catalog: schema, round trips, deletion that shreds, concurrency, errors."""

from __future__ import annotations

import dataclasses
import os
import secrets
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from imgshare.errors import ConfigError, StorageError
from imgshare.store.catalog import (
    SCHEMA_VERSION,
    DeletedImage,
    SQLiteCatalog,
    User,
    UserExistsError,
)
from store_helpers import make_record


def test_new_catalog_settings(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with SQLiteCatalog(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with SQLiteCatalog(path) as first:
        alice = first.add_user("alice", "$argon2id$fake")
        record = make_record(alice)
        first.add_image(record)
    with SQLiteCatalog(path) as second:
        assert second.get_user_by_name("alice") == alice
        assert second.get_image(record.id) == record


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageError, match="upgrade imgshare"):
        SQLiteCatalog(path)


def test_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError) as info:
        SQLiteCatalog(path)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_users_round_trip(catalog: SQLiteCatalog) -> None:
    bob = catalog.add_user("bob", "hash-b", created_at=5)
    alice = catalog.add_user("alice", "hash-a")
    assert bob == User(bob.id, "bob", "hash-b", 5)
    assert catalog.get_user_by_name("alice") == alice
    assert catalog.get_user_by_name("carol") is None
    assert catalog.list_users() == [alice, bob]
    catalog.set_password_hash(alice.id, "hash-a2")
    assert catalog.get_user_by_name("alice") == dataclasses.replace(alice, password_hash="hash-a2")


def test_user_repr_hides_the_hash(catalog: SQLiteCatalog) -> None:
    user = catalog.add_user("alice", "$argon2id$secret-hash")
    assert "secret-hash" not in repr(user)


def test_duplicate_user_is_a_clear_error(catalog: SQLiteCatalog) -> None:
    catalog.add_user("alice", "h")
    with pytest.raises(UserExistsError, match="'alice' already exists") as info:
        catalog.add_user("alice", "h2")
    assert isinstance(info.value, ConfigError)
    assert [u.password_hash for u in catalog.list_users()] == ["h"]


def test_images_round_trip(catalog: SQLiteCatalog) -> None:
    alice = catalog.add_user("alice", "h")
    bob = catalog.add_user("bob", "h")
    first = make_record(alice, size=100)
    second = dataclasses.replace(
        make_record(alice, inbox=False, size=50), created_at=2_000_000_000_000
    )
    catalog.add_image(first)
    catalog.add_image(second)
    catalog.add_image(make_record(bob, size=7))
    assert catalog.get_image(first.id) == first
    assert catalog.get_image(secrets.token_hex(16)) is None
    assert catalog.list_images(alice.id) == [first, second]
    assert catalog.used_bytes(alice.id) == 150
    assert catalog.used_bytes(bob.id) == 7
    assert catalog.used_bytes(9999) == 0
    assert len(catalog.image_ids()) == 3
    assert catalog.inbox_names() == {
        ("alice", str(first.inbox_name)),
        ("bob", str(catalog.list_images(bob.id)[0].inbox_name)),
    }


def test_record_fields_are_checked() -> None:
    owner = User(1, "alice", "h", 0)
    good = make_record(owner)
    for change in ({"id": "../x"}, {"hmac": b"short"}, {"size": -1}, {"width": 0}):
        with pytest.raises(ValueError):
            dataclasses.replace(good, **change)


def test_bad_image_inserts_are_storage_errors(catalog: SQLiteCatalog) -> None:
    alice = catalog.add_user("alice", "h")
    record = make_record(alice)
    catalog.add_image(record)
    with pytest.raises(StorageError, match="UNIQUE"):
        catalog.add_image(record)
    with pytest.raises(StorageError, match="FOREIGN KEY"):
        catalog.add_image(dataclasses.replace(make_record(alice), owner_id=alice.id + 100))
    assert catalog.list_images(alice.id) == [record]  # the failed inserts rolled back


def test_delete_image_returns_what_to_remove(catalog: SQLiteCatalog) -> None:
    alice = catalog.add_user("alice", "h")
    record = make_record(alice)
    catalog.add_image(record)
    removed = catalog.delete_image(record.id)
    assert removed == DeletedImage(record.id, "alice", record.inbox_name)
    assert catalog.get_image(record.id) is None
    assert catalog.delete_image(record.id) is None


def test_deleted_wrapped_key_is_gone_from_every_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with SQLiteCatalog(path) as catalog:
        alice = catalog.add_user("alice", "h")
        records = [make_record(alice) for _ in range(3)]
        for record in records:
            catalog.add_image(record)

        def on_disk() -> bytes:
            files = [p for p in tmp_path.iterdir() if p.name.startswith("catalog.sqlite")]
            return b"".join(p.read_bytes() for p in files)

        assert records[1].wrapped_key in on_disk()
        catalog.delete_image(records[1].id)
        assert records[1].wrapped_key not in on_disk()
        assert records[0].wrapped_key in on_disk()


def test_remove_user_refuses_while_they_own_images(catalog: SQLiteCatalog) -> None:
    alice = catalog.add_user("alice", "h")
    records = [make_record(alice), make_record(alice, inbox=False)]
    for record in records:
        catalog.add_image(record)
    with pytest.raises(ConfigError, match="owns 2 image"):
        catalog.remove_user("alice")
    assert catalog.get_user_by_name("alice") == alice
    removed = catalog.remove_user("alice", purge=True)
    assert sorted(removed, key=lambda d: d.image_id) == sorted(
        (DeletedImage(r.id, "alice", r.inbox_name) for r in records), key=lambda d: d.image_id
    )
    assert catalog.get_user_by_name("alice") is None
    assert catalog.image_ids() == set()


def test_remove_user_without_images_and_unknown_user(catalog: SQLiteCatalog) -> None:
    catalog.add_user("bob", "h")
    assert catalog.remove_user("bob") == []
    with pytest.raises(ConfigError, match="no user named 'bob'"):
        catalog.remove_user("bob")


def test_closed_catalog_raises_storage_error(tmp_path: Path) -> None:
    catalog = SQLiteCatalog(tmp_path / "catalog.sqlite")
    catalog.close()
    catalog.close()  # idempotent
    with pytest.raises(StorageError):
        catalog.list_users()


def test_eight_threads_write_and_read_at_once(catalog: SQLiteCatalog) -> None:
    owners = [catalog.add_user(f"user{i}", "h") for i in range(8)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(owner: User) -> None:
        try:
            barrier.wait()
            for _ in range(25):
                record = make_record(owner, size=10)
                catalog.add_image(record)
                assert catalog.get_image(record.id) == record
                catalog.list_images(owner.id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(catalog.image_ids()) == 200
    assert all(catalog.used_bytes(owner.id) == 250 for owner in owners)


def test_two_catalog_objects_on_one_file(tmp_path: Path) -> None:
    # Another process (say `imgshare user add` while the server runs) shares the file.
    path = tmp_path / "catalog.sqlite"
    with SQLiteCatalog(path) as server, SQLiteCatalog(path) as cli:
        cli.add_user("alice", "h")
        assert server.get_user_by_name("alice") is not None
    assert not os.path.exists(str(path) + "-journal")
