"""The pure parts of the protocol: encode/parse pairs, the codec, STREAM and key helpers."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from imgshare.errors import HandshakeError, IntegrityError, LocalProtocolError, RemoteProtocolError
from imgshare.protocol import ErrorCode, StreamOpener, StreamSealer, UploadHeader, codec, keys
from imgshare.protocol import events as ev
from imgshare.protocol.constants import TAG_SIZE
from imgshare.protocol.messages import (
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
sealed_events = st.one_of(
    st.builds(ev.Login, usernames, passwords),
    st.builds(ev.Register, usernames, passwords, st.binary(max_size=100)),
    st.builds(ev.TokenLogin, st.binary(max_size=256)),
    st.builds(ev.UploadBegin, headers, b32),
    st.builds(ev.UploadEnd, b32),
    st.builds(ev.Download, b16),
    st.just(ev.ListImages()),
    st.builds(ev.Share, b16, usernames),
    st.builds(ev.Delete, b16),
    st.just(ev.Ok()),
    st.builds(ev.LoginOk, usernames),
    st.builds(ev.UploadReady, st.integers(0, (1 << 32) - 1)),
    st.builds(ev.Receipt, bodies, st.integers(0, 0xFFFF), st.binary(max_size=600)),
    st.builds(ev.DownloadBegin, b16, headers, b32),
    st.builds(ev.DownloadEnd, b32),
    st.builds(ev.ImageList, st.lists(entries, max_size=4).map(tuple)),
    st.builds(ev.Error, st.sampled_from(ErrorCode), st.text(max_size=200), st.booleans()),
)


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
        ]
    )
    assert "hunter2" not in shown and "token-secret" not in shown
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
