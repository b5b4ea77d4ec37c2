"""One contract, every ``BlobStore``: the data folder (``FileBlobStore``) and S3
(``S3BlobStore`` against a real SeaweedFS that the session starts, SigV4 checked,
and against Ceph's radosgw under the opt-in ``radosgw`` marker: ``make test-radosgw``).

Each test runs against each of them; a few at the end say what only S3 has
(multipart uploads left on the server, credentials, the endpoint). Each S3 test gets
a key prefix of its own in the session's bucket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgshare.errors import StorageError
from imgshare.store.blobs import BlobNotFound, BlobStore, FileBlobStore
from imgshare.store.s3 import PART_SIZE, S3BlobStore, S3Config
from services.plugin import s3_test_config_of
from services.radosgw import S3_SERVERS

MiB = 1024 * 1024
BAD_IDS = ["", "../" + "a" * 29, "A" * 32, "g" * 32, "a" * 31, "a" * 33, "ab/" + "c" * 29]


def new_id() -> str:
    return secrets.token_hex(16)


#: The S3 tests that talk to a server run on each one (radosgw behind its marker).
EVERY_S3_SERVER = pytest.mark.parametrize("s3_server", S3_SERVERS, indirect=True)


@pytest.fixture(params=["file", *S3_SERVERS])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    if kind == "file":
        return FileBlobStore(tmp_path / "data")
    return S3BlobStore(s3_test_config_of(request, kind), scratch_dir=tmp_path)


def raw_client(config: S3Config) -> Any:
    """A botocore client of the test's own, to look at the bucket behind the store."""
    import botocore.config
    import botocore.session

    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        region_name=config.region,
        # No checksum trailer over https, which radosgw 16 refuses (docs/operations.md).
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, request_checksum_calculation="when_required"
        ),
    )


def leftovers(store: BlobStore) -> list[str]:
    """What an unfinished write leaves: temp files, or unfinished multipart uploads."""
    if isinstance(store, FileBlobStore):
        return sorted(os.listdir(store.tmp_dir))
    assert isinstance(store, S3BlobStore)
    answer = raw_client(store.config).list_multipart_uploads(
        Bucket=store.config.bucket, Prefix=store.config.key_prefix()
    )
    return sorted(upload["Key"] for upload in answer.get("Uploads", []))


def put_foreign(store: BlobStore, folder: str, name: str) -> None:
    """Something in the objects area that the store did not write."""
    if isinstance(store, FileBlobStore):
        path = store.objects_dir / folder
        path.mkdir(exist_ok=True)
        (path / name).write_bytes(b"not ours")
        return
    assert isinstance(store, S3BlobStore)
    key = f"{store.config.key_prefix()}{folder}/{name}"
    raw_client(store.config).put_object(Bucket=store.config.bucket, Key=key, Body=b"not ours")


def store_object(store: BlobStore, data: bytes, piece: int = 64 * 1024) -> str:
    object_id = new_id()
    with store.create(object_id) as writer:
        view = memoryview(data)
        for start in range(0, len(data), piece):
            writer.write(view[start : start + piece])
        writer.commit()
    return object_id


def read_all(store: BlobStore, object_id: str, piece: int = MiB + 17) -> bytes:
    """The object read back the way the server does: ``readinto`` a reused buffer."""
    out = bytearray()
    buffer = memoryview(bytearray(piece))
    with store.open(object_id) as stored:
        while True:
            got = stored.readinto(buffer)
            if not got:
                break
            out += buffer[:got]
    return bytes(out)


# --- the contract ---------------------------------------------------------------------


def test_write_commit_read_size_exists_delete(store: BlobStore) -> None:
    data = os.urandom(300_000)
    object_id = store_object(store, data, piece=10_000)
    assert store.exists(object_id)
    assert store.size(object_id) == len(data)
    assert read_all(store, object_id) == data
    with store.open(object_id) as stored:  # readinto fills a buffer exactly
        head = bytearray(1000)
        assert stored.readinto(head) == 1000
        assert bytes(head) == data[:1000]
        assert stored.read() == data[1000:]
    assert object_id in set(store.iter_ids())
    assert store.delete(object_id) is True
    assert not store.exists(object_id)
    assert store.delete(object_id) is False
    assert object_id not in set(store.iter_ids())


@pytest.mark.parametrize("size", [0, 1, PART_SIZE, PART_SIZE + 1])
def test_sizes_at_the_part_boundaries(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    object_id = store_object(store, data, piece=3 * MiB + 5)
    assert store.size(object_id) == size
    assert read_all(store, object_id) == data
    assert leftovers(store) == []


def test_big_object_streams_back_identical(store: BlobStore) -> None:
    """20 MB: three parts on S3, written in odd pieces, read back in odd pieces."""
    data = os.urandom(20_000_000)
    object_id = store_object(store, data, piece=MiB - 3)
    assert store.size(object_id) == len(data)
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(256 * 1024 + 16))
    with store.open(object_id) as stored:
        while got := stored.readinto(buffer):
            digest.update(buffer[:got])
    assert digest.digest() == hashlib.sha256(data).digest()
    assert leftovers(store) == []


def test_an_uncommitted_object_is_invisible(store: BlobStore) -> None:
    object_id = new_id()
    writer = store.create(object_id)
    writer.write(os.urandom(PART_SIZE + 1000))  # on S3: a multipart upload has begun
    assert not store.exists(object_id)
    assert object_id not in set(store.iter_ids())
    with pytest.raises(BlobNotFound):
        store.open(object_id)
    with pytest.raises(BlobNotFound):
        store.size(object_id)
    writer.commit()
    assert store.exists(object_id)


def test_abort_leaves_nothing(store: BlobStore) -> None:
    object_id = new_id()
    writer = store.create(object_id)
    writer.write(os.urandom(PART_SIZE + 1000))
    assert leftovers(store) != []  # a temp file, or a multipart upload
    writer.abort()
    writer.abort()  # idempotent
    assert leftovers(store) == []
    assert not store.exists(object_id)
    with pytest.raises(StorageError):
        writer.commit()
    with pytest.raises(StorageError):
        writer.write(b"more")


def test_leaving_the_context_without_commit_aborts(store: BlobStore) -> None:
    object_id = new_id()
    with pytest.raises(RuntimeError), store.create(object_id) as writer:
        writer.write(os.urandom(PART_SIZE + 1))
        raise RuntimeError("the upload failed")
    assert leftovers(store) == []
    assert not store.exists(object_id)


def test_a_committed_writer_refuses_more(store: BlobStore) -> None:
    object_id = new_id()
    with store.create(object_id) as writer:
        writer.write(b"sealed")
        writer.commit()
        with pytest.raises(StorageError):
            writer.write(b"more")
        with pytest.raises(StorageError):
            writer.commit()
    assert read_all(store, object_id) == b"sealed"  # leaving the context keeps it


def test_iter_ids_before_and_foreign_names(store: BlobStore) -> None:
    ids = {store_object(store, b"x" * n) for n in (1, 2, 3)}
    stray = new_id()
    put_foreign(store, "zz", "zz-not-an-object-id")
    put_foreign(store, stray[:2], stray + "ab")  # 34 characters
    put_foreign(store, "00" if stray[:2] != "00" else "11", stray)  # in the wrong folder
    assert set(store.iter_ids()) == ids
    assert set(store.iter_ids(before=time.time() + 60)) == ids
    assert set(store.iter_ids(before=time.time() - 60)) == set()


def test_sweep_temp_removes_only_what_is_older_than_before(store: BlobStore) -> None:
    object_id = new_id()
    writer = store.create(object_id)
    writer.write(os.urandom(PART_SIZE + 1))
    assert store.sweep_temp(before=time.time() - 60) == 0  # too young: may be in flight
    assert leftovers(store) != []
    assert store.sweep_temp(before=time.time() + 60) == 1
    assert leftovers(store) == []
    with pytest.raises(StorageError):  # its writer finds its temp (or upload) gone
        writer.commit()
    assert not store.exists(object_id)
    assert store.sweep_temp() == 0


def test_missing_objects(store: BlobStore) -> None:
    object_id = new_id()
    with pytest.raises(BlobNotFound):
        store.open(object_id)
    with pytest.raises(BlobNotFound):
        store.size(object_id)
    assert store.exists(object_id) is False
    assert store.delete(object_id) is False


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused(store: BlobStore, bad: str) -> None:
    calls: list[Callable[[str], object]] = [
        store.create,
        store.open,
        store.size,
        store.exists,
        store.delete,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="object id"):
            call(bad)


def test_scratch_file_is_private_and_anonymous(store: BlobStore) -> None:
    with store.scratch_file() as scratch:
        assert stat.S_IMODE(os.fstat(scratch.fileno()).st_mode) == 0o600
        assert os.fstat(scratch.fileno()).st_nlink == 0
        scratch.write(b"plaintext")
        scratch.seek(0)
        assert scratch.read() == b"plaintext"


def test_threads_share_one_store(store: BlobStore) -> None:
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                data = os.urandom(20_000)
                results[store_object(store, data)] = data
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 30
    for object_id, data in results.items():
        assert read_all(store, object_id) == data


def _rss_peak_after_reset() -> Callable[[], int]:
    """Reset the process's peak RSS (Linux clear_refs 5); a function that returns the
    peak since then, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")

    def peak() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/self/status")

    return peak


def _rss_now() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def test_writing_64_mb_holds_at_most_two_parts(store: BlobStore) -> None:
    """The writer streams: creating a 64 MB object does not grow the process's
    resident memory by more than about two parts (S3: the part buffer, plus what
    the client holds while it sends one)."""
    piece = memoryview(os.urandom(MiB))
    store_object(store, b"warm-up" * 1000)  # connections, lazy imports, first buffers
    before = _rss_now()
    peak = _rss_peak_after_reset()
    object_id = new_id()
    with store.create(object_id) as writer:
        for _ in range(64):
            writer.write(piece)
        writer.commit()
    grown = peak() - before
    assert grown <= 2 * PART_SIZE + 4 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"
    assert store.size(object_id) == 64 * MiB


# --- what only S3 has -----------------------------------------------------------------


@pytest.fixture
def s3_store(s3_test_config: S3Config, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore(s3_test_config, scratch_dir=tmp_path)


@EVERY_S3_SERVER
def test_s3_keys_and_layout(s3_store: S3BlobStore) -> None:
    object_id = store_object(s3_store, b"sealed")
    config = s3_store.config
    key = f"{config.prefix}/objects/{object_id[:2]}/{object_id}"
    assert s3_store.key_of(object_id) == key
    body = raw_client(config).get_object(Bucket=config.bucket, Key=key)["Body"].read()
    assert body == b"sealed"


@EVERY_S3_SERVER
def test_s3_sweep_by_pid_alone_aborts_nothing(s3_store: S3BlobStore) -> None:
    """A dead worker's uploads cannot be told apart on S3: a sweep for one pid must
    not abort the uploads of live workers (and other nodes)."""
    writer = s3_store.create(new_id())
    writer.write(os.urandom(PART_SIZE + 1))
    assert s3_store.sweep_temp(pid=os.getpid()) == 0
    assert len(leftovers(s3_store)) == 1
    writer.commit()
    assert leftovers(s3_store) == []


@EVERY_S3_SERVER
def test_s3_a_wrong_secret_key_is_refused_clearly(s3_test_config: S3Config) -> None:
    """SigV4 is checked: the right access key with a wrong secret fails, and the
    error says so without showing either secret."""
    wrong = "wrong-" + secrets.token_hex(8)
    store = S3BlobStore(dataclasses.replace(s3_test_config, secret_key=wrong))
    with pytest.raises(StorageError) as caught:
        store.check()
    message = str(caught.value)
    assert "credentials were refused" in message
    assert s3_test_config.bucket in message
    assert wrong not in message and str(s3_test_config.secret_key) not in message
    with pytest.raises(StorageError, match="credentials were refused"):
        store_object(store, b"x")
    with pytest.raises(StorageError, match="credentials were refused"):
        store.exists(new_id())


@EVERY_S3_SERVER
def test_s3_a_missing_bucket_is_named(s3_test_config: S3Config) -> None:
    store = S3BlobStore(dataclasses.replace(s3_test_config, bucket="no-such-bucket-here"))
    with pytest.raises(StorageError, match=r"no-such-bucket-here.*does not exist"):
        store.check()
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        store_object(store, b"x")


def test_s3_an_unreachable_endpoint_is_a_storage_error(s3_test_config: S3Config) -> None:
    import socket

    with socket.socket() as probe:  # a port with nothing behind it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = dataclasses.replace(s3_test_config, endpoint_url=f"http://127.0.0.1:{port}")
    store = S3BlobStore(config, connect_timeout=1)
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}.*cannot reach"):
        store.check()
    assert str(config.secret_key) not in repr(store)


def test_s3_the_secret_never_shows(s3_test_config: S3Config) -> None:
    secret = str(s3_test_config.secret_key)
    assert secret not in repr(s3_test_config)
    assert secret not in repr(S3BlobStore(s3_test_config))
