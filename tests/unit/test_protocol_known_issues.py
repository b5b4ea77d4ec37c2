"""Regression tests for protocol bugs found while writing the protocol tests.

Each test states the behaviour the spec and docs/design.md call for; each failed before
its fix.
"""

from __future__ import annotations

import pytest

from imgshare.errors import (
    CertificateError,
    HandshakeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from imgshare.protocol import (
    ClientConnection,
    ErrorCode,
    PinnedCertificate,
    RecordType,
    ServerConnection,
    State,
    encode_record,
    new_upload,
)
from imgshare.protocol import events as ev
from imgshare.protocol.keys import ServerVerifier, VerifyingKey
from imgshare.protocol.messages import encode_alert, encode_message
from protocol_helpers import (
    ConnectionPair,
    feed,
    fixed_p256_key,
    self_signed_certificate,
    whole,
)

KEY = fixed_p256_key("known issues")
CERTIFICATE = self_signed_certificate(KEY)


def logged_in_pair() -> ConnectionPair:
    pair = ConnectionPair(
        ClientConnection(PinnedCertificate(CERTIFICATE)), ServerConnection(CERTIFICATE, KEY), whole
    )
    pair.handshake()
    return pair


def test_malformed_alert_is_reported() -> None:
    """After any RemoteProtocolError, data_to_send() holds the fatal report (module doc)."""
    server = ServerConnection(CERTIFICATE, KEY)
    server.receive_data(b"\x00\x00\x00\x01\x0f")  # an ALERT record with an empty body
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    report = server.data_to_send()
    assert report[4:5] == bytes((RecordType.ALERT,))


def test_failed_send_leaves_the_state_unchanged() -> None:
    pair = logged_in_pair()
    with pytest.raises(ProtocolError):  # LocalProtocolError, not a bare ValueError
        pair.client.send(ev.Login("x" * 300, "password"))  # 300 bytes: no var8 encoding
    assert pair.client.state is State.IDLE
    pair.send(pair.client, ev.ListImages())


def test_upload_ready_with_next_chunk_other_than_zero_is_rejected() -> None:
    """After UPLOAD_BEGIN (not a resume, spec 7.10) only next_chunk == 0 makes sense.

    The server refuses to send another value, and a client rejects one that arrives.
    """
    pair = logged_in_pair()
    header, key = new_upload("a.png", 3 * 4096, bytes, 4096)
    pair.send(pair.client, ev.UploadBegin(header, key))
    with pytest.raises(LocalProtocolError):
        pair.server.send(ev.UploadReady(next_chunk=2))
    assert pair.server.state is State.AWAIT_UPLOAD_READY
    forged = pair.server._seal(encode_message(ev.UploadReady(next_chunk=2)))
    pair.client.receive_data(forged)
    with pytest.raises(RemoteProtocolError) as caught:
        pair.client.next_event()
    assert caught.value.code == ErrorCode.MALFORMED


def client_with_server_flight(verifier: ServerVerifier) -> ClientConnection:
    """A client that has received the server's first flight, ready to check it."""
    client = ClientConnection(verifier)
    server = ServerConnection(CERTIFICATE, KEY)
    server.receive_data(client.initiate())
    server.next_event()
    client.receive_data(server.data_to_send())
    return client


def test_verifier_exception_becomes_a_handshake_error() -> None:
    """Nothing but ProtocolError may leave next_event (connection.py docstring).

    A verifier built on ``cryptography.x509.verification`` raises its
    ``VerificationError``; today that escapes, and the connection neither closes nor
    queues an ALERT.
    """

    def verifier(certificate: bytes) -> VerifyingKey:
        raise ValueError("certificate chain does not verify")

    client = client_with_server_flight(verifier)
    with pytest.raises(HandshakeError):
        client.next_event()
    assert client.state is State.CLOSED


def test_verifier_imgshare_error_is_translated() -> None:
    """What already works: an ImgshareError from the verifier becomes HandshakeError."""

    def verifier(certificate: bytes) -> VerifyingKey:
        raise CertificateError("expired")

    client = client_with_server_flight(verifier)
    with pytest.raises(HandshakeError):
        client.next_event()
    assert client.state is State.CLOSED
    assert client.data_to_send()[4] == RecordType.ALERT
    with pytest.raises(LocalProtocolError):
        client.next_event()


def test_forged_alert_after_the_handshake_does_not_speak_for_the_server() -> None:
    """A TLS-terminating proxy must not put words in the server's mouth.

    After the client has received a sealed message the server has its keys, and every
    error it sends is a sealed ERROR (spec 8). A plaintext ALERT then can only be
    forged: today the client hands its code and text to the application exactly like
    a sealed fatal ERROR, and the CLI prints it. Either fix passes: reject the record
    (UNEXPECTED_MESSAGE), or deliver it without the forged code and text.
    """
    pair = logged_in_pair()
    pair.send(pair.client, ev.Login("alice", "pw"))
    pair.send(pair.server, ev.LoginOk("alice"))
    forged = encode_record(
        RecordType.ALERT,
        encode_alert(ErrorCode.AUTH_FAILED, "password expired: re-enter it at evil.example"),
    )
    try:
        events = feed(pair.client, forged)
    except RemoteProtocolError:
        return
    for event in events:
        assert not (isinstance(event, ev.Error) and "evil.example" in event.message)
