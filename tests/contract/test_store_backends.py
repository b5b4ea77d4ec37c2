"""One contract, every storage the factory makes: the store transaction, deletion, the
sweep, the storage key check and a dead worker's clean-up, on

* ``embedded``: SQLite, objects and inbox in the data folder (the default);
* ``shared``: PostgreSQL, objects in S3, the inbox in a folder of its own;
* ``bucket``: PostgreSQL, objects and inbox copies in S3 (``S3Inbox``);
* ``shared-radosgw`` and ``bucket-radosgw``: the same on Ceph's radosgw instead of
  SeaweedFS, under the opt-in ``radosgw`` marker (``make test-radosgw``).

PostgreSQL, SeaweedFS and radosgw are the real servers the session starts (tests/services/);
each test gets a database and a bucket prefix of its own. What the catalog alone must
do is proven on both databases elsewhere (tests/unit/test_store_*.py,
tests/contract/test_catalog_postgres.py), what a blob store must do in
test_blob_store.py; this file proves how the factory puts them together.
"""

from __future__ import annotations

import dataclasses
import io
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imgshare.errors import ConfigError, StorageError
from imgshare.protocol import StreamSealer, new_upload
from imgshare.store import DataFolderStore, StoreConfig, User, generate_storage_key, open_store
from imgshare.store.blobs import FileBlobStore
from imgshare.store.copies import Inbox, inbox_filename
from imgshare.store.images import process_holder
from imgshare.store.keys import StorageKey
from imgshare.store.s3 import PART_SIZE, S3BlobStore, S3Config
from imgshare.store.s3inbox import S3Inbox
from services.plugin import s3_test_config_of
from services.radosgw import S3_SERVERS

CHUNK = 4096
KINDS = (
    "embedded",
    pytest.param("shared", marks=pytest.mark.postgres),
    pytest.param("bucket", marks=pytest.mark.postgres),
    pytest.param("shared-radosgw", marks=[pytest.mark.postgres, pytest.mark.radosgw]),
    pytest.param("bucket-radosgw", marks=[pytest.mark.postgres, pytest.mark.radosgw]),
)
#: The S3 tests outside ``backend`` run on each S3 server (radosgw behind its marker).
EVERY_S3_SERVER = pytest.mark.parametrize("s3_server", S3_SERVERS, indirect=True)


def png(side: int = 64) -> bytes:
    """A real PNG of random pixels (it does not compress)."""
    pixels = os.urandom(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, "PNG")
    return buffer.getvalue()


@dataclasses.dataclass
class Backend:
    kind: str  # "embedded", "shared" or "bucket", whatever the S3 server
    config: StoreConfig
    s3: S3Config | None

    def open(self, **changes: Any) -> DataFolderStore:
        return open_store(dataclasses.replace(self.config, **changes))

    def multipart_uploads(self) -> list[str]:
        if self.s3 is None:
            return []
        client = _client(self.s3)
        answer = client.list_multipart_uploads(Bucket=self.s3.bucket, Prefix=f"{self.s3.prefix}/")
        return [upload["Key"] for upload in answer.get("Uploads", [])]


def _client(s3: S3Config) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
        # No checksum trailer over https, which radosgw 16 refuses (docs/operations.md).
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, request_checksum_calculation="when_required"
        ),
    )


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind, _, server = str(request.param).partition("-")
    key = generate_storage_key()
    data = tmp_path / "data"
    if kind == "embedded":
        return Backend(kind, StoreConfig(data=data, storage_key=key), None)
    url = request.getfixturevalue("postgres_url")
    s3 = s3_test_config_of(request, server or "seaweedfs")
    location = f"s3://{s3.bucket}/{s3.prefix}"
    inbox = location if kind == "bucket" else str(tmp_path / "shared-inbox")
    config = StoreConfig(
        data=data,
        storage_key=key,
        catalog_url=url,
        object_store_url=location,
        inbox_location=inbox,
        s3_endpoint=str(s3.endpoint_url),
        s3_access_key=str(s3.access_key),
        s3_secret_key=str(s3.secret_key),
        s3_region=s3.region,
    )
    return Backend(kind, config, s3)


@pytest.fixture
def store(backend: Backend) -> Iterator[DataFolderStore]:
    with backend.open() as opened:
        opened.check()
        yield opened


@pytest.fixture
def alice(store: DataFolderStore) -> User:
    return store.catalog.add_user(f"alice{secrets.token_hex(3)}", "$argon2id$fake")


def upload(store: DataFolderStore, user: User, plaintext: bytes | None = None) -> tuple[Any, bytes]:
    """Begin, write and return the pending image (not committed) and its HMAC."""
    plaintext = png() if plaintext is None else plaintext
    header, key = new_upload("holiday.png", len(plaintext), os.urandom, CHUNK)
    sealer = StreamSealer(header, key)
    pending = store.begin(user, header, key)
    pending.start_copy("png")
    for start in range(0, len(plaintext), CHUNK):
        piece = plaintext[start : start + CHUNK]
        pending.write(bytes(sealer.seal(piece)), piece)
    return pending, sealer.finish()


def copies(store: DataFolderStore) -> set[tuple[str, str]]:
    return set(store.inbox.iter_files())


def leftovers(store: DataFolderStore, backend: Backend) -> list[str]:
    """Anything an unfinished write leaves: temp files, or multipart uploads."""
    found: list[str] = backend.multipart_uploads()
    for area in (store.blobs, store.inbox):
        if isinstance(area, FileBlobStore):
            found += os.listdir(area.tmp_dir)
        elif isinstance(area, Inbox):
            found += os.listdir(area.tmp_dir)
    return found


# --- the store transaction -------------------------------------------------------------


def test_a_committed_image_is_in_every_part(
    store: DataFolderStore, backend: Backend, alice: User
) -> None:
    plaintext = png()
    pending, mac = upload(store, alice, plaintext)
    with pending.plaintext() as copy:  # the check reads what arrived
        assert copy.read() == plaintext
    record = pending.commit("PNG", 64, 64, mac)
    assert store.catalog.image_ids() == {record.id}
    assert set(store.blobs.iter_ids()) == {record.id}
    assert copies(store) == {(alice.name, str(record.inbox_name))}
    assert store.catalog.uploads_in_flight(alice.id) == 0
    opened = store.open(record)
    with opened.sealed as sealed:
        assert len(sealed.read()) == store.blobs.size(record.id)
    assert leftovers(store, backend) == []


def test_an_abort_leaves_nothing_anywhere(
    store: DataFolderStore, backend: Backend, alice: User
) -> None:
    pending, _ = upload(store, alice, png(side=1000))  # 3 MB: a copy on its way
    assert store.catalog.uploads_in_flight(alice.id) == 1
    pending.abort()
    pending.abort()
    assert store.catalog.image_ids() == set()
    assert set(store.blobs.iter_ids()) == set() and copies(store) == set()
    assert store.catalog.uploads_in_flight(alice.id) == 0
    assert leftovers(store, backend) == []


def test_a_big_image_streams_in_parts_and_commits(
    store: DataFolderStore, backend: Backend, alice: User
) -> None:
    plaintext = png(side=1800)  # about 9.7 MB: more than one part on S3
    assert len(plaintext) > PART_SIZE
    pending, mac = upload(store, alice, plaintext)
    if backend.s3 is not None:
        assert backend.multipart_uploads() != []  # parts went up as it arrived
    record = pending.commit("PNG", 1800, 1800, mac)
    assert leftovers(store, backend) == []
    assert store.blobs.size(record.id) > len(plaintext)  # the sealed chunks


def test_delete_removes_the_row_the_object_and_the_copy(
    store: DataFolderStore, backend: Backend, alice: User
) -> None:
    pending, mac = upload(store, alice)
    record = pending.commit("PNG", 64, 64, mac)
    other = backend.open()  # another node
    try:
        deleted = other.delete(record.id)
        assert deleted is not None and deleted.image_id == record.id
    finally:
        other.close()
    assert store.catalog.get_image(record.id) is None
    assert not store.blobs.exists(record.id)
    assert copies(store) == set()
    assert store.delete(record.id) is None  # once


def test_remove_user_with_purge_reaches_every_part(store: DataFolderStore, alice: User) -> None:
    for _ in range(2):
        pending, mac = upload(store, alice)
        pending.commit("PNG", 64, 64, mac)
    assert len(store.remove_user(alice.name, purge=True)) == 2
    assert store.catalog.image_ids() == set()
    assert set(store.blobs.iter_ids()) == set() and copies(store) == set()


def test_the_store_counts_what_its_writers_hold(store: DataFolderStore, backend: Backend) -> None:
    small, big = store.writer_memory(100_000), store.writer_memory(100_000_000)
    if backend.kind == "embedded":
        assert small == big == 0
        return
    writers = 2 if backend.kind == "bucket" else 1
    assert 100_000 * writers < small < big <= writers * (PART_SIZE + 2 * 1024 * 1024)


# --- the sweep --------------------------------------------------------------------------


def _plant(store: DataFolderStore, owner: str) -> tuple[str, str]:
    """An object and an inbox copy that no row names (a crash between the commits)."""
    object_id = secrets.token_hex(16)
    with store.blobs.create(object_id) as writer:
        writer.write(b"sealed")
        writer.commit()
    name = inbox_filename(secrets.token_hex(16), "png")
    inbox = store.inbox
    copy = inbox.create_file(owner, name)
    copy.write(b"plain")
    copy.commit()
    return object_id, name


def test_the_sweep_removes_old_orphans_and_keeps_young_ones(
    backend: Backend, alice: User, store: DataFolderStore
) -> None:
    pending, mac = upload(store, alice)
    kept = pending.commit("PNG", 64, 64, mac)
    orphan, orphan_copy = _plant(store, alice.name)
    young = store.sweep()  # sweep_after: an hour
    assert young.clean and not young.skipped
    assert orphan in set(store.blobs.iter_ids())
    time.sleep(1.1)  # S3 dates objects to the second
    with backend.open(sweep_after=0.5) as sweeper:
        report = sweeper.sweep()
    assert report.orphan_objects_removed == (orphan,)
    assert report.orphan_inbox_files_removed == ((alice.name, orphan_copy),)
    assert set(store.blobs.iter_ids()) == {kept.id}
    assert copies(store) == {(alice.name, str(kept.inbox_name))}


def test_with_shared_storage_the_sweep_is_never_exclusive(
    backend: Backend, alice: User, store: DataFolderStore
) -> None:
    """At start-up (``exclusive``) the embedded store removes every orphan; a node on
    shared storage removes none that is young: it may be another node's commit."""
    orphan, _ = _plant(store, alice.name)
    report = store.sweep(exclusive=True)
    if backend.kind == "embedded":
        assert report.orphan_objects_removed == (orphan,)
    else:
        assert report.orphan_objects_removed == () and store.blobs.exists(orphan)


@pytest.mark.postgres
@EVERY_S3_SERVER
def test_one_node_sweeps_at_a_time(
    postgres_url: str, tmp_path: Path, s3_test_config: S3Config
) -> None:
    s3 = s3_test_config
    config = StoreConfig(
        data=tmp_path / "data",
        storage_key=None,
        catalog_url=postgres_url,
        object_store_url=f"s3://{s3.bucket}/{s3.prefix}",
        inbox=False,
        s3_endpoint=str(s3.endpoint_url),
        s3_access_key=str(s3.access_key),
        s3_secret_key=str(s3.secret_key),
    )
    with open_store(config) as one, open_store(config) as two:
        with one.catalog.sweep_lock() as held:
            assert held
            assert two.sweep().skipped  # the other node's turn: nothing done
        assert not two.sweep().skipped


# --- the storage key ---------------------------------------------------------------------


def test_every_node_must_have_the_same_storage_key(backend: Backend, alice: User) -> None:
    key: StorageKey = backend.config.storage_key  # type: ignore[assignment]
    with backend.open(storage_key=None) as first:
        assert not first.key_check_recorded()
        first.adopt_key(key)
        assert first.key_check_recorded()
    with backend.open(storage_key=None) as same:
        same.adopt_key(key)  # checks, records nothing new
    with backend.open(storage_key=None) as other, pytest.raises(ConfigError, match="same key"):
        other.adopt_key(generate_storage_key())


def test_a_catalog_from_before_the_check_is_checked_against_its_images(
    store: DataFolderStore, backend: Backend, alice: User
) -> None:
    pending, mac = upload(store, alice)
    pending.commit("PNG", 64, 64, mac)  # no check value recorded by this store
    with backend.open(storage_key=None) as wrong, pytest.raises(ConfigError, match="same key"):
        wrong.adopt_key(generate_storage_key())
    with backend.open(storage_key=None) as right:
        right.adopt_key(backend.config.storage_key)  # type: ignore[arg-type]
        assert right.key_check_recorded()


# --- a dead worker ----------------------------------------------------------------------


def test_forget_process_drops_a_dead_workers_reservations(
    store: DataFolderStore, backend: Backend, alice: User
) -> None:
    pending, _ = upload(store, alice)
    assert store.holder == process_holder()
    assert process_holder().count(":") == 2  # host, pid and this server's instance
    dropped, _ = store.forget_process(os.getpid())
    assert dropped == 1 and store.catalog.uploads_in_flight(alice.id) == 0
    pending.abort()


# --- the inbox in a bucket ----------------------------------------------------------------


@pytest.mark.postgres
@EVERY_S3_SERVER
def test_s3_inbox_names_keys_and_ignores_foreign_ones(
    s3_test_config: S3Config, tmp_path: Path
) -> None:
    blobs = S3BlobStore(s3_test_config, scratch_dir=tmp_path)
    inbox = S3Inbox(blobs, s3_test_config.prefix)
    image_id = secrets.token_hex(16)
    copy = inbox.create("alice", image_id, "jpg")
    copy.write(b"plain" * 1000)
    with copy.reopen() as again:
        assert again.read() == b"plain" * 1000
    assert list(inbox.iter_files()) == []  # not visible before its commit
    copy.commit()
    assert copy.name is not None
    assert list(inbox.iter_files()) == [("alice", copy.name)]
    assert inbox.key_of("alice", copy.name) == f"{s3_test_config.prefix}/inbox/alice/{copy.name}"
    _client(s3_test_config).put_object(
        Bucket=s3_test_config.bucket,
        Key=f"{s3_test_config.prefix}/inbox/alice/notes.txt",
        Body=b"x",
    )
    assert list(inbox.iter_files()) == [("alice", copy.name)]
    assert inbox.size("alice", copy.name) == 5000
    assert inbox.delete("alice", copy.name) is True
    assert inbox.delete("alice", copy.name) is False
    for bad in ("../etc", "Alice", ""):
        with pytest.raises(ValueError):
            inbox.key_of(bad, copy.name)
    with pytest.raises(ValueError):
        inbox.key_of("alice", "../../objects/x")
    aborted = inbox.create("bob", secrets.token_hex(16), "png")
    aborted.write(os.urandom(PART_SIZE + 10))
    aborted.abort()
    assert list(inbox.iter_files()) == []


def test_unusable_locations_are_refused_clearly(tmp_path: Path) -> None:
    from imgshare.server.config import ServerSettings

    with pytest.raises(ConfigError, match="catalog_url must be a postgresql"):
        ServerSettings(catalog_url="mysql://x")
    with pytest.raises(ConfigError, match="object_store_url must be s3://"):
        ServerSettings(object_store_url="gs://bucket")
    with pytest.raises(ConfigError, match="sealed objects would stay in this node's data"):
        ServerSettings(catalog_url="postgresql://db/imgshare")
    with pytest.raises(ConfigError, match="inbox copies would go to this node's data folder"):
        ServerSettings(catalog_url="postgresql://db/x", object_store_url="s3://bucket/p")
    ServerSettings(catalog_url="postgresql://db/x", object_store_url="s3://b/p", inbox=False)
    ServerSettings(
        catalog_url="postgresql://db/x", object_store_url="s3://b/p", inbox_location="/srv/inbox"
    )
    settings = ServerSettings(
        catalog_url="postgresql://u:Secret@db/x",
        s3_secret_key="Sk",
        inbox=False,
        object_store_url="/x",
    )
    assert "Secret" not in repr(settings) and "Sk" not in repr(settings)
    with pytest.raises(StorageError):
        open_store(
            StoreConfig(
                data=tmp_path,
                storage_key=None,
                catalog_url="postgresql://u:p@127.0.0.1:1/x?connect_timeout=1",
            )
        )
