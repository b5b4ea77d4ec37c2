"""Helpers shared by the protocol tests and the test-vector generator.

- fixed server keys and byte-for-byte reproducible self-signed certificates;
- rngs: ``HashRng`` (a SHA-256 counter stream that records its draws) and ``QueueRng``
  (hands out recorded draws and checks each size), to inject into connections;
- ``drain``/``feed`` and ``ConnectionPair``: two connections joined by an in-memory link,
  fed whole, one byte at a time or in ragged pieces (as h11's ``tests/helpers.py``);
- independent reference code for the key schedule and record sealing, written from the
  spec with ``hmac``/``hashlib``/``AESGCM`` only, so the vectors are checked by code
  that does not share the implementation's bugs;
- the JSON form of events and sessions in ``tests/vectors/*.json``, and ``Replayer``,
  which plays one side of a recorded session against a fresh connection.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import hmac
import struct
import typing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from imgshare.errors import ProtocolError
from imgshare.protocol import (
    NEED_DATA,
    ClientConnection,
    Group,
    Limits,
    PinnedCertificate,
    RecordType,
    ServerConnection,
    State,
    StreamOpener,
)
from imgshare.protocol import events as ev

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
Connection = ClientConnection | ServerConnection
Split = Callable[[bytes], Iterable[bytes]]
Json = dict[str, Any]

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HEADER = struct.Struct(">IB")

# --- keys and certificates ------------------------------------------------------------


def fixed_p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key whose scalar is a hash of ``label``: the same key on every run."""
    digest = int.from_bytes(hashlib.sha256(label.encode()).digest(), "big")
    return ec.derive_private_key(digest % (P256_ORDER - 1) + 1, ec.SECP256R1())


def fixed_ed25519_key(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def fixed_x25519_key(label: str) -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def self_signed_certificate(key: SigningKey, common_name: str = "imgshare test server") -> bytes:
    """DER of a self-signed certificate with fixed serial and dates.

    ECDSA is signed deterministically (RFC 6979), Ed25519 and RSA PKCS#1 v1.5 are
    deterministic anyway, so the same key always gives the same bytes.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1D5A_0001)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
    )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        cert = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        cert = builder.sign(key, None)
    else:
        cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key: SigningKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def load_key(pem: str) -> SigningKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise TypeError(f"unsupported key type {type(key).__name__}")
    return key


# --- randomness -------------------------------------------------------------------------


class HashRng:
    """Deterministic bytes: SHA-256(seed || u64 counter) blocks. Records every draw."""

    def __init__(self, seed: str) -> None:
        self._seed = seed.encode()
        self._counter = 0
        self.draws: list[bytes] = []

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        draw = out[:size]
        self.draws.append(draw)
        return draw


class QueueRng:
    """Hands out the given draws in order; a draw of another size is a test failure."""

    def __init__(self, draws: Iterable[bytes]) -> None:
        self._draws = deque(draws)

    def __call__(self, size: int) -> bytes:
        if not self._draws:
            raise AssertionError(f"rng: unexpected extra draw of {size} bytes")
        draw = self._draws.popleft()
        if len(draw) != size:
            raise AssertionError(f"rng: drew {size} bytes, the vector recorded {len(draw)}")
        return draw

    @property
    def remaining(self) -> int:
        return len(self._draws)


# --- reference crypto, written from the spec ---------------------------------------------


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_32(prk: bytes, info: bytes) -> bytes:
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def reference_keys(shared: bytes, hello_hash: bytes) -> dict[str, bytes]:
    """The key schedule of docs/protocol.md, with plain HMAC-SHA256."""
    secret = hkdf_extract(hello_hash, shared)
    labels = {
        "c2s": b"c2s key",
        "s2c": b"s2c key",
        "client_finished": b"client finished",
        "server_finished": b"server finished",
        "session_id": b"session id",
    }
    return {name: hkdf_expand_32(secret, b"imgshare v1 " + label) for name, label in labels.items()}


def reference_image_hmac(content_key: bytes, data: bytes) -> bytes:
    mac_key = hkdf_expand_32(hkdf_extract(bytes(32), content_key), b"imgshare v1 image hmac")
    return hmac.new(mac_key, data, hashlib.sha256).digest()


def ecdh(group: Group, private: bytes, peer_share: bytes) -> bytes:
    """ECDH straight from ``cryptography``, for an independent shared secret."""
    if group is Group.X25519:
        mine = x25519.X25519PrivateKey.from_private_bytes(private)
        return mine.exchange(x25519.X25519PublicKey.from_public_bytes(peer_share))
    scalar = ec.derive_private_key(int.from_bytes(private, "big"), ec.SECP256R1())
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_share)
    return scalar.exchange(ec.ECDH(), peer)


def record_nonce(sequence: int) -> bytes:
    return bytes(4) + sequence.to_bytes(8, "big")


def seal_record(key: bytes, sequence: int, plaintext: bytes) -> bytes:
    """A SEALED record made without the implementation: header as AAD, counter nonce."""
    header = HEADER.pack(len(plaintext) + 16 + 1, RecordType.SEALED)
    return header + AESGCM(key).encrypt(record_nonce(sequence), plaintext, header)


def open_record(key: bytes, sequence: int, record: bytes) -> bytes:
    return AESGCM(key).decrypt(record_nonce(sequence), record[5:], record[:5])


def split_records(data: bytes) -> list[bytes]:
    """Cut a byte stream into whole records (test data only: trusts the lengths)."""
    records = []
    while data:
        length = HEADER.unpack_from(data)[0]
        records.append(data[: 4 + length])
        data = data[4 + length :]
    return records


def record_type(record: bytes) -> int:
    return record[4]


# --- feeding connections ------------------------------------------------------------------


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def ragged(data: bytes) -> Iterator[bytes]:
    """Pieces of 1, 2, 3, 5, 7, ... 9973 bytes, cycling: record edges fall anywhere."""
    sizes = (1, 2, 3, 5, 7, 11, 509, 4093, 9973)
    pos, i = 0, 0
    while pos < len(data):
        yield data[pos : pos + sizes[i % len(sizes)]]
        pos += sizes[i % len(sizes)]
        i += 1


SPLITS: dict[str, Split] = {"whole": whole, "bytewise": bytewise, "ragged": ragged}


def drain(conn: Connection) -> list[ev.Event]:
    """Every event the connection can produce now; stops at NEED_DATA or when closed."""
    events: list[ev.Event] = []
    while conn.state is not State.CLOSED:
        event = conn.next_event()
        if event is NEED_DATA:
            break
        assert isinstance(event, ev.Event)
        events.append(event)
    return events


def feed(conn: Connection, data: bytes, split: Split = whole) -> list[ev.Event]:
    events: list[ev.Event] = []
    for piece in split(data):
        conn.receive_data(piece)
        events += drain(conn)
    return events


class ConnectionPair:
    """A client and a server joined by an in-memory link (h11 ``ConnectionPair``)."""

    def __init__(self, client: ClientConnection, server: ServerConnection, split: Split) -> None:
        self.client = client
        self.server = server
        self.split = split

    def handshake(self) -> tuple[ev.HandshakeComplete, ev.HandshakeComplete]:
        assert feed(self.server, self.client.initiate(), self.split) == []
        (client_done,) = feed(self.client, self.server.data_to_send(), self.split)
        (server_done,) = feed(self.server, self.client.data_to_send(), self.split)
        assert isinstance(client_done, ev.HandshakeComplete)
        assert isinstance(server_done, ev.HandshakeComplete)
        return client_done, server_done

    def peer(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def send(
        self, sender: Connection, *events: ev.Event, expect: list[ev.Event] | None = None
    ) -> list[ev.Event]:
        """Send ``events`` from ``sender``; the peer must receive ``expect`` (default: the same)."""
        data = b"".join(sender.send(event) for event in events) + sender.data_to_send()
        received = feed(self.peer(sender), data, self.split)
        assert received == (list(events) if expect is None else expect)
        return received


# --- events as JSON -----------------------------------------------------------------------


def to_json(value: Any, hint: Any = None) -> Any:
    """Bytes as hex, enums by name (only where the field is typed as that enum), dataclasses
    as objects. A field typed ``int`` that holds an IntEnum stays a number."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.name if isinstance(hint, type) and issubclass(hint, enum.Enum) else value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = typing.get_type_hints(type(value))
        return {
            f.name: to_json(getattr(value, f.name), hints[f.name])
            for f in dataclasses.fields(value)
        }
    if isinstance(value, tuple):
        return [to_json(item) for item in value]
    return value


def from_json(hint: Any, value: Any) -> Any:
    if hint is bytes or bytes in typing.get_args(hint):  # e.g. Chunk.data: bytes | memoryview
        return bytes.fromhex(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint[value]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{name: from_json(hints[name], item) for name, item in value.items()})
    if typing.get_origin(hint) is tuple:
        return tuple(from_json(typing.get_args(hint)[0], item) for item in value)
    return value


def event_to_json(event: ev.Event) -> Json:
    """``{"type": "Login", ...fields}``; a Chunk's data is its record's body, not repeated."""
    fields = to_json(event)
    if isinstance(event, ev.Chunk):
        del fields["data"]
    return {"type": type(event).__name__, **fields}


def event_from_json(obj: Json, record: bytes) -> ev.Event:
    cls = getattr(ev, obj["type"])
    fields = {key: value for key, value in obj.items() if key != "type"}
    if cls is ev.Chunk:
        fields["data"] = record[5:].hex()
    event = from_json(cls, fields)
    assert isinstance(event, ev.Event)
    return event


# --- sessions: recorded conversations, replayed -------------------------------------------

#: The record after which each side's handshake is complete.
FINAL_HANDSHAKE_RECORD = {"client": "ServerFinished", "server": "ClientFinished"}


def make_connection(session: Json, side: str, rng: Callable[[int], bytes]) -> Connection:
    certificate = bytes.fromhex(session["server_certificate"])
    limits = Limits(**session["limits"])
    if side == "client":
        return ClientConnection(
            PinnedCertificate(certificate), group=Group[session["group"]], limits=limits, rng=rng
        )
    return ServerConnection(
        certificate, load_key(session["server_key_pem"]), limits=limits, rng=rng
    )


def sealed_count(steps: list[Json], sender: str) -> int:
    """How many SEALED records ``sender`` sent in ``steps``: the next record's sequence."""
    return sum(
        1
        for step in steps
        if step["from"] == sender
        and record_type(bytes.fromhex(step["record"])) == RecordType.SEALED
    )


def other(side: str) -> str:
    return "server" if side == "client" else "client"


class Replayer:
    """Plays one side of a recorded session against a fresh connection, checking every byte.

    Steps from this side are produced (``initiate``, ``data_to_send``, ``send``) and must
    equal the recorded record; steps from the peer are fed and must give the recorded
    event. Streams received are opened and HMAC-checked with ``StreamOpener``, as an
    application would. ``raised_by`` tells which layer raised: ``"connection"`` or
    ``"stream"``.
    """

    def __init__(self, session: Json, side: str, split: Split = whole) -> None:
        self.session = session
        self.side = side
        self.split = split
        self.rng = QueueRng(bytes.fromhex(d) for d in session[f"{side}_rng"])
        self.conn = make_connection(session, side, self.rng)
        self.pending = bytearray()
        self.opener: StreamOpener | None = None
        self.plaintext = bytearray()
        self.received: list[ev.Event] = []
        self.stream_hmacs: list[bytes] = []
        self.raised_by: str | None = None

    def play(self, steps: list[Json]) -> None:
        for number, step in enumerate(steps):
            record = bytes.fromhex(step["record"])
            if step["from"] == self.side:
                produced = self._produce(step, record)
                assert produced == record, f"step {number}: {self.side} produced other bytes"
            else:
                assert self.receive(record) == self._expected(step, record), f"step {number}"

    def _produce(self, step: Json, record: bytes) -> bytes:
        if "handshake" not in step:
            return self.conn.send(event_from_json(step["event"], record))
        if step["handshake"] == "ClientHello":
            assert isinstance(self.conn, ClientConnection)
            self.pending += self.conn.initiate()
        produced = bytes(self.pending[: len(record)])
        del self.pending[: len(record)]
        return produced

    def _expected(self, step: Json, record: bytes) -> list[ev.Event]:
        if "handshake" not in step:
            return [event_from_json(step["event"], record)]
        if step["handshake"] != FINAL_HANDSHAKE_RECORD[self.side]:
            return []
        return [
            ev.HandshakeComplete(
                version=1,
                group=Group[self.session["group"]],
                server_certificate=bytes.fromhex(self.session["server_certificate"]),
                session_id=bytes.fromhex(self.session["keys"]["session_id"]),
            )
        ]

    def receive(self, data: bytes, *, eof: bool = False) -> list[ev.Event]:
        """Feed ``data`` (then EOF if asked) and handle every event like an application."""
        events: list[ev.Event] = []
        pieces = [*self.split(data), *([b""] if eof else [])]
        for piece in pieces:
            self.conn.receive_data(piece)
            while self.conn.state is not State.CLOSED:
                try:
                    event = self.conn.next_event()
                except ProtocolError:
                    self.raised_by = "connection"
                    raise
                if event is NEED_DATA:
                    break
                assert isinstance(event, ev.Event)
                events.append(event)
                try:
                    self.on_event(event)
                except ProtocolError:
                    self.raised_by = "stream"
                    raise
        self.pending += self.conn.data_to_send()
        self.received += events
        return events

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.UploadBegin | ev.DownloadBegin):
            self.opener = StreamOpener(event.header, event.content_key)
            self.plaintext.clear()
        elif isinstance(event, ev.Chunk):
            assert self.opener is not None
            self.plaintext += self.opener.open(event.data)
        elif isinstance(event, ev.UploadEnd | ev.DownloadEnd):
            assert self.opener is not None
            self.stream_hmacs.append(self.opener.finish(event.hmac))
