"""What a request does (``imgshare.server.session.Session``), without sockets.

A real ``Service`` over a real store in ``tmp_path`` (as ``imgshare.server.app``
builds it, with a cheap argon2 hasher), and a real ``ServerConnection`` paired in
memory with the ``ClientConnection`` a client uses: the test plays the network
layer, the only writer, sending what ``Session.handle`` yields and handing upload
chunks to ``session.upload`` the way it does (each chunk record read straight into a
buffer the upload gives out). The client connection checks everything it receives,
receipts and downloads included.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import select
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from PIL import Image

from imgshare.errors import IntegrityError, StorageError
from imgshare.protocol import (
    ClientConnection,
    PinnedCertificate,
    ServerConnection,
    State,
    StreamOpener,
    StreamSealer,
    UploadHeader,
)
from imgshare.protocol import events as ev
from imgshare.protocol.constants import MAX_RETRY_AFTER_MS, RECORD_HEADER_SIZE, ErrorCode
from imgshare.protocol.state import TRANSITIONS, Role
from imgshare.protocol.stream import new_upload
from imgshare.server import upload as upload_module
from imgshare.server.accounts import Accounts
from imgshare.server.app import Shares, build_service, store_config
from imgshare.server.config import ServerSettings
from imgshare.server.service import Service
from imgshare.server.session import Session
from imgshare.server.upload import Upload
from imgshare.store import User, generate_storage_key, open_store
from protocol_helpers import feed, fixed_p256_key, self_signed_certificate

HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"
CHUNK = 4096
SERVER_KEY = fixed_p256_key("session test server")
CERTIFICATE = self_signed_certificate(SERVER_KEY)


def noise_png(side: int = 64, seed: int = 1) -> bytes:
    """A real PNG of random pixels: it does not compress, so it spans several chunks."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, "PNG")
    return buffer.getvalue()


PNG = noise_png()

# --- the service and a client on the other end ---------------------------------------------


ServiceFactory = Callable[..., Service]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Services over one data folder, as ``app.build_service`` makes them; alice and bob
    are users (added as the admin command does)."""
    made: list[Service] = []
    key = generate_storage_key()

    def make(**changes: Any) -> Service:
        settings = dataclasses.replace(ServerSettings(data=tmp_path / "data"), **changes)
        store = open_store(store_config(settings, key))
        service = build_service(settings, store, HASHER, shares=Shares.of(settings))
        made.append(service)
        admin = Accounts(store.catalog, hasher=HASHER)
        for name in ("alice", "bob"):
            if store.catalog.get_user_by_name(name) is None:
                admin.add_user(name, PASSWORD)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture
def service(make_service: ServiceFactory) -> Service:
    return make_service()


def user(service: Service, name: str) -> User:
    found = service.catalog.get_user_by_name(name)
    assert found is not None
    return found


class Wire:
    """One connection: a client, the server's connection core and its session, joined
    in memory. The test plays the network layer."""

    def __init__(self, service: Service, address: str = "192.0.2.7") -> None:
        self.service = service
        self.client = ClientConnection(PinnedCertificate(CERTIFICATE))
        self.server = ServerConnection(CERTIFICATE, SERVER_KEY)
        self.logins: list[User] = []
        self.session = Session(
            service, self.server, f"{address}:50000", address=address, on_login=self.logins.append
        )
        assert feed(self.server, self.client.initiate()) == []
        (done,) = feed(self.client, self.server.data_to_send())
        assert isinstance(done, ev.HandshakeComplete)
        (done,) = feed(self.server, self.client.data_to_send())
        assert isinstance(done, ev.HandshakeComplete)
        self.answers: list[type[ev.Event]] = []  # what the session yielded, by type

    def request(self, event: ev.Event) -> list[ev.Event]:
        """Send a request; return what the client received in answer."""
        (received,) = feed(self.server, self.client.send(event))
        assert type(received) is type(event)
        return self.answer(received)

    def answer(self, request: ev.Event) -> list[ev.Event]:
        """Send what the session yields for ``request``, each event before the next is
        made (a download reuses its chunk buffer); return what the client received."""
        data = bytearray()
        self.answers = []
        for answer in self.session.handle(request):
            self.answers.append(type(answer))
            if isinstance(answer, ev.Chunk):
                data += self.server.send_chunk_header(answer) + bytes(answer.data)
            else:
                data += self.server.send(answer)
        return feed(self.client, bytes(data + self.server.data_to_send()))

    def login(self, name: str = "alice", password: str = PASSWORD) -> list[ev.Event]:
        return self.request(ev.Login(name, password))

    # -- uploads --------------------------------------------------------------------------

    def begin(self, plaintext: bytes, name: str = "photo.png") -> Sending:
        header, key = new_upload(name, len(plaintext), os.urandom, CHUNK)
        answers = self.request(ev.UploadBegin(header, key))
        return Sending(self, header, key, plaintext, answers)

    def upload(self, plaintext: bytes = PNG, name: str = "photo.png") -> list[ev.Event]:
        sending = self.begin(plaintext, name)
        assert sending.answers == [ev.UploadReady(0)], sending.answers
        sending.send_chunks()
        return sending.end()

    def take(self, record: bytes) -> None:
        """Hand one chunk record to the session's upload as the network layer does: the
        header into the core, the body read straight into a buffer of the upload's."""
        upload = self.session.upload
        assert upload is not None
        self.server.receive_data(record[:RECORD_HEADER_SIZE])
        body = upload.buffer(self.server.bytes_wanted)
        body[:] = record[RECORD_HEADER_SIZE:]
        self.server.receive_record_body(body)
        chunk = self.server.next_event()
        assert isinstance(chunk, ev.Chunk)
        upload.take(chunk)


class Sending:
    """One upload from the client's side."""

    def __init__(
        self,
        wire: Wire,
        header: UploadHeader,
        key: bytes,
        plaintext: bytes,
        answers: list[ev.Event],
    ) -> None:
        self.wire = wire
        self.header = header
        self.plaintext = plaintext
        self.answers = answers
        self.sealer = StreamSealer(header, key)

    def records(self) -> Iterator[bytes]:
        for index in range(self.header.chunk_count):
            piece = self.plaintext[index * CHUNK : (index + 1) * CHUNK]
            last = index == self.header.chunk_count - 1
            yield self.wire.client.send(ev.Chunk(index, self.sealer.seal(piece), last))

    def send_chunks(self) -> None:
        for record in self.records():
            self.wire.take(record)

    def end(self) -> list[ev.Event]:
        return self.wire.request(ev.UploadEnd(self.sealer.finish()))


def error(events: list[ev.Event]) -> ev.Error:
    (answer,) = events
    assert isinstance(answer, ev.Error), answer
    return answer


def nothing_stored(service: Service) -> bool:
    store = service.store
    data = store.blobs.root
    temps = [p for p in (data / "tmp").iterdir()] + [p for p in (data / "inbox/.tmp").iterdir()]
    return (
        store.catalog.image_ids() == set()
        and list(store.blobs.iter_ids()) == []
        and [p.name for p in (data / "inbox").iterdir()] == [".tmp"]
        and temps == []
    )


def settled(service: Service, *users: User) -> bool:
    """No memory and no upload place held any more."""
    return service.upload_memory.used == 0 and all(
        service.catalog.uploads_in_flight(u.id) == 0 for u in users
    )


# --- the table of requests -------------------------------------------------------------


def test_every_request_a_client_may_send_when_idle_has_a_handler() -> None:
    idle_requests = {
        kind
        for (state, sender, kind) in TRANSITIONS
        if state is State.IDLE and sender is Role.CLIENT
    }
    assert ev.Login in idle_requests and ev.Delete in idle_requests
    assert idle_requests <= set(Session.HANDLERS)


def test_every_request_a_client_may_send_has_a_handler() -> None:
    sent_by_client = {kind for (_, sender, kind) in TRANSITIONS if sender is Role.CLIENT}
    # Chunks never come to the session: the network layer hands them to its upload.
    assert set(Session.HANDLERS) == sent_by_client - {ev.Chunk}


def test_handle_refuses_what_is_not_a_request(service: Service) -> None:
    wire = Wire(service)
    not_requests: list[ev.Event] = [
        ev.LoginOk("alice"),
        ev.Chunk(0, b"x" * 17, True),
        ev.Error(ErrorCode.INTERNAL, "x"),
        ev.ConnectionClosed(),
        ev.ImageList(()),
    ]
    for event in not_requests:
        with pytest.raises(TypeError, match="is not a request"):
            list(wire.session.handle(event))


# --- logins ------------------------------------------------------------------------------


def test_a_login(service: Service) -> None:
    wire = Wire(service)
    assert wire.login() == [ev.LoginOk("alice")]
    assert wire.session.user == user(service, "alice")
    assert wire.logins == [user(service, "alice")]  # told before the client heard
    assert wire.client.state is State.IDLE


def test_a_wrong_password_is_not_fatal_until_the_fifth(service: Service) -> None:
    wire = Wire(service)
    for attempt in range(1, 5):
        failed = error(wire.login(password="wrong password"))
        assert (failed.code, failed.fatal) == (ErrorCode.AUTH_FAILED, False)
        assert wire.session.login_failures == attempt
        assert wire.client.state is State.IDLE
    assert error(wire.login("nobody")).code is ErrorCode.AUTH_FAILED  # one answer for both
    assert wire.client.state is State.CLOSED
    assert wire.session.user is None and wire.logins == []


def test_the_fifth_failure_closes_the_connection(service: Service) -> None:
    wire = Wire(service)
    for _ in range(4):
        assert not error(wire.login(password="wrong password")).fatal
    last = error(wire.login(password="wrong password"))
    assert (last.code, last.fatal) == (ErrorCode.AUTH_FAILED, True)
    assert wire.client.state is wire.server.state is State.CLOSED


def test_a_right_password_after_failures_logs_in(service: Service) -> None:
    wire = Wire(service)
    for _ in range(3):
        error(wire.login(password="wrong password"))
    assert wire.login() == [ev.LoginOk("alice")]
    assert wire.session.user is not None


def test_the_throttle_says_try_later(make_service: ServiceFactory) -> None:
    service = make_service(login_failures_per_account=1, login_delay=30.0)
    wire = Wire(service)
    assert error(wire.login(password="wrong password")).code is ErrorCode.AUTH_FAILED
    deferred = error(wire.login())  # even the right password: not now
    assert (deferred.code, deferred.fatal) == (ErrorCode.TRY_LATER, False)
    assert 20_000 < deferred.retry_after_ms <= 30_000
    assert wire.session.user is None
    assert wire.session.login_failures == 1  # a deferral is not a failure
    # Another connection, even from elsewhere, waits for the same account.
    other = Wire(service, address="198.51.100.9")
    assert error(other.login()).code is ErrorCode.TRY_LATER
    assert error(other.login("bob", "wrong password")).code is ErrorCode.AUTH_FAILED


def test_requests_before_login_need_a_login(service: Service) -> None:
    wire = Wire(service)
    for request in (ev.ListImages(), ev.Download(b"\x01" * 16)):
        refused = error(wire.request(request))
        assert (refused.code, refused.fatal) == (ErrorCode.AUTH_REQUIRED, False)
    header, key = new_upload("a.png", 100, os.urandom, CHUNK)
    refused = error(wire.request(ev.UploadBegin(header, key)))
    assert (refused.code, refused.fatal) == (ErrorCode.AUTH_REQUIRED, False)
    assert wire.session.upload is None
    assert settled(wire.service, user(service, "alice"))


# --- uploads -----------------------------------------------------------------------------


def test_an_upload_end_to_end(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    alice = user(service, "alice")
    sending = wire.begin(PNG, "holiday.png")
    assert sending.answers == [ev.UploadReady(0)]
    upload = wire.session.upload
    assert isinstance(upload, Upload)
    assert service.upload_memory.used > 0  # the upload's buffers are held...
    assert service.catalog.uploads_in_flight(alice.id) == 1  # ...and its place
    assert sending.header.chunk_count >= 3
    sending.send_chunks()

    (receipt,) = sending.end()  # the client checked its signature and its fields

    assert isinstance(receipt, ev.Receipt)
    body = receipt.body
    assert (body.username, body.size, body.upload_id) == (
        "alice",
        len(PNG),
        sending.header.upload_id,
    )
    record = service.catalog.get_image(body.image_id.hex())
    assert record is not None
    assert (record.owner_id, record.name, record.size, record.hmac) == (
        alice.id,
        "holiday.png",
        len(PNG),
        body.hmac,
    )
    assert (record.format, record.width, record.height) == ("PNG", 64, 64)
    assert record.created_at == body.server_time_ms
    assert record.inbox_name is not None
    assert service.store.blobs.exists(record.id)
    inbox = service.store.blobs.root / "inbox" / "alice" / record.inbox_name
    assert inbox.read_bytes() == PNG
    assert wire.session.upload is None
    assert wire.client.state is wire.server.state is State.IDLE
    assert settled(service, alice)


def test_a_download_gives_back_the_image(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    (receipt,) = wire.upload()
    assert isinstance(receipt, ev.Receipt)
    received = wire.request(ev.Download(receipt.body.image_id))
    begin, *chunks, end = received
    assert isinstance(begin, ev.DownloadBegin) and isinstance(end, ev.DownloadEnd)
    assert wire.answers == [ev.DownloadBegin, *[ev.Chunk] * len(chunks), ev.DownloadEnd]
    assert begin.image_id == receipt.body.image_id
    assert begin.header.size == len(PNG) and begin.header.name == "photo.png"
    assert len(chunks) == begin.header.chunk_count >= 3
    opener = StreamOpener(begin.header, begin.content_key)
    plaintext = b""
    for index, chunk in enumerate(chunks):
        assert isinstance(chunk, ev.Chunk)
        assert (chunk.index, chunk.last) == (index, index == len(chunks) - 1)
        plaintext += bytes(opener.open(chunk.data))
    assert opener.finish(end.hmac) == receipt.body.hmac
    assert plaintext == PNG
    assert wire.client.state is State.IDLE


def test_a_list_names_the_users_own_images(service: Service) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    (first,) = alice.upload(name="one.png")
    (second,) = alice.upload(noise_png(seed=2), name="two.png")
    bob.upload(noise_png(seed=3), name="bobs.png")
    assert isinstance(first, ev.Receipt) and isinstance(second, ev.Receipt)
    (listing,) = alice.request(ev.ListImages())
    assert isinstance(listing, ev.ImageList)
    assert {(e.image_id, e.name, e.owner, e.hmac) for e in listing.images} == {
        (first.body.image_id, "one.png", "alice", first.body.hmac),
        (second.body.image_id, "two.png", "alice", second.body.hmac),
    }
    entry = next(e for e in listing.images if e.image_id == first.body.image_id)
    assert (entry.size, entry.created_ms) == (len(PNG), first.body.server_time_ms)


def test_another_users_image_is_not_found(service: Service) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    (receipt,) = alice.upload()
    assert isinstance(receipt, ev.Receipt)
    for image_id in (receipt.body.image_id, os.urandom(16)):
        refused = error(bob.request(ev.Download(image_id)))
        assert (refused.code, refused.fatal) == (ErrorCode.NOT_FOUND, False)
    assert bob.client.state is State.IDLE


def test_a_download_whose_object_is_missing_is_a_storage_failure(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    (receipt,) = wire.upload()
    assert isinstance(receipt, ev.Receipt)
    service.store.blobs.delete(receipt.body.image_id.hex())
    (request,) = feed(wire.server, wire.client.send(ev.Download(receipt.body.image_id)))
    with pytest.raises(StorageError):  # fatal: the network layer reports it
        list(wire.session.handle(request))


def test_a_download_of_a_truncated_object_stops_with_a_storage_failure(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    (receipt,) = wire.upload()
    assert isinstance(receipt, ev.Receipt)
    path = service.store.blobs.path_of(receipt.body.image_id.hex())
    path.write_bytes(path.read_bytes()[:-10])
    (request,) = feed(wire.server, wire.client.send(ev.Download(receipt.body.image_id)))
    answers = wire.session.handle(request)
    assert isinstance(next(answers), ev.DownloadBegin)
    with pytest.raises(StorageError, match="truncated"):
        list(answers)


def test_a_file_that_is_not_an_image_is_refused_not_fatally(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    refused = error(wire.upload(b"just some text, certainly not a picture" * 300))
    assert (refused.code, refused.fatal) == (ErrorCode.NOT_AN_IMAGE, False)
    assert wire.client.state is wire.server.state is State.IDLE
    assert nothing_stored(service)
    assert settled(service, user(service, "alice"))
    (receipt,) = wire.upload()  # the session goes on
    assert isinstance(receipt, ev.Receipt)


def test_an_image_that_fails_the_check_is_refused(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    truncated = PNG[: len(PNG) - 2000]  # a PNG by its magic number, but cut short
    refused = error(wire.upload(truncated))
    assert (refused.code, refused.fatal) == (ErrorCode.NOT_AN_IMAGE, False)
    assert nothing_stored(service)
    assert settled(service, user(service, "alice"))


def test_an_upload_that_cannot_be_stored_is_a_storage_failure(
    service: Service, tmp_path: Path
) -> None:
    wire = Wire(service)
    wire.login()
    outside = tmp_path / "outside"
    outside.mkdir()
    (service.store.blobs.root / "inbox" / "alice").symlink_to(outside)
    refused = error(wire.upload())
    assert (refused.code, refused.fatal) == (ErrorCode.STORAGE_FAILED, False)
    assert list(outside.iterdir()) == []
    assert service.catalog.image_ids() == set()
    assert list(service.store.blobs.iter_ids()) == []
    assert settled(service, user(service, "alice"))


def test_a_tampered_chunk_wakes_the_reader_and_stores_nothing(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large image's chunks are opened on the pipeline's thread: a tampered one
    wakes the connection's reader through the upload's descriptor."""
    monkeypatch.setattr(upload_module, "INLINE_UP_TO", 0)  # every image takes the pipeline
    wire = Wire(service)
    wire.login()
    sending = wire.begin(PNG)
    upload = wire.session.upload
    assert upload is not None
    records = list(sending.records())
    wire.take(records[0])
    tampered = bytearray(records[1])
    tampered[-1] ^= 1  # the tag no longer verifies
    wire.take(bytes(tampered))
    # The pipeline finds it on its own thread and wakes the reader at once.
    poller = select.poll()
    poller.register(upload.wake_fd, select.POLLIN)
    assert poller.poll(5000) != []
    assert isinstance(upload.failure, IntegrityError)
    with pytest.raises(IntegrityError):
        wire.take(records[2])  # the network layer then ends the connection, fatally
    wire.session.close()
    assert nothing_stored(service)
    assert settled(service, user(service, "alice"))


def test_a_tampered_chunk_of_a_small_image_fails_at_once(service: Service) -> None:
    """A photo's chunks are opened on the connection's own thread: the tampered one
    raises as it is taken."""
    wire = Wire(service)
    wire.login()
    sending = wire.begin(PNG)
    records = list(sending.records())
    wire.take(records[0])
    tampered = bytearray(records[1])
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        wire.take(bytes(tampered))
    wire.session.close()
    assert nothing_stored(service)
    assert settled(service, user(service, "alice"))


def test_a_connection_that_ends_mid_upload_leaves_nothing(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    sending = wire.begin(PNG)
    records = list(sending.records())
    for record in records[:-1]:
        wire.take(record)
    wire.session.close()
    wire.session.close()  # idempotent
    assert wire.session.upload is None
    assert nothing_stored(service)
    assert settled(service, user(service, "alice"))


def test_over_the_quota_is_refused_not_fatally(make_service: ServiceFactory) -> None:
    service = make_service(quota_bytes=len(PNG) + 100)
    wire = Wire(service)
    wire.login()
    (receipt,) = wire.upload()
    assert isinstance(receipt, ev.Receipt)
    sending = wire.begin(PNG)
    refused = error(sending.answers)
    assert (refused.code, refused.fatal) == (ErrorCode.QUOTA_EXCEEDED, False)
    assert wire.session.upload is None
    assert wire.client.state is State.IDLE
    assert settled(service, user(service, "alice"))


def test_a_full_memory_budget_says_try_later(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    budget = service.upload_memory
    everything = budget.hold(budget.limit)  # other uploads hold it all
    deferred = error(wire.begin(PNG).answers)
    assert (deferred.code, deferred.fatal) == (ErrorCode.TRY_LATER, False)
    assert 0 < deferred.retry_after_ms <= MAX_RETRY_AFTER_MS
    assert wire.session.upload is None
    assert service.catalog.uploads_in_flight(user(service, "alice").id) == 0
    everything.release()
    (receipt,) = wire.upload()
    assert isinstance(receipt, ev.Receipt)


def test_no_upload_place_left_says_try_later_and_holds_no_memory(
    make_service: ServiceFactory,
) -> None:
    service = make_service(max_uploads_per_user=1)
    first, second = Wire(service), Wire(service)
    first.login()
    second.login()
    sending = first.begin(PNG)
    assert sending.answers == [ev.UploadReady(0)]
    held = service.upload_memory.used
    deferred = error(second.begin(PNG).answers)
    assert (deferred.code, deferred.fatal) == (ErrorCode.TRY_LATER, False)
    assert service.upload_memory.used == held  # the refused upload gave its memory back
    sending.send_chunks()
    assert isinstance(sending.end()[0], ev.Receipt)
    (receipt,) = second.upload()  # the place came back
    assert isinstance(receipt, ev.Receipt)


def test_the_places_hold_across_two_services_on_one_folder(make_service: ServiceFactory) -> None:
    one = Wire(make_service(max_uploads_per_user=1))
    two = Wire(make_service(max_uploads_per_user=1))  # another worker process's
    one.login()
    two.login()
    assert one.begin(PNG).answers == [ev.UploadReady(0)]
    assert error(two.begin(PNG).answers).code is ErrorCode.TRY_LATER


# --- a user removed while logged in ------------------------------------------------------


def test_a_removed_users_next_request_ends_the_session(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    service.store.remove_user("alice")
    ended = error(wire.request(ev.ListImages()))
    assert (ended.code, ended.fatal) == (ErrorCode.AUTH_REQUIRED, True)
    assert wire.client.state is wire.server.state is State.CLOSED


def test_a_user_removed_mid_upload_leaves_nothing(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    sending = wire.begin(PNG)
    sending.send_chunks()
    service.store.remove_user("alice")
    ended = error(sending.end())
    assert (ended.code, ended.fatal) == (ErrorCode.AUTH_REQUIRED, True)
    assert wire.session.upload is None
    assert nothing_stored(service)
    assert service.upload_memory.used == 0


def test_another_users_removal_does_not_end_the_session(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    service.store.remove_user("bob")
    assert wire.request(ev.ListImages()) == [ev.ImageList(())]


# --- what an upload holds is given back ---------------------------------------------------


def test_a_wrong_hmac_is_fatal_and_stores_nothing(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    sending = wire.begin(PNG)
    sending.send_chunks()
    sending.sealer.finish()
    (request,) = feed(wire.server, wire.client.send(ev.UploadEnd(bytes(32))))
    with pytest.raises(IntegrityError):  # fatal: the network layer reports it
        list(wire.session.handle(request))
    assert wire.session.upload is None
    assert nothing_stored(service)
    assert settled(service, user(service, "alice"))


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_uploads_leave_no_descriptor_open(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    assert isinstance(wire.upload()[0], ev.Receipt)  # warm up: every lazy open is done
    before = open_descriptors()
    assert isinstance(wire.upload()[0], ev.Receipt)
    assert error(wire.upload(b"not an image at all" * 500)).code is ErrorCode.NOT_AN_IMAGE
    sending = wire.begin(PNG)
    wire.take(next(sending.records()))
    wire.session.close()  # the connection ends mid-upload
    assert open_descriptors() == before


def test_an_upload_without_inbox_copies(make_service: ServiceFactory) -> None:
    service = make_service(inbox=False)
    wire = Wire(service)
    wire.login()
    (receipt,) = wire.upload()
    assert isinstance(receipt, ev.Receipt)
    record = service.catalog.get_image(receipt.body.image_id.hex())
    assert record is not None and record.inbox_name is None
    assert (record.format, record.width, record.height) == ("PNG", 64, 64)  # it was checked
    assert [p.name for p in (service.store.blobs.root / "inbox").iterdir()] == [".tmp"]
    assert list((service.store.blobs.root / "tmp").iterdir()) == []
    refused = error(wire.upload(PNG[:-2000]))  # the check still reads the scratch copy
    assert refused.code is ErrorCode.NOT_AN_IMAGE
    assert settled(service, user(service, "alice"))
