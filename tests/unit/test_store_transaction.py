"""The store transaction (``imgshare.store.images``): ``ImageStore`` and ``PendingImage``.

Everything runs over a real data folder made by ``open_store``: real files, a real
SQLite catalog, real sealed chunks. "Two processes" are two ``open_store`` on one
folder: two SQLite connections, which is what the reservations must hold across.
The tests marked ``BOTH`` (the catalog's part: reservations, quota, leases, the row's
commit and deletion) run again with a PostgreSQL catalog of their own: then "two
processes" are two catalogs with connections of their own to one database.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imgshare.errors import ConfigError, QuotaError, StorageError, TryLaterError
from imgshare.protocol import StreamOpener, StreamSealer, UploadHeader
from imgshare.protocol.stream import new_upload
from imgshare.server import images
from imgshare.store import (
    DataFolderStore,
    DeletedImage,
    ImageRecord,
    ImageStore,
    PendingImage,
    ScratchCopies,
    StorageKey,
    StoreConfig,
    User,
    factory,
    generate_storage_key,
    open_store,
)
from imgshare.store.catalog import SQLCatalog
from imgshare.store.copies import INBOX_NAME_RE
from imgshare.store.images import process_holder
from services.postgres import CATALOG_KINDS
from store_helpers import make_record

#: On SQLite and PostgreSQL: for the tests of what the catalog holds.
BOTH = pytest.mark.parametrize("catalog_kind", CATALOG_KINDS, indirect=True)

CHUNK = 4096
WAIT = 5.0


def noise_png(side: int = 64, seed: int = 0) -> bytes:
    """A real PNG of random pixels: it does not compress, so it spans several chunks."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, "PNG")
    return buffer.getvalue()


PNG = noise_png()


@dataclass(frozen=True)
class Sent:
    """One image as a client sends it: header, content key, sealed chunks, HMAC."""

    header: UploadHeader
    content_key: bytes
    plaintext: bytes
    sealed: tuple[bytes, ...]
    hmac: bytes

    def pieces(self) -> Iterator[tuple[bytes, bytes]]:
        for index, sealed in enumerate(self.sealed):
            yield sealed, self.plaintext[index * CHUNK : (index + 1) * CHUNK]


def seal(plaintext: bytes = PNG, name: str = "holiday.png") -> Sent:
    header, key = new_upload(name, len(plaintext), os.urandom, CHUNK)
    sealer = StreamSealer(header, key)
    sealed = tuple(
        bytes(sealer.seal(plaintext[i : i + CHUNK])) for i in range(0, len(plaintext), CHUNK)
    )
    return Sent(header, key, plaintext, sealed, sealer.finish())


def write_all(pending: PendingImage, sent: Sent, extension: str = "png") -> None:
    pending.start_copy(extension)
    for sealed, plaintext in sent.pieces():
        pending.write(sealed, plaintext)


def commit(pending: PendingImage, sent: Sent) -> ImageRecord:
    return pending.commit("PNG", 64, 64, sent.hmac)


def store_image(store: ImageStore, user: User, sent: Sent | None = None) -> ImageRecord:
    sent = sent or seal()
    pending = store.begin(user, sent.header, sent.content_key)
    write_all(pending, sent)
    return commit(pending, sent)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def key() -> StorageKey:
    return generate_storage_key()


@pytest.fixture
def make_store(
    data: Path,
    key: StorageKey,
    catalog_kind: str,
    catalog_opener: Callable[[], SQLCatalog],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., DataFolderStore]]:
    """Open stores on the one data folder (each its own catalog connection; with
    ``catalog_kind`` "postgres", each its own catalog on the test's database)."""
    if catalog_kind == "postgres":  # until the factory takes a catalog URL
        monkeypatch.setattr(factory, "open_catalog", lambda data: catalog_opener())
    opened: list[DataFolderStore] = []

    def make(**changes: Any) -> DataFolderStore:
        store = open_store(dataclasses.replace(StoreConfig(data=data, storage_key=key), **changes))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., DataFolderStore]) -> DataFolderStore:
    return make_store()


@pytest.fixture
def alice(store: DataFolderStore) -> User:
    return store.catalog.add_user("alice", "$argon2id$fake")


def stray(store: DataFolderStore) -> list[str]:
    """Every file and folder in the data folder besides the catalog and the store's own
    folders (and the object prefix folders, which may stay empty)."""
    root = store.blobs.root
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        folders = {"objects", "tmp", "inbox", "inbox/.tmp", "partial"}
        folders |= {"thumbs", "thumbs/objects", "thumbs/tmp"}
        if rel.startswith("catalog.sqlite") or rel in folders:
            continue
        if rel.startswith(("objects/", "thumbs/objects/")) and path.is_dir():
            if not path.is_symlink():
                continue
        found.append(rel)
    return sorted(found)


def temp_files(store: DataFolderStore) -> list[str]:
    return [p for p in stray(store) if p.startswith(("tmp/", "inbox/.tmp/"))]


def assert_nothing_left(store: DataFolderStore, user: User) -> None:
    assert stray(store) == []
    assert store.catalog.image_ids() == set()
    assert store.catalog.uploads_in_flight(user.id) == 0


def wait_until(condition: Callable[[], bool], seconds: float = WAIT) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


# --- an upload, start to end -------------------------------------------------------------


@BOTH
def test_an_upload_goes_in_step_by_step(store: DataFolderStore, alice: User) -> None:
    sent = seal()
    assert len(sent.sealed) >= 3
    pending = store.begin(alice, sent.header, sent.content_key)
    assert store.catalog.uploads_in_flight(alice.id) == 1  # its place and size are held
    assert [p.split("/")[0] for p in stray(store)] == ["tmp"]  # the sealed object's temp file
    pending.start_copy("png")
    assert len(temp_files(store)) == 2  # and the inbox copy's
    for sealed, plaintext in sent.pieces():
        pending.write(sealed, plaintext)
    with pending.plaintext() as written:
        assert written.read() == sent.plaintext
    assert store.catalog.image_ids() == set()  # nothing is visible yet
    assert list(store.blobs.iter_ids()) == []
    assert list(store.inbox.iter_files()) == []

    record = commit(pending, sent)

    assert store.catalog.uploads_in_flight(alice.id) == 0  # released with the row
    assert store.catalog.get_image(record.id) == record
    assert record.id == pending.id_hex == pending.image_id.hex()
    assert (record.owner_id, record.name, record.size) == (alice.id, "holiday.png", len(PNG))
    assert (record.format, record.width, record.height, record.hmac) == ("PNG", 64, 64, sent.hmac)
    assert record.header == sent.header.encode()
    assert store.key.unwrap(record.wrapped_key, pending.image_id) == sent.content_key
    assert record.inbox_name is not None and INBOX_NAME_RE.fullmatch(record.inbox_name)
    assert record.inbox_name.endswith(f"-{record.id}.png")
    assert store.blobs.path_of(record.id).read_bytes() == b"".join(sent.sealed)
    assert store.inbox.path_of("alice", record.inbox_name).read_bytes() == sent.plaintext
    assert temp_files(store) == []
    assert store.catalog.used_bytes(alice.id) == len(PNG)


def test_abort_after_commit_changes_nothing(store: DataFolderStore, alice: User) -> None:
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    write_all(pending, sent)
    record = commit(pending, sent)
    pending.abort()
    pending.abort()
    assert store.catalog.get_image(record.id) == record
    assert store.blobs.exists(record.id)
    assert record.inbox_name is not None
    assert store.inbox.path_of("alice", record.inbox_name).exists()
    assert store.catalog.used_bytes(alice.id) == len(PNG)


def test_open_streams_back_exactly_what_was_written(store: DataFolderStore, alice: User) -> None:
    sent = seal()
    record = store_image(store, alice, sent)
    opened = store.open(record)
    assert opened.record == record
    assert opened.header == sent.header
    assert opened.content_key == sent.content_key
    with opened.sealed as stored:
        assert stored.read() == b"".join(sent.sealed)
    opener = StreamOpener(opened.header, opened.content_key)
    plaintext = b"".join(bytes(opener.open(chunk)) for chunk in sent.sealed)
    assert plaintext == sent.plaintext
    assert opener.finish(record.hmac) == sent.hmac


def test_open_of_a_missing_object_is_a_storage_error(store: DataFolderStore, alice: User) -> None:
    record = store_image(store, alice)
    store.blobs.delete(record.id)
    with pytest.raises(StorageError):
        store.open(record)


def test_images_of_one_user_get_their_own_ids(store: DataFolderStore, alice: User) -> None:
    records = [store_image(store, alice) for _ in range(3)]
    assert len({r.id for r in records}) == 3
    assert sorted(store.blobs.iter_ids()) == sorted(r.id for r in records)
    assert store.catalog.uploads_in_flight(alice.id) == 0


# --- abort, at every step ----------------------------------------------------------------


def stop_after_begin(pending: PendingImage, sent: Sent) -> None:
    pass


def stop_after_start_copy(pending: PendingImage, sent: Sent) -> None:
    pending.start_copy("png")


def stop_after_one_chunk(pending: PendingImage, sent: Sent) -> None:
    pending.start_copy("png")
    pending.write(*next(sent.pieces()))


def stop_after_the_check(pending: PendingImage, sent: Sent) -> None:
    write_all(pending, sent)
    with pending.plaintext() as written:
        images.validate_image(written)


@pytest.mark.parametrize(
    "steps",
    [stop_after_begin, stop_after_start_copy, stop_after_one_chunk, stop_after_the_check],
)
def test_abort_at_any_step_leaves_nothing(
    store: DataFolderStore, alice: User, steps: Callable[[PendingImage, Sent], None]
) -> None:
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    steps(pending, sent)
    assert stray(store) != []  # something was on its way
    pending.abort()
    assert_nothing_left(store, alice)
    pending.abort()  # idempotent
    with pytest.raises(StorageError):  # an aborted image cannot commit after all
        commit(pending, sent)
    assert_nothing_left(store, alice)


def test_abort_from_another_thread_leaves_nothing(store: DataFolderStore, alice: User) -> None:
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    stop_after_one_chunk(pending, sent)
    aborter = threading.Thread(target=pending.abort)
    aborter.start()
    aborter.join(WAIT)
    assert not aborter.is_alive()
    with pytest.raises(StorageError):  # the writer finds its files gone
        pending.write(*next(sent.pieces()))
    assert_nothing_left(store, alice)


def test_write_before_start_copy_is_refused(store: DataFolderStore, alice: User) -> None:
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    with pytest.raises(StorageError, match="start_copy"):
        pending.write(*next(sent.pieces()))
    with pytest.raises(StorageError, match="nothing was written"):
        pending.plaintext()
    pending.abort()
    assert_nothing_left(store, alice)


def test_a_commit_refused_for_want_of_a_copy_leaves_nothing(
    store: DataFolderStore, alice: User
) -> None:
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    try:
        with pytest.raises(StorageError, match="nothing was written"):
            commit(pending, sent)
        assert_nothing_left(store, alice)
    finally:
        pending.abort()


# --- a failure inside commit ---------------------------------------------------------------


@BOTH
def test_a_removed_owner_makes_the_commit_take_everything_back(
    store: DataFolderStore, alice: User
) -> None:
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    write_all(pending, sent)
    assert store.remove_user("alice") == []  # removed while the upload streams
    with pytest.raises(StorageError, match="FOREIGN KEY"):
        commit(pending, sent)
    # The object and the inbox copy were committed before the row failed: both gone,
    # and with them the user's inbox folder.
    assert stray(store) == []
    assert store.catalog.image_ids() == set()
    assert store.catalog.drop_reservations(store.holder) == 0  # none left behind


@BOTH
def test_a_refused_row_takes_back_the_committed_object_and_copy(
    store: DataFolderStore, alice: User
) -> None:
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    write_all(pending, sent)
    taken = dataclasses.replace(make_record(alice), id=pending.id_hex, inbox_name=None)
    store.catalog.add_image(taken)  # the catalog will refuse the upload's row
    # (The take-back also deletes this row, which the upload never inserted: harmless
    # only because a real id collision cannot happen; not asserted either way.)
    with pytest.raises(StorageError, match="UNIQUE"):
        commit(pending, sent)
    assert not store.blobs.exists(pending.id_hex)
    assert list(store.inbox.iter_files()) == []
    assert stray(store) == []  # no temp file, no empty inbox folder
    assert store.catalog.uploads_in_flight(alice.id) == 0


def test_a_copy_that_cannot_commit_takes_back_the_object(
    store: DataFolderStore, alice: User, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.inbox.root / "alice").symlink_to(outside)  # planted: never followed
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    write_all(pending, sent)
    with pytest.raises(StorageError, match="symbolic link"):
        commit(pending, sent)
    assert list(outside.iterdir()) == []
    assert not store.blobs.exists(pending.id_hex)
    assert stray(store) == ["inbox/alice"]  # only the planted link, left for the operator
    assert store.catalog.image_ids() == set()
    assert store.catalog.uploads_in_flight(alice.id) == 0


def test_a_begin_that_cannot_open_its_object_holds_nothing(
    store: DataFolderStore, alice: User, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.blobs.tmp_dir.rmdir()
    store.blobs.tmp_dir.symlink_to(outside)
    sent = seal()
    with pytest.raises(StorageError, match="symbolic link"):
        store.begin(alice, sent.header, sent.content_key)
    assert store.catalog.uploads_in_flight(alice.id) == 0
    assert list(outside.iterdir()) == []


# --- the quota and the upload places, held in the catalog ------------------------------


@BOTH
def test_the_quota_counts_uploads_in_flight(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    store = make_store(quota_bytes=2 * len(PNG) - 1)
    first = seal()
    pending = store.begin(alice, first.header, first.content_key)
    second = seal()
    with pytest.raises(QuotaError):  # stored nothing yet, but the first is on its way
        store.begin(alice, second.header, second.content_key)
    assert store.catalog.uploads_in_flight(alice.id) == 1  # the refusal held nothing
    assert len(temp_files(store)) == 1  # nor opened anything
    pending.abort()
    again = store.begin(alice, second.header, second.content_key)  # room again
    write_all(again, second)
    commit(again, second)
    with pytest.raises(QuotaError):  # now the stored image counts
        store.begin(alice, first.header, first.content_key)
    assert store.catalog.uploads_in_flight(alice.id) == 0


@BOTH
def test_the_places_per_user_say_try_later(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    store = make_store(uploads_per_user=2)
    bob = store.catalog.add_user("bob", "h")
    held = [store.begin(alice, s.header, s.content_key) for s in (seal(), seal())]
    sent = seal()
    with pytest.raises(TryLaterError) as refused:
        store.begin(alice, sent.header, sent.content_key)
    assert refused.value.retry_after > 0
    assert not isinstance(refused.value, QuotaError)
    assert store.catalog.uploads_in_flight(alice.id) == 2
    store.begin(bob, sent.header, sent.content_key).abort()  # bob has places of his own
    held[0].abort()
    store.begin(alice, sent.header, sent.content_key).abort()  # a place came back
    held[1].abort()
    assert_nothing_left(store, alice)


@BOTH
def test_the_quota_holds_across_two_stores_on_one_folder(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    one = make_store(quota_bytes=2 * len(PNG) - 1)
    two = make_store(quota_bytes=2 * len(PNG) - 1)
    assert one.catalog is not two.catalog
    first, second = seal(), seal()
    pending = one.begin(alice, first.header, first.content_key)
    with pytest.raises(QuotaError):
        two.begin(alice, second.header, second.content_key)
    write_all(pending, first)
    commit(pending, first)
    with pytest.raises(QuotaError):  # the row, committed by the other, counts
        two.begin(alice, second.header, second.content_key)
    assert two.catalog.uploads_in_flight(alice.id) == 0


@BOTH
def test_the_places_hold_across_two_stores_on_one_folder(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    one = make_store(uploads_per_user=1)
    two = make_store(uploads_per_user=1)
    sent = seal()
    pending = one.begin(alice, sent.header, sent.content_key)
    with pytest.raises(TryLaterError):
        two.begin(alice, sent.header, sent.content_key)
    pending.abort()
    two.begin(alice, sent.header, sent.content_key).abort()
    assert one.catalog.uploads_in_flight(alice.id) == 0


@BOTH
def test_many_threads_on_two_stores_never_overshoot(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    stores = [make_store(uploads_per_user=3), make_store(uploads_per_user=3)]
    barrier = threading.Barrier(8)
    lock = threading.Lock()
    held: list[PendingImage] = []
    refused: list[BaseException] = []
    errors: list[BaseException] = []
    sent = seal()

    def work(store: ImageStore) -> None:
        try:
            barrier.wait(WAIT)
            pending = store.begin(alice, sent.header, sent.content_key)
        except TryLaterError as exc:
            with lock:
                refused.append(exc)
        except BaseException as exc:  # reported below
            errors.append(exc)
        else:
            with lock:
                held.append(pending)

    threads = [threading.Thread(target=work, args=(stores[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert errors == []
    assert (len(held), len(refused)) == (3, 5)
    assert stores[0].catalog.uploads_in_flight(alice.id) == 3
    for pending in held:
        pending.abort()
    assert_nothing_left(stores[0], alice)


# --- leases ----------------------------------------------------------------------------


@BOTH
def test_a_reservation_whose_lease_lapsed_no_longer_counts(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    store = make_store(lease=0.01, uploads_per_user=1, quota_bytes=len(PNG))
    first, second = seal(), seal()
    stalled = store.begin(alice, first.header, first.content_key)  # its holder died
    assert wait_until(lambda: store.catalog.uploads_in_flight(alice.id) == 0)
    # Neither its place nor its bytes are held any more.
    pending = store.begin(alice, second.header, second.content_key)
    assert store.catalog.uploads_in_flight(alice.id) == 1
    pending.abort()
    stalled.abort()
    assert_nothing_left(store, alice)


@BOTH
def test_renew_extends_the_lease(make_store: Callable[..., DataFolderStore], alice: User) -> None:
    store = make_store(lease=0.4)
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    time.sleep(0.25)
    assert store.renew() == 1
    time.sleep(0.25)  # past the first lease, within the renewed one
    assert store.catalog.uploads_in_flight(alice.id) == 1
    write_all(pending, sent)
    commit(pending, sent)
    assert store.renew() == 0  # nothing in flight any more


@BOTH
def test_dropping_a_dead_holders_reservations_frees_its_places(
    store: DataFolderStore, alice: User
) -> None:
    dead = ImageStore(
        store.catalog,
        store.blobs,
        store.copies,
        store.storage_key,
        uploads_per_user=1,
        holder="crashed-host:4242",
    )
    live = ImageStore(
        store.catalog, store.blobs, store.copies, store.storage_key, uploads_per_user=1
    )
    assert live.holder != dead.holder
    sent = seal()
    orphaned = dead.begin(alice, sent.header, sent.content_key)
    with pytest.raises(TryLaterError):
        live.begin(alice, sent.header, sent.content_key)
    assert live.renew() == 0  # renewing is per holder: the dead one's is not ours
    assert store.catalog.drop_reservations("crashed-host:4242") == 1
    pending = live.begin(alice, sent.header, sent.content_key)
    write_all(pending, sent)
    commit(pending, sent)
    orphaned.abort()  # its files; its reservation is already gone
    assert store.catalog.uploads_in_flight(alice.id) == 0


# --- delete and remove_user ------------------------------------------------------------


@BOTH
def test_delete_removes_row_copy_and_object(store: DataFolderStore, alice: User) -> None:
    record = store_image(store, alice)
    kept = store_image(store, alice)
    deleted = store.delete(record.id)
    assert deleted == DeletedImage(record.id, "alice", record.inbox_name)
    assert store.catalog.get_image(record.id) is None
    assert not store.blobs.exists(record.id)
    assert [name for _, name in store.inbox.iter_files()] == [kept.inbox_name]
    assert store.delete(record.id) is None
    assert store.catalog.get_image(kept.id) == kept


def test_delete_removes_the_row_first_then_the_copy_then_the_object(
    store: DataFolderStore, alice: User, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = store_image(store, alice)
    assert record.inbox_name is not None
    # The copy cannot be removed: the user's folder has become a link.
    folder = store.inbox.root / "alice"
    real = tmp_path / "alice-real"
    folder.rename(real)
    folder.symlink_to(real)
    # Once the row (the wrapped key) is gone the image is deleted: files that cannot
    # go now are orphans the sweep removes, and the delete says so in the log.
    assert store.delete(record.id) is not None
    assert "left for the sweep" in caplog.text and "symbolic link" in caplog.text
    assert store.catalog.get_image(record.id) is None  # the row went first...
    assert (real / record.inbox_name).exists()  # ...the copy could not...
    assert store.blobs.exists(record.id)  # ...and the object comes only after it


@BOTH
def test_delete_touches_no_file_when_the_row_cannot_go(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    store = make_store()
    record = store_image(store, alice)
    store.catalog.close()
    with pytest.raises(StorageError):
        store.delete(record.id)
    assert store.blobs.exists(record.id)
    assert len(list(store.inbox.iter_files())) == 1


@BOTH
def test_remove_user_with_purge_leaves_no_file_and_no_folder(
    store: DataFolderStore, alice: User
) -> None:
    records = [store_image(store, alice) for _ in range(2)]
    bob = store.catalog.add_user("bob", "h")
    bobs = store_image(store, bob)
    with pytest.raises(ConfigError, match="owns 2 image"):
        store.remove_user("alice")
    assert len(list(store.blobs.iter_ids())) == 3  # the refusal removed nothing
    deleted = store.remove_user("alice", purge=True)
    assert sorted(d.image_id for d in deleted) == sorted(r.id for r in records)
    assert store.catalog.get_user_by_name("alice") is None
    assert stray(store) == [
        "inbox/bob",
        f"inbox/bob/{bobs.inbox_name}",
        f"objects/{bobs.id[:2]}/{bobs.id}",
    ]


def test_remove_user_without_images_removes_their_empty_folder(
    store: DataFolderStore, alice: User
) -> None:
    record = store_image(store, alice)
    store.delete(record.id)
    assert stray(store) == ["inbox/alice"]  # delete leaves the folder...
    assert store.remove_user("alice") == []
    assert stray(store) == []  # ...remove_user does not


# --- a store without the storage key ------------------------------------------------------


def test_a_store_without_the_key_can_delete_but_not_store(
    make_store: Callable[..., DataFolderStore], store: DataFolderStore, alice: User
) -> None:
    record = store_image(store, alice)
    keyless = make_store(storage_key=None)
    sent = seal()
    with pytest.raises(StorageError, match="without the storage key"):
        keyless.begin(alice, sent.header, sent.content_key)
    assert keyless.catalog.uploads_in_flight(alice.id) == 0  # nothing was held
    assert temp_files(keyless) == []
    with pytest.raises(StorageError, match="without the storage key"):
        keyless.open(record)
    with pytest.raises(StorageError, match="without the storage key"):
        _ = keyless.key
    assert keyless.delete(record.id) is not None
    assert stray(keyless) == ["inbox/alice"]
    assert keyless.catalog.image_ids() == set()


# --- a store without inbox copies ---------------------------------------------------------


def test_without_the_inbox_the_copy_is_a_scratch_file(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    store = make_store(inbox=False)
    assert isinstance(store.copies, ScratchCopies)
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    write_all(pending, sent)
    assert [p for p in stray(store) if p.startswith("inbox/")] == []
    assert len(temp_files(store)) == 1  # the sealed object's; the copy has no name
    with pending.plaintext() as written:  # the image check can still read it
        info = images.validate_image(written)
    assert (info.format, info.width, info.height) == ("PNG", 64, 64)
    record = commit(pending, sent)
    assert record.inbox_name is None
    assert stray(store) == [f"objects/{record.id[:2]}/{record.id}"]  # nothing under inbox/
    assert store.catalog.get_image(record.id) == record
    assert store.delete(record.id) is not None
    assert stray(store) == []


def test_without_the_inbox_an_abort_leaves_nothing(
    make_store: Callable[..., DataFolderStore], alice: User
) -> None:
    store = make_store(inbox=False)
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    write_all(pending, sent)
    pending.abort()
    assert_nothing_left(store, alice)


@pytest.mark.parametrize(
    "inbox",
    [True, False],
)
def test_plaintext_reads_back_what_was_written(
    make_store: Callable[..., DataFolderStore], alice: User, inbox: bool
) -> None:
    store = make_store(inbox=inbox)
    sent = seal()
    pending = store.begin(alice, sent.header, sent.content_key)
    try:
        write_all(pending, sent)
        with pending.plaintext() as written:
            assert written.read() == sent.plaintext
    finally:
        pending.abort()


def test_deleting_with_copies_turned_off_still_removes_old_inbox_copies(
    make_store: Callable[..., DataFolderStore], store: DataFolderStore, alice: User
) -> None:
    record = store_image(store, alice)  # stored while the inbox was on
    assert record.inbox_name is not None
    off = make_store(inbox=False)
    off.delete(record.id)
    assert list(off.inbox.iter_files()) == []


# --- a worker process that died --------------------------------------------------------


@BOTH
def test_forget_process_cleans_up_after_exactly_that_process(
    store: DataFolderStore, alice: User
) -> None:
    dead_pid = 4_000_000  # above any real pid: nobody's
    dead = ImageStore(
        store.catalog,
        store.blobs,
        store.copies,
        store.storage_key,
        holder=process_holder(dead_pid),
    )
    sent = seal()
    orphaned = dead.begin(alice, sent.header, sent.content_key)  # its reservation
    leftovers = [
        store.blobs.tmp_dir / f"{dead_pid}-{'a' * 32}.part",
        store.inbox.tmp_dir / f"{dead_pid}-{'b' * 32}.part",
    ]
    for path in leftovers:
        path.write_bytes(b"the dead worker's")
    alive = store.begin(alice, sent.header, sent.content_key)  # this process's upload
    stop_after_one_chunk(alive, sent)
    before = set(temp_files(store))

    assert store.forget_process(dead_pid) == (1, 2)

    assert not any(path.exists() for path in leftovers)
    assert set(temp_files(store)) == before - {
        f"tmp/{leftovers[0].name}",
        f"inbox/.tmp/{leftovers[1].name}",
    }
    assert store.catalog.uploads_in_flight(alice.id) == 1  # only ours is left
    assert store.forget_process(dead_pid) == (0, 0)
    write_all_rest(alive, sent)
    commit(alive, sent)
    orphaned.abort()
    assert store.catalog.uploads_in_flight(alice.id) == 0


def write_all_rest(pending: PendingImage, sent: Sent) -> None:
    for sealed, plaintext in list(sent.pieces())[1:]:
        pending.write(sealed, plaintext)
