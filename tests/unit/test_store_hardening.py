"""Store hardening: user ids never reused (on SQLite and PostgreSQL, and across
SQLite's schema 1 -> 2 migration), no symlink followed inside a store, folders made
again on commit, scratch files.

Real SQLite files, a real PostgreSQL and real symlinks; nothing is mocked.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from imgshare.errors import ConfigError, StorageError
from imgshare.store.blobs import AtomicFile, FileBlobStore
from imgshare.store.catalog import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    ImageRecord,
    SQLCatalog,
    SQLiteCatalog,
    User,
    now_ms,
)
from imgshare.store.copies import Inbox, inbox_filename
from services.postgres import CATALOG_KINDS
from store_helpers import make_record

HASH = "$argon2id$fake"


@pytest.fixture(params=CATALOG_KINDS)
def catalog_kind(request: pytest.FixtureRequest) -> str:
    """The tests that take a catalog run on SQLite and PostgreSQL; the migration tests
    below are SQLite's own (a PostgreSQL catalog starts at the current version)."""
    return str(request.param)


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


# --- user ids --------------------------------------------------------------------------


def test_user_ids_are_never_reused(catalog: SQLCatalog) -> None:
    a = catalog.add_user("a", HASH)
    b = catalog.add_user("b", HASH)
    assert b.id > a.id
    catalog.remove_user("b")
    c = catalog.add_user("c", HASH)
    assert c.id > b.id
    catalog.remove_user("c")
    catalog.remove_user("a")  # no users left at all
    d = catalog.add_user("d", HASH)
    assert d.id > c.id


def test_user_ids_are_never_reused_after_reopening(
    catalog_opener: Callable[[], SQLCatalog],
) -> None:
    with catalog_opener() as first:
        first.add_user("a", HASH)
        highest = first.add_user("b", HASH)
        first.remove_user("b")  # the highest id
    with catalog_opener() as reopened:
        again = reopened.add_user("b", HASH)  # the same name, even
        assert again.id > highest.id
        assert reopened.get_user(highest.id) is None


def test_get_user(catalog: SQLCatalog) -> None:
    alice = catalog.add_user("alice", HASH, created_at=1_700_000_000_123)
    bob = catalog.add_user("bob", "$argon2id$other")
    assert catalog.get_user(alice.id) == alice
    assert catalog.get_user(bob.id) == bob
    assert catalog.get_user(alice.id) == User(alice.id, "alice", HASH, 1_700_000_000_123)
    assert catalog.get_user(bob.id + 1000) is None
    assert catalog.get_user(0) is None
    assert catalog.get_user(-1) is None
    catalog.remove_user("alice")
    assert catalog.get_user(alice.id) is None
    assert catalog.get_user(bob.id) == bob


def test_existing_user_ids(catalog: SQLCatalog) -> None:
    users = [catalog.add_user(f"user{i}", HASH) for i in range(5)]
    catalog.remove_user("user1")
    catalog.remove_user("user3")
    ids = [u.id for u in users]
    assert catalog.existing_user_ids(ids) == {ids[0], ids[2], ids[4]}
    assert catalog.existing_user_ids([ids[1], ids[3], 999_999, -5, 0]) == set()
    assert catalog.existing_user_ids([]) == set()
    assert catalog.existing_user_ids(iter([ids[0], ids[0], ids[4]])) == {ids[0], ids[4]}
    assert catalog.existing_user_ids({ids[2]}) == {ids[2]}


def test_existing_user_ids_with_more_ids_than_sqlite_variables(catalog: SQLCatalog) -> None:
    users = [catalog.add_user(f"user{i}", HASH) for i in range(3)]
    wanted = [*range(100_000, 101_500), *(u.id for u in users), *range(200_000, 200_700)]
    assert catalog.existing_user_ids(wanted) == {u.id for u in users}
    assert catalog.existing_user_ids(range(1, 40_001)) == {u.id for u in users}


# --- migration from schema version 1 ---------------------------------------------------


def make_version_1(path: Path) -> tuple[list[tuple[int, str, str, int]], ImageRecord]:
    """A catalog as imgshare made it at schema version 1, with users and an image."""
    users = [
        (1, "alice", "$argon2id$alice", 1_600_000_000_000),
        (2, "bob", "$argon2id$bob", 1_600_000_000_001),
        (5, "carol", "$argon2id$carol", 1_600_000_000_002),
    ]
    record = make_record(1, size=4321)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        for statement in _MIGRATIONS[0]:
            db.execute(statement)
        db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", users)
        db.execute(
            "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id, record.owner_id, record.name, record.size, record.hmac,
                record.format, record.width, record.height, record.header,
                record.wrapped_key, record.inbox_name, record.created_at,
            ),
        )  # fmt: skip
        db.execute("PRAGMA user_version = 1")
        db.execute("COMMIT")
    finally:
        db.close()
    return users, record


def test_version_1_catalog_migrates_keeping_everything(catalog_path: Path) -> None:
    users, record = make_version_1(catalog_path)
    assert user_version(catalog_path) == 1
    with SQLiteCatalog(catalog_path) as catalog:
        assert [(u.id, u.name, u.password_hash, u.created_at) for u in catalog.list_users()] == (
            users
        )
        assert catalog.get_image(record.id) == record
        assert catalog.list_images(1) == [record]
        assert catalog.used_bytes(1) == 4321
        assert catalog.existing_user_ids([1, 2, 3, 4, 5]) == {1, 2, 5}
        # The new tables of version 2 are there and work.
        assert catalog.add_login_failure("account", "alice", 1000, 0) == 1
        catalog.note_login_success("192.0.2.1", 2000)
        assert catalog.last_login_success("192.0.2.1") == 2000
        # ...and those of version 4.
        catalog.audit("login", "alice", "192.0.2.1", 3000, method="password")
        (event,) = catalog.audit_events(user_name="alice")
        assert (event.event, event.detail) == ("login", {"method": "password"})
    assert user_version(catalog_path) == SCHEMA_VERSION == 5
    with SQLiteCatalog(catalog_path) as reopened:  # opening again changes nothing
        assert len(reopened.list_users()) == 3
        assert reopened.get_image(record.id) == record
    assert user_version(catalog_path) == SCHEMA_VERSION


def test_foreign_keys_still_hold_after_the_migration(catalog_path: Path) -> None:
    _, record = make_version_1(catalog_path)
    with SQLiteCatalog(catalog_path) as catalog:
        with pytest.raises(StorageError, match="FOREIGN KEY"):
            catalog.add_image(make_record(999))  # no such owner
        with pytest.raises(ConfigError, match="owns 1 image"):
            catalog.remove_user("alice")
        assert catalog.get_user(1) is not None
    db = sqlite3.connect(catalog_path)
    try:
        references = db.execute("PRAGMA foreign_key_list(images)").fetchall()
        assert [(row[2], row[3], row[4]) for row in references] == [("users", "owner_id", "id")]
        db.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            db.execute("DELETE FROM users WHERE id = 1")  # alice owns an image
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
    with SQLiteCatalog(catalog_path) as catalog:
        removed = catalog.remove_user("alice", purge=True)
        assert [d.image_id for d in removed] == [record.id]


def test_migrated_catalog_never_reuses_ids(catalog_path: Path) -> None:
    make_version_1(catalog_path)
    with SQLiteCatalog(catalog_path) as catalog:
        dave = catalog.add_user("dave", HASH)
        assert dave.id > 5  # after the highest id carried over
        catalog.remove_user("dave")
        catalog.remove_user("carol")
    with SQLiteCatalog(catalog_path) as reopened:
        erin = reopened.add_user("erin", HASH)
        assert erin.id > dave.id


# --- a version 2 catalog made before uploads were reserved in it -----------------------


def make_version_2_without_reservations(path: Path) -> int:
    """A catalog at schema version 2, before uploads in flight were reserved in it
    (version 3). Returns the id of its one user."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        for statement in _MIGRATIONS[0]:
            db.execute(statement)
        for statement in _MIGRATIONS[1]:
            db.execute(statement)
        db.execute("INSERT INTO users (name, password_hash, created_at) VALUES ('alice', 'h', 1)")
        db.execute("PRAGMA user_version = 2")
        db.execute("COMMIT")
        return int(db.execute("SELECT id FROM users").fetchone()[0])
    finally:
        db.close()


def test_a_version_2_catalog_of_the_previous_release_can_reserve_uploads(
    catalog_path: Path,
) -> None:
    alice = make_version_2_without_reservations(catalog_path)
    with SQLiteCatalog(catalog_path) as catalog:
        reservation = catalog.reserve_upload(
            alice, 10, quota=0, per_user=1, holder="h", expires=now_ms() + 60_000
        )
        assert catalog.uploads_in_flight(alice) == 1
        catalog.add_image(make_record(alice), reservation=reservation)
        assert catalog.uploads_in_flight(alice) == 0


# --- no symlink followed in the blob store ---------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "data")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every store, where an attacker would like files to go."""
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def id_with_prefix(prefix: str) -> str:
    return prefix + secrets.token_hex(15)


def test_committing_through_a_linked_object_folder_is_refused(
    store: FileBlobStore, outside: Path
) -> None:
    (store.objects_dir / "ab").symlink_to(outside)
    object_id = id_with_prefix("ab")
    writer = store.create(object_id)
    writer.write(b"sealed bytes")
    with pytest.raises(StorageError, match="symbolic link"):
        writer.commit()
    assert listing(outside) == []
    assert listing(store.tmp_dir) == []  # the temp file went too
    assert (store.objects_dir / "ab").is_symlink()  # left for the operator to see
    # Another prefix is not affected.
    other = id_with_prefix("cd")
    with store.create(other) as fine:
        fine.write(b"ok")
        fine.commit()
    assert store.exists(other)


def test_reading_through_a_linked_object_folder_is_refused(
    store: FileBlobStore, outside: Path
) -> None:
    object_id = id_with_prefix("ab")
    (outside / object_id).write_bytes(b"planted")
    (store.objects_dir / "ab").symlink_to(outside)
    with pytest.raises(StorageError, match="symbolic link"):
        store.open(object_id)
    with pytest.raises(StorageError, match="symbolic link"):
        store.size(object_id)
    try:
        assert store.exists(object_id) is False
    except StorageError as exc:  # refused, which is fine too: it did not follow
        assert "symbolic link" in str(exc)
    with pytest.raises(StorageError, match="symbolic link"):
        store.delete(object_id)
    assert (outside / object_id).read_bytes() == b"planted"  # never removed
    assert list(store.iter_ids()) == []  # and never listed


def test_reading_a_linked_object_file_is_refused(store: FileBlobStore, outside: Path) -> None:
    object_id = id_with_prefix("ab")
    (outside / "secret").write_bytes(b"not an object")
    (store.objects_dir / "ab").mkdir()
    (store.objects_dir / "ab" / object_id).symlink_to(outside / "secret")
    with pytest.raises(StorageError) as opened:
        store.open(object_id)
    assert "symbolic link" in str(opened.value)
    with pytest.raises(StorageError, match="not a regular file"):
        store.size(object_id)
    assert list(store.iter_ids()) == []
    assert store.delete(object_id) is True  # removes the link itself
    assert (outside / "secret").read_bytes() == b"not an object"


def test_exists_is_false_for_a_linked_object_file(store: FileBlobStore, outside: Path) -> None:
    object_id = id_with_prefix("ab")
    (outside / "secret").write_bytes(b"not an object")
    (store.objects_dir / "ab").mkdir()
    (store.objects_dir / "ab" / object_id).symlink_to(outside / "secret")
    assert store.exists(object_id) is False


def test_a_linked_temp_folder_is_refused(store: FileBlobStore, outside: Path) -> None:
    (outside / "left.part").write_bytes(b"someone else's")
    shutil.rmtree(store.tmp_dir)
    store.tmp_dir.symlink_to(outside)
    with pytest.raises(StorageError, match="symbolic link"):
        store.create(id_with_prefix("ab"))
    with pytest.raises(StorageError, match="symbolic link"):
        store.scratch_file()
    with pytest.raises(StorageError, match="symbolic link"):
        store.sweep_temp()
    with pytest.raises(StorageError, match="symbolic link"):
        FileBlobStore(store.root)  # nor is it accepted at start-up
    assert listing(outside) == ["left.part"]


def test_a_linked_objects_folder_is_refused(store: FileBlobStore, outside: Path) -> None:
    shutil.rmtree(store.objects_dir)
    store.objects_dir.symlink_to(outside)
    writer = store.create(id_with_prefix("ab"))
    writer.write(b"x")
    with pytest.raises(StorageError, match="symbolic link"):
        writer.commit()
    with pytest.raises(StorageError, match="symbolic link"):
        list(store.iter_ids())
    assert listing(outside) == []


def test_the_store_root_itself_may_be_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real-data"
    real.mkdir()
    (tmp_path / "data-link").symlink_to(real)
    store = FileBlobStore(tmp_path / "data-link")  # the operator's choice: allowed
    object_id = id_with_prefix("ab")
    with store.create(object_id) as writer:
        writer.write(b"fine")
        writer.commit()
    assert (real / "objects" / "ab" / object_id).read_bytes() == b"fine"


# --- no symlink followed in the inbox --------------------------------------------------


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox(tmp_path / "inbox")


def new_name() -> str:
    return inbox_filename(secrets.token_hex(16), "jpg")


def test_a_linked_user_folder_is_refused(inbox: Inbox, outside: Path) -> None:
    (inbox.root / "alice").symlink_to(outside)
    writer = inbox.create_file("alice", new_name())
    writer.write(b"decrypted image")
    with pytest.raises(StorageError, match="symbolic link"):
        writer.commit()
    assert listing(outside) == []
    assert listing(inbox.tmp_dir) == []


def test_deleting_and_listing_through_a_linked_user_folder(inbox: Inbox, outside: Path) -> None:
    name = new_name()
    (outside / name).write_bytes(b"planted")
    (inbox.root / "alice").symlink_to(outside)
    with pytest.raises(StorageError, match="symbolic link"):
        inbox.delete("alice", name)
    assert list(inbox.iter_files()) == []
    assert inbox.remove_empty_folder("alice") is False  # neither the link nor its target
    assert (inbox.root / "alice").is_symlink()
    assert (outside / name).read_bytes() == b"planted"


def test_remove_empty_folder_never_removes_a_linked_target(inbox: Inbox, outside: Path) -> None:
    (inbox.root / "alice").symlink_to(outside)  # outside is empty
    assert inbox.remove_empty_folder("alice") is False
    assert outside.is_dir()
    assert (inbox.root / "alice").is_symlink()


def test_a_linked_inbox_temp_folder_is_refused(inbox: Inbox, outside: Path) -> None:
    (outside / "left.part").write_bytes(b"someone else's")
    shutil.rmtree(inbox.tmp_dir)
    inbox.tmp_dir.symlink_to(outside)
    with pytest.raises(StorageError, match="symbolic link"):
        inbox.create_file("alice", new_name())
    with pytest.raises(StorageError, match="symbolic link"):
        inbox.sweep_temp()
    with pytest.raises(StorageError, match="symbolic link"):
        Inbox(inbox.root)
    assert listing(outside) == ["left.part"]
    assert not (inbox.root / "alice").exists()


# --- remove_empty_folder and folders made again on commit ------------------------------


def commit(writer: AtomicFile, data: bytes) -> None:
    with writer:
        writer.write(data)
        writer.commit()


def test_remove_empty_folder(inbox: Inbox) -> None:
    name = new_name()
    commit(inbox.create_file("alice", name), b"image")
    assert inbox.remove_empty_folder("alice") is False  # holds a file: kept
    assert (inbox.root / "alice" / name).read_bytes() == b"image"
    assert inbox.delete("alice", name) is True
    assert inbox.remove_empty_folder("alice") is True
    assert not (inbox.root / "alice").exists()
    assert inbox.remove_empty_folder("alice") is False  # missing: fine
    assert inbox.remove_empty_folder("nobody") is False
    assert sorted(os.listdir(inbox.root)) == [".tmp"]


def test_remove_empty_folder_refuses_bad_names(inbox: Inbox) -> None:
    for bad in ("..", ".tmp", "a/b", "Alice", ""):
        with pytest.raises(ValueError):
            inbox.remove_empty_folder(bad)
    assert inbox.tmp_dir.is_dir()


def test_remove_empty_folder_leaves_a_plain_file_alone(inbox: Inbox) -> None:
    (inbox.root / "alice").write_text("not a folder")
    assert inbox.remove_empty_folder("alice") is False
    assert (inbox.root / "alice").read_text() == "not a folder"


def test_an_inbox_folder_removed_before_commit_is_made_again(inbox: Inbox) -> None:
    first = new_name()
    commit(inbox.create_file("alice", first), b"first")
    inbox.delete("alice", first)
    writer = inbox.create_file("alice", new_name())
    writer.write(b"second image")
    assert inbox.remove_empty_folder("alice") is True  # a purge got there first
    assert not (inbox.root / "alice").exists()
    writer.commit()
    folder = inbox.root / "alice"
    assert [p.read_bytes() for p in folder.iterdir()] == [b"second image"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert listing(inbox.tmp_dir) == []


def test_an_object_folder_removed_before_commit_is_made_again(store: FileBlobStore) -> None:
    earlier = id_with_prefix("ef")
    commit(store.create(earlier), b"earlier")
    object_id = id_with_prefix("ef")
    writer = store.create(object_id)
    writer.write(b"sealed")
    store.delete(earlier)
    os.rmdir(store.objects_dir / "ef")  # the folder is gone when the commit comes
    writer.commit()
    assert stat.S_IMODE((store.objects_dir / "ef").stat().st_mode) == 0o700
    with store.open(object_id) as reader:
        assert reader.read() == b"sealed"


# --- scratch files ---------------------------------------------------------------------


def test_scratch_file_is_anonymous_and_private(store: FileBlobStore) -> None:
    with store.scratch_file() as scratch:
        assert listing(store.tmp_dir) == []  # no name, not even while open
        scratch.write(b"image bytes to check" * 1000)
        scratch.flush()
        scratch.seek(0)
        assert scratch.read(11) == b"image bytes"
        info = os.fstat(scratch.fileno())
        assert info.st_nlink == 0
        assert stat.S_ISREG(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_dev == store.tmp_dir.stat().st_dev  # in the store's temp folder
        assert info.st_size == 20_000
    assert listing(store.tmp_dir) == []
    assert store.sweep_temp() == 0


def test_scratch_files_are_independent(store: FileBlobStore) -> None:
    with store.scratch_file() as one, store.scratch_file() as two:
        one.write(b"one")
        two.write(b"two!")
        one.seek(0)
        two.seek(0)
        assert (one.read(), two.read()) == (b"one", b"two!")
    assert listing(store.tmp_dir) == []
