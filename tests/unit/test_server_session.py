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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from PIL import Image

from imgshare.errors import IntegrityError, StorageError
from imgshare.protocol import (
    ClientConnection,
    Limits,
    PinnedCertificate,
    ServerConnection,
    State,
    StreamOpener,
    StreamSealer,
    UploadHeader,
)
from imgshare.protocol import events as ev
from imgshare.protocol.constants import (
    MAX_PAGE_ENTRIES,
    MAX_RETRY_AFTER_MS,
    RECORD_HEADER_SIZE,
    ErrorCode,
    ListScope,
    Registration,
)
from imgshare.protocol.state import TRANSITIONS, Role
from imgshare.protocol.stream import new_upload
from imgshare.server import upload as upload_module
from imgshare.server.accounts import Accounts
from imgshare.server.app import Shares, build_service, store_config
from imgshare.server.config import ServerSettings
from imgshare.server.credentials import new_invitation
from imgshare.server.service import Service
from imgshare.server.session import Session
from imgshare.server.upload import Upload
from imgshare.store import User, generate_storage_key, open_store
from imgshare.store.access import AuditRecord
from imgshare.store.catalog import now_ms
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

    def __init__(
        self,
        service: Service,
        address: str = "192.0.2.7",
        *,
        certificate_name: str | None = None,
    ) -> None:
        self.service = service
        self.client = ClientConnection(PinnedCertificate(CERTIFICATE))
        self.server = ServerConnection(CERTIFICATE, SERVER_KEY)
        self.logins: list[User] = []
        self.session = Session(
            service,
            self.server,
            f"{address}:50000",
            address=address,
            certificate_name=certificate_name,
            on_login=self.logins.append,
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

    def login_as(self, name: str) -> Wire:
        """Log in (with the password) and return this wire."""
        assert self.login(name) == [ev.LoginOk(name)]
        return self

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


def test_info_tells_the_limits_before_a_login(make_service: ServiceFactory) -> None:
    service = make_service(registration="invite", max_pixels=12_000_000)
    (info,) = Wire(service).request(ev.Info())
    assert info == ev.ServerInfo(
        max_image_size=Limits().max_image_size,
        max_record_size=Limits().max_record_size,
        max_pixels=12_000_000,
        registration=Registration.INVITE,
        max_login_failures=5,
    )


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


# --- accounts: registration ----------------------------------------------------------------


def events_of(service: Service, kind: str) -> list[AuditRecord]:
    service.audit.flush()  # the writer batches them
    return service.catalog.audit_events(event=kind)


def test_registration_is_closed_by_default(service: Service) -> None:
    wire = Wire(service)
    refused = error(wire.request(ev.Register("carol", PASSWORD)))
    assert (refused.code, refused.fatal) == (ErrorCode.FORBIDDEN, False)
    assert "closed" in refused.message
    assert service.catalog.get_user_by_name("carol") is None
    assert events_of(service, "registered") == []
    assert wire.client.state is State.IDLE


def test_registration_by_invitation(make_service: ServiceFactory) -> None:
    service = make_service(registration="invite")
    code = new_invitation(service.catalog, now_ms(), now_ms() + 60_000)
    wire = Wire(service)
    for invitation in (b"", b"imgshare-invite-not-a-real-one"):
        refused = error(wire.request(ev.Register("carol", PASSWORD, invitation)))
        assert (refused.code, refused.fatal) == (ErrorCode.FORBIDDEN, False)
    assert service.catalog.get_user_by_name("carol") is None

    assert wire.request(ev.Register("carol", PASSWORD, code.encode())) == [ev.Ok()]
    carol = user(service, "carol")
    (registered,) = events_of(service, "registered")
    assert (registered.user_name, registered.network) == ("carol", "192.0.2.7")
    assert registered.detail == {"mode": "invite"}
    assert wire.session.user is None  # registering is not logging in
    assert error(wire.request(ev.ListImages())).code is ErrorCode.AUTH_REQUIRED
    assert wire.login("carol") == [ev.LoginOk("carol")]

    used = error(Wire(service).request(ev.Register("dave", PASSWORD, code.encode())))
    assert used.code is ErrorCode.FORBIDDEN  # one time only
    assert service.catalog.get_user_by_name("dave") is None
    assert user(service, "carol") == carol


def test_registration_refuses_a_taken_or_bad_name_without_using_the_code(
    make_service: ServiceFactory,
) -> None:
    service = make_service(registration="invite")
    code = new_invitation(service.catalog, now_ms(), now_ms() + 60_000).encode()
    wire = Wire(service)
    taken = error(wire.request(ev.Register("alice", "another password", code)))
    assert (taken.code, taken.fatal) == (ErrorCode.ALREADY_EXISTS, False)
    for bad in ("Carol", "", "carol\n", "-carol", "c" * 33):
        refused = error(wire.request(ev.Register(bad, PASSWORD, code)))
        assert (refused.code, refused.fatal) == (ErrorCode.INVALID_ARGUMENT, False), bad
    short = error(wire.request(ev.Register("carol", "short", code)))
    assert short.code is ErrorCode.INVALID_ARGUMENT
    assert wire.login() == [ev.LoginOk("alice")]  # alice's password did not change
    # None of those used the invitation up.
    assert Wire(service).request(ev.Register("carol", PASSWORD, code)) == [ev.Ok()]


def test_a_made_up_invitation_learns_nothing_about_names(make_service: ServiceFactory) -> None:
    service = make_service(registration="invite")
    fake = b"imgshare-invite-made-up"
    for name in ("alice", "nobody"):  # taken and free alike: the code is checked first
        refused = error(Wire(service).request(ev.Register(name, PASSWORD, fake)))
        assert (refused.code, str(refused.message)) == (
            ErrorCode.FORBIDDEN,
            "invalid, used or expired invitation",
        )


def test_open_registration_is_throttled_per_network(make_service: ServiceFactory) -> None:
    service = make_service(registration="open", registrations_per_address=2)
    wire = Wire(service)
    assert wire.request(ev.Register("carol", PASSWORD)) == [ev.Ok()]
    taken = error(wire.request(ev.Register("carol", PASSWORD)))
    assert taken.code is ErrorCode.ALREADY_EXISTS
    assert Wire(service).request(ev.Register("dave", PASSWORD)) == [ev.Ok()]
    deferred = error(Wire(service).request(ev.Register("erin", PASSWORD)))
    assert (deferred.code, deferred.fatal) == (ErrorCode.TRY_LATER, False)
    assert deferred.retry_after_ms > 0
    assert service.catalog.get_user_by_name("erin") is None
    # Another network may still register.
    assert Wire(service, address="198.51.100.9").request(ev.Register("erin", PASSWORD)) == [ev.Ok()]
    assert [e.user_name for e in events_of(service, "registered")] == ["carol", "dave", "erin"]


# --- accounts: tokens ----------------------------------------------------------------------


def new_token(wire: Wire, name: str = "laptop", expires_ms: int = 0) -> ev.Token:
    (token,) = wire.request(ev.TokenCreate(name, expires_ms))
    assert isinstance(token, ev.Token), token
    return token


def test_a_token_is_shown_once_listed_without_its_secret_and_logs_in(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    expires = now_ms() + 3_600_000
    token = new_token(wire, "laptop", expires)
    assert token.secret.startswith(b"imgshare-token-") and token.expires_ms == expires
    (listing,) = wire.request(ev.TokenList())
    assert isinstance(listing, ev.Tokens)
    (info,) = listing.tokens
    assert (info.token_id, info.name, info.expires_ms, info.last_used_ms) == (
        token.token_id,
        "laptop",
        expires,
        0,
    )
    (stored,) = service.catalog.list_tokens(user(service, "alice").id)
    assert (stored.id, stored.name) == (token.token_id, "laptop")

    other = Wire(service)
    assert other.request(ev.TokenLogin(token.secret)) == [ev.LoginOk("alice")]
    assert other.session.token_id == token.token_id
    assert other.logins == [user(service, "alice")]
    assert other.request(ev.ListImages()) == [ev.ImageList(())]
    logins = events_of(service, "login")
    assert [e.detail["method"] for e in logins] == ["password", "token"]
    (created,) = events_of(service, "token_created")
    assert created.detail == {"token_id": token.token_id, "name": "laptop"}


def test_a_wrong_token_is_an_auth_failure(service: Service) -> None:
    wire = Wire(service)
    for secret in (b"imgshare-token-" + b"A" * 43, b"not even the prefix"):
        failed = error(wire.request(ev.TokenLogin(secret)))
        assert (failed.code, failed.fatal) == (ErrorCode.AUTH_FAILED, False)
    assert wire.session.user is None and wire.session.login_failures == 2
    failures = events_of(service, "login_failed")
    assert [(e.user_name, e.detail["method"]) for e in failures] == [(None, "token")] * 2


def test_a_token_needs_a_printable_name_and_a_future_expiry(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    for name in ("", "   ", "bad\nname", "tab\there"):
        refused = error(wire.request(ev.TokenCreate(name)))
        assert (refused.code, refused.fatal) == (ErrorCode.INVALID_ARGUMENT, False), name
    past = error(wire.request(ev.TokenCreate("late", now_ms() - 1)))
    assert past.code is ErrorCode.INVALID_ARGUMENT
    assert service.catalog.list_tokens(user(service, "alice").id) == []


def test_token_requests_need_a_login(service: Service) -> None:
    wire = Wire(service)
    for request in (ev.TokenCreate("x"), ev.TokenList(), ev.TokenRevoke(1)):
        assert error(wire.request(request)).code is ErrorCode.AUTH_REQUIRED


def test_revoking_a_token(service: Service) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    token = new_token(alice)
    refused = error(bob.request(ev.TokenRevoke(token.token_id)))  # not bob's
    assert (refused.code, refused.fatal) == (ErrorCode.NOT_FOUND, False)
    assert alice.request(ev.TokenRevoke(token.token_id)) == [ev.Ok()]
    assert error(alice.request(ev.TokenRevoke(token.token_id))).code is ErrorCode.NOT_FOUND
    failed = error(Wire(service).request(ev.TokenLogin(token.secret)))
    assert failed.code is ErrorCode.AUTH_FAILED
    assert alice.request(ev.TokenList()) == [ev.Tokens(())]
    (revoked,) = events_of(service, "token_revoked")
    assert (revoked.user_name, revoked.detail) == (
        "alice",
        {"token_id": token.token_id, "name": "laptop"},
    )


def test_a_revoked_token_ends_its_session_at_the_next_request(service: Service) -> None:
    owner = Wire(service)
    owner.login()
    token = new_token(owner)
    by_token = Wire(service)
    assert by_token.request(ev.TokenLogin(token.secret)) == [ev.LoginOk("alice")]
    assert owner.request(ev.TokenRevoke(token.token_id)) == [ev.Ok()]
    ended = error(by_token.request(ev.ListImages()))
    assert (ended.code, ended.fatal) == (ErrorCode.AUTH_REQUIRED, True)
    assert by_token.client.state is by_token.server.state is State.CLOSED
    assert owner.request(ev.ListImages()) == [ev.ImageList(())]  # a password session goes on


def test_an_expired_token_ends_its_session_at_the_next_request(service: Service) -> None:
    alice = user(service, "alice")
    record, secret = service.tokens.create(alice, "brief", now_ms(), now_ms() + 300)
    wire = Wire(service)
    assert wire.request(ev.TokenLogin(secret)) == [ev.LoginOk("alice")]
    assert wire.session.token_id == record.id
    time.sleep(0.35)
    ended = error(wire.request(ev.ListImages()))
    assert (ended.code, ended.fatal) == (ErrorCode.AUTH_REQUIRED, True)
    assert error(Wire(service).request(ev.TokenLogin(secret))).code is ErrorCode.AUTH_FAILED


# --- accounts: changing one's password -----------------------------------------------------


def test_passwd_changes_the_password_and_keeps_tokens(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    token = new_token(wire)
    assert wire.request(ev.Passwd(PASSWORD, "a brand new password")) == [ev.Ok()]
    assert error(Wire(service).login()).code is ErrorCode.AUTH_FAILED
    assert Wire(service).login(password="a brand new password") == [ev.LoginOk("alice")]
    assert Wire(service).request(ev.TokenLogin(token.secret)) == [ev.LoginOk("alice")]
    (changed,) = events_of(service, "password_changed")
    assert (changed.user_name, changed.detail) == ("alice", {"tokens_revoked": 0})


def test_passwd_can_revoke_every_other_token(service: Service) -> None:
    owner = Wire(service)
    owner.login()
    mine, other, third = new_token(owner, "mine"), new_token(owner, "other"), new_token(owner)
    bobs = new_token(Wire(service).login_as("bob"))
    wire = Wire(service)
    assert wire.request(ev.TokenLogin(mine.secret)) == [ev.LoginOk("alice")]
    assert wire.request(ev.Passwd(PASSWORD, "a brand new password", True)) == [ev.Ok()]
    remaining = service.catalog.list_tokens(user(service, "alice").id)
    assert [t.id for t in remaining] == [mine.token_id]  # this session's token stays
    assert wire.request(ev.ListImages()) == [ev.ImageList(())]  # and so does the session
    for gone in (other, third):
        assert error(Wire(service).request(ev.TokenLogin(gone.secret))).code is (
            ErrorCode.AUTH_FAILED
        )
    assert Wire(service).request(ev.TokenLogin(bobs.secret)) == [ev.LoginOk("bob")]
    (changed,) = events_of(service, "password_changed")
    assert changed.detail == {"tokens_revoked": 2}


def test_passwd_from_a_password_session_revokes_all_tokens(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    new_token(wire)
    new_token(wire)
    assert wire.request(ev.Passwd(PASSWORD, "a brand new password", True)) == [ev.Ok()]
    assert service.catalog.list_tokens(user(service, "alice").id) == []


def test_a_password_change_ends_the_other_password_sessions_only(service: Service) -> None:
    changer, other = Wire(service), Wire(service)
    changer.login()
    other.login()
    by_token = Wire(service)
    assert by_token.request(ev.TokenLogin(new_token(changer).secret)) == [ev.LoginOk("alice")]
    assert changer.request(ev.Passwd(PASSWORD, "a brand new password")) == [ev.Ok()]
    assert changer.request(ev.ListImages()) == [ev.ImageList(())]  # the changer goes on
    assert by_token.request(ev.ListImages()) == [ev.ImageList(())]  # its token still holds
    ended = error(other.request(ev.ListImages()))
    assert (ended.code, ended.fatal) == (ErrorCode.AUTH_REQUIRED, True)
    assert "password" in ended.message


def test_an_administrators_reset_ends_every_session_of_the_user(service: Service) -> None:
    by_password, by_token, bobs = Wire(service), Wire(service), Wire(service).login_as("bob")
    by_password.login()
    assert by_token.request(ev.TokenLogin(new_token(by_password).secret)) == [ev.LoginOk("alice")]
    assert service.accounts.set_password("alice", "the administrator's choice") == 1
    for wire in (by_password, by_token):
        ended = error(wire.request(ev.ListImages()))
        assert (ended.code, ended.fatal) == (ErrorCode.AUTH_REQUIRED, True)
    assert bobs.request(ev.ListImages()) == [ev.ImageList(())]
    assert Wire(service).login(password="the administrator's choice") == [ev.LoginOk("alice")]


def test_passwd_with_a_wrong_old_password_changes_nothing(service: Service) -> None:
    wire = Wire(service)
    wire.login()
    token = new_token(wire)
    refused = error(wire.request(ev.Passwd("not my password", "a brand new password", True)))
    assert (refused.code, refused.fatal) == (ErrorCode.AUTH_FAILED, False)
    assert wire.client.state is State.IDLE
    short = error(wire.request(ev.Passwd(PASSWORD, "short")))
    assert (short.code, short.fatal) == (ErrorCode.INVALID_ARGUMENT, False)
    assert Wire(service).login() == [ev.LoginOk("alice")]
    assert Wire(service).request(ev.TokenLogin(token.secret)) == [ev.LoginOk("alice")]
    assert events_of(service, "password_changed") == []


# --- accounts: certificate logins ----------------------------------------------------------


def test_a_certificate_login_needs_a_certificate_naming_a_user(service: Service) -> None:
    without = Wire(service)
    failed = error(without.request(ev.CertLogin()))
    assert (failed.code, failed.fatal) == (ErrorCode.AUTH_FAILED, False)
    assert without.session.user is None and without.session.login_failures == 1
    unknown = Wire(service, certificate_name="mallory")
    assert error(unknown.request(ev.CertLogin())).code is ErrorCode.AUTH_FAILED
    named = Wire(service, certificate_name="alice")
    assert named.request(ev.CertLogin()) == [ev.LoginOk("alice")]
    assert named.session.user == user(service, "alice")
    assert [e.detail["method"] for e in events_of(service, "login_failed")] == [
        "certificate",
        "certificate",
    ]
    (login,) = events_of(service, "login")
    assert (login.user_name, login.detail) == ("alice", {"method": "certificate"})


# --- sharing -------------------------------------------------------------------------------


def uploaded(wire: Wire, plaintext: bytes = PNG, name: str = "photo.png") -> ev.Receipt:
    (receipt,) = wire.upload(plaintext, name)
    assert isinstance(receipt, ev.Receipt), receipt
    return receipt


def downloaded(wire: Wire, image_id: bytes) -> tuple[bytes, bytes]:
    """Fetch an image; return its plaintext and the HMAC the client verified."""
    begin, *chunks, end = wire.request(ev.Download(image_id))
    assert isinstance(begin, ev.DownloadBegin) and isinstance(end, ev.DownloadEnd)
    opener = StreamOpener(begin.header, begin.content_key)
    plaintext = b"".join(bytes(opener.open(c.data)) for c in chunks if isinstance(c, ev.Chunk))
    return plaintext, opener.finish(end.hmac)


@pytest.fixture
def carol(service: Service) -> Wire:
    Accounts(service.catalog, hasher=HASHER).add_user("carol", PASSWORD)
    wire = Wire(service)
    wire.login("carol")
    return wire


def test_a_shared_image_is_fetched_byte_identical(service: Service, carol: Wire) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    receipt = uploaded(alice, name="for bob.png")
    image_id = receipt.body.image_id
    assert error(bob.request(ev.Download(image_id))).code is ErrorCode.NOT_FOUND
    assert alice.request(ev.Share(image_id, "bob")) == [ev.Ok()]

    plaintext, hmac = downloaded(bob, image_id)
    assert plaintext == PNG
    assert hmac == receipt.body.hmac  # the uploader's HMAC, verified by the reader
    stranger = error(carol.request(ev.Download(image_id)))
    missing = error(carol.request(ev.Download(os.urandom(16))))
    assert (stranger.code, stranger.message) == (missing.code, missing.message)
    assert stranger.code is ErrorCode.NOT_FOUND
    (granted,) = events_of(service, "share_granted")
    assert (granted.user_name, granted.detail) == (
        "alice",
        {"image": image_id.hex(), "to": "bob", "expires_ms": 0},
    )


def test_shares_lists_who_can_see_an_image(service: Service, carol: Wire) -> None:
    alice = Wire(service)
    alice.login()
    image_id = uploaded(alice).body.image_id
    expires = now_ms() + 3_600_000
    assert alice.request(ev.Share(image_id, "bob", expires)) == [ev.Ok()]
    assert alice.request(ev.Share(image_id, "carol")) == [ev.Ok()]
    (listing,) = alice.request(ev.Shares(image_id))
    assert isinstance(listing, ev.ShareList) and listing.image_id == image_id
    assert [(s.username, s.expires_ms) for s in listing.shares] == [("bob", expires), ("carol", 0)]
    assert alice.request(ev.Unshare(image_id, "carol")) == [ev.Ok()]
    (listing,) = alice.request(ev.Shares(image_id))
    assert isinstance(listing, ev.ShareList)
    assert [s.username for s in listing.shares] == ["bob"]
    assert error(carol.request(ev.Download(image_id))).code is ErrorCode.NOT_FOUND
    (revoked,) = events_of(service, "share_revoked")
    assert revoked.detail == {"image": image_id.hex(), "to": "carol"}


def test_only_the_owner_may_share_unshare_list_shares_or_delete(
    service: Service, carol: Wire
) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    image_id = uploaded(alice).body.image_id
    assert alice.request(ev.Share(image_id, "bob")) == [ev.Ok()]
    assert alice.request(ev.Share(image_id, "carol")) == [ev.Ok()]
    nowhere = os.urandom(16)
    # bob may fetch it, but not act as its owner; to him and to anyone it is as if
    # it did not exist.
    for wire in (bob, carol):
        for make in (
            lambda i: ev.Share(i, "alice"),
            lambda i: ev.Unshare(i, "carol"),
            lambda i: ev.Shares(i),
            lambda i: ev.Delete(i),
        ):
            refused = error(wire.request(make(image_id)))
            missing = error(wire.request(make(nowhere)))
            assert refused.code is ErrorCode.NOT_FOUND and not refused.fatal
            assert (refused.code, refused.message) == (missing.code, missing.message)
    assert service.catalog.get_image(image_id.hex()) is not None
    (listing,) = alice.request(ev.Shares(image_id))
    assert isinstance(listing, ev.ShareList)
    assert [s.username for s in listing.shares] == ["bob", "carol"]


def test_unshare_answers_alike_for_every_share_that_is_not(service: Service, carol: Wire) -> None:
    alice = Wire(service)
    alice.login()
    image_id = uploaded(alice).body.image_id
    answers = {
        (e.code, e.message)
        for e in (
            error(alice.request(ev.Unshare(image_id, "bob"))),  # not shared with bob
            error(alice.request(ev.Unshare(image_id, "nobody"))),  # no such user
            error(alice.request(ev.Unshare(os.urandom(16), "bob"))),  # no such image
        )
    }
    assert answers == {(ErrorCode.NOT_FOUND, "no such share")}
    assert events_of(service, "share_revoked") == []


def test_sharing_with_oneself_nobody_or_until_the_past_is_refused(service: Service) -> None:
    alice = Wire(service)
    alice.login()
    image_id = uploaded(alice).body.image_id
    itself = error(alice.request(ev.Share(image_id, "alice")))
    assert (itself.code, itself.fatal) == (ErrorCode.INVALID_ARGUMENT, False)
    nobody = error(alice.request(ev.Share(image_id, "nobody")))
    assert (nobody.code, nobody.fatal) == (ErrorCode.NOT_FOUND, False)
    past = error(alice.request(ev.Share(image_id, "bob", now_ms() - 1)))
    assert (past.code, past.fatal) == (ErrorCode.INVALID_ARGUMENT, False)
    assert service.catalog.shares_of(image_id.hex(), now_ms()) == []
    assert events_of(service, "share_granted") == []


def test_an_image_is_shared_with_at_most_a_share_lists_worth(service: Service) -> None:
    alice = Wire(service)
    alice.login()
    image_id = uploaded(alice).body.image_id
    catalog, now = service.catalog, now_ms()
    for number in range(MAX_PAGE_ENTRIES):
        reader = catalog.add_user(f"reader{number}", "not a real hash")
        catalog.share_image(image_id.hex(), reader.id, now, 0)
    refused = error(alice.request(ev.Share(image_id, "bob")))
    assert (refused.code, refused.fatal) == (ErrorCode.INVALID_ARGUMENT, False)
    assert alice.request(ev.Share(image_id, "reader7", now + 60_000)) == [ev.Ok()]  # renewal
    (listed,) = alice.request(ev.Shares(image_id))
    assert isinstance(listed, ev.ShareList) and len(listed.shares) == MAX_PAGE_ENTRIES


def test_an_expired_share_stops_at_once(service: Service) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    image_id = uploaded(alice).body.image_id
    assert alice.request(ev.Share(image_id, "bob", now_ms() + 300)) == [ev.Ok()]
    assert downloaded(bob, image_id)[0] == PNG
    time.sleep(0.35)
    assert error(bob.request(ev.Download(image_id))).code is ErrorCode.NOT_FOUND
    (page,) = bob.request(ev.ListPage(ListScope.SHARED_WITH_ME))
    assert page == ev.ImagePage((), False)


def test_an_expiry_out_of_range_is_refused_not_a_crash(service: Service) -> None:
    alice = Wire(service)
    alice.login()
    image_id = uploaded(alice).body.image_id
    huge = 2**64 - 1  # a u64 on the wire; SQLite's integers stop at 2**63 - 1
    for request in (ev.Share(image_id, "bob", huge), ev.TokenCreate("far", huge)):
        refused = error(alice.request(request))
        assert (refused.code, refused.fatal) == (ErrorCode.INVALID_ARGUMENT, False)
    assert error(alice.request(ev.TokenRevoke(huge))).code is ErrorCode.NOT_FOUND
    (page,) = alice.request(ev.ListPage(ListScope.OWN, huge, bytes(16)))
    assert page == ev.ImagePage((), False)
    assert alice.client.state is State.IDLE


def test_delete_by_the_owner_shreds_the_image(service: Service) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    receipt = uploaded(alice)
    image_id = receipt.body.image_id
    assert alice.request(ev.Share(image_id, "bob")) == [ev.Ok()]
    record = service.catalog.get_image(image_id.hex())
    assert record is not None and record.inbox_name is not None
    inbox = service.store.blobs.root / "inbox" / "alice" / record.inbox_name
    assert inbox.exists() and service.store.blobs.exists(record.id)

    assert alice.request(ev.Delete(image_id)) == [ev.Ok()]
    assert service.catalog.get_image(image_id.hex()) is None  # the wrapped key with it
    assert not inbox.exists() and not service.store.blobs.exists(record.id)
    assert service.catalog.shares_of(image_id.hex(), now_ms()) == []
    assert error(bob.request(ev.Download(image_id))).code is ErrorCode.NOT_FOUND
    assert error(alice.request(ev.Download(image_id))).code is ErrorCode.NOT_FOUND
    assert error(alice.request(ev.Delete(image_id))).code is ErrorCode.NOT_FOUND
    (deleted,) = events_of(service, "image_deleted")
    assert (deleted.user_name, deleted.detail) == ("alice", {"image": image_id.hex()})


# --- pages of images -----------------------------------------------------------------------


def all_pages(wire: Wire, scope: ListScope, limit: int) -> list[ev.ImagePage]:
    pages: list[ev.ImagePage] = []
    after_ms, after_id = 0, bytes(16)
    while True:
        (page,) = wire.request(ev.ListPage(scope, after_ms, after_id, limit))
        assert isinstance(page, ev.ImagePage)
        pages.append(page)
        if not page.more:
            return pages
        after_ms, after_id = page.images[-1].created_ms, page.images[-1].image_id


def test_list_page_pages_through_ones_own_images(service: Service) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    receipts = [uploaded(alice, noise_png(seed=i), f"{i}.png") for i in range(3)]
    bobs = uploaded(bob, noise_png(seed=9))
    assert bob.request(ev.Share(bobs.body.image_id, "alice")) == [ev.Ok()]  # not "own"
    pages = all_pages(alice, ListScope.OWN, limit=2)
    assert [(len(p.images), p.more) for p in pages] == [(2, True), (1, False)]
    entries = [e for p in pages for e in p.images]
    assert [(e.image_id, e.name, e.owner, e.hmac) for e in entries] == [
        (r.body.image_id, f"{i}.png", "alice", r.body.hmac) for i, r in enumerate(receipts)
    ]


def test_list_page_shared_with_me_names_the_owners(service: Service, carol: Wire) -> None:
    alice, bob = Wire(service), Wire(service)
    alice.login()
    bob.login("bob")
    from_alice = uploaded(alice, name="a.png").body.image_id
    from_carol = uploaded(carol, noise_png(seed=5), name="c.png").body.image_id
    uploaded(carol, noise_png(seed=6), name="kept.png")
    uploaded(bob, noise_png(seed=7), name="bobs.png")
    assert alice.request(ev.Share(from_alice, "bob")) == [ev.Ok()]
    assert carol.request(ev.Share(from_carol, "bob")) == [ev.Ok()]
    pages = all_pages(bob, ListScope.SHARED_WITH_ME, limit=1)
    assert [(len(p.images), p.more) for p in pages] == [(1, True), (1, False)]
    assert [(e.image_id, e.owner, e.name) for p in pages for e in p.images] == [
        (from_alice, "alice", "a.png"),
        (from_carol, "carol", "c.png"),
    ]
    (own,) = all_pages(bob, ListScope.OWN, limit=10)
    assert [(e.owner, e.name) for e in own.images] == [("bob", "bobs.png")]
