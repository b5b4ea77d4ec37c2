"""The pure parts of the protocol: encode/parse pairs, the codec, STREAM and key helpers."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from imgshare.errors import HandshakeError, IntegrityError, LocalProtocolError, RemoteProtocolError
from imgshare.protocol import ErrorCode, StreamOpener, StreamSealer, UploadHeader, codec, keys
from imgshare.protocol import events as ev
from imgshare.protocol.constants import (
    MAX_RETRY_AFTER_MS,
    TAG_SIZE,
    ListScope,
    MessageType,
    Registration,
)
from imgshare.protocol.messages import (
    MESSAGE_TYPE_OF,
    ClientHello,
    ServerHello,
    ServerVerify,
    encode_message,
    parse_message,
)
from imgshare.protocol.stream import chunk_nonce, image_hmac
from protocol_helpers import fixed_p256_key, reference_image_hmac, self_signed_certificate

SETTINGS = settings(max_examples=200, deadline=None)

b16 = st.binary(min_size=16, max_size=16)
b32 = st.binary(min_size=32, max_size=32)
usernames = st.text(max_size=16)  # at most 64 bytes of UTF-8
passwords = st.text(max_size=256)
u64 = st.integers(0, (1 << 64) - 1)
u8 = st.integers(0, 255)
headers = st.builds(
    UploadHeader,
    upload_id=b16,
    nonce_prefix=st.binary(min_size=7, max_size=7),
    chunk_size=st.integers(4096, 1 << 20),
    size=st.integers(1, (1 << 64) - 1),
    # file names are metadata without control characters (spec 7.1)
    name=st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=63),
)
bodies = st.builds(ev.ReceiptBody, b16, b16, u64, b32, b32, u64, usernames)
entries = st.builds(ev.ImageEntry, b16, u64, u64, b32, usernames, st.text(max_size=63))
token_names = st.text(max_size=16)  # at most 64 bytes of UTF-8
tokens = st.builds(ev.TokenInfo, u64, token_names, u64, u64, u64)
shares = st.builds(ev.ShareInfo, usernames, u64, u64)
scopes = st.sampled_from(ListScope)

#: A strategy for every sealed message type (a test checks that none is missing).
EVENTS: dict[type[ev.Event], st.SearchStrategy[ev.Event]] = {
    ev.Login: st.builds(ev.Login, usernames, passwords),
    ev.Register: st.builds(ev.Register, usernames, passwords, st.binary(max_size=100)),
    ev.TokenLogin: st.builds(ev.TokenLogin, st.binary(max_size=256)),
    ev.CertLogin: st.just(ev.CertLogin()),
    ev.Passwd: st.builds(ev.Passwd, passwords, passwords, st.booleans()),
    ev.TokenCreate: st.builds(ev.TokenCreate, token_names, u64),
    ev.TokenList: st.just(ev.TokenList()),
    ev.TokenRevoke: st.builds(ev.TokenRevoke, u64),
    ev.Info: st.just(ev.Info()),
    ev.ServerInfo: st.builds(
        ev.ServerInfo, u64, st.integers(0, (1 << 32) - 1), u64, st.sampled_from(Registration), u8
    ),
    ev.UploadBegin: st.builds(ev.UploadBegin, headers, b32),
    ev.UploadEnd: st.builds(ev.UploadEnd, b32),
    ev.UploadResume: st.builds(ev.UploadResume, headers, b32),
    ev.Thumbnail: st.builds(ev.Thumbnail, b16),
    ev.ThumbnailData: st.builds(
        ev.ThumbnailData,
        b16,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.sampled_from(["image/jpeg", "image/png", ""]),
        st.binary(max_size=300),
    ),
    ev.Download: st.builds(ev.Download, b16),
    ev.ListImages: st.just(ev.ListImages()),
    ev.Share: st.builds(ev.Share, b16, usernames, u64),
    ev.Delete: st.builds(ev.Delete, b16),
    ev.Unshare: st.builds(ev.Unshare, b16, usernames),
    ev.Shares: st.builds(ev.Shares, b16),
    ev.ListPage: st.builds(ev.ListPage, scopes, u64, b16, st.integers(1, 1000)),
    ev.Ok: st.just(ev.Ok()),
    ev.LoginOk: st.builds(ev.LoginOk, usernames),
    ev.Token: st.builds(ev.Token, u64, st.binary(max_size=256), u64),
    ev.Tokens: st.builds(ev.Tokens, st.lists(tokens, max_size=4).map(tuple)),
    ev.UploadReady: st.builds(ev.UploadReady, st.integers(0, (1 << 32) - 1)),
    ev.Receipt: st.builds(ev.Receipt, bodies, st.integers(0, 0xFFFF), st.binary(max_size=600)),
    ev.DownloadBegin: st.builds(ev.DownloadBegin, b16, headers, b32),
    ev.DownloadEnd: st.builds(ev.DownloadEnd, b32),
    ev.ImageList: st.builds(ev.ImageList, st.lists(entries, max_size=4).map(tuple)),
    ev.ImagePage: st.builds(ev.ImagePage, st.lists(entries, max_size=4).map(tuple), st.booleans()),
    ev.ShareList: st.builds(ev.ShareList, b16, st.lists(shares, max_size=4).map(tuple)),
    ev.Error: st.one_of(
        st.builds(ev.Error, st.sampled_from(ErrorCode), st.text(max_size=200), st.booleans()),
        st.builds(
            ev.Error,
            st.just(ErrorCode.TRY_LATER),
            st.text(max_size=200),
            st.booleans(),
            st.integers(0, MAX_RETRY_AFTER_MS),
        ),
    ),
}
sealed_events = st.one_of(*EVENTS.values())


def test_every_sealed_message_type_has_a_strategy() -> None:
    assert set(EVENTS) == set(MESSAGE_TYPE_OF)
    assert set(MESSAGE_TYPE_OF.values()) == set(MessageType)  # none is reserved any more


@SETTINGS
@given(event=sealed_events, data=st.data())
def test_every_sealed_message_round_trips_and_is_exact(
    event: ev.Event, data: st.DataObject
) -> None:
    plaintext = encode_message(event)
    assert parse_message(plaintext) == event
    cut = data.draw(st.integers(0, len(plaintext) - 1))
    with pytest.raises(RemoteProtocolError):  # every field's length is checked
        parse_message(plaintext[:cut])
    with pytest.raises(RemoteProtocolError):
        parse_message(plaintext + data.draw(st.binary(min_size=1, max_size=3)))


@SETTINGS
@given(
    versions=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16).map(tuple),
    group=st.integers(0, 0xFFFF),
    share=st.binary(max_size=100),
    random=b32,
    certificate=st.binary(max_size=600),
    signature=st.binary(max_size=300),
)
def test_handshake_messages_round_trip(
    versions: tuple[int, ...],
    group: int,
    share: bytes,
    random: bytes,
    certificate: bytes,
    signature: bytes,
) -> None:
    hello = ClientHello(versions, group, share, random)
    assert ClientHello.parse(hello.encode()) == hello
    assert hello.encode().startswith(b"IMGSHARE")
    server = ServerHello(versions[0], group, share, random, certificate)
    assert ServerHello.parse(server.encode()) == server
    verify = ServerVerify(group, signature)
    assert ServerVerify.parse(verify.encode()) == verify
    for message in (hello, server, verify):
        with pytest.raises(RemoteProtocolError):
            type(message).parse(message.encode()[:-1])


def test_client_hello_version_count_is_bounded() -> None:
    body = ClientHello((1,), 29, bytes(32), bytes(32)).encode()
    for count in (0, 17):
        with pytest.raises(RemoteProtocolError):
            ClientHello.parse(body[:8] + bytes((count,)) + body[9:])


def test_error_text_is_clipped_on_a_character_boundary() -> None:
    parsed = parse_message(encode_message(ev.Error(ErrorCode.INTERNAL, "é" * 600)))
    assert parsed == ev.Error(ErrorCode.INTERNAL, "é" * 512)


def test_unknown_error_code_from_a_newer_peer_is_kept_as_internal() -> None:
    plaintext = bytes((0xFF,)) + codec.u16(999) + b"\x00" + codec.var16(b"new")
    assert parse_message(plaintext) == ev.Error(ErrorCode.INTERNAL, "new")


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (ev.Login("a" * 64, "p"), None),
        (ev.Login("a" * 65, "p"), ErrorCode.TOO_LARGE),
        (ev.Login("a", "p" * 1024), None),
        (ev.Login("a", "p" * 1025), ErrorCode.TOO_LARGE),
        (ev.TokenLogin(b"t" * 256), None),
        (ev.TokenLogin(b"t" * 257), ErrorCode.TOO_LARGE),
        (ev.LoginOk("é" * 33), ErrorCode.TOO_LARGE),  # 66 bytes, 33 characters
    ],
)
def test_field_limits(event: ev.Event, code: ErrorCode | None) -> None:
    plaintext = encode_message(event)
    if code is None:
        assert parse_message(plaintext) == event
    else:
        with pytest.raises(RemoteProtocolError) as caught:
            parse_message(plaintext)
        assert caught.value.code == code


def _counted_entries(count: int) -> bytes:
    """``u32 count || count x image entry``, as IMAGE_LIST and IMAGE_PAGE carry them."""
    entry = ev.ImageEntry(bytes(16), 1, 2, bytes(32), "bob", "a.png")
    return encode_message(ev.ImageList((entry,) * count))[1:]


def _list_page(scope: int, limit: int) -> bytes:
    return bytes((0x26, scope)) + codec.u64(0) + bytes(16) + codec.u16(limit)


@pytest.mark.parametrize(
    ("plaintext", "code"),
    [
        # LIST_PAGE: limit 1..1000, scope OWN or SHARED_WITH_ME
        (_list_page(0, 1), None),
        (_list_page(1, 1000), None),
        (_list_page(0, 0), ErrorCode.MALFORMED),
        (_list_page(0, 1001), ErrorCode.TOO_LARGE),
        (_list_page(0, 0xFFFF), ErrorCode.TOO_LARGE),
        (_list_page(2, 10), ErrorCode.MALFORMED),
        (_list_page(0xFF, 10), ErrorCode.MALFORMED),
        # flags are 0 or 1
        (bytes((0x05,)) + codec.var16(b"old") + codec.var16(b"new") + b"\x01", None),
        (bytes((0x05,)) + codec.var16(b"old") + codec.var16(b"new") + b"\x02", ErrorCode.MALFORMED),
        (bytes((0x05,)) + codec.var16(b"old") + codec.var16(b"new"), ErrorCode.MALFORMED),
        (bytes((0xA4, 1)) + codec.u32(0), None),
        (bytes((0xA4, 2)) + codec.u32(0), ErrorCode.MALFORMED),
        # TOKEN: the secret is at most MAX_TOKEN_BYTES
        (bytes((0x82,)) + codec.u64(1) + codec.var16(b"t" * 256) + codec.u64(0), None),
        (
            bytes((0x82,)) + codec.u64(1) + codec.var16(b"t" * 257) + codec.u64(0),
            ErrorCode.TOO_LARGE,
        ),
        # TOKEN_CREATE and TOKENS: token names are at most 64 bytes
        (bytes((0x06,)) + codec.var8(b"n" * 64) + codec.u64(0), None),
        (bytes((0x06,)) + codec.var8(b"n" * 65) + codec.u64(0), ErrorCode.TOO_LARGE),
        (
            bytes((0x83,)) + codec.u32(1) + codec.u64(1) + codec.var8(b"n" * 65) + bytes(24),
            ErrorCode.TOO_LARGE,
        ),
        (bytes((0x06,)) + codec.var8(b"\xff") + codec.u64(0), ErrorCode.MALFORMED),
        # lists: at most 1000 entries, checked on the count before any entry
        (bytes((0x83,)) + codec.u32(1000), ErrorCode.MALFORMED),  # short, not too long
        (bytes((0x83,)) + codec.u32(1001), ErrorCode.TOO_LARGE),
        (bytes((0xA3,)) + bytes(16) + codec.u32(1001), ErrorCode.TOO_LARGE),
        (bytes((0xA4, 0)) + codec.u32(1001), ErrorCode.TOO_LARGE),
        (bytes((0xA4, 0)) + codec.u32(0xFFFFFFFF), ErrorCode.TOO_LARGE),
        (bytes((0xA4, 0)) + _counted_entries(2), None),
        # user names: at most 64 bytes; SHARE's expiry is part of the message
        (bytes((0x22,)) + bytes(16) + codec.var8(b"b" * 65) + codec.u64(0), ErrorCode.TOO_LARGE),
        (
            bytes((0x22,)) + bytes(16) + codec.var8(b"bob"),
            ErrorCode.MALFORMED,
        ),  # the form before expires_ms
        (bytes((0x24,)) + bytes(16) + codec.var8(b"b" * 65), ErrorCode.TOO_LARGE),
        (
            bytes((0xA3,)) + bytes(16) + codec.u32(1) + codec.var8(b"b" * 65) + bytes(16),
            ErrorCode.TOO_LARGE,
        ),
        # the empty messages are empty, the fixed ones fixed
        (bytes((0x04,)), None),
        (bytes((0x04, 0)), ErrorCode.MALFORMED),
        (bytes((0x07, 0)), ErrorCode.MALFORMED),
        (bytes((0x08,)) + bytes(7), ErrorCode.MALFORMED),
        (bytes((0x25,)) + bytes(15), ErrorCode.MALFORMED),
        (bytes((0x25,)) + bytes(17), ErrorCode.MALFORMED),
        # UPLOAD_RESUME (reserved before resumable uploads) parses as UPLOAD_BEGIN does
        (bytes((0x12,)) + bytes(48), ErrorCode.MALFORMED),
        (bytes((0x12,)) + bytes(31), ErrorCode.MALFORMED),
        # THUMBNAIL is an id; THUMBNAIL_DATA's bytes are bounded
        (bytes((0x27,)), ErrorCode.MALFORMED),
        (bytes((0x27,)) + bytes(17), ErrorCode.MALFORMED),
        (bytes((0xA5,)) + bytes(20) + codec.var8(b"x" * 65), ErrorCode.TOO_LARGE),
        (
            bytes((0xA5,)) + bytes(20) + codec.var8(b"png") + codec.u32(256 * 1024 + 1),
            ErrorCode.TOO_LARGE,
        ),
        (
            bytes((0xA5,)) + bytes(20) + codec.var8(b"png") + codec.u32(2) + b"x",
            ErrorCode.MALFORMED,
        ),
        (bytes((0xA5,)) + bytes(19), ErrorCode.MALFORMED),
        # unknown
        (bytes((0x28,)), ErrorCode.UNEXPECTED_MESSAGE),
        (bytes((0x85,)), ErrorCode.UNEXPECTED_MESSAGE),
        (bytes((0x09, 0)), ErrorCode.MALFORMED),
        (bytes((0x84,)) + bytes(20) + bytes((3, 5)), ErrorCode.MALFORMED),  # registration 3
        (bytes((0x84,)) + bytes(21), ErrorCode.MALFORMED),  # one byte short
        (bytes((0x02, 1, 0x61, 0, 1, 0x70, 1, 1)) + bytes(257), ErrorCode.TOO_LARGE),
    ],
)
def test_new_messages_reject_what_the_spec_rejects(
    plaintext: bytes, code: ErrorCode | None
) -> None:
    if code is None:
        event = parse_message(plaintext)
        assert encode_message(event) == plaintext
        return
    with pytest.raises(RemoteProtocolError) as caught:
        parse_message(plaintext)
    assert caught.value.code == code


@pytest.mark.parametrize(
    "event",
    [
        ev.ListPage(limit=0),
        ev.ListPage(limit=1001),
        ev.ListPage(after_id=bytes(15)),
        ev.Token(1, b"t" * 257),
        ev.TokenCreate("n" * 65),
        ev.Tokens((ev.TokenInfo(1, "n", 0, 0, 0),) * 1001),
        ev.ShareList(bytes(16), (ev.ShareInfo("bob", 0, 0),) * 1001),
        ev.ImagePage((ev.ImageEntry(bytes(16), 1, 2, bytes(32), "b", "n"),) * 1001),
        ev.Share(bytes(16), "b" * 65),
    ],
)
def test_what_a_peer_must_reject_does_not_round_trip(event: ev.Event) -> None:
    """The encoder writes it (a sender checks by parsing its own message back, see
    test_protocol_roundtrip.py), and the parser refuses it."""
    with pytest.raises(RemoteProtocolError):
        parse_message(encode_message(event))


def test_image_list_length_is_bounded() -> None:
    plaintext = bytes((0xA2,)) + codec.u32(1001)
    with pytest.raises(RemoteProtocolError) as caught:
        parse_message(plaintext)
    assert caught.value.code == ErrorCode.TOO_LARGE


def test_events_do_not_show_secrets_in_repr() -> None:
    header = UploadHeader(bytes(16), bytes(7), 4096, 10, "a.png")
    secret = b"\xaa" * 32
    shown = repr(
        [
            ev.Login("alice", "hunter2"),
            ev.UploadBegin(header, secret),
            ev.DownloadBegin(bytes(16), header, secret),
            ev.TokenLogin(b"token-secret"),
            ev.Token(1, b"token-secret"),
            ev.Passwd("hunter2", "hunter3"),
            ev.Register("alice", "hunter2", b"invite-secret"),
        ]
    )
    assert "hunter2" not in shown and "hunter3" not in shown and "secret" not in shown
    assert repr(secret) not in shown and "alice" in shown


# --- codec ------------------------------------------------------------------------------


def test_reader_rejects_overruns_and_leftovers() -> None:
    reader = codec.Reader(b"\x00\x05abc", "test")
    with pytest.raises(RemoteProtocolError) as caught:
        reader.var16()
    assert caught.value.code == ErrorCode.MALFORMED
    reader = codec.Reader(b"\x01\x02", "test")
    assert reader.u8() == 1
    with pytest.raises(RemoteProtocolError):
        reader.end()
    with pytest.raises(RemoteProtocolError):
        codec.Reader(b"", "test").text(b"\xff", 10)
    with pytest.raises(RemoteProtocolError) as caught:
        codec.Reader(b"", "test").text(b"abc", 2)
    assert caught.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ValueError):
        codec.var8(bytes(256))
    with pytest.raises(ValueError):
        codec.var16(bytes(65536))


# --- STREAM -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "valid"),
    [
        ({"chunk_size": 4095}, False),
        ({"chunk_size": (1 << 20) + 1}, False),
        ({"chunk_size": 1 << 20}, True),
        ({"size": 0}, False),
        ({"name": "n" * 255}, True),
        ({"name": "n" * 256}, False),
        ({"name": "a\nb"}, False),
        ({"name": "tab\there"}, False),
        ({"name": "\x9b[31m"}, False),
        ({"upload_id": bytes(15)}, False),
        ({"nonce_prefix": bytes(8)}, False),
    ],
)
def test_upload_header_validation(changes: dict[str, object], valid: bool) -> None:
    fields: dict[str, object] = {
        "upload_id": bytes(16),
        "nonce_prefix": bytes(7),
        "chunk_size": 4096,
        "size": 1,
        "name": "a",
    }
    fields.update(changes)
    if valid:
        header = UploadHeader(**fields)  # type: ignore[arg-type]
        assert UploadHeader.parse(header.encode()) == header
    else:
        with pytest.raises(ValueError):
            UploadHeader(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "lengths"),
    [(1, [1]), (4096, [4096]), (4097, [4096, 1]), (3 * 4096, [4096] * 3)],
)
def test_chunk_lengths(size: int, lengths: list[int]) -> None:
    header = UploadHeader(bytes(16), bytes(7), 4096, size, "")
    assert header.chunk_count == len(lengths)
    assert [header.plaintext_length(i) for i in range(header.chunk_count)] == lengths


def test_chunk_nonce_layout() -> None:
    assert chunk_nonce(b"P" * 7, 0x01020304, True) == b"P" * 7 + b"\x01\x02\x03\x04\x01"
    assert chunk_nonce(b"P" * 7, 0, False) == b"P" * 7 + bytes(5)


def test_stream_sealer_and_opener() -> None:
    header = UploadHeader(bytes(16), bytes(7), 4096, 5000, "a")
    key = bytes(range(32))
    data = bytes(range(256)) * 19 + bytes(136)
    sealer, opener = StreamSealer(header, key), StreamOpener(header, key)
    with pytest.raises(LocalProtocolError):
        sealer.seal(data[:4095])  # a chunk of the wrong length
    chunks = [sealer.seal(data[:4096]), sealer.seal(data[4096:])]
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"x")  # an extra chunk
    with pytest.raises(IntegrityError):
        opener.finish(sealer.finish())  # not every chunk opened yet
    assert opener.open(chunks[0]) + opener.open(chunks[1]) == data
    with pytest.raises(IntegrityError):
        opener.open(chunks[1])  # past the end
    with pytest.raises(IntegrityError):
        opener.finish(sealer.finish()[:31])  # a short HMAC
    assert (
        opener.finish(sealer.finish()) == image_hmac(key, data) == reference_image_hmac(key, data)
    )
    with pytest.raises(ValueError):
        StreamSealer(header, bytes(31))


# --- sealing and opening into the caller's buffer ----------------------------------------

STREAM_HEADER = UploadHeader(bytes(16), bytes(7), 4096, 5000, "a")
STREAM_KEY = bytes(range(32))
STREAM_DATA = bytes(range(256)) * 19 + bytes(136)
STREAM_PIECES = (STREAM_DATA[:4096], STREAM_DATA[4096:])


def sealed_chunks() -> list[bytes]:
    sealer = StreamSealer(STREAM_HEADER, STREAM_KEY)
    return [bytes(sealer.seal(piece)) for piece in STREAM_PIECES]


def test_seal_into_a_buffer_gives_the_same_bytes_as_seal() -> None:
    allocating = StreamSealer(STREAM_HEADER, STREAM_KEY)
    in_place = StreamSealer(STREAM_HEADER, STREAM_KEY)
    record = bytearray(5 + 4096 + TAG_SIZE)  # room for a record header in front, as the client
    for piece in STREAM_PIECES:
        expected = allocating.seal(piece)
        sealed = in_place.seal(memoryview(piece), into=memoryview(record)[5:])
        assert isinstance(sealed, memoryview)
        assert sealed.obj is record
        assert len(sealed) == len(piece) + TAG_SIZE
        assert sealed == expected
        assert record[5 : 5 + len(expected)] == expected
    assert in_place.finish() == allocating.finish() == image_hmac(STREAM_KEY, STREAM_DATA)


def test_open_into_a_buffer_gives_the_same_bytes_as_open() -> None:
    chunks = sealed_chunks()
    allocating = StreamOpener(STREAM_HEADER, STREAM_KEY)
    in_place = StreamOpener(STREAM_HEADER, STREAM_KEY)
    plaintext = bytearray(4096)
    for chunk, piece in zip(chunks, STREAM_PIECES, strict=True):
        assert allocating.open(chunk) == piece
        opened = in_place.open(memoryview(bytearray(chunk)), into=memoryview(plaintext))
        assert isinstance(opened, memoryview)
        assert opened.obj is plaintext
        assert opened == piece  # the length too: the last chunk is short
    mac = image_hmac(STREAM_KEY, STREAM_DATA)
    assert in_place.finish(mac) == allocating.finish(mac) == mac


def test_into_a_buffer_too_small_is_a_value_error() -> None:
    sealer = StreamSealer(STREAM_HEADER, STREAM_KEY)
    with pytest.raises(ValueError) as caught:
        sealer.seal(STREAM_PIECES[0], into=memoryview(bytearray(4096 + TAG_SIZE - 1)))
    assert caught.type is ValueError
    # The sealer did not move on either: chunk 0 is sealed again, as chunk 0.
    assert sealer.seal(STREAM_PIECES[0]) == sealed_chunks()[0]
    chunk = sealed_chunks()[0]
    opener = StreamOpener(STREAM_HEADER, STREAM_KEY)
    with pytest.raises(ValueError) as caught:
        opener.open(chunk, into=memoryview(bytearray(4095)))
    assert caught.type is ValueError
    # The opener did not move on: the same chunk still opens.
    assert opener.open(chunk, into=memoryview(bytearray(4096))) == STREAM_PIECES[0]


@pytest.mark.parametrize(
    "position", [0, 4095, 4096 + TAG_SIZE - 1], ids=["first-byte", "last-text-byte", "tag"]
)
def test_tampered_chunk_opened_into_a_buffer_is_an_integrity_error(position: int) -> None:
    tampered = bytearray(sealed_chunks()[0])
    tampered[position] ^= 0x01
    with pytest.raises(IntegrityError) as caught:
        StreamOpener(STREAM_HEADER, STREAM_KEY).open(tampered, into=memoryview(bytearray(4096)))
    assert caught.type is IntegrityError
    assert caught.value.code == ErrorCode.INTEGRITY_FAILED


def test_chunk_of_the_wrong_length_opened_into_a_buffer_is_an_integrity_error() -> None:
    chunk = sealed_chunks()[0]
    with pytest.raises(IntegrityError):
        StreamOpener(STREAM_HEADER, STREAM_KEY).open(chunk[:-1], into=memoryview(bytearray(4096)))


# --- keys -------------------------------------------------------------------------------


def test_scheme_and_signature_checks() -> None:
    key = fixed_p256_key("messages test")
    content = b"content"
    scheme, signature = keys.sign(key, content)
    assert keys.sign(key, content) == (scheme, signature), "ECDSA is deterministic"
    assert keys.verify(key.public_key(), scheme, signature, content)
    assert not keys.verify(key.public_key(), scheme + 1, signature, content)
    assert not keys.verify(key.public_key(), scheme, signature, content + b"!")
    assert not keys.verify(key.public_key(), scheme, b"garbage", content)
    with pytest.raises(ValueError):
        keys.scheme_for(ec.generate_private_key(ec.SECP384R1()))


def test_pinned_certificate() -> None:
    key = fixed_p256_key("messages test")
    certificate = self_signed_certificate(key)
    pinned = keys.PinnedCertificate(certificate)
    assert pinned(certificate).public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    with pytest.raises(HandshakeError):
        pinned(certificate[:-1] + b"\x00")
    with pytest.raises(HandshakeError):
        keys.public_key_of(b"not a certificate")


def test_session_cipher_counts_records() -> None:
    sender, receiver = keys.SessionCipher(bytes(32)), keys.SessionCipher(bytes(32))
    first, second = sender.seal(b"one", b"h"), sender.seal(b"one", b"h")
    assert first != second, "a fresh nonce per record"
    with pytest.raises(IntegrityError):
        receiver.open(second, b"h")  # out of order
    receiver = keys.SessionCipher(bytes(32))
    assert receiver.open(first, b"h") == b"one"
    with pytest.raises(IntegrityError):
        receiver.open(second, b"other header")
