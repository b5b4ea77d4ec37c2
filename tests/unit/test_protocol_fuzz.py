"""Hypothesis fuzzing of both sides of the protocol core (h11's fuzz invariant).

Fed anything, in any pieces, a connection:

- raises nothing but ``RemoteProtocolError`` (a ``ProtocolError``) from
  ``receive_data``/``next_event``; any other exception fails the test;
- after that error is closed and has queued a fatal report for the peer (an ALERT, or a
  sealed ERROR once it has keys), carrying the error's code;
- never buffers more than the record limit + the record header + the last feed;
- never hands the application an event the honest peer did not send: mutated valid
  streams give a prefix of the original events (the AEAD, the signature and the
  StreamOpener catch everything else).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgshare.errors import ProtocolError, RemoteProtocolError
from imgshare.protocol import (
    NEED_DATA,
    ClientConnection,
    ErrorCode,
    Limits,
    MessageType,
    RecordType,
    ServerConnection,
    State,
    StreamOpener,
    UploadHeader,
)
from imgshare.protocol import events as ev
from imgshare.protocol.constants import (
    MAX_CHUNK_SIZE,
    RECORD_HEADER_SIZE,
    TAG_SIZE,
    ListScope,
    Registration,
)
from imgshare.protocol.messages import MESSAGE_TYPE_OF, encode_message
from protocol_helpers import (
    HEADER,
    Json,
    QueueRng,
    Replayer,
    event_from_json,
    make_connection,
    open_record,
    other,
    record_type,
    seal_record,
    sealed_count,
    split_records,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
SESSIONS: dict[str, Json] = json.loads((VECTORS / "bad_cases.json").read_text())["sessions"]
FULL = SESSIONS["x25519"]

#: Small limits, so that the fuzzer reaches them. Chunk records (4096 + 16 bytes) fit.
LIMITS = Limits(
    max_record_size=4096 + 16 + 64, max_handshake_record_size=1024, max_image_size=1 << 16
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Connection = ClientConnection | ServerConnection


def buffered(conn: Connection) -> int:
    # No public accessor for the receive buffer (reported): read the private one.
    return conn.buffered_bytes


def buffer_bound(conn: Connection) -> int:
    limits = conn.limits
    return max(limits.max_record_size, limits.max_handshake_record_size) + RECORD_HEADER_SIZE


def with_small_limits(session: Json) -> Json:
    return {**session, "limits": dataclasses.asdict(LIMITS)}


def fresh(side: str, *, initiate: bool = True) -> Connection:
    """A new connection with the recorded session's key and rng, and the small limits."""
    rng = QueueRng(bytes.fromhex(d) for d in FULL[f"{side}_rng"])
    conn = make_connection(with_small_limits(FULL), side, rng)
    if initiate and isinstance(conn, ClientConnection):
        conn.initiate()
    return conn


def after_prefix(side: str, steps: int) -> Connection:
    """A connection of ``side`` that has played the first ``steps`` steps honestly."""
    replayer = Replayer(with_small_limits(FULL), side)
    replayer.play(FULL["steps"][:steps])
    replayer.conn.data_to_send()
    return replayer.conn


def check_report(
    conn: Connection, exc: RemoteProtocolError, keys: tuple[bytes, int] | None
) -> None:
    """After a RemoteProtocolError: closed, and a fatal report with the error's code queued.

    ``keys`` is (send key, sequence) when the test knows the connection has keys: then
    the report must be sealed, and is opened to check its code.
    """
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError):
        conn.next_event()
    out = conn.data_to_send()
    assert out, f"no report queued for {exc!r}"
    out = split_records(out)[-1]  # replies queued earlier in the same feed come first
    if keys is None and record_type(out) == RecordType.ALERT:
        assert struct.unpack(">H", out[5:7])[0] == exc.code
        return
    assert record_type(out) == RecordType.SEALED
    if keys is not None:
        plaintext = open_record(keys[0], keys[1], out)
        assert plaintext[0] == MessageType.ERROR and plaintext[3] == 1
        assert struct.unpack(">H", plaintext[1:3])[0] == exc.code


def feed_checked(
    conn: Connection, pieces: list[bytes], keys: tuple[bytes, int] | None = None
) -> tuple[list[ev.Event], RemoteProtocolError | None]:
    """Feed ``pieces``, draining after each, checking every invariant of this module."""
    events: list[ev.Event] = []
    for piece in pieces:
        conn.receive_data(piece)
        assert buffered(conn) <= buffer_bound(conn) + len(piece)
        try:
            while conn.state is not State.CLOSED:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                assert isinstance(event, ev.Event)
                events.append(event)
        except ProtocolError as exc:
            assert isinstance(exc, RemoteProtocolError), f"{exc!r} from a received byte"
            assert ErrorCode(exc.code)  # a code the wire knows
            check_report(conn, exc, keys)
            return events, exc
        if conn.state is State.CLOSED:
            return events, None
        assert buffered(conn) < buffer_bound(conn)
    return events, None


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


sizes = st.lists(st.integers(1, 700), max_size=12)
record_types = st.sampled_from([int(t) for t in RecordType]) | st.integers(0, 255)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """Well-framed records of any type and body, or one with a lying length."""
    kind = draw(record_types)
    body = draw(st.binary(max_size=600))
    length = draw(st.just(len(body) + 1) | st.integers(0, (1 << 32) - 1))
    return HEADER.pack(length, kind) + body


streams = st.binary(max_size=3000) | st.lists(records(), max_size=4).map(b"".join)


# --- arbitrary bytes --------------------------------------------------------------------


@FUZZ
@given(side=st.sampled_from(["client", "server"]), data=streams, pieces=sizes)
def test_arbitrary_bytes_to_a_fresh_connection(side: str, data: bytes, pieces: list[int]) -> None:
    conn = fresh(side)
    events, _ = feed_checked(conn, [*cut(data, pieces), b""])
    # Before the handshake the only event a peer can cause is its own fatal ALERT.
    assert all(isinstance(e, ev.Error) and e.fatal for e in events)


#: Prefixes of the recorded session after which each side is mid-conversation:
#: 5 = handshake done, 7 = logged in, 8/9 = upload started / ready, 13 = receipt pending.
PREFIXES = {"server": [0, 4, 5, 7, 8, 9, 10, 12], "client": [1, 2, 3, 5, 7, 13, 15, 16]}


@st.composite
def side_and_prefix(draw: st.DrawFn) -> tuple[str, int]:
    side = draw(st.sampled_from(["client", "server"]))
    return side, draw(st.sampled_from(PREFIXES[side]))


def send_keys(side: str, steps: int) -> tuple[bytes, int] | None:
    if steps < (4 if side == "client" else 5):
        return None
    key = bytes.fromhex(FULL["keys"]["c2s" if side == "client" else "s2c"])
    return key, sealed_count(FULL["steps"][:steps], side)


@FUZZ
@given(where=side_and_prefix(), data=streams, pieces=sizes, eof=st.booleans())
def test_arbitrary_bytes_after_a_valid_prefix(
    where: tuple[str, int], data: bytes, pieces: list[int], eof: bool
) -> None:
    side, steps = where
    conn = after_prefix(side, steps)
    feed_checked(conn, cut(data, pieces) + ([b""] if eof else []), send_keys(side, steps))


message_types = st.sampled_from([int(t) for t in MessageType]) | st.integers(0, 255)
plaintexts = st.builds(lambda t, body: bytes([t]) + body, message_types, st.binary(max_size=400))


@FUZZ
@given(
    where=side_and_prefix().filter(lambda w: w[1] >= (4 if w[0] == "client" else 5)),
    messages=st.lists(plaintexts | st.binary(max_size=40), min_size=1, max_size=4),
    pieces=sizes,
)
def test_arbitrary_sealed_messages(
    where: tuple[str, int], messages: list[bytes], pieces: list[int]
) -> None:
    """Correctly sealed garbage reaches the message parsers and the state table."""
    side, steps = where
    peer = other(side)
    key = bytes.fromhex(FULL["keys"]["c2s" if peer == "client" else "s2c"])
    first = sealed_count(FULL["steps"][:steps], peer)
    data = b"".join(seal_record(key, first + i, m) for i, m in enumerate(messages))
    conn = after_prefix(side, steps)
    feed_checked(conn, cut(data, pieces), send_keys(side, steps))


# --- the requests the recorded session does not make, valid and mutated ---------------

_ID = bytes(range(16))
_ENTRY = ev.ImageEntry(_ID, 5000, 1_700_000_000_000, bytes(32), "alice", "a.png")

#: Each request the recorded session does not make (those of accounts and sharing, and
#: LIST), with an answer the server may give it.
CONVERSATIONS: list[tuple[ev.Event, ev.Event]] = [
    (ev.ListImages(), ev.ImageList((_ENTRY,))),
    (ev.CertLogin(), ev.LoginOk("alice")),
    (ev.TokenLogin(b"imgshare-token-" + b"t" * 43), ev.LoginOk("alice")),
    (ev.Register("carol", "a password", b"imgshare-invite-i"), ev.Ok()),
    (ev.Passwd("old password", "new password", True), ev.Ok()),
    (ev.TokenCreate("laptop", 1 << 41), ev.Token(7, b"imgshare-token-" + b"s" * 43, 1 << 41)),
    (ev.TokenList(), ev.Tokens((ev.TokenInfo(7, "laptop", 1, 0, 2),))),
    (ev.TokenRevoke(7), ev.Ok()),
    (ev.Info(), ev.ServerInfo(1 << 28, 1_048_656, 10**8, Registration.OPEN, 5)),
    (ev.Share(_ID, "bob", 1 << 41), ev.Ok()),
    (ev.Unshare(_ID, "bob"), ev.Ok()),
    (ev.Shares(_ID), ev.ShareList(_ID, (ev.ShareInfo("bob", 1, 0),))),
    (ev.Delete(_ID), ev.Ok()),
    (ev.ListPage(ListScope.SHARED_WITH_ME, 1, _ID, 2), ev.ImagePage((_ENTRY, _ENTRY), True)),
    (ev.ListPage(), ev.Error(ErrorCode.TRY_LATER, "busy", retry_after_ms=1500)),
    (ev.Thumbnail(_ID), ev.ThumbnailData(_ID, 256, 192, "image/jpeg", b"\xff\xd8\xff")),
    (
        ev.UploadResume(UploadHeader(_ID, bytes(7), 4096, 9000, "a.png"), bytes(32)),
        ev.Error(ErrorCode.NOT_FOUND, "no such upload to resume"),
    ),
]
#: After this many steps of the recorded session both sides are idle and logged in.
LOGGED_IN = 7


def test_every_message_type_is_fuzzed() -> None:
    """The recorded session and CONVERSATIONS together carry every sealed message type
    so the tests here reach every parser with valid bytes."""
    recorded = {step["event"]["type"] for step in FULL["steps"] if "event" in step}
    kinds = {e for e in MESSAGE_TYPE_OF if e.__name__ in recorded}
    kinds |= {type(e) for pair in CONVERSATIONS for e in pair}
    reached = {MESSAGE_TYPE_OF[kind] for kind in kinds}
    assert reached == set(MessageType)


@st.composite
def mutated_plaintexts(draw: st.DrawFn, plaintext: bytes) -> bytes:
    """The plaintext itself, or it with a flipped bit, cut short, or lengthened."""
    kind = draw(st.sampled_from(["same", "flip", "truncate", "extend"]))
    if kind == "same" or not plaintext:
        return plaintext
    at = draw(st.integers(0, len(plaintext) - 1))
    if kind == "flip":
        return (
            plaintext[:at]
            + bytes((plaintext[at] ^ 1 << draw(st.integers(0, 7)),))
            + plaintext[at + 1 :]
        )
    if kind == "truncate":
        return plaintext[:at]
    return plaintext + draw(st.binary(min_size=1, max_size=8))


@FUZZ
@given(which=st.integers(0, len(CONVERSATIONS) - 1), data=st.data(), pieces=sizes)
def test_requests_reach_the_server(which: int, data: st.DataObject, pieces: list[int]) -> None:
    """A sealed request, valid or mutated, to a logged-in server: the request itself, or
    a fatal error with its report; never anything else."""
    request = CONVERSATIONS[which][0]
    plaintext = encode_message(request)
    sent = data.draw(mutated_plaintexts(plaintext))
    key = bytes.fromhex(FULL["keys"]["c2s"])
    record = seal_record(key, sealed_count(FULL["steps"][:LOGGED_IN], "client"), sent)
    conn = after_prefix("server", LOGGED_IN)
    events, error = feed_checked(conn, cut(record, pieces), send_keys("server", LOGGED_IN))
    if sent == plaintext:
        assert events == [request] and error is None
    elif error is None:  # a mutation that is still a valid request
        assert len(events) == 1 and type(events[0]) in MESSAGE_TYPE_OF


@FUZZ
@given(which=st.integers(0, len(CONVERSATIONS) - 1), data=st.data(), pieces=sizes)
def test_answers_reach_the_client(which: int, data: st.DataObject, pieces: list[int]) -> None:
    """The client asks, then gets the answer sealed, valid or mutated."""
    request, answer = CONVERSATIONS[which]
    plaintext = encode_message(answer)
    sent = data.draw(mutated_plaintexts(plaintext))
    conn = after_prefix("client", LOGGED_IN)
    conn.send(request)
    key = bytes.fromhex(FULL["keys"]["s2c"])
    record = seal_record(key, sealed_count(FULL["steps"][:LOGGED_IN], "server"), sent)
    events, error = feed_checked(conn, cut(record, pieces))
    if sent == plaintext:
        assert events == [answer] and error is None
        assert conn.state is State.IDLE


# --- mutated valid streams --------------------------------------------------------------


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[int, str, int, bytes]]:
    """1-3 (peer record number, kind, position, bytes) edits of a recorded stream."""
    kinds = st.sampled_from(
        ["flip", "truncate", "insert", "replace", "duplicate", "drop", "length"]
    )
    one = st.tuples(
        st.integers(0, 20), kinds, st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)
    )
    return draw(st.lists(one, min_size=1, max_size=3))


def mutate(record: bytes, kind: str, pos: int, extra: bytes) -> bytes:
    at = pos % len(record)
    if kind == "flip":
        return record[:at] + bytes((record[at] ^ (1 << pos % 8),)) + record[at + 1 :]
    if kind == "truncate":
        return record[:at]
    if kind == "insert":
        return record[:at] + extra + record[at:]
    if kind == "replace":
        return record[:at] + extra + record[at + len(extra) :]
    if kind == "duplicate":
        return record + record
    if kind == "drop":
        return b""
    return struct.pack(">I", pos) + record[4:]  # "length": the header lies


@FUZZ
@given(side=st.sampled_from(["client", "server"]), edits=mutations(), pieces=sizes)
def test_mutated_session_never_forges_an_event(
    side: str, edits: list[tuple[int, str, int, bytes]], pieces: list[int]
) -> None:
    """Replay the recorded session as ``side`` with the peer's records edited.

    Whatever the edit, every event the application accepts (the connection delivers it
    and, for streams, the StreamOpener opens it) is the one the honest peer sent, in
    order; the first difference is an error or a stall, never a forged event.
    """
    steps = FULL["steps"]
    peer_steps = [i for i, s in enumerate(steps) if s["from"] != side]
    edited = {peer_steps[n % len(peer_steps)] for n, *_ in edits}
    changed: dict[int, bytes] = {}
    for n, kind, pos, extra in edits:
        index = peer_steps[n % len(peer_steps)]
        original = changed.get(index, bytes.fromhex(steps[index]["record"]))
        changed[index] = mutate(original, kind, pos, extra) if original else original
    conn = fresh(side, initiate=False)
    honest = expected_events(side)
    accepted: list[ev.Event] = []
    opener: StreamOpener | None = None
    for index, step in enumerate(steps):
        record = bytes.fromhex(step["record"])
        if step["from"] == side:
            if not produce(conn, step, record):
                break
            continue
        data = changed.get(index, record)
        events, error = feed_checked(conn, cut(data, pieces) if index in edited else [data])
        try:
            for event in events:
                opener = application(event, opener)
                accepted.append(event)
        except RemoteProtocolError:
            break  # the application rejects the stream and ends the session
        if error is not None or conn.state is State.CLOSED:
            break
    # An ALERT is unauthenticated, so a forged fatal Error may end the list (the spec
    # allows ALERT even after the handshake: see test_protocol_known_issues.py).
    if accepted and isinstance(accepted[-1], ev.Error) and accepted[-1].fatal:
        accepted.pop()
    assert accepted == honest[: len(accepted)]


def produce(conn: Connection, step: Json, record: bytes) -> bool:
    """This side's own step, where the conversation still allows it."""
    if "handshake" in step:
        if step["handshake"] == "ClientHello":
            assert isinstance(conn, ClientConnection)
            conn.initiate()
        conn.data_to_send()
        return True
    if conn.state is State.CLOSED:
        return False
    try:
        conn.send(event_from_json(step["event"], record))
    except ProtocolError:
        return False  # an edit moved the conversation elsewhere: stop talking
    return True


def application(event: ev.Event, opener: StreamOpener | None) -> StreamOpener | None:
    """What an application does with stream events: open and HMAC-check them."""
    if isinstance(event, ev.UploadBegin | ev.DownloadBegin):
        return StreamOpener(event.header, event.content_key)
    if isinstance(event, ev.Chunk):
        assert opener is not None
        opener.open(event.data)
    elif isinstance(event, ev.UploadEnd | ev.DownloadEnd):
        assert opener is not None
        opener.finish(event.hmac)
    return opener


@functools.cache
def expected_events(side: str) -> list[ev.Event]:
    replayer = Replayer(FULL, side)
    replayer.play(FULL["steps"])
    return replayer.received


# --- limits, exactly ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "steps", "limit_field", "kind"),
    [
        ("server", 0, "max_handshake_record_size", RecordType.CLIENT_HELLO),
        ("client", 1, "max_handshake_record_size", RecordType.SERVER_HELLO),
        ("server", 5, "max_record_size", RecordType.SEALED),
        ("server", 9, "max_record_size", RecordType.CHUNK),
        ("client", 5, "max_record_size", RecordType.SEALED),
    ],
)
def test_oversized_record_rejected_on_its_header(
    side: str, steps: int, limit_field: str, kind: RecordType
) -> None:
    limit = getattr(LIMITS, limit_field)
    # A header declaring 2**31 bytes: rejected at once, with no body sent.
    conn = after_prefix(side, steps)
    conn.receive_data(HEADER.pack(1 << 31, kind))
    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.code == ErrorCode.TOO_LARGE
    # One byte over the limit: rejected on the header too.
    conn = after_prefix(side, steps)
    conn.receive_data(HEADER.pack(limit + 1, kind))
    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.code == ErrorCode.TOO_LARGE
    # Exactly the limit: the connection waits for the body.
    conn = after_prefix(side, steps)
    conn.receive_data(HEADER.pack(limit, kind) + bytes(100))
    assert conn.next_event() is NEED_DATA
    assert buffered(conn) == RECORD_HEADER_SIZE + 100


def test_header_arriving_byte_by_byte_is_rejected_on_its_last_byte() -> None:
    conn = after_prefix("server", 0)
    header = HEADER.pack(1 << 31, RecordType.CLIENT_HELLO)
    for byte in header[:-1]:
        conn.receive_data(bytes((byte,)))
        assert conn.next_event() is NEED_DATA
    conn.receive_data(header[-1:])
    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.code == ErrorCode.TOO_LARGE


def test_buffer_stays_bounded_under_a_slow_flood() -> None:
    """Thousands of maximal records fed in 1000-byte pieces never pile up."""
    conn = after_prefix("server", 9)  # uploading: CHUNK records are welcome
    body = bytes(4096 + 16)
    record = HEADER.pack(len(body) + 1, RecordType.CHUNK) + body
    data = record * 2
    events, error = feed_checked(conn, cut(data, [1000] * (len(data) // 1000 + 1)))
    assert error is None and len(events) == 2


def test_default_limits_allow_the_largest_chunk() -> None:
    assert Limits().max_record_size >= MAX_CHUNK_SIZE + TAG_SIZE + 1
