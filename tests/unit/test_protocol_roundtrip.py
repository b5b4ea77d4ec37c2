"""Client and server cores paired through an in-memory link (h11 ``tests/helpers.py``).

Every conversation runs fed whole and fed one byte at a time (large streams in ragged
pieces instead, so record edges still fall everywhere without 5 million calls).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from imgshare.errors import (
    HandshakeError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
)
from imgshare.protocol import (
    NEED_DATA,
    ClientConnection,
    ErrorCode,
    Group,
    PinnedCertificate,
    RecordType,
    ServerConnection,
    State,
    StreamOpener,
    StreamSealer,
    UploadHeader,
    encode_record,
    new_upload,
)
from imgshare.protocol import events as ev
from imgshare.protocol.constants import RECORD_HEADER_SIZE, TAG_SIZE, ListScope
from imgshare.protocol.messages import encode_message
from protocol_helpers import (
    HEADER,
    SPLITS,
    Connection,
    ConnectionPair,
    SigningKey,
    feed,
    fixed_p256_key,
    self_signed_certificate,
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="module")
def server_keys(rsa_key: rsa.RSAPrivateKey) -> dict[str, tuple[SigningKey, bytes]]:
    keys: dict[str, SigningKey] = {
        "ecdsa-p256": fixed_p256_key("roundtrip server"),
        "rsa-3072": rsa_key,
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    return {name: (key, self_signed_certificate(key)) for name, key in keys.items()}


PairFactory = Callable[..., ConnectionPair]


@pytest.fixture(params=["whole", "bytewise"])
def split_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_pair(server_keys: dict[str, tuple[SigningKey, bytes]]) -> PairFactory:
    def make(
        group: Group = Group.X25519, key: str = "ecdsa-p256", split: str = "whole"
    ) -> ConnectionPair:
        signing_key, certificate = server_keys[key]
        client = ClientConnection(PinnedCertificate(certificate), group=group)
        server = ServerConnection(certificate, signing_key)
        return ConnectionPair(client, server, SPLITS[split])

    return make


@pytest.fixture
def pair(make_pair: PairFactory, split_name: str) -> ConnectionPair:
    """A pair whose handshake is done and whose user is logged in, fed whole or bytewise."""
    p = make_pair(split=split_name)
    p.handshake()
    p.send(p.client, ev.Login("alice", "secret"))
    p.send(p.server, ev.LoginOk("alice"))
    assert p.client.state is p.server.state is State.IDLE
    return p


# --- handshake ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ecdsa-p256", "rsa-3072", "ed25519"])
@pytest.mark.parametrize("group", [Group.X25519, Group.SECP256R1], ids=lambda g: g.name)
def test_handshake(make_pair: PairFactory, group: Group, key: str, split_name: str) -> None:
    p = make_pair(group, key, split_name)
    client_done, server_done = p.handshake()
    assert client_done == server_done
    assert client_done.group == group and client_done.version == 1
    assert client_done.server_certificate == p.client.server_certificate
    assert len(client_done.session_id) == 32
    assert p.client.state is p.server.state is State.IDLE
    assert p.client.data_to_send() == p.server.data_to_send() == b""
    # The session keys work both ways.
    p.send(p.client, ev.ListImages())
    p.send(p.server, ev.ImageList(()))


def test_two_handshakes_give_different_sessions(make_pair: PairFactory) -> None:
    first, second = make_pair(), make_pair()
    assert first.handshake()[0].session_id != second.handshake()[0].session_id


def test_server_refuses_group_it_does_not_allow(
    server_keys: dict[str, tuple[SigningKey, bytes]],
) -> None:
    key, certificate = server_keys["ecdsa-p256"]
    client = ClientConnection(PinnedCertificate(certificate), group=Group.SECP256R1)
    server = ServerConnection(certificate, key, groups=frozenset({Group.X25519}))
    with pytest.raises(HandshakeError) as caught:
        feed(server, client.initiate())
    assert caught.value.code == ErrorCode.UNSUPPORTED_GROUP
    # The client learns why from the ALERT.
    (alert,) = feed(client, server.data_to_send())
    assert alert == ev.Error(ErrorCode.UNSUPPORTED_GROUP, "key-exchange group not supported", True)
    assert client.state is State.CLOSED


def test_server_key_types_are_checked_at_construction() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError):
        ServerConnection(self_signed_certificate(p384), p384)


# --- login, list, errors --------------------------------------------------------------


def test_list(pair: ConnectionPair) -> None:
    entries = tuple(
        ev.ImageEntry(
            bytes([i]) * 16, 1000 + i, 1_700_000_000_000 + i, bytes([i]) * 32, "bob", f"é{i}.png"
        )
        for i in range(3)
    )
    pair.send(pair.client, ev.ListImages())
    assert pair.client.state is State.AWAIT_LIST
    pair.send(pair.server, ev.ImageList(entries))
    assert pair.client.state is pair.server.state is State.IDLE


@pytest.mark.parametrize(
    ("request_event", "waiting"),
    [
        (ev.Download(bytes(16)), State.AWAIT_DOWNLOAD),
        (ev.Login("alice", "wrong"), State.AWAIT_LOGIN),
        (ev.Share(bytes(16), "bob"), State.AWAIT_OK),
        (ev.Delete(bytes(16)), State.AWAIT_OK),
        (ev.Register("carol", "pw", b"invite"), State.AWAIT_OK),
        (ev.TokenLogin(b"t" * 32), State.AWAIT_LOGIN),
    ],
)
def test_non_fatal_error_answers_and_returns_to_idle(
    pair: ConnectionPair, request_event: ev.Event, waiting: State
) -> None:
    pair.send(pair.client, request_event)
    assert pair.client.state is pair.server.state is waiting
    pair.send(pair.server, ev.Error(ErrorCode.NOT_FOUND, "no such image"))
    assert pair.client.state is pair.server.state is State.IDLE
    pair.send(pair.client, ev.ListImages())  # the session goes on
    pair.send(pair.server, ev.ImageList(()))


_ENTRY = ev.ImageEntry(bytes([7]) * 16, 5000, 1_700_000_000_000, bytes(32), "alice", "a.png")
_IN_A_DAY = 1_767_225_600_000


@pytest.mark.parametrize(
    ("request_event", "waiting", "answer"),
    [
        (ev.CertLogin(), State.AWAIT_LOGIN, ev.LoginOk("alice")),
        (ev.TokenLogin(b"imgshare-token-" + b"x" * 43), State.AWAIT_LOGIN, ev.LoginOk("alice")),
        (ev.Register("carol", "a password", b"imgshare-invite-x"), State.AWAIT_OK, ev.Ok()),
        (ev.Passwd("old password", "new password", True), State.AWAIT_OK, ev.Ok()),
        (
            ev.TokenCreate("laptop", _IN_A_DAY),
            State.AWAIT_TOKEN,
            ev.Token(3, b"imgshare-token-" + b"y" * 43, _IN_A_DAY),
        ),
        (
            ev.TokenList(),
            State.AWAIT_TOKENS,
            ev.Tokens((ev.TokenInfo(3, "laptop", 1, _IN_A_DAY, 0), ev.TokenInfo(4, "ci", 2, 0, 5))),
        ),
        (ev.TokenRevoke(3), State.AWAIT_OK, ev.Ok()),
        (ev.Share(bytes(16), "bob", _IN_A_DAY), State.AWAIT_OK, ev.Ok()),
        (ev.Unshare(bytes(16), "bob"), State.AWAIT_OK, ev.Ok()),
        (
            ev.Shares(bytes(16)),
            State.AWAIT_SHARES,
            ev.ShareList(bytes(16), (ev.ShareInfo("bob", 1, 0), ev.ShareInfo("carol", 2, 9))),
        ),
        (ev.Delete(bytes(16)), State.AWAIT_OK, ev.Ok()),
        (ev.ListPage(), State.AWAIT_PAGE, ev.ImagePage((_ENTRY,), more=True)),
        (
            ev.ListPage(ListScope.SHARED_WITH_ME, _ENTRY.created_ms, _ENTRY.image_id, 1),
            State.AWAIT_PAGE,
            ev.ImagePage(()),
        ),
    ],
)
def test_accounts_and_sharing_requests(
    pair: ConnectionPair, request_event: ev.Event, waiting: State, answer: ev.Event
) -> None:
    pair.send(pair.client, request_event)
    assert pair.client.state is pair.server.state is waiting
    with pytest.raises(LocalProtocolError):  # one request at a time
        pair.client.send(ev.ListImages())
    with pytest.raises(LocalProtocolError):  # only its own answer
        pair.server.send(ev.ImageList(()) if not isinstance(answer, ev.ImageList) else ev.Ok())
    pair.send(pair.server, answer)
    assert pair.client.state is pair.server.state is State.IDLE
    pair.send(pair.client, request_event)  # and again: the session goes on
    pair.send(pair.server, ev.Error(ErrorCode.NOT_FOUND, "no"))
    assert pair.client.state is pair.server.state is State.IDLE


def test_fatal_auth_required_ends_the_session(pair: ConnectionPair) -> None:
    """A removed user's or a revoked token's session: its next request ends it."""
    pair.send(pair.client, ev.TokenList())
    pair.send(pair.server, ev.Error(ErrorCode.AUTH_REQUIRED, "token revoked", fatal=True))
    assert pair.client.state is pair.server.state is State.CLOSED


@pytest.mark.parametrize(
    "event",
    [
        ev.TokenRevoke(-1),
        ev.TokenRevoke(1 << 64),
        ev.TokenCreate("n", -5),
        ev.Share(bytes(16), "bob", 1 << 64),
        ev.ListPage(after_ms=-1),
        ev.ListPage(limit=1 << 16),
        ev.ListPage(limit=0),
        ev.ListPage(after_id=bytes(17)),
        ev.Passwd("a", "b" * 1025),
        ev.TokenCreate("n" * 65),
        ev.Unshare(bytes(15), "bob"),
    ],
)
def test_client_cannot_send_what_the_server_must_reject(
    pair: ConnectionPair, event: ev.Event
) -> None:
    """Out-of-range integers and fields are a LocalProtocolError, and nothing is sent."""
    with pytest.raises(LocalProtocolError):
        pair.client.send(event)
    assert pair.client.state is State.IDLE
    pair.send(pair.client, ev.ListImages())  # the sequence numbers did not move
    pair.send(pair.server, ev.ImageList(()))


@pytest.mark.parametrize(
    "event",
    [
        ev.Token(-1, b"t"),
        ev.Tokens((ev.TokenInfo(1, "n", -1, 0, 0),)),
        ev.ShareList(bytes(16), (ev.ShareInfo("bob", 0, 1 << 64),)),
        ev.ImagePage((_ENTRY,) * 1001),
    ],
)
def test_server_cannot_send_what_the_client_must_reject(
    pair: ConnectionPair, event: ev.Event
) -> None:
    request = {
        ev.Token: ev.TokenCreate("n"),
        ev.Tokens: ev.TokenList(),
        ev.ShareList: ev.Shares(bytes(16)),
        ev.ImagePage: ev.ListPage(),
    }[type(event)]
    pair.send(pair.client, request)
    with pytest.raises(LocalProtocolError):
        pair.server.send(event)
    pair.send(pair.server, ev.Error(ErrorCode.INTERNAL, "could not"))


def test_non_fatal_error_answers_an_upload(pair: ConnectionPair) -> None:
    header, key = new_upload("a.png", 10, random.Random(1).randbytes)
    pair.send(pair.client, ev.UploadBegin(header, key))
    pair.send(pair.server, ev.Error(ErrorCode.QUOTA_EXCEEDED, "quota"))
    assert pair.client.state is pair.server.state is State.IDLE
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.Chunk(0, bytes(26), True))


def test_non_fatal_error_outside_a_request_is_refused(pair: ConnectionPair) -> None:
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.Error(ErrorCode.BUSY, "not now"))
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.Error(ErrorCode.BUSY, "clients only send fatal errors"))


def test_fatal_error_closes_both_sides(pair: ConnectionPair) -> None:
    pair.send(pair.server, ev.Error(ErrorCode.SHUTTING_DOWN, "bye", fatal=True))
    assert pair.client.state is pair.server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ListImages())
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.Ok())
    with pytest.raises(LocalProtocolError):
        pair.client.next_event()


def test_clean_eof_in_idle_is_connection_closed(pair: ConnectionPair) -> None:
    for conn in (pair.client, pair.server):
        conn.receive_data(b"")
        assert conn.next_event() == ev.ConnectionClosed()
        assert conn.state is State.CLOSED
        with pytest.raises(LocalProtocolError):
            conn.receive_data(b"more")


def test_eof_while_waiting_for_an_answer_is_an_error(pair: ConnectionPair) -> None:
    pair.send(pair.client, ev.ListImages())
    pair.client.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as caught:
        pair.client.next_event()
    assert caught.value.code == ErrorCode.MALFORMED
    assert pair.client.data_to_send()  # the sealed fatal ERROR, for a half-closed peer


def test_eof_mid_upload_is_a_remote_protocol_error(pair: ConnectionPair) -> None:
    header, key = new_upload("a.png", 3 * 4096, random.Random(2).randbytes, 4096)
    sealer = StreamSealer(header, key)
    pair.send(pair.client, ev.UploadBegin(header, key))
    pair.send(pair.server, ev.UploadReady())
    pair.send(pair.client, ev.Chunk(0, sealer.seal(bytes(4096)), False))
    pair.server.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.next_event()
    assert caught.value.code == ErrorCode.MALFORMED
    assert pair.server.state is State.CLOSED
    (report,) = feed(pair.client, pair.server.data_to_send())
    assert report == ev.Error(ErrorCode.MALFORMED, str(caught.value), fatal=True)


# --- upload and download ---------------------------------------------------------------


def upload(
    pair: ConnectionPair, data: bytes, chunk_size: int = 1 << 18
) -> tuple[ev.UploadBegin, list[bytes], ev.Receipt]:
    """Upload ``data``; the server opens and HMAC-checks it. Returns what it stored."""
    rng = random.Random(len(data)).randbytes
    header, content_key = new_upload("photo.jpg", len(data), rng, chunk_size)
    sealer = StreamSealer(header, content_key)
    begin = ev.UploadBegin(header, content_key)
    pair.send(pair.client, begin)
    pair.send(pair.server, ev.UploadReady())
    count = header.chunk_count
    chunks = [
        ev.Chunk(i, sealer.seal(data[i * chunk_size : (i + 1) * chunk_size]), i == count - 1)
        for i in range(count)
    ]
    received = pair.send(pair.client, *chunks, ev.UploadEnd(sealer.finish()))
    assert pair.client.state is pair.server.state is State.AWAIT_RECEIPT
    end = received[-1]
    assert isinstance(end, ev.UploadEnd)
    stored = [c.data for c in received[:-1] if isinstance(c, ev.Chunk)]
    opener = StreamOpener(header, content_key)
    assert b"".join(opener.open(c) for c in stored) == data
    mac = opener.finish(end.hmac)
    body = ev.ReceiptBody(
        image_id=bytes(range(16)),
        upload_id=header.upload_id,
        size=len(data),
        hmac=mac,
        header_sha256=hashlib.sha256(header.encode()).digest(),
        server_time_ms=1_767_225_600_000,
        username="alice",
    )
    receipt = pair.server.sign_receipt(body)
    pair.send(pair.server, receipt)  # the client's core checks signature and contents
    assert (pair.client.state, pair.server.state) == (State.IDLE, State.IDLE)
    return begin, stored, receipt


def download(pair: ConnectionPair, begin: ev.UploadBegin, stored: list[bytes], mac: bytes) -> bytes:
    image_id = bytes(range(16))
    pair.send(pair.client, ev.Download(image_id))
    pair.send(pair.server, ev.DownloadBegin(image_id, begin.header, begin.content_key))
    chunks = [ev.Chunk(i, data, i == len(stored) - 1) for i, data in enumerate(stored)]
    received = pair.send(pair.server, *chunks, ev.DownloadEnd(mac))
    assert pair.client.state is pair.server.state is State.IDLE
    opener = StreamOpener(begin.header, begin.content_key)
    plaintext = b"".join(opener.open(c.data) for c in received if isinstance(c, ev.Chunk))
    end = received[-1]
    assert isinstance(end, ev.DownloadEnd)
    assert opener.finish(end.hmac) == mac
    return plaintext


@pytest.mark.parametrize("split", ["whole", "ragged"])
def test_upload_and_download_5_mib(make_pair: PairFactory, split: str) -> None:
    data = random.Random(5).randbytes(5 * MiB + 12345)
    p = make_pair(split=split)
    p.handshake()
    begin, stored, receipt = upload(p, data)
    assert len(stored) == 21  # default 256 KiB chunks, a short last one
    assert receipt.body.size == len(data)
    # The download sends the stored ciphertext verbatim, in a second session.
    second = make_pair(split=split)
    second.handshake()
    assert download(second, begin, stored, receipt.body.hmac) == data


@pytest.mark.parametrize("key", ["rsa-3072", "ed25519"])
def test_receipt_signed_by_each_key_type(make_pair: PairFactory, key: str, split_name: str) -> None:
    p = make_pair(Group.SECP256R1, key, split_name)
    p.handshake()
    data = random.Random(7).randbytes(10_000)
    begin, stored, receipt = upload(p, data, chunk_size=4096)
    assert len(stored) == 3
    assert download(p, begin, stored, receipt.body.hmac) == data


def test_single_chunk_image(pair: ConnectionPair) -> None:
    begin, stored, receipt = upload(pair, b"x", chunk_size=4096)
    assert len(stored) == 1 and len(stored[0]) == 1 + 16
    assert download(pair, begin, stored, receipt.body.hmac) == b"x"


def test_exact_multiple_of_chunk_size(pair: ConnectionPair) -> None:
    data = bytes(2 * 4096)
    begin, stored, receipt = upload(pair, data, chunk_size=4096)
    assert [len(c) for c in stored] == [4096 + 16, 4096 + 16]
    assert download(pair, begin, stored, receipt.body.hmac) == data


def test_image_over_the_limit_is_refused(make_pair: PairFactory) -> None:
    p = make_pair()
    p.handshake()
    header, key = new_upload("big.png", 256 * MiB + 1, random.Random(3).randbytes)
    with pytest.raises(RemoteProtocolError) as caught:
        feed(p.server, p.client.send(ev.UploadBegin(header, key)))
    assert caught.value.code == ErrorCode.TOO_LARGE


# --- the client's core checks what the server sends -----------------------------------


def test_receipt_for_other_bytes_is_rejected(pair: ConnectionPair) -> None:
    header, key = new_upload("a.png", 100, random.Random(4).randbytes, 4096)
    sealer = StreamSealer(header, key)
    pair.send(pair.client, ev.UploadBegin(header, key))
    pair.send(pair.server, ev.UploadReady())
    pair.send(
        pair.client, ev.Chunk(0, sealer.seal(bytes(100)), True), ev.UploadEnd(sealer.finish())
    )
    body = ev.ReceiptBody(bytes(16), header.upload_id, 99, sealer.finish(), bytes(32), 0, "alice")
    with pytest.raises(IntegrityError):
        feed(pair.client, pair.server.send(pair.server.sign_receipt(body)))
    assert pair.client.state is State.CLOSED


def test_download_of_an_image_not_asked_for_is_rejected(pair: ConnectionPair) -> None:
    header, key = new_upload("a.png", 100, random.Random(4).randbytes, 4096)
    pair.send(pair.client, ev.Download(b"\x01" * 16))
    with pytest.raises(RemoteProtocolError) as caught:
        feed(pair.client, pair.server.send(ev.DownloadBegin(b"\x02" * 16, header, key)))
    assert caught.value.code == ErrorCode.UNEXPECTED_MESSAGE


# --- resuming an upload (spec 7.10) and thumbnails (7.11) ---------------------------------


def test_a_resumed_upload_goes_on_from_next_chunk(pair: ConnectionPair) -> None:
    """After UPLOAD_RESUME both sides count chunks from ``next_chunk``, with the same
    nonces: chunks sealed again are the bytes sent the first time, and the HMAC covers
    the chunks the server kept."""
    data = random.Random(7).randbytes(5 * 4096 + 100)
    header, key = new_upload("big.png", len(data), random.Random(8).randbytes, 4096)
    first = StreamSealer(header, key)
    sent = [first.seal(data[i * 4096 : (i + 1) * 4096]) for i in range(header.chunk_count)]
    pair.send(pair.client, ev.UploadResume(header, key))
    pair.send(pair.server, ev.UploadReady(3))
    again = StreamSealer(header, key)
    for index in range(3):
        again.skip(data[index * 4096 : (index + 1) * 4096])
    chunks = [
        ev.Chunk(i, again.seal(data[i * 4096 : (i + 1) * 4096]), i == header.chunk_count - 1)
        for i in range(3, header.chunk_count)
    ]
    assert [bytes(c.data) for c in chunks] == sent[3:]
    received = pair.send(pair.client, *chunks, ev.UploadEnd(again.finish()))
    assert [c.index for c in received if isinstance(c, ev.Chunk)] == [3, 4, 5]
    opener = StreamOpener(header, key)
    for chunk in sent:
        opener.open(chunk)
    end = received[-1]
    assert isinstance(end, ev.UploadEnd) and opener.finish(end.hmac) == first.finish()
    assert pair.server.state is State.AWAIT_RECEIPT


def test_a_resumed_upload_stored_already_goes_straight_to_upload_end(
    pair: ConnectionPair,
) -> None:
    header, key = new_upload("big.png", 3 * 4096, random.Random(9).randbytes, 4096)
    pair.send(pair.client, ev.UploadResume(header, key))
    pair.send(pair.server, ev.UploadReady(header.chunk_count))
    assert pair.client.state is pair.server.state is State.UPLOADED
    pair.send(pair.client, ev.UploadEnd(bytes(32)))
    assert pair.server.state is State.AWAIT_RECEIPT


def test_next_chunk_past_the_end_or_after_upload_begin_is_malformed(
    pair: ConnectionPair,
) -> None:
    header, key = new_upload("big.png", 3 * 4096, random.Random(10).randbytes, 4096)
    pair.send(pair.client, ev.UploadResume(header, key))
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.UploadReady(header.chunk_count + 1))
    forged = pair.server._seal(encode_message(ev.UploadReady(header.chunk_count + 1)))
    with pytest.raises(RemoteProtocolError) as caught:
        feed(pair.client, forged)
    assert caught.value.code == ErrorCode.MALFORMED


def test_a_thumbnail_of_another_image_is_rejected(pair: ConnectionPair) -> None:
    pair.send(pair.client, ev.Thumbnail(b"\x01" * 16))
    (answer,) = pair.send(pair.server, ev.ThumbnailData(b"\x01" * 16, 4, 3, "image/png", b"x"))
    assert isinstance(answer, ev.ThumbnailData) and pair.client.state is State.IDLE
    pair.send(pair.client, ev.Thumbnail(b"\x01" * 16))
    with pytest.raises(RemoteProtocolError) as caught:
        feed(pair.client, pair.server.send(ev.ThumbnailData(b"\x02" * 16, 4, 3, "image/png", b"")))
    assert caught.value.code == ErrorCode.UNEXPECTED_MESSAGE


# --- illegal local sends ---------------------------------------------------------------


@pytest.fixture
def uploading(pair: ConnectionPair) -> tuple[ConnectionPair, StreamSealer]:
    header, key = new_upload("a.png", 2 * 4096 + 10, random.Random(6).randbytes, 4096)
    pair.send(pair.client, ev.UploadBegin(header, key))
    return pair, StreamSealer(header, key)


def test_chunk_before_upload_ready(uploading: tuple[ConnectionPair, StreamSealer]) -> None:
    pair, sealer = uploading
    assert pair.client.state is State.AWAIT_UPLOAD_READY
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.Chunk(0, sealer.seal(bytes(4096)), False))
    assert pair.client.state is State.AWAIT_UPLOAD_READY


@pytest.mark.parametrize(
    ("index", "size", "last"),
    [(0, 4095 + 16, False), (0, 4097 + 16, False), (1, 4096 + 16, False), (0, 4096 + 16, True)],
    ids=["short", "long", "wrong-index", "wrong-last-flag"],
)
def test_chunk_not_the_next_one(
    uploading: tuple[ConnectionPair, StreamSealer], index: int, size: int, last: bool
) -> None:
    pair, _ = uploading
    pair.send(pair.server, ev.UploadReady())
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.Chunk(index, bytes(size), last))
    assert pair.client.state is State.UPLOADING
    pair.client.send(ev.Chunk(0, bytes(4096 + 16), False))  # the right one still goes


def test_upload_end_before_the_last_chunk(uploading: tuple[ConnectionPair, StreamSealer]) -> None:
    pair, sealer = uploading
    pair.send(pair.server, ev.UploadReady())
    pair.send(pair.client, ev.Chunk(0, sealer.seal(bytes(4096)), False))
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.UploadEnd(bytes(32)))
    with pytest.raises(LocalProtocolError):
        sealer.finish()


def test_chunk_after_the_last_one(uploading: tuple[ConnectionPair, StreamSealer]) -> None:
    pair, sealer = uploading
    pair.send(pair.server, ev.UploadReady())
    for i, size in enumerate((4096, 4096, 10)):
        pair.send(pair.client, ev.Chunk(i, sealer.seal(bytes(size)), i == 2))
    assert pair.client.state is State.UPLOADED
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.Chunk(3, bytes(26), True))
    with pytest.raises(LocalProtocolError):
        sealer.seal(bytes(10))


def test_sends_before_the_handshake(server_keys: dict[str, tuple[SigningKey, bytes]]) -> None:
    key, certificate = server_keys["ecdsa-p256"]
    client = ClientConnection(PinnedCertificate(certificate))
    server = ServerConnection(certificate, key)
    with pytest.raises(LocalProtocolError):
        client.send(ev.Login("a", "b"))
    client.initiate()
    with pytest.raises(LocalProtocolError):
        client.initiate()
    with pytest.raises(LocalProtocolError):
        server.send(ev.LoginOk("a"))


@pytest.mark.parametrize(
    ("sender", "event"),
    [
        ("server", ev.Login("a", "b")),
        ("client", ev.LoginOk("a")),
        ("client", ev.Ok()),
        ("server", ev.Download(bytes(16))),
        ("client", ev.UploadReady()),
        ("client", ev.DownloadEnd(bytes(32))),
        ("server", ev.UploadEnd(bytes(32))),
        ("client", ev.ConnectionClosed()),
        ("server", ev.HandshakeComplete(1, Group.X25519, b"", bytes(32))),
    ],
)
def test_wrong_role_or_state(pair: ConnectionPair, sender: str, event: ev.Event) -> None:
    conn = pair.client if sender == "client" else pair.server
    with pytest.raises(LocalProtocolError):
        conn.send(event)
    assert conn.state is State.IDLE


def test_one_request_at_a_time(pair: ConnectionPair) -> None:
    pair.client.send(ev.ListImages())
    with pytest.raises(LocalProtocolError):
        pair.client.send(ev.ListImages())


def test_answer_of_the_wrong_kind(pair: ConnectionPair) -> None:
    pair.send(pair.client, ev.ListImages())
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.Ok())
    pair.send(pair.server, ev.ImageList(()))


# --- the bulk path without copies: lent bodies and chunk headers ----------------------

BULK_CHUNK = 4096


@dataclasses.dataclass
class Bulk:
    """A logged-in pair in the middle of an upload, with every chunk sealed in advance."""

    pair: ConnectionPair
    header: UploadHeader
    key: bytes
    plaintext: bytes
    sealed: list[bytes]
    hmac: bytes

    def record(self, index: int) -> bytes:
        """Chunk ``index``'s record as the client's core sends it (advances the client)."""
        last = index == len(self.sealed) - 1
        return self.pair.client.send(ev.Chunk(index, self.sealed[index], last))


def start_upload(make_pair: PairFactory) -> Bulk:
    """The same upload every time: identical headers, keys and sealed chunks."""
    p = make_pair()
    p.handshake()
    p.send(p.client, ev.Login("alice", "secret"))
    p.send(p.server, ev.LoginOk("alice"))
    data = random.Random(8).randbytes(2 * BULK_CHUNK + 10)
    header, key = new_upload("a.png", len(data), random.Random(9).randbytes, BULK_CHUNK)
    sealer = StreamSealer(header, key)
    sealed = [
        bytes(sealer.seal(data[i * BULK_CHUNK : (i + 1) * BULK_CHUNK]))
        for i in range(header.chunk_count)
    ]
    p.send(p.client, ev.UploadBegin(header, key))
    p.send(p.server, ev.UploadReady())
    return Bulk(p, header, key, data, sealed, sealer.finish())


@pytest.fixture
def bulk(make_pair: PairFactory) -> Bulk:
    return start_upload(make_pair)


def lend(conn: Connection, record: bytes, buffer: bytearray) -> None:
    """Feed a record as the server's read loop does: header as data, body lent."""
    conn.receive_data(record[:RECORD_HEADER_SIZE])
    assert conn.bytes_wanted == len(record) - RECORD_HEADER_SIZE
    body = memoryview(buffer)[: len(record) - RECORD_HEADER_SIZE]
    body[:] = record[RECORD_HEADER_SIZE:]
    conn.receive_record_body(body)


@pytest.mark.parametrize("form", ["bytearray", "memoryview", "slice-of-bigger"])
def test_lent_chunk_is_a_view_of_the_callers_buffer(bulk: Bulk, form: str) -> None:
    server = bulk.pair.server
    record = bulk.record(0)
    body = record[RECORD_HEADER_SIZE:]
    if form == "slice-of-bigger":  # a recycled buffer, as Pipeline.buffer hands out
        buffer = bytearray(len(body) + 100)
        lent: bytearray | memoryview = memoryview(buffer)[: len(body)]
        lent[:] = body
    else:
        buffer = bytearray(body)
        lent = buffer if form == "bytearray" else memoryview(buffer)
    server.receive_data(record[:RECORD_HEADER_SIZE])
    server.receive_record_body(lent)
    chunk = server.next_event()
    assert isinstance(chunk, ev.Chunk)
    assert (chunk.index, chunk.last) == (0, False)
    assert isinstance(chunk.data, memoryview)
    assert chunk.data.obj is buffer
    assert chunk.data == body
    assert StreamOpener(bulk.header, bulk.key).open(chunk.data) == bulk.plaintext[:BULK_CHUNK]
    buffer[0] ^= 0xFF  # not a copy: the event sees the buffer change
    assert chunk.data[0] == buffer[0] != body[0]
    assert server.next_event() is NEED_DATA
    assert server.buffered_bytes == 0


def test_whole_upload_through_one_recycled_buffer(bulk: Bulk) -> None:
    """Every chunk and the sealed UploadEnd lent from one buffer, each handled before reuse."""
    server = bulk.pair.server
    buffer = bytearray(BULK_CHUNK + TAG_SIZE)
    opener = StreamOpener(bulk.header, bulk.key)
    plaintext = b""
    for index in range(len(bulk.sealed)):
        lend(server, bulk.record(index), buffer)
        chunk = server.next_event()
        assert isinstance(chunk, ev.Chunk) and chunk.index == index
        assert isinstance(chunk.data, memoryview) and chunk.data.obj is buffer
        plaintext += opener.open(chunk.data)
    assert plaintext == bulk.plaintext
    assert server.state is State.UPLOADED
    # A SEALED message lent the same way is opened with the right header as AAD and parsed.
    lend(server, bulk.pair.client.send(ev.UploadEnd(bulk.hmac)), buffer)
    assert server.next_event() == ev.UploadEnd(bulk.hmac)
    assert server.state is State.AWAIT_RECEIPT
    assert opener.finish(bulk.hmac) == bulk.hmac


def test_client_lends_download_chunks(bulk: Bulk, make_pair: PairFactory) -> None:
    p = make_pair()
    p.handshake()
    image_id = bytes(range(16))
    p.send(p.client, ev.Download(image_id))
    p.send(p.server, ev.DownloadBegin(image_id, bulk.header, bulk.key))
    buffer = bytearray(BULK_CHUNK + TAG_SIZE + 7)
    opener = StreamOpener(bulk.header, bulk.key)
    plaintext = b""
    for index, sealed in enumerate(bulk.sealed):
        last = index == len(bulk.sealed) - 1
        lend(p.client, p.server.send(ev.Chunk(index, sealed, last)), buffer)
        chunk = p.client.next_event()
        assert chunk == ev.Chunk(index, sealed, last)
        assert isinstance(chunk, ev.Chunk) and isinstance(chunk.data, memoryview)
        assert chunk.data.obj is buffer
        plaintext += opener.open(chunk.data)
    lend(p.client, p.server.send(ev.DownloadEnd(bulk.hmac)), buffer)
    assert p.client.next_event() == ev.DownloadEnd(bulk.hmac)
    assert plaintext == bulk.plaintext
    assert p.client.state is p.server.state is State.IDLE


def test_lending_needs_exactly_one_record_header_buffered(bulk: Bulk) -> None:
    server = bulk.pair.server
    record = bulk.record(0)
    # Each body below has the length bytes_wanted asks for: only the buffered count is wrong.
    with pytest.raises(LocalProtocolError):
        server.receive_record_body(bytearray(server.bytes_wanted))  # nothing buffered
    server.receive_data(record[:4])
    with pytest.raises(LocalProtocolError):
        server.receive_record_body(bytearray(server.bytes_wanted))  # part of a header
    server.receive_data(record[4:6])
    with pytest.raises(LocalProtocolError):
        server.receive_record_body(bytearray(record[6:]))  # a header and a byte more
    # None of the refusals took anything: the record still arrives whole.
    server.receive_data(record[6:])
    assert server.next_event() == ev.Chunk(0, bulk.sealed[0], False)


@pytest.mark.parametrize("length_change", [-1, 1, "empty"])
def test_lent_body_must_be_exactly_the_rest_of_the_record(
    bulk: Bulk, length_change: int | str
) -> None:
    server = bulk.pair.server
    record = bulk.record(0)
    server.receive_data(record[:RECORD_HEADER_SIZE])
    wanted = len(record) - RECORD_HEADER_SIZE
    size = 0 if length_change == "empty" else wanted + int(length_change)
    with pytest.raises(LocalProtocolError):
        server.receive_record_body(bytearray(size))
    assert server.buffered_bytes == RECORD_HEADER_SIZE
    assert server.next_event() is NEED_DATA
    server.receive_record_body(bytearray(record[RECORD_HEADER_SIZE:]))
    assert server.next_event() == ev.Chunk(0, bulk.sealed[0], False)


def test_lending_twice_for_one_record_is_refused(bulk: Bulk) -> None:
    server = bulk.pair.server
    record = bulk.record(0)
    server.receive_data(record[:RECORD_HEADER_SIZE])
    first = bytearray(record[RECORD_HEADER_SIZE:])
    server.receive_record_body(first)
    with pytest.raises(LocalProtocolError):
        server.receive_record_body(bytearray(record[RECORD_HEADER_SIZE:]))
    chunk = server.next_event()
    assert isinstance(chunk, ev.Chunk) and isinstance(chunk.data, memoryview)
    assert chunk.data.obj is first  # the first loan stands
    assert server.next_event() is NEED_DATA


def test_more_data_before_the_lent_body_is_taken_is_refused(bulk: Bulk) -> None:
    server = bulk.pair.server
    first, second = bulk.record(0), bulk.record(1)
    server.receive_data(first[:RECORD_HEADER_SIZE])
    server.receive_record_body(bytearray(first[RECORD_HEADER_SIZE:]))
    with pytest.raises(LocalProtocolError):  # it would be lost, not queued
        server.receive_data(second[:3])
    assert server.next_event() == ev.Chunk(0, bulk.sealed[0], False)
    server.receive_data(second)
    assert server.next_event() == ev.Chunk(1, bulk.sealed[1], False)


def test_lending_after_end_of_stream_is_refused(bulk: Bulk) -> None:
    server = bulk.pair.server
    record = bulk.record(0)
    server.receive_data(record[:RECORD_HEADER_SIZE])
    server.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        server.receive_record_body(bytearray(record[RECORD_HEADER_SIZE:]))
    with pytest.raises(RemoteProtocolError) as caught:  # the body was not taken: cut short
        server.next_event()
    assert caught.value.code == ErrorCode.MALFORMED


@pytest.mark.parametrize("lent", [True, False], ids=["lent", "received"])
@pytest.mark.parametrize("longer", [False, True], ids=["short", "long"])
def test_chunk_of_the_wrong_length_is_an_integrity_error(
    bulk: Bulk, lent: bool, longer: bool
) -> None:
    server = bulk.pair.server
    data = bulk.sealed[0] + b"\x00" if longer else bulk.sealed[0][:-1]
    record = encode_record(RecordType.CHUNK, data)
    server.receive_data(record[:RECORD_HEADER_SIZE])
    if lent:
        server.receive_record_body(bytearray(record[RECORD_HEADER_SIZE:]))
    else:
        server.receive_data(record[RECORD_HEADER_SIZE:])
    with pytest.raises(IntegrityError) as caught:
        server.next_event()
    assert caught.value.code == ErrorCode.INTEGRITY_FAILED
    assert server.state is State.CLOSED
    (report,) = feed(bulk.pair.client, server.data_to_send())
    assert report == ev.Error(ErrorCode.INTEGRITY_FAILED, str(caught.value), fatal=True)


def test_tampered_lent_chunk_does_not_open(bulk: Bulk) -> None:
    server = bulk.pair.server
    record = bytearray(bulk.record(0))
    record[-1] ^= 0x01  # a tag bit: the length is right, so only the opener can tell
    lend(server, bytes(record), bytearray(len(record)))
    chunk = server.next_event()
    assert isinstance(chunk, ev.Chunk)
    with pytest.raises(IntegrityError):
        StreamOpener(bulk.header, bulk.key).open(chunk.data)


def test_chunk_header_plus_data_is_what_send_writes(make_pair: PairFactory) -> None:
    by_header, by_send = start_upload(make_pair), start_upload(make_pair)
    assert by_header.sealed == by_send.sealed
    for index, sealed in enumerate(by_header.sealed):
        chunk = ev.Chunk(index, sealed, index == len(by_header.sealed) - 1)
        header = by_header.pair.client.send_chunk_header(chunk)
        assert HEADER.unpack(header) == (len(sealed) + 1, RecordType.CHUNK)
        assert header + sealed == by_send.pair.client.send(chunk)
        assert feed(by_header.pair.server, header + sealed) == [chunk]
    assert by_header.pair.client.state is State.UPLOADED
    assert by_header.pair.server.state is State.UPLOADED


def test_client_style_upload_sealed_in_place_behind_the_header(bulk: Bulk) -> None:
    """As ClientSession does: seal into one record buffer, write the header in front."""
    client, server = bulk.pair.client, bulk.pair.server
    sealer = StreamSealer(bulk.header, bulk.key)
    record = memoryview(bytearray(RECORD_HEADER_SIZE + BULK_CHUNK + TAG_SIZE))
    for index in range(bulk.header.chunk_count):
        start = index * BULK_CHUNK
        plain = bulk.plaintext[start : start + bulk.header.plaintext_length(index)]
        sealed = sealer.seal(plain, into=record[RECORD_HEADER_SIZE:])
        chunk = ev.Chunk(index, sealed, index == bulk.header.chunk_count - 1)
        record[:RECORD_HEADER_SIZE] = client.send_chunk_header(chunk)
        received = feed(server, bytes(record[: RECORD_HEADER_SIZE + len(sealed)]))
        assert received == [ev.Chunk(index, bulk.sealed[index], chunk.last)]
    assert feed(server, client.send(ev.UploadEnd(sealer.finish()))) == [ev.UploadEnd(bulk.hmac)]
    assert client.state is server.state is State.AWAIT_RECEIPT


@pytest.mark.parametrize(
    ("index", "size", "last"),
    [
        (0, BULK_CHUNK - 1 + TAG_SIZE, False),
        (0, BULK_CHUNK + 1 + TAG_SIZE, False),
        (1, BULK_CHUNK + TAG_SIZE, False),
        (0, BULK_CHUNK + TAG_SIZE, True),
    ],
    ids=["short", "long", "wrong-index", "wrong-last-flag"],
)
def test_chunk_header_for_the_wrong_chunk_is_refused(
    bulk: Bulk, index: int, size: int, last: bool
) -> None:
    client = bulk.pair.client
    with pytest.raises(LocalProtocolError):
        client.send_chunk_header(ev.Chunk(index, bytes(size), last))
    assert client.state is State.UPLOADING
    right = ev.Chunk(0, bulk.sealed[0], False)  # still the next one: nothing advanced
    assert feed(bulk.pair.server, client.send_chunk_header(right) + right.data) == [right]


def test_chunk_header_before_the_handshake_is_refused(
    server_keys: dict[str, tuple[SigningKey, bytes]],
) -> None:
    key, certificate = server_keys["ecdsa-p256"]
    client = ClientConnection(PinnedCertificate(certificate))
    server = ServerConnection(certificate, key)
    chunk = ev.Chunk(0, bytes(1 + TAG_SIZE), True)
    with pytest.raises(LocalProtocolError):
        client.send_chunk_header(chunk)
    assert client.state is State.START
    assert feed(server, client.initiate()) == []
    # The server has its sending key once it answered the hello, but no session yet.
    with pytest.raises(LocalProtocolError):
        server.send_chunk_header(chunk)
    with pytest.raises(LocalProtocolError):
        client.send_chunk_header(chunk)
    assert (client.state, server.state) == (State.WAIT_SERVER_HELLO, State.WAIT_CLIENT_FINISHED)
    # Nothing was disturbed: the handshake completes.
    (client_done,) = feed(client, server.data_to_send())
    (server_done,) = feed(server, client.data_to_send())
    assert isinstance(client_done, ev.HandshakeComplete) and client_done == server_done


def test_chunk_header_outside_an_upload_is_refused(bulk: Bulk, make_pair: PairFactory) -> None:
    idle = make_pair()
    idle.handshake()
    chunk = ev.Chunk(0, bulk.sealed[0], False)
    with pytest.raises(LocalProtocolError):
        idle.client.send_chunk_header(chunk)
    assert idle.client.state is State.IDLE
    bulk.pair.client.receive_data(b"")  # the server went away mid-upload
    with pytest.raises(RemoteProtocolError):
        bulk.pair.client.next_event()
    assert bulk.pair.client.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        bulk.pair.client.send_chunk_header(chunk)
