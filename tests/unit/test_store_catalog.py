"""The catalog: schema, round trips, deletion, concurrency, errors; on SQLite and on
PostgreSQL alike (``catalog`` is both), and what only SQLite has (its file)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from imgshare.errors import ConfigError, QuotaError, StorageError, TryLaterError
from imgshare.store.catalog import (
    SCHEMA_VERSION,
    DeletedImage,
    SQLCatalog,
    SQLiteCatalog,
    User,
    UserExistsError,
    now_ms,
)
from services.postgres import CATALOG_KINDS
from store_helpers import make_record

Opener = Callable[[], SQLCatalog]


@pytest.fixture(params=CATALOG_KINDS)
def catalog_kind(request: pytest.FixtureRequest) -> str:
    """Every test of this module that takes a catalog runs on SQLite and PostgreSQL."""
    return str(request.param)


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


def test_reopen_keeps_data(catalog_opener: Opener) -> None:
    with catalog_opener() as first:
        alice = first.add_user("alice", "$argon2id$fake")
        record = make_record(alice)
        first.add_image(record)
    with catalog_opener() as second:
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


def test_users_round_trip(catalog: SQLCatalog) -> None:
    bob = catalog.add_user("bob", "hash-b", created_at=5)
    alice = catalog.add_user("alice", "hash-a")
    assert bob == User(bob.id, "bob", "hash-b", 5)
    assert catalog.get_user_by_name("alice") == alice
    assert catalog.get_user_by_name("carol") is None
    assert catalog.list_users() == [alice, bob]
    catalog.set_password_hash(alice.id, "hash-a2")
    assert catalog.get_user_by_name("alice") == dataclasses.replace(alice, password_hash="hash-a2")


def test_user_repr_hides_the_hash(catalog: SQLCatalog) -> None:
    user = catalog.add_user("alice", "$argon2id$secret-hash")
    assert "secret-hash" not in repr(user)


def test_duplicate_user_is_a_clear_error(catalog: SQLCatalog) -> None:
    catalog.add_user("alice", "h")
    with pytest.raises(UserExistsError, match="'alice' already exists") as info:
        catalog.add_user("alice", "h2")
    assert isinstance(info.value, ConfigError)
    assert [u.password_hash for u in catalog.list_users()] == ["h"]


def test_images_round_trip(catalog: SQLCatalog) -> None:
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


def test_bad_image_inserts_are_storage_errors(catalog: SQLCatalog) -> None:
    alice = catalog.add_user("alice", "h")
    record = make_record(alice)
    catalog.add_image(record)
    with pytest.raises(StorageError, match="UNIQUE"):
        catalog.add_image(record)
    with pytest.raises(StorageError, match="FOREIGN KEY"):
        catalog.add_image(dataclasses.replace(make_record(alice), owner_id=alice.id + 100))
    assert catalog.list_images(alice.id) == [record]  # the failed inserts rolled back


def test_delete_image_returns_what_to_remove(catalog: SQLCatalog) -> None:
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


def test_remove_user_refuses_while_they_own_images(catalog: SQLCatalog) -> None:
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


def test_remove_user_without_images_and_unknown_user(catalog: SQLCatalog) -> None:
    catalog.add_user("bob", "h")
    assert catalog.remove_user("bob") == []
    with pytest.raises(ConfigError, match="no user named 'bob'"):
        catalog.remove_user("bob")


def test_closed_catalog_raises_storage_error(catalog_opener: Opener) -> None:
    catalog = catalog_opener()
    catalog.close()
    catalog.close()  # idempotent
    with pytest.raises(StorageError):
        catalog.list_users()


def test_eight_threads_write_and_read_at_once(catalog: SQLCatalog) -> None:
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


# --- uploads in flight: reservations against the quota and the places per user ----------

STORED = 600  # bytes alice already has in the catalog
LATER = 10**15  # a lease that does not lapse during a test (unix ms)


@pytest.fixture
def alice(catalog: SQLCatalog) -> User:
    user = catalog.add_user("alice", "$argon2id$fake")
    catalog.add_image(make_record(user, size=STORED))
    return user


@pytest.fixture
def bob(catalog: SQLCatalog) -> User:
    return catalog.add_user("bob", "$argon2id$fake")


def reserve(
    catalog: SQLCatalog,
    user: User,
    size: int,
    *,
    quota: int = 0,
    per_user: int = 10,
    holder: str = "host:1",
    expires: int = LATER,
) -> int:
    return catalog.reserve_upload(
        user.id, size, quota=quota, per_user=per_user, holder=holder, expires=expires
    )


def test_per_user_places_say_try_later(catalog: SQLCatalog, alice: User) -> None:
    held = [reserve(catalog, alice, 10, per_user=2) for _ in range(2)]
    assert held[0] != held[1]
    assert catalog.uploads_in_flight(alice.id) == 2
    with pytest.raises(TryLaterError, match="2 uploads in flight") as refused:
        reserve(catalog, alice, 10, per_user=2)
    assert refused.value.retry_after > 0
    assert catalog.uploads_in_flight(alice.id) == 2  # the refusal took nothing
    catalog.release_reservation(held[0])
    assert catalog.uploads_in_flight(alice.id) == 1
    reserve(catalog, alice, 10, per_user=2)


def test_two_users_do_not_share_places(catalog: SQLCatalog, alice: User, bob: User) -> None:
    reserve(catalog, alice, 10, per_user=1)
    with pytest.raises(TryLaterError):
        reserve(catalog, alice, 10, per_user=1)
    held = reserve(catalog, bob, 10, per_user=1)
    catalog.release_reservation(held)
    assert catalog.uploads_in_flight(bob.id) == 0
    assert catalog.uploads_in_flight(alice.id) == 1
    with pytest.raises(TryLaterError):  # bob's release gave alice nothing
        reserve(catalog, alice, 10, per_user=1)


def test_quota_counts_stored_and_in_flight_bytes(catalog: SQLCatalog, alice: User) -> None:
    assert catalog.used_bytes(alice.id) == STORED
    first = reserve(catalog, alice, 300, quota=1000)  # 600 stored + 300 arriving
    with pytest.raises(QuotaError, match="quota of 1000 bytes") as refused:
        reserve(catalog, alice, 101, quota=1000)  # 1001
    assert not isinstance(refused.value, TryLaterError)
    assert catalog.uploads_in_flight(alice.id) == 1  # the refusal took nothing
    second = reserve(catalog, alice, 100, quota=1000)  # exactly 1000
    with pytest.raises(QuotaError):
        reserve(catalog, alice, 1, quota=1000)
    catalog.release_reservation(first)
    reserve(catalog, alice, 300, quota=1000)
    catalog.release_reservation(second)
    assert catalog.uploads_in_flight(alice.id) == 1


def test_quota_is_per_user(catalog: SQLCatalog, alice: User, bob: User) -> None:
    reserve(catalog, alice, 400, quota=1000)  # alice is full: 600 + 400
    reserve(catalog, bob, 1000, quota=1000)  # bob has nothing stored
    with pytest.raises(QuotaError):
        reserve(catalog, alice, 1, quota=1000)
    with pytest.raises(QuotaError):
        reserve(catalog, bob, 1, quota=1000)


def test_zero_quota_means_no_quota(catalog: SQLCatalog, alice: User) -> None:
    for _ in range(3):
        reserve(catalog, alice, 10**15, quota=0)
    assert catalog.uploads_in_flight(alice.id) == 3


def test_the_row_takes_over_from_the_reservation_in_one_commit(
    catalog: SQLCatalog, alice: User
) -> None:
    reservation = reserve(catalog, alice, 400, quota=1000)
    catalog.add_image(make_record(alice, size=400), reservation=reservation)
    assert catalog.uploads_in_flight(alice.id) == 0  # released with the row...
    assert catalog.used_bytes(alice.id) == 1000  # ...which now counts instead
    with pytest.raises(QuotaError):  # counted once, not twice and not zero times
        reserve(catalog, alice, 1, quota=1000)
    reserve(catalog, alice, 0, quota=1000)  # an empty reservation still fits


def test_a_failed_row_keeps_its_reservation(catalog: SQLCatalog, alice: User) -> None:
    reservation = reserve(catalog, alice, 10)
    duplicate = catalog.list_images(alice.id)[0]
    with pytest.raises(StorageError, match="UNIQUE"):
        catalog.add_image(duplicate, reservation=reservation)
    assert catalog.uploads_in_flight(alice.id) == 1  # rolled back together
    catalog.release_reservation(reservation)
    catalog.release_reservation(reservation)  # idempotent
    assert catalog.uploads_in_flight(alice.id) == 0


def test_a_lapsed_reservation_no_longer_counts(catalog: SQLCatalog, alice: User) -> None:
    reserve(catalog, alice, 400, quota=1000, per_user=1, expires=now_ms() - 1)
    assert catalog.uploads_in_flight(alice.id) == 0
    # Neither its place nor its bytes are held any more.
    reserve(catalog, alice, 400, quota=1000, per_user=1)
    assert catalog.uploads_in_flight(alice.id) == 1


def test_renew_and_drop_touch_only_their_holder(
    catalog: SQLCatalog, alice: User, bob: User
) -> None:
    soon = now_ms() + 60_000
    for user in (alice, alice, bob):
        reserve(catalog, user, 10, holder="host:1", expires=soon)
    reserve(catalog, bob, 10, holder="host:2", expires=soon)
    assert catalog.renew_reservations("host:1", LATER) == 3
    assert catalog.renew_reservations("nobody", LATER) == 0
    assert catalog.drop_reservations("host:2") == 1  # a process that died
    assert catalog.uploads_in_flight(bob.id) == 1
    assert catalog.drop_reservations("host:2") == 0
    assert catalog.drop_reservations("host:1") == 3
    assert catalog.uploads_in_flight(alice.id) == catalog.uploads_in_flight(bob.id) == 0


def test_renewing_brings_back_a_lapsed_reservation_not_yet_dropped(
    catalog: SQLCatalog, alice: User
) -> None:
    reserve(catalog, alice, 10, expires=now_ms() - 1)
    assert catalog.uploads_in_flight(alice.id) == 0
    assert catalog.renew_reservations("host:1", LATER) == 1
    assert catalog.uploads_in_flight(alice.id) == 1


def test_removing_a_user_drops_their_reservations(catalog: SQLCatalog, bob: User) -> None:
    reserve(catalog, bob, 10)
    assert catalog.remove_user("bob") == []
    assert catalog.drop_reservations("host:1") == 0  # nothing of bob's was left


def test_reservations_hold_across_catalog_objects(catalog_opener: Opener) -> None:
    """Two processes' catalogs on one database cannot overshoot a place limit together."""
    with catalog_opener() as one, catalog_opener() as two:
        user = one.add_user("alice", "h")
        one.reserve_upload(user.id, 10, quota=0, per_user=1, holder="a:1", expires=LATER)
        with pytest.raises(TryLaterError):
            two.reserve_upload(user.id, 10, quota=0, per_user=1, holder="b:2", expires=LATER)
        assert two.uploads_in_flight(user.id) == 1


def test_many_threads_never_overshoot_the_places(catalog: SQLCatalog, alice: User) -> None:
    barrier = threading.Barrier(8)
    held: list[int] = []
    refused: list[TryLaterError] = []
    lock = threading.Lock()

    def work() -> None:
        barrier.wait()
        try:
            reservation = reserve(catalog, alice, 10, per_user=3)
        except TryLaterError as exc:
            with lock:
                refused.append(exc)
            return
        with lock:
            held.append(reservation)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert (len(held), len(refused)) == (3, 5)
    assert catalog.uploads_in_flight(alice.id) == 3


# --- resumable uploads (imgshare.store.resumable) -----------------------------------------


def make_durable(
    catalog: SQLCatalog, reservation: int, upload_id: bytes, *, chunks: int = 3, until: int = LATER
) -> str:
    image_id = secrets.token_hex(16)
    assert catalog.mark_durable(
        reservation,
        image_id=image_id,
        upload_id=upload_id,
        header=b"header" + upload_id,
        wrapped_key=b"wrapped" * 8,
        chunks=chunks,
        sealed_bytes=chunks * 4112,
        now=now_ms(),
        until=until,
    )
    return image_id


def test_a_parked_upload_is_claimed_once_by_its_owner(
    catalog: SQLCatalog, alice: User, bob: User
) -> None:
    upload_id = secrets.token_bytes(16)
    held = reserve(catalog, alice, 5000, holder="host:1")
    image_id = make_durable(catalog, held, upload_id)
    now = now_ms()
    with pytest.raises(TryLaterError, match="another connection"):  # its lease is live
        catalog.claim_partial(alice.id, upload_id, holder="host:2", expires=LATER, now=now)
    assert catalog.park_upload(held, LATER)
    assert catalog.claim_partial(bob.id, upload_id, holder="host:2", expires=LATER, now=now) is None
    claimed = catalog.claim_partial(alice.id, upload_id, holder="host:2", expires=LATER, now=now)
    assert claimed is not None
    assert (claimed.reservation, claimed.image_id, claimed.durable_chunks) == (held, image_id, 3)
    assert claimed.durable_bytes == 3 * 4112 and claimed.header == b"header" + upload_id
    with pytest.raises(TryLaterError):  # now host:2 holds it
        catalog.claim_partial(alice.id, upload_id, holder="host:3", expires=LATER, now=now)
    assert catalog.partial_image_ids() == {image_id}
    assert [p.image_id for p in catalog.partials_of(alice.id)] == [image_id]


def test_a_parked_upload_keeps_its_place_and_quota(catalog: SQLCatalog, alice: User) -> None:
    held = reserve(catalog, alice, 300, quota=1000, per_user=1, expires=1)  # lapsed at once
    make_durable(catalog, held, secrets.token_bytes(16))
    catalog.park_upload(held, LATER)
    with pytest.raises(TryLaterError):  # a lapsed lease, but resumable: still counts
        reserve(catalog, alice, 10, quota=1000, per_user=1)
    evicted = catalog.evict_idle_partial(alice.id, now_ms())
    assert evicted is not None and evicted.reservation == held
    assert catalog.evict_idle_partial(alice.id, now_ms()) is None
    reserve(catalog, alice, 10, quota=1000, per_user=1)


def test_a_held_upload_is_never_evicted(catalog: SQLCatalog, alice: User) -> None:
    held = reserve(catalog, alice, 300)
    make_durable(catalog, held, secrets.token_bytes(16))
    assert catalog.evict_idle_partial(alice.id, now_ms()) is None


def test_an_upload_id_is_resumable_once_per_user(catalog: SQLCatalog, alice: User) -> None:
    upload_id = secrets.token_bytes(16)
    make_durable(catalog, reserve(catalog, alice, 10), upload_id)
    other = reserve(catalog, alice, 10)
    assert not catalog.mark_durable(
        other,
        image_id=secrets.token_hex(16),
        upload_id=upload_id,
        header=b"h",
        wrapped_key=b"k",
        chunks=1,
        sealed_bytes=1,
        now=now_ms(),
        until=LATER,
    )


def test_expired_partials_go_once_and_their_rows_with_them(
    catalog: SQLCatalog, alice: User
) -> None:
    soon = now_ms() + 50
    held = reserve(catalog, alice, 10)
    image_id = make_durable(catalog, held, secrets.token_bytes(16), until=soon)
    assert catalog.expire_partials(now_ms()) == []  # held: its lease is live
    catalog.park_upload(held, soon)
    assert catalog.expire_partials(soon - 10) == []
    (expired,) = catalog.expire_partials(soon + 1)
    assert expired.image_id == image_id
    assert catalog.expire_partials(soon + 1) == []
    assert catalog.uploads_in_flight(alice.id) == 0 and catalog.partial_image_ids() == set()


def test_a_dead_holders_resumable_uploads_are_parked(catalog: SQLCatalog, alice: User) -> None:
    resumable = reserve(catalog, alice, 10, holder="host:9")
    upload_id = secrets.token_bytes(16)
    make_durable(catalog, resumable, upload_id)
    reserve(catalog, alice, 10, holder="host:9")
    assert catalog.drop_reservations("host:9") == 2
    assert [p.reservation for p in catalog.partials_of(alice.id)] == [resumable]
    now = now_ms()
    assert catalog.claim_partial(alice.id, upload_id, holder="h:1", expires=LATER, now=now)


def test_stored_upload_finds_the_image_of_a_header(
    catalog: SQLCatalog, alice: User, bob: User
) -> None:
    record = make_record(alice)
    catalog.add_image(record)
    assert catalog.stored_upload(alice.id, record.header) == record
    assert catalog.stored_upload(bob.id, record.header) is None
    assert catalog.stored_upload(alice.id, record.header + b"x") is None


# --- thumbnails (imgshare.store.thumbnails) -----------------------------------------------


def test_each_thumbnail_is_claimed_by_one_maker(catalog: SQLCatalog, alice: User) -> None:
    (first,) = catalog.list_images(alice.id)
    second = make_record(alice)
    catalog.add_image(second)
    now = now_ms()
    assert catalog.pending_thumbnails() == 2
    claimed = catalog.claim_thumbnail(now, now + 60_000)
    assert claimed is not None and claimed.id in {first.id, second.id}
    other = catalog.claim_thumbnail(now, now + 60_000)
    assert other is not None and other.id != claimed.id
    assert catalog.claim_thumbnail(now, now + 60_000) is None  # both held
    again = catalog.claim_thumbnail(now + 60_001, now + 120_000)  # a lapsed claim
    assert again is not None
    assert catalog.set_thumbnail(claimed.id, 1) and catalog.set_thumbnail(other.id, 2)
    assert catalog.thumbnail_state(claimed.id) == 1 and catalog.thumbnail_state(other.id) == 2
    assert catalog.claim_thumbnail(now + 10**9, now + 10**9) is None
    assert catalog.pending_thumbnails() == 0
    catalog.delete_image(claimed.id)
    assert catalog.thumbnail_state(claimed.id) is None
    assert not catalog.set_thumbnail(claimed.id, 1)  # gone: the maker removes its file
