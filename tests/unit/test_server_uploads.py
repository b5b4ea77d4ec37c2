"""Admission of uploads: quota, places per user, memory (``imgshare.server.uploads``).

A real SQLite catalog holds the users and the stored image that counts against the
quota.
"""

from __future__ import annotations

import threading

import pytest

from imgshare.errors import QuotaError, TryLaterError
from imgshare.server.uploads import MIB, MIN_UPLOAD_MEMORY, Reservation, UploadSlots
from imgshare.store.catalog import SQLiteCatalog, User
from store_helpers import make_record

STORED = 600  # bytes alice already has in the catalog


@pytest.fixture
def alice(catalog: SQLiteCatalog) -> User:
    user = catalog.add_user("alice", "$argon2id$fake")
    catalog.add_image(make_record(user, size=STORED))
    return user


@pytest.fixture
def bob(catalog: SQLiteCatalog) -> User:
    return catalog.add_user("bob", "$argon2id$fake")


def slots(
    catalog: SQLiteCatalog, *, quota: int = 0, per_user: int = 10, memory: int = 64 * MIB
) -> UploadSlots:
    return UploadSlots(catalog, quota_bytes=quota, per_user=per_user, memory=memory)


def test_minimum_memory_is_one_mib() -> None:
    assert MIN_UPLOAD_MEMORY == MIB == 1024 * 1024


def test_a_reservation_holds_size_place_and_memory(catalog: SQLiteCatalog, alice: User) -> None:
    uploads = slots(catalog, quota=10_000)
    reservation = uploads.reserve(alice.id, 1000, 3 * MIB)
    assert isinstance(reservation, Reservation)
    assert (reservation.user_id, reservation.size, reservation.memory) == (alice.id, 1000, 3 * MIB)
    assert reservation.released is False
    assert uploads.memory_used == 3 * MIB
    assert uploads.in_flight(alice.id) == 1


# --- places per user -------------------------------------------------------------------


def test_per_user_cap_says_try_later(catalog: SQLiteCatalog, alice: User) -> None:
    uploads = slots(catalog, per_user=2)
    held = [uploads.reserve(alice.id, 10, 0) for _ in range(2)]
    with pytest.raises(TryLaterError, match="2 uploads in flight") as refused:
        uploads.reserve(alice.id, 10, 0)
    assert refused.value.retry_after > 0
    assert uploads.in_flight(alice.id) == 2  # the refusal took nothing
    assert uploads.memory_used == 2 * MIN_UPLOAD_MEMORY
    uploads.release(held[0])
    uploads.reserve(alice.id, 10, 0)


def test_two_users_do_not_share_places(catalog: SQLiteCatalog, alice: User, bob: User) -> None:
    uploads = slots(catalog, per_user=1)
    uploads.reserve(alice.id, 10, 0)
    with pytest.raises(TryLaterError):
        uploads.reserve(alice.id, 10, 0)
    held = uploads.reserve(bob.id, 10, 0)
    with pytest.raises(TryLaterError):
        uploads.reserve(bob.id, 10, 0)
    uploads.release(held)
    assert uploads.in_flight(bob.id) == 0
    assert uploads.in_flight(alice.id) == 1
    with pytest.raises(TryLaterError):  # bob's release gave alice nothing
        uploads.reserve(alice.id, 10, 0)


# --- memory budget ---------------------------------------------------------------------


def test_memory_budget_says_try_later(catalog: SQLiteCatalog, alice: User, bob: User) -> None:
    uploads = slots(catalog, memory=10 * MIB)
    first = uploads.reserve(alice.id, 10, 6 * MIB)
    uploads.reserve(bob.id, 10, 4 * MIB)  # exactly the budget
    assert uploads.memory_used == 10 * MIB
    with pytest.raises(TryLaterError, match="too many images") as refused:
        uploads.reserve(bob.id, 10, 0)  # even the floor does not fit
    assert refused.value.retry_after > 0
    assert uploads.in_flight(bob.id) == 1
    uploads.release(first)
    assert uploads.memory_used == 4 * MIB
    uploads.reserve(bob.id, 10, 6 * MIB)
    assert uploads.memory_used == 10 * MIB


def test_small_buffers_still_cost_the_minimum(catalog: SQLiteCatalog, alice: User) -> None:
    uploads = slots(catalog, memory=3 * MIB)
    for buffer in (0, 1, MIB // 2):
        reservation = uploads.reserve(alice.id, 10, buffer)
        assert reservation.memory == MIN_UPLOAD_MEMORY
    assert uploads.memory_used == 3 * MIB
    with pytest.raises(TryLaterError):  # a fourth upload of tiny buffers does not fit
        uploads.reserve(alice.id, 10, 1)


def test_a_budget_below_the_minimum_admits_nothing(catalog: SQLiteCatalog, alice: User) -> None:
    uploads = slots(catalog, memory=MIN_UPLOAD_MEMORY - 1)
    with pytest.raises(TryLaterError):
        uploads.reserve(alice.id, 1, 0)
    assert uploads.memory_used == 0


# --- quota -----------------------------------------------------------------------------


def test_quota_counts_stored_and_in_flight_bytes(catalog: SQLiteCatalog, alice: User) -> None:
    assert catalog.used_bytes(alice.id) == STORED
    uploads = slots(catalog, quota=1000)
    first = uploads.reserve(alice.id, 300, 0)  # 600 stored + 300 arriving
    with pytest.raises(QuotaError, match="quota of 1000 bytes"):
        uploads.reserve(alice.id, 101, 0)  # 1001
    assert uploads.in_flight(alice.id) == 1  # the refusal took nothing
    assert uploads.memory_used == MIN_UPLOAD_MEMORY
    second = uploads.reserve(alice.id, 100, 0)  # exactly 1000
    with pytest.raises(QuotaError):
        uploads.reserve(alice.id, 1, 0)
    uploads.release(first)
    third = uploads.reserve(alice.id, 300, 0)
    uploads.release(second)
    uploads.release(third)


def test_a_stored_upload_counts_once_it_is_in_the_catalog(
    catalog: SQLiteCatalog, alice: User
) -> None:
    uploads = slots(catalog, quota=1000)
    reservation = uploads.reserve(alice.id, 400, 0)
    catalog.add_image(make_record(alice, size=400))  # the upload is stored...
    uploads.release(reservation)  # ...and lets go of its share
    assert catalog.used_bytes(alice.id) == 1000
    with pytest.raises(QuotaError):
        uploads.reserve(alice.id, 1, 0)
    uploads.reserve(alice.id, 0, 0)  # an empty upload still fits


def test_quota_is_per_user(catalog: SQLiteCatalog, alice: User, bob: User) -> None:
    uploads = slots(catalog, quota=1000)
    uploads.reserve(alice.id, 400, 0)  # alice is full: 600 + 400
    uploads.reserve(bob.id, 1000, 0)  # bob has nothing stored
    with pytest.raises(QuotaError):
        uploads.reserve(alice.id, 1, 0)
    with pytest.raises(QuotaError):
        uploads.reserve(bob.id, 1, 0)


def test_zero_quota_means_no_quota(catalog: SQLiteCatalog, alice: User) -> None:
    uploads = slots(catalog, quota=0)
    for _ in range(3):
        uploads.reserve(alice.id, 10**15, 0)
    assert uploads.in_flight(alice.id) == 3


def test_the_quota_error_is_not_try_later(catalog: SQLiteCatalog, alice: User) -> None:
    uploads = slots(catalog, quota=100)
    with pytest.raises(QuotaError) as refused:
        uploads.reserve(alice.id, 1, 0)  # 600 stored already
    assert not isinstance(refused.value, TryLaterError)


# --- release ---------------------------------------------------------------------------


def test_release_is_idempotent_and_frees_everything(catalog: SQLiteCatalog, alice: User) -> None:
    uploads = slots(catalog, quota=1000, per_user=2, memory=4 * MIB)
    first = uploads.reserve(alice.id, 200, 2 * MIB)
    second = uploads.reserve(alice.id, 200, 2 * MIB)
    for _ in range(3):
        uploads.release(first)
    assert first.released is True
    assert second.released is False
    assert uploads.in_flight(alice.id) == 1  # not 0 or -1: released once only
    assert uploads.memory_used == 2 * MIB
    with pytest.raises(QuotaError):  # second's 200 bytes still count: 600+200+201
        uploads.reserve(alice.id, 201, 0)
    uploads.release(second)
    uploads.release(second)
    assert uploads.in_flight(alice.id) == 0
    assert uploads.memory_used == 0
    # Everything is back: both places, all the memory, the whole remaining quota.
    again = [uploads.reserve(alice.id, 200, 2 * MIB) for _ in range(2)]
    assert uploads.memory_used == 4 * MIB
    for reservation in again:
        uploads.release(reservation)
    uploads.reserve(alice.id, 400, 4 * MIB)


def test_many_threads_never_exceed_the_budget(
    catalog: SQLiteCatalog, alice: User, bob: User
) -> None:
    uploads = slots(catalog, quota=0, per_user=3, memory=4 * MIB)
    lock = threading.Lock()
    state = {"held": 0, "peak": 0, "admitted": 0, "refused": 0}
    errors: list[BaseException] = []

    def worker(user: User) -> None:
        try:
            for _ in range(300):
                try:
                    reservation = uploads.reserve(user.id, 10, 0)
                except TryLaterError:
                    with lock:
                        state["refused"] += 1
                    continue
                with lock:
                    state["held"] += 1
                    state["peak"] = max(state["peak"], state["held"])
                    state["admitted"] += 1
                assert uploads.in_flight(user.id) <= 3
                with lock:
                    state["held"] -= 1
                uploads.release(reservation)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=((alice, bob)[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert state["peak"] <= 4  # 4 MiB of 1 MiB uploads
    assert state["admitted"] > 0
    assert uploads.memory_used == 0
    assert uploads.in_flight(alice.id) == uploads.in_flight(bob.id) == 0
