"""Several nodes behind a real load balancer, sharing real PostgreSQL and S3 (issue 13).

Three ``imgshare serve`` processes on 127.0.0.1 (one worker each), sharing one
PostgreSQL database, one SeaweedFS bucket prefix and one inbox folder, behind
Debian's haproxy in TCP mode (``multinode.Cluster``; the servers the session starts:
tests/services/). Which node a connection reached is told by the certificate it was
shown (each node has its own, from one CA). Each test works with users of its own.

The outage tests have a PostgreSQL or a SeaweedFS of their own, which they stop and
start again.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import imgshare, noise_image, png_of_exact_size, wait_until
from multinode import Cluster, cluster

from imgshare.client import ClientSession
from imgshare.errors import PeerError
from imgshare.protocol import events as ev
from imgshare.protocol.constants import ErrorCode, ListScope
from imgshare.store.s3 import PART_SIZE, S3Config
from services.postgres import PostgresCluster
from services.seaweedfs import SeaweedFS

pytestmark = [pytest.mark.multinode, pytest.mark.postgres]

QUOTA = 40_000_000
SWEEP_AFTER = 2


def _prefix(s3_config: S3Config) -> S3Config:
    return dataclasses.replace(s3_config, prefix=f"mn-{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresCluster,
    seaweedfs: SeaweedFS,
    s3_config: S3Config,
) -> Iterator[Cluster]:
    """Three nodes and haproxy, for the module (the nodes sweep every 2 s)."""
    url = postgres.new_database(schema=True)
    folder = tmp_path_factory.mktemp("cluster")
    try:
        with cluster(folder, url, _prefix(s3_config), seaweedfs.env()) as running:
            running.start(3, sweep_after=SWEEP_AFTER, quota_bytes=QUOTA)
            yield running
    finally:
        postgres.drop_database(url)


def _user(cluster: Cluster) -> str:
    name = f"u{secrets.token_hex(4)}"
    cluster.add_users(name)
    return name


def _rows(cluster: Cluster) -> set[str]:
    with cluster.catalog() as catalog:
        return catalog.image_ids()


# --- what one node does, the others see ------------------------------------------------


def test_upload_through_one_node_and_fetch_through_another(nodes: Cluster, tmp_path: Path) -> None:
    alice = _user(nodes)
    image = noise_image(tmp_path / "sent.png", "PNG", (300, 200))
    with nodes.session(alice) as session:
        uploader = nodes.node_of(session)
        sent = session.upload(image, sha256=True)
    fetched_on = set()
    for _ in range(2):  # on each of the two other nodes
        other, node = nodes.session_on_another_node(alice, uploader)
        with other:
            got = other.download(sent.id, tmp_path / f"{node.name}.png")
            assert [entry.image_id.hex() for entry in other.list_images()] == [sent.id]
        assert (got.sha256, got.hmac) == (sent.sha256, sent.hmac)
        assert got.path.read_bytes() == image.read_bytes()
        fetched_on.add(node.name)
    assert uploader.name not in fetched_on
    assert sent.id in nodes.object_ids() and sent.id in _rows(nodes)
    (copy,) = [name for name in nodes.inbox_files() if name.startswith(f"{alice}/")]
    assert copy.endswith(f"-{sent.id}.png")


def test_share_on_one_node_fetch_as_the_recipient_on_another(
    nodes: Cluster, tmp_path: Path
) -> None:
    owner, reader = _user(nodes), _user(nodes)
    image = noise_image(tmp_path / "shared.png", "PNG", (120, 90), seed=3)
    with nodes.session(owner) as session:
        sharer = nodes.node_of(session)
        sent = session.upload(image, sha256=True)
        session.share(sent.id, reader)
    other, _ = nodes.session_on_another_node(reader, sharer)
    with other:
        got = other.download(sent.id, tmp_path / "got.png")
        (entry,) = other.list_page(ListScope.SHARED_WITH_ME).images
    assert (got.sha256, got.hmac) == (sent.sha256, sent.hmac)  # the uploader's HMAC
    assert (entry.image_id.hex(), entry.owner) == (sent.id, owner)
    # Unshared on one node: another refuses the reader at once.
    with nodes.session(owner) as session:
        unsharer = nodes.node_of(session)
        session.unshare(sent.id, reader)
    third, _ = nodes.session_on_another_node(reader, unsharer)
    with third, pytest.raises(PeerError) as refused:
        third.download(sent.id, tmp_path / "again.png")
    assert refused.value.code == ErrorCode.NOT_FOUND


def test_delete_on_one_node_is_gone_on_all(nodes: Cluster, tmp_path: Path) -> None:
    alice = _user(nodes)
    image = noise_image(tmp_path / "doomed.jpg", "JPEG", (160, 120), seed=5)
    with nodes.session(alice) as session:
        deleter = nodes.node_of(session)
        sent = session.upload(image)
        assert sent.id in nodes.object_ids()
        assert any(name.endswith(f"-{sent.id}.jpg") for name in nodes.inbox_files())
        session.delete(sent.id)
    assert sent.id not in _rows(nodes)  # the row, and with it the wrapped key
    assert sent.id not in nodes.object_ids()  # the sealed object
    assert not any(sent.id in name for name in nodes.inbox_files())  # the inbox copy
    for node in nodes.nodes:
        if node is deleter:
            continue
        with nodes.session(alice, port=node.port) as session:
            assert session.list_images() == []
            with pytest.raises(PeerError) as refused:
                session.download(sent.id, tmp_path / f"{node.name}.jpg")
            assert refused.value.code == ErrorCode.NOT_FOUND


# --- races between nodes ----------------------------------------------------------------


def test_two_nodes_racing_one_users_quota_cannot_overshoot(nodes: Cluster, tmp_path: Path) -> None:
    """Four uploads of 15 MB for a 40 MB quota, begun at once on two nodes: two may
    go, two hear QUOTA_EXCEEDED; once both are stored, no node takes a third."""
    alice = _user(nodes)
    size = 15_000_000
    images = [png_of_exact_size(tmp_path / f"{i}.png", size, seed=i) for i in range(4)]
    first, second = nodes.nodes[0], nodes.nodes[1]
    clients = [nodes.raw(alice, port=node.port) for node in (first, second, first, second)]
    uploads = [
        c.prepare_upload(p.read_bytes(), chunk_size=1 << 20)
        for c, p in zip(clients, images, strict=True)
    ]
    answers: dict[int, ev.Event] = {}
    barrier = threading.Barrier(len(clients))

    def begin(index: int) -> None:
        barrier.wait()
        answers[index] = clients[index].begin_upload(uploads[index])

    threads = [threading.Thread(target=begin, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    ready = [i for i, answer in answers.items() if isinstance(answer, ev.UploadReady)]
    refused = [i for i, answer in answers.items() if isinstance(answer, ev.Error)]
    assert len(ready) == 2 and len(refused) == 2, answers
    assert {answers[i].code for i in refused} == {ErrorCode.QUOTA_EXCEEDED}  # type: ignore[attr-defined]
    for index in ready:
        upload = uploads[index]
        for chunk in range(upload.header.chunk_count):
            clients[index].send_chunk(upload, chunk)
        clients[index].send(ev.UploadEnd(upload.hmac))
        assert isinstance(clients[index].receive(), ev.Receipt)
    for client in clients:
        client.close()
    with nodes.catalog() as catalog:
        user = catalog.get_user_by_name(alice)
        assert user is not None
        assert catalog.used_bytes(user.id) == 2 * size <= QUOTA
        assert catalog.uploads_in_flight(user.id) == 0
    for node in nodes.nodes:  # and now no node takes a third
        with nodes.raw(alice, port=node.port) as client:
            answer = client.begin_upload(client.prepare_upload(images[0].read_bytes()))
            assert isinstance(answer, ev.Error) and answer.code == ErrorCode.QUOTA_EXCEEDED


def test_a_sweep_on_one_node_never_removes_what_another_just_committed(
    nodes: Cluster, tmp_path: Path
) -> None:
    """Every node sweeps every 2 s (taking turns: an advisory lock); 30 uploads through
    the balancer in the meantime all stay whole. An orphan planted before them is
    gone after them: the sweeps did run."""
    alice = _user(nodes)
    orphan = secrets.token_hex(16)
    bucket = nodes.bucket()
    bucket.put_object(
        Bucket=nodes.s3.bucket, Key=f"{nodes.s3.prefix}/objects/{orphan[:2]}/{orphan}", Body=b"x"
    )
    images = [noise_image(tmp_path / f"{i}.bmp", "BMP", (90, 90), seed=i) for i in range(30)]
    stored: list[str] = []
    errors: list[BaseException] = []

    def send(paths: list[Path]) -> None:
        try:
            for path in paths:
                with nodes.session(alice) as session:
                    stored.append(session.upload(path).id)
                time.sleep(0.1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=send, args=(images[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(stored) == 30
    # Two more sweeps at least, and the orphan is old enough to go.
    time.sleep(max(0.0, 2 * SWEEP_AFTER + 1 - (time.monotonic() - began)) + SWEEP_AFTER)
    wait_until(lambda: orphan not in nodes.object_ids(), timeout=10)
    assert set(stored) <= nodes.object_ids()
    assert set(stored) <= _rows(nodes)
    with nodes.session(alice) as session:
        assert {e.image_id.hex() for e in session.list_images()} == set(stored)
        session.download(stored[0], tmp_path / "first.bmp")
    removed = [line for node in nodes.nodes for line in node.lines if f"object {orphan}" in line]
    assert len(removed) == 1, removed  # by one node: they take turns


# --- a node dies ------------------------------------------------------------------------


def test_a_node_killed_mid_upload_leaves_nothing_after_the_sweep(
    nodes: Cluster, tmp_path: Path
) -> None:
    alice = _user(nodes)
    victim = nodes.nodes[2]
    data = png_of_exact_size(tmp_path / "big.png", PART_SIZE + 3_000_000).read_bytes()
    client = nodes.raw(alice, port=victim.port)
    upload = client.prepare_upload(data, chunk_size=1 << 20)
    assert isinstance(client.begin_upload(upload), ev.UploadReady)
    for index in range(upload.header.chunk_count - 1):  # a part is up, the rest is not
        client.send_chunk(upload, index)
    wait_until(nodes.multipart_uploads, timeout=10)  # a part of the object is up
    assert nodes.inbox_temp_files() != []  # the inbox copy on its way
    with nodes.catalog() as catalog:
        user = catalog.get_user_by_name(alice)
        assert user is not None and catalog.uploads_in_flight(user.id) == 1
    victim.kill()
    client.close()

    # The other nodes' sweeps abort the dead node's multipart uploads and remove its
    # temp files once they are older than sweep_after; no object without a row stays.
    def clean() -> bool:
        return (
            not nodes.multipart_uploads()
            and not nodes.inbox_temp_files()
            and nodes.object_ids() <= _rows(nodes)
        )

    wait_until(clean, timeout=4 * SWEEP_AFTER + 10, interval=0.5)
    with nodes.catalog() as catalog:  # its reservation lapses with its lease
        assert user is not None and catalog.list_images(user.id) == []
    # The balancer sends nobody to the dead node; the others serve.
    for _ in range(4):
        with nodes.session(alice) as session:
            assert nodes.node_of(session) is not victim
            assert session.list_images() == []
    # The node starts again on its data folder (its lock went with it).
    victim.start()
    victim.wait_listening()
    with nodes.session(alice, port=victim.port) as session:
        assert session.list_images() == []


# --- the admin commands reach the shared catalog -----------------------------------------


def test_admin_commands_work_on_the_shared_catalog(nodes: Cluster, tmp_path: Path) -> None:
    """``user add``, ``user list``, ``audit`` and ``user remove --purge`` with a node's
    ``--config``: one catalog, one bucket, one inbox for all of them."""
    password = tmp_path / "password"
    password.write_text("a good long password\n")
    env = {**nodes.s3_env, "IMGSHARE_STORAGE_KEY": nodes.storage_key}
    name = f"adm{secrets.token_hex(3)}"
    config = nodes.nodes[0].config

    def run(*args: Any) -> Any:
        done = imgshare(*args, "--config", config, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        return done

    run("user", "add", name, "--password-file", password)
    with ClientSession.connect(
        "127.0.0.1", nodes.lb_port, nodes.context(), verifier=nodes.verifier(), timeout=30
    ) as session:
        session.login(name, "a good long password")  # on whichever node: one catalog
        sent = session.upload(noise_image(tmp_path / "x.png", "PNG", (40, 40)))
    assert name in run("user", "list").stdout
    assert '"event": "login"' in run("audit", "--user", name, "--json").stdout
    assert "removed with 1 image(s)" in run("user", "remove", name, "--purge").stdout
    assert sent.id not in nodes.object_ids() and sent.id not in _rows(nodes)
    assert not any(copy.startswith(f"{name}/") for copy in nodes.inbox_files())


# --- the database goes away, and comes back ---------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL of this test's own, to stop and start."""
    server = PostgresCluster()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_database_outage_during_an_upload_sends_no_receipt_and_service_comes_back(
    tmp_path: Path, own_postgres: PostgresCluster, seaweedfs: SeaweedFS, s3_config: S3Config
) -> None:
    """PostgreSQL stops while an image streams in (a part already in the bucket). The
    upload ends with a clear STORAGE_FAILED, no receipt, and nothing of it left in
    the bucket; other requests hear TRY_LATER; once the database is back, the same
    connection and new ones are served, on every node."""
    url = own_postgres.new_database(schema=False)
    with cluster(tmp_path / "c", url, _prefix(s3_config), seaweedfs.env()) as nodes:
        nodes.add_users("alice")
        nodes.start(2)
        first = nodes.nodes[0]
        data = png_of_exact_size(tmp_path / "big.png", PART_SIZE + 2_000_000).read_bytes()
        client = nodes.raw("alice", port=first.port)
        upload = client.prepare_upload(data, chunk_size=1 << 20)
        assert isinstance(client.begin_upload(upload), ev.UploadReady)
        for index in range(upload.header.chunk_count - 1):
            client.send_chunk(upload, index)
        wait_until(nodes.multipart_uploads, timeout=10)

        own_postgres.pause()  # as a crash does: connections cut, nothing answers
        client.send_chunk(upload, upload.header.chunk_count - 1)
        client.send(ev.UploadEnd(upload.hmac))
        answer = client.receive()
        assert isinstance(answer, ev.Error) and not answer.fatal, answer
        assert answer.code == ErrorCode.STORAGE_FAILED
        assert "could not store the image" in answer.message
        wait_until(lambda: not nodes.multipart_uploads(), timeout=10)  # taken back
        assert nodes.object_ids() == set() and nodes.inbox_files() == set()
        # Meanwhile: a request on a logged-in session, and a new login, on each node.
        client.send(ev.ListImages())
        busy = client.receive()
        assert isinstance(busy, ev.Error) and busy.code == ErrorCode.TRY_LATER, busy
        assert "database or object store" in busy.message
        for node in nodes.nodes:
            with nodes.raw(port=node.port) as fresh:
                fresh.send(ev.TokenLogin(nodes.tokens["alice"].encode()))
                refused = fresh.receive()
                assert isinstance(refused, ev.Error), refused
                assert refused.code == ErrorCode.TRY_LATER and not refused.fatal

        own_postgres.resume()
        client.send(ev.ListImages())  # the same connection: served again
        listed = client.receive()
        assert isinstance(listed, ev.ImageList) and listed.images == ()
        again = client.prepare_upload(data, chunk_size=1 << 20)
        assert isinstance(client.begin_upload(again), ev.UploadReady)
        for index in range(again.header.chunk_count):
            client.send_chunk(again, index)
        client.send(ev.UploadEnd(again.hmac))
        receipt = client.receive()
        assert isinstance(receipt, ev.Receipt), receipt
        client.close()
        for node in nodes.nodes:
            with nodes.session("alice", port=node.port) as session:
                assert [e.image_id for e in session.list_images()] == [receipt.body.image_id]
        assert nodes.object_ids() == {receipt.body.image_id.hex()}
        assert not nodes.multipart_uploads()


# --- the bucket goes away, and comes back -----------------------------------------------


@pytest.fixture
def own_seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, to kill and start again."""
    server = SeaweedFS()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_a_bucket_outage_during_an_upload_sends_no_receipt_and_service_comes_back(
    tmp_path: Path, postgres: PostgresCluster, own_seaweedfs: SeaweedFS
) -> None:
    """SeaweedFS is killed (a crash: SIGKILL) while a 24 MiB image streams in, its
    first part already in the bucket. The upload ends with a clear STORAGE_FAILED
    within seconds, no receipt, no row, no reservation; meanwhile logins and lists
    (the catalog alone) are served, a new upload is refused at its end and a download
    hears TRY_LATER. Once SeaweedFS is back on its folder, uploads and downloads of
    older images work again, and the sweep leaves no multipart upload or object
    without a row (docs/operations.md, "Several nodes")."""
    url = postgres.new_database(schema=True)
    s3 = S3Config(
        bucket=own_seaweedfs.bucket,
        prefix=f"mn-{secrets.token_hex(4)}",
        endpoint_url=own_seaweedfs.endpoint_url,
        access_key=own_seaweedfs.access_key,
        secret_key=own_seaweedfs.secret_key,
    )
    try:
        with cluster(tmp_path / "c", url, s3, own_seaweedfs.env()) as nodes:
            nodes.add_users("alice")
            nodes.start(2, sweep_after=SWEEP_AFTER)
            older_path = noise_image(tmp_path / "older.png", "PNG", (200, 150), seed=7)
            with nodes.session("alice") as session:
                older = session.upload(older_path, sha256=True)
            with nodes.catalog() as catalog:
                alice = catalog.get_user_by_name("alice")
            assert alice is not None

            data = png_of_exact_size(tmp_path / "big.png", 3 * PART_SIZE).read_bytes()
            client = nodes.raw("alice", port=nodes.nodes[0].port)
            upload = client.prepare_upload(data, chunk_size=1 << 20)
            assert isinstance(client.begin_upload(upload), ev.UploadReady)
            midway = PART_SIZE // (1 << 20) + 2  # a part is up, the next one filling
            for index in range(midway):
                client.send_chunk(upload, index)
            wait_until(nodes.multipart_uploads, timeout=10)

            own_seaweedfs.pause()
            down = time.monotonic()
            for index in range(midway, upload.header.chunk_count):
                client.send_chunk(upload, index)
            client.send(ev.UploadEnd(upload.hmac))
            answer = client.receive()
            time_to_error = time.monotonic() - down
            assert isinstance(answer, ev.Error) and not answer.fatal, answer
            assert answer.code == ErrorCode.STORAGE_FAILED
            assert "could not store the image" in answer.message
            assert "object store" in answer.message and "try again later" in answer.message
            assert time_to_error < 15, time_to_error
            with nodes.catalog() as catalog:  # no row, no reservation left
                assert [r.id for r in catalog.list_images(alice.id)] == [older.id]
                assert catalog.uploads_in_flight(alice.id) == 0
                assert catalog.used_bytes(alice.id) == older_path.stat().st_size

            # Meanwhile: what needs only the catalog is served, on the same connection
            # and on a new login on each node.
            client.send(ev.ListImages())
            listed = client.receive()
            assert isinstance(listed, ev.ImageList), listed
            assert [e.image_id.hex() for e in listed.images] == [older.id]
            for node in nodes.nodes:
                with nodes.raw("alice", port=node.port) as fresh:
                    fresh.send(ev.ListImages())
                    assert isinstance(fresh.receive(), ev.ImageList)
            # A new upload is refused at its end, clearly; a download hears TRY_LATER.
            small = client.prepare_upload(older_path.read_bytes())
            assert isinstance(client.begin_upload(small), ev.UploadReady)
            for index in range(small.header.chunk_count):
                client.send_chunk(small, index)
            client.send(ev.UploadEnd(small.hmac))
            refused = client.receive()
            assert isinstance(refused, ev.Error) and not refused.fatal, refused
            assert refused.code == ErrorCode.STORAGE_FAILED and "object store" in refused.message
            client.send(ev.Download(bytes.fromhex(older.id)))
            busy = client.receive()
            assert isinstance(busy, ev.Error) and busy.code == ErrorCode.TRY_LATER, busy
            assert "database or object store" in busy.message and not busy.fatal
            with nodes.catalog() as catalog:
                assert catalog.uploads_in_flight(alice.id) == 0

            time_to_recover = own_seaweedfs.resume()
            client.send(ev.ListImages())  # the same connection goes on
            assert isinstance(client.receive(), ev.ImageList)
            client.close()
            with nodes.session("alice") as session:
                again = session.upload(older_path, sha256=True)
                got = session.download(older.id, tmp_path / "got.png")
            assert (got.sha256, got.hmac) == (older.sha256, older.hmac)
            assert got.path.read_bytes() == older_path.read_bytes()

            # The killed upload's multipart upload, which could not be aborted while
            # the bucket was down, goes with the sweep; nothing without a row stays.
            def clean() -> bool:
                return not nodes.multipart_uploads() and nodes.object_ids() == _rows(nodes)

            wait_until(clean, timeout=4 * SWEEP_AFTER + 10, interval=0.5)
            assert _rows(nodes) == {older.id, again.id}
            print(
                f"bucket outage: error after {time_to_error:.1f} s, back in {time_to_recover:.1f} s"
            )
    finally:
        postgres.drop_database(url)
