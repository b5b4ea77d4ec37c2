"""Sans-IO connections: bytes in, events out; events in, bytes out.

``ClientConnection`` and ``ServerConnection`` hold the handshake, the session keys,
the state machine and the limits, and do no I/O (docs/design.md, C1): the application feeds
``receive_data(bytes)`` (``b""`` for end of stream), pulls ``next_event()`` until it
returns ``NEED_DATA``, sends what ``send(event)`` returns, and after every call also
sends ``data_to_send()`` (handshake replies, error reports).

Nothing but ``ProtocolError`` subclasses escapes ``receive_data``/``next_event``:
after a ``RemoteProtocolError`` the connection is closed and ``data_to_send()`` holds
the fatal error report for the peer.

Chunks are handed over sealed, exactly as they travel: the application opens them
with ``stream.StreamOpener`` (which it may run on another thread), and stores them.
The connection checks their order, count and lengths. For bulk data both directions
have a path without copies: ``receive_record_body`` lends the application's buffer to
the ``Chunk`` event, and ``send_chunk_header`` lets it send a chunk's bytes from where
they were sealed.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Final

from imgshare.errors import (
    HandshakeError,
    ImgshareError,
    IntegrityError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from imgshare.protocol import events as ev
from imgshare.protocol import keys, messages
from imgshare.protocol.constants import (
    FINISHED_SIZE,
    MAX_CHUNK_SIZE,
    RANDOM_SIZE,
    RECORD_HEADER_SIZE,
    SUPPORTED_VERSIONS,
    TAG_SIZE,
    ErrorCode,
    Group,
    RecordType,
)
from imgshare.protocol.state import Role, State, next_state
from imgshare.protocol.stream import UploadHeader

_HEADER = struct.Struct(">IB")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` when more bytes are needed.
NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that turn oversized input into protocol errors instead of memory growth."""

    max_record_size: int = MAX_CHUNK_SIZE + TAG_SIZE + 64
    max_handshake_record_size: int = 16 * 1024
    max_image_size: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.max_handshake_record_size <= self.max_record_size:
            raise ValueError("need 0 < max_handshake_record_size <= max_record_size")
        if self.max_image_size < 1:
            raise ValueError("max_image_size must be positive")


def encode_record(record_type: RecordType, body: bytes | bytearray | memoryview) -> bytes:
    return record_header(record_type, len(body)) + body


def record_header(record_type: RecordType, body_length: int) -> bytes:
    return _HEADER.pack(body_length + 1, record_type)


class _Connection:
    """What both roles share: buffering, records, sealing, state and stream checks."""

    role: Role

    def __init__(self, limits: Limits, rng: keys.Rng) -> None:
        self.limits = limits
        self._rng = rng
        self._inbox = bytearray()
        self._lent_body: memoryview | None = None  # see receive_record_body
        self._outbox = bytearray()
        self._eof = False
        self.state = State.START
        self._send_cipher: keys.SessionCipher | None = None
        self._recv_cipher: keys.SessionCipher | None = None
        self._stream: UploadHeader | None = None  # the image currently streaming
        self._resuming = False  # the stream is an upload resumed by UPLOAD_RESUME
        self._chunk_index = 0
        self._transcript: list[bytes] = []
        self._version = 0
        self._group = Group.X25519

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes would complete the record being received (at least 1).

        Lets the I/O layer read a whole chunk record in one go instead of asking for
        events after every TLS record.
        """
        have = len(self._inbox)
        if have < RECORD_HEADER_SIZE:
            return RECORD_HEADER_SIZE - have
        length = int.from_bytes(self._inbox[:4], "big")
        return max(1, RECORD_HEADER_SIZE - 1 + length - have)

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet turned into events (bounded by the record limit)."""
        return len(self._inbox)

    @property
    def peer_role(self) -> Role:
        return Role.SERVER if self.role is Role.CLIENT else Role.CLIENT

    # -- bytes in ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed its side."""
        if self._eof and data:
            raise LocalProtocolError("data received after end of stream")
        if self._lent_body is not None and data:
            raise LocalProtocolError("call next_event() for the lent record body first")
        if data:
            self._inbox += data
        else:
            self._eof = True

    def receive_record_body(self, body: bytearray | memoryview) -> None:
        """Hand over the whole rest of the record whose header is buffered, lent.

        For bulk transfers: the application reads a record's header (``bytes_wanted``
        asks for exactly that much once the buffer is empty), then the body straight
        into a buffer of its own. A CHUNK event's ``data`` is then a view of that
        buffer, not a copy: the application must leave the buffer alone until it has
        handled the event. Raises ``LocalProtocolError`` unless exactly a record
        header is buffered and ``body`` is exactly the rest of that record.
        """
        if self._eof or len(self._inbox) != RECORD_HEADER_SIZE or self._lent_body is not None:
            raise LocalProtocolError("receive_record_body needs exactly one record header buffered")
        if len(body) < 1 or len(body) != self.bytes_wanted:
            raise LocalProtocolError("receive_record_body needs exactly the rest of the record")
        self._lent_body = memoryview(body)

    def next_event(self) -> ev.Event | _NeedData:
        """The next event, or ``NEED_DATA``. Raises only ``ProtocolError`` subclasses."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        try:
            while True:
                record = self._next_record()
                if record is None:
                    return self._at_end_of_buffer()
                event = self._handle_record(*record)
                if event is not None:
                    return event
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        except LocalProtocolError:
            raise
        except ImgshareError as exc:  # e.g. an injected verifier's own error
            failure = HandshakeError(str(exc), ErrorCode.HANDSHAKE_FAILED)
            self._fail(failure)
            raise failure from exc

    def _at_end_of_buffer(self) -> ev.Event | _NeedData:
        if not self._eof:
            return NEED_DATA
        if self._inbox or self.state is not State.IDLE:
            raise RemoteProtocolError(
                f"connection closed in state '{self.state.value}'", ErrorCode.MALFORMED
            )
        self.state = State.CLOSED
        return ev.ConnectionClosed()

    def _next_record(self) -> tuple[RecordType, bytes, bytes | memoryview] | None:
        if len(self._inbox) < RECORD_HEADER_SIZE:
            return None
        length, raw_type = _HEADER.unpack_from(self._inbox)
        limit = (
            self.limits.max_record_size
            if self._recv_cipher is not None
            else self.limits.max_handshake_record_size
        )
        if length < 1:
            raise RemoteProtocolError("empty record", ErrorCode.MALFORMED)
        if length > limit:
            raise RemoteProtocolError(
                f"record of {length} bytes exceeds limit {limit}", ErrorCode.TOO_LARGE
            )
        try:
            record_type = RecordType(raw_type)
        except ValueError:
            raise RemoteProtocolError(
                f"unknown record type {raw_type:#04x}", ErrorCode.MALFORMED
            ) from None
        if self._lent_body is not None:  # the body waits in the application's buffer
            lent, self._lent_body = self._lent_body, None
            header = bytes(self._inbox)
            self._inbox.clear()
            return record_type, header, lent
        end = RECORD_HEADER_SIZE - 1 + length
        if len(self._inbox) < end:
            return None
        with memoryview(self._inbox) as view:  # one copy out of the buffer, not two
            header = bytes(view[:RECORD_HEADER_SIZE])
            body = bytes(view[RECORD_HEADER_SIZE:end])
        del self._inbox[:end]
        return record_type, header, body

    def _handle_record(
        self, record_type: RecordType, header: bytes, data: bytes | memoryview
    ) -> ev.Event | None:
        if record_type is RecordType.CHUNK and self._recv_cipher is not None:
            event: ev.Event = ev.Chunk(self._chunk_index, data, self._is_last_chunk())
            self._advance(self.peer_role, event, remote=True)
            return event
        body = bytes(data)  # the same object if bytes; a lent body is parsed from a copy
        if record_type is RecordType.ALERT:
            if self._recv_cipher is not None:
                # Unauthenticated: after the handshake only a middlebox could have sent
                # it, so neither its code nor its text may speak for the peer.
                raise _unexpected("plaintext ALERT after the handshake")
            alert = messages.parse_alert(body)
            self.state = State.CLOSED
            return alert
        if self._recv_cipher is None:
            return self._handle_handshake(record_type, header + body, body)
        if record_type is not RecordType.SEALED:
            raise _unexpected(f"{record_type.name} record after the handshake")
        event = messages.parse_message(self._recv_cipher.open(body, header))
        self._advance(self.peer_role, event, remote=True)
        self._check_received(event)
        return event

    def _handle_handshake(
        self, record_type: RecordType, record: bytes, body: bytes
    ) -> ev.Event | None:
        raise NotImplementedError

    def _check_received(self, event: ev.Event) -> None:
        """Role-specific checks of a received sealed message, beyond the state table."""

    # -- bytes out --------------------------------------------------------------

    def send(self, event: ev.Event) -> bytes:
        """Bytes that carry ``event``; raises ``LocalProtocolError`` if not allowed now."""
        if self.state is State.CLOSED:
            raise LocalProtocolError(f"cannot send {type(event).__name__}: connection is closed")
        if self._send_cipher is None or self.state in _HANDSHAKE_STATES:
            raise _illegal(self.state, type(event).__name__)
        if isinstance(event, ev.Chunk):
            return self.send_chunk_header(event) + event.data
        plaintext = self._encode_checked(event)
        self._advance(self.role, event, remote=False)
        return self._seal(plaintext)

    def send_chunk_header(self, chunk: ev.Chunk) -> bytes:
        """Like ``send(chunk)``, but only the record header: the caller sends
        ``chunk.data`` right after it, from wherever it was sealed, uncopied."""
        if self.state is State.CLOSED or self._send_cipher is None:
            raise LocalProtocolError("cannot send Chunk: no session")
        self._advance(self.role, chunk, remote=False)
        return record_header(RecordType.CHUNK, len(chunk.data))

    @staticmethod
    def _encode_checked(event: ev.Event) -> bytes:
        """Encode a message and parse it back: we never send what a peer must reject."""
        try:
            plaintext = messages.encode_message(event)
            messages.parse_message(plaintext)
        except (ValueError, TypeError, struct.error, ProtocolError) as exc:
            # struct.error: an integer field out of its range (a negative id, a u64 over 2**64)
            raise LocalProtocolError(f"cannot send {type(event).__name__}: {exc}") from exc
        return plaintext

    def data_to_send(self) -> bytes:
        """Bytes the protocol produced by itself; send them after every call."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def _seal(self, plaintext: bytes) -> bytes:
        assert self._send_cipher is not None  # checked by every caller
        header = _HEADER.pack(len(plaintext) + TAG_SIZE + 1, RecordType.SEALED)
        return header + self._send_cipher.seal(plaintext, header)

    def _fail(self, exc: ProtocolError) -> None:
        """Report a fatal error to the peer (sealed once we can) and close."""
        if self.state is not State.CLOSED:
            if self._send_cipher is not None:
                self._outbox += self._seal(
                    messages.encode_message(ev.Error(ErrorCode(exc.code), str(exc), fatal=True))
                )
            else:
                self._outbox += encode_record(
                    RecordType.ALERT, messages.encode_alert(exc.code, str(exc))
                )
        self.state = State.CLOSED

    # -- state and streams --------------------------------------------------------

    def _advance(self, sender: Role, event: ev.Event, *, remote: bool) -> None:
        following = next_state(self.state, sender, event)
        if following is None:
            if remote:
                raise _unexpected(f"{type(event).__name__} in state '{self.state.value}'")
            raise _illegal(self.state, type(event).__name__)
        if isinstance(event, ev.UploadBegin | ev.UploadResume | ev.DownloadBegin):
            self._start_stream(event.header, remote=remote)
            self._resuming = isinstance(event, ev.UploadResume)
        elif isinstance(event, ev.UploadReady):
            self._chunk_index = self._check_ready(event.next_chunk, remote=remote)
            if self._stream is not None and self._chunk_index == self._stream.chunk_count:
                following = State.UPLOADED  # resumed with every chunk durable already
        elif isinstance(event, ev.Chunk):
            self._check_chunk(event, remote=remote)
            self._chunk_index += 1
        self.state = following

    def _check_ready(self, next_chunk: int, *, remote: bool) -> int:
        """UPLOAD_READY's ``next_chunk``: 0 after UPLOAD_BEGIN, at most the chunk count
        after UPLOAD_RESUME (spec 7.10); else MALFORMED (LocalProtocolError to send)."""
        stream = self._stream
        limit = stream.chunk_count if self._resuming and stream is not None else 0
        if next_chunk > limit:
            what = "at most the chunk count" if self._resuming else "0 after UPLOAD_BEGIN"
            if remote:
                raise RemoteProtocolError(
                    f"UPLOAD_READY next_chunk must be {what}", ErrorCode.MALFORMED
                )
            raise LocalProtocolError(f"UploadReady.next_chunk must be {what}")
        return next_chunk

    def _start_stream(self, header: UploadHeader, *, remote: bool) -> None:
        if remote and header.size > self.limits.max_image_size:
            raise RemoteProtocolError(
                f"image of {header.size} bytes exceeds the limit of "
                f"{self.limits.max_image_size} bytes",
                ErrorCode.TOO_LARGE,
            )
        if remote and header.chunk_size + TAG_SIZE + 1 > self.limits.max_record_size:
            raise RemoteProtocolError(
                f"chunk size {header.chunk_size} exceeds the record limit", ErrorCode.TOO_LARGE
            )
        self._stream = header
        self._chunk_index = 0

    def _is_last_chunk(self) -> bool:
        return self._stream is not None and self._chunk_index == self._stream.chunk_count - 1

    def _check_chunk(self, chunk: ev.Chunk, *, remote: bool) -> None:
        """A chunk must be the next one of the current stream, with the exact length."""
        stream = self._stream
        if stream is None:  # unreachable: the state table only allows chunks in a stream
            raise LocalProtocolError("no stream in progress")
        right_length = len(chunk.data) == stream.plaintext_length(chunk.index) + TAG_SIZE
        if remote and not right_length:
            raise IntegrityError("stream integrity check failed", ErrorCode.INTEGRITY_FAILED)
        if not remote and not (
            right_length
            and chunk.index == self._chunk_index
            and chunk.last == (chunk.index == stream.chunk_count - 1)
        ):
            raise LocalProtocolError("chunk is not the next one of this stream, or wrong size")


_HANDSHAKE_STATES = frozenset(
    {
        State.START,
        State.WAIT_CLIENT_HELLO,
        State.WAIT_SERVER_HELLO,
        State.WAIT_SERVER_VERIFY,
        State.WAIT_SERVER_FINISHED,
        State.WAIT_CLIENT_FINISHED,
    }
)


def _unexpected(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"unexpected {what}", ErrorCode.UNEXPECTED_MESSAGE)


def _illegal(state: State, what: str) -> LocalProtocolError:
    return LocalProtocolError(f"cannot send {what} in state '{state.value}'")


def _expect(record_type: RecordType, expected: RecordType) -> None:
    if record_type is not expected:
        raise _unexpected(f"{record_type.name} record, expected {expected.name}")


class ClientConnection(_Connection):
    """The client side: starts the handshake, checks the server's identity and receipts."""

    role = Role.CLIENT

    def __init__(
        self,
        verifier: keys.ServerVerifier,
        *,
        group: Group = Group.X25519,
        limits: Limits | None = None,
        rng: keys.Rng = os.urandom,
    ) -> None:
        super().__init__(limits or Limits(), rng)
        self._verifier = verifier
        self._group = group
        self._ephemeral: keys.EphemeralKey | None = None
        self._keys: keys.SessionKeys | None = None
        self._server_key: keys.VerifyingKey | None = None
        self._server_certificate = b""
        self._sent_hmac: bytes | None = None
        self._requested_image: bytes | None = None

    @property
    def server_certificate(self) -> bytes:
        """DER of the server certificate that signed this handshake."""
        return self._server_certificate

    def initiate(self) -> bytes:
        """The ClientHello that opens the handshake."""
        if self.state is not State.START:
            raise LocalProtocolError("handshake already started")
        random = self._rng(RANDOM_SIZE)
        self._ephemeral = keys.EphemeralKey(self._group, self._rng)
        hello = messages.ClientHello(
            SUPPORTED_VERSIONS, self._group, self._ephemeral.public_bytes, random
        )
        record = encode_record(RecordType.CLIENT_HELLO, hello.encode())
        self._transcript.append(record)
        self.state = State.WAIT_SERVER_HELLO
        return record

    def _handle_handshake(
        self, record_type: RecordType, record: bytes, body: bytes
    ) -> ev.Event | None:
        if self.state is State.WAIT_SERVER_HELLO:
            _expect(record_type, RecordType.SERVER_HELLO)
            self._on_server_hello(record, messages.ServerHello.parse(body))
            self.state = State.WAIT_SERVER_VERIFY
            return None
        if self.state is State.WAIT_SERVER_VERIFY:
            _expect(record_type, RecordType.SERVER_VERIFY)
            verify = messages.ServerVerify.parse(body)
            assert self._server_key is not None
            content = keys.handshake_signed_content(keys.transcript_hash(*self._transcript))
            if not keys.verify(self._server_key, verify.scheme, verify.signature, content):
                raise HandshakeError("server signature does not verify", ErrorCode.HANDSHAKE_FAILED)
            self._transcript.append(record)
            self.state = State.WAIT_SERVER_FINISHED
            return None
        if self.state is State.WAIT_SERVER_FINISHED:
            _expect(record_type, RecordType.SERVER_FINISHED)
            return self._on_server_finished(record, body)
        raise _unexpected(f"{record_type.name} record in state '{self.state.value}'")

    def _on_server_hello(self, record: bytes, hello: messages.ServerHello) -> None:
        if hello.version not in SUPPORTED_VERSIONS:
            raise HandshakeError(
                "server chose a version we did not offer", ErrorCode.UNSUPPORTED_VERSION
            )
        if hello.group != self._group:
            raise HandshakeError(
                "server chose a group we did not offer", ErrorCode.UNSUPPORTED_GROUP
            )
        assert self._ephemeral is not None
        shared = self._ephemeral.exchange(hello.key_share)
        self._transcript.append(record)
        self._keys = keys.derive_session_keys(shared, keys.transcript_hash(*self._transcript))
        try:
            self._server_key = self._verifier(hello.certificate)
        except HandshakeError:
            raise
        except Exception as exc:  # an injected verifier may raise anything
            raise HandshakeError(
                f"server certificate not trusted: {exc}", ErrorCode.HANDSHAKE_FAILED
            ) from exc
        self._server_certificate = hello.certificate
        self._version = hello.version

    def _on_server_finished(self, record: bytes, body: bytes) -> ev.Event:
        assert self._keys is not None
        if len(body) != FINISHED_SIZE:
            raise HandshakeError("malformed Finished", ErrorCode.HANDSHAKE_FAILED)
        keys.check_finished(
            self._keys.server_finished, keys.transcript_hash(*self._transcript), body
        )
        self._transcript.append(record)
        mac = keys.finished_mac(self._keys.client_finished, keys.transcript_hash(*self._transcript))
        self._outbox += encode_record(RecordType.CLIENT_FINISHED, mac)
        self._send_cipher = keys.SessionCipher(self._keys.client_to_server)
        self._recv_cipher = keys.SessionCipher(self._keys.server_to_client)
        self._transcript.clear()
        self.state = State.IDLE
        return ev.HandshakeComplete(
            self._version, self._group, self._server_certificate, self._keys.session_id
        )

    def send(self, event: ev.Event) -> bytes:
        data = super().send(event)
        if isinstance(event, ev.UploadEnd):
            self._sent_hmac = event.hmac
        elif isinstance(event, ev.Download | ev.Thumbnail):
            self._requested_image = event.image_id
        return data

    def _check_received(self, event: ev.Event) -> None:
        if isinstance(event, ev.Receipt):
            self._check_receipt(event)
        elif isinstance(event, ev.DownloadBegin) and event.image_id != self._requested_image:
            raise _unexpected("download of an image we did not ask for")
        elif isinstance(event, ev.ThumbnailData) and event.image_id != self._requested_image:
            raise _unexpected("thumbnail of an image we did not ask for")

    def _check_receipt(self, receipt: ev.Receipt) -> None:
        """A receipt must be signed by the handshake's server and match our upload exactly."""
        body, stream = receipt.body, self._stream
        assert self._server_key is not None and self._sent_hmac is not None
        matches = (
            stream is not None
            and body.upload_id == stream.upload_id
            and body.size == stream.size
            and body.hmac == self._sent_hmac
            and body.header_sha256 == hashlib.sha256(stream.encode()).digest()
        )
        signed = keys.verify(
            self._server_key, receipt.scheme, receipt.signature, body.signed_content()
        )
        if not (matches and signed):
            raise IntegrityError("receipt does not match the upload", ErrorCode.INTEGRITY_FAILED)


class ServerConnection(_Connection):
    """The server side: answers the handshake, signs it, and signs receipts."""

    role = Role.SERVER

    def __init__(
        self,
        certificate_der: bytes,
        signing_key: keys.SigningKey,
        *,
        groups: frozenset[Group] = frozenset(Group),
        limits: Limits | None = None,
        rng: keys.Rng = os.urandom,
    ) -> None:
        super().__init__(limits or Limits(), rng)
        keys.scheme_for(signing_key)  # refuse unusable keys at construction
        self._certificate = certificate_der
        self._signing_key = signing_key
        self._groups = groups
        self._pending_keys: keys.SessionKeys | None = None
        self.state = State.WAIT_CLIENT_HELLO

    def _handle_handshake(
        self, record_type: RecordType, record: bytes, body: bytes
    ) -> ev.Event | None:
        if self.state is State.WAIT_CLIENT_HELLO:
            _expect(record_type, RecordType.CLIENT_HELLO)
            self._on_client_hello(record, messages.ClientHello.parse(body))
            self.state = State.WAIT_CLIENT_FINISHED
            return None
        if self.state is State.WAIT_CLIENT_FINISHED:
            _expect(record_type, RecordType.CLIENT_FINISHED)
            if len(body) != FINISHED_SIZE:
                raise HandshakeError("malformed Finished", ErrorCode.HANDSHAKE_FAILED)
            k = self._pending_keys
            assert k is not None
            keys.check_finished(k.client_finished, keys.transcript_hash(*self._transcript), body)
            self._recv_cipher = keys.SessionCipher(k.client_to_server)
            self._transcript.clear()
            self.state = State.IDLE
            return ev.HandshakeComplete(self._version, self._group, self._certificate, k.session_id)
        raise _unexpected(f"{record_type.name} record in state '{self.state.value}'")

    def _on_client_hello(self, record: bytes, hello: messages.ClientHello) -> None:
        common = [v for v in SUPPORTED_VERSIONS if v in hello.versions]
        if not common:
            raise HandshakeError("no common protocol version", ErrorCode.UNSUPPORTED_VERSION)
        if hello.group not in {int(g) for g in self._groups}:
            raise HandshakeError("key-exchange group not supported", ErrorCode.UNSUPPORTED_GROUP)
        self._version, self._group = common[0], Group(hello.group)
        random = self._rng(RANDOM_SIZE)
        ephemeral = keys.EphemeralKey(self._group, self._rng)
        shared = ephemeral.exchange(hello.key_share)
        server_hello = messages.ServerHello(
            self._version, self._group, ephemeral.public_bytes, random, self._certificate
        )
        hello_record = encode_record(RecordType.SERVER_HELLO, server_hello.encode())
        hello_hash = keys.transcript_hash(record, hello_record)
        k = keys.derive_session_keys(shared, hello_hash)
        scheme, signature = keys.sign(self._signing_key, keys.handshake_signed_content(hello_hash))
        verify_record = encode_record(
            RecordType.SERVER_VERIFY, messages.ServerVerify(scheme, signature).encode()
        )
        self._transcript = [record, hello_record, verify_record]
        finished = keys.finished_mac(k.server_finished, keys.transcript_hash(*self._transcript))
        finished_record = encode_record(RecordType.SERVER_FINISHED, finished)
        self._transcript.append(finished_record)
        self._pending_keys = k
        self._outbox += hello_record + verify_record + finished_record
        # The client may already be idle with keys: from now on our errors are sealed,
        # so a plaintext ALERT after ServerFinished can only be a forgery.
        self._send_cipher = keys.SessionCipher(k.server_to_client)

    def sign_receipt(self, body: ev.ReceiptBody) -> ev.Receipt:
        """Sign a receipt with the certificate key, to send once the image is durable."""
        scheme, signature = keys.sign(self._signing_key, body.signed_content())
        return ev.Receipt(body, scheme, signature)

    @property
    def current_upload(self) -> UploadHeader | None:
        return self._stream
