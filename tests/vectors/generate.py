"""Write the protocol test vectors in this folder, deterministically.

    .venv/bin/python tests/vectors/generate.py

Every random draw comes from a seeded SHA-256 stream and every server signature is
deterministic (ECDSA per RFC 6979, Ed25519), so the output is identical on every run;
``tests/unit/test_protocol_vectors.py`` checks that ``build_all()`` reproduces the
committed files byte for byte, and replays them through fresh connections.

Files (hex for all bytes; every file is self-contained):

- ``handshake.json``: three handshakes (X25519 and P-256 with a P-256 server key,
  X25519 with an Ed25519 server key): keys, certificate, rng draws, every record both
  ways, the shared secret, the hello transcript hash and every derived key.
- ``upload.json``: the X25519 session of handshake.json continued: login and an
  upload of three chunks (4096, 4096 and a short one), up to the signed receipt.
- ``download.json``: a second session that downloads that image; the chunk records
  are the uploaded ones, verbatim.
- ``bad_cases.json``: named attacks and mistakes, each the bytes one side receives
  after a prefix of a recorded session, with the error it must raise.

A session is ``{group, limits, server_key_pem, server_certificate, client_rng,
server_rng, keys, steps}``; a step is ``{"from", "record", "handshake" | "event"}``.
Replaying a session for one side: that side's steps are produced by its connection and
must equal ``record``; the other side's records are fed and must give ``event``.

The expectations of bad cases are written here by hand from the spec, never copied
from what the implementation happens to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

# protocol_helpers.py sits one folder up, in tests/, when this runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imgshare.protocol import (
    ClientConnection,
    Group,
    Limits,
    PinnedCertificate,
    RecordType,
    ServerConnection,
    StreamSealer,
    encode_record,
    keys,
    messages,
    new_upload,
)
from imgshare.protocol import events as ev
from imgshare.protocol.stream import UploadHeader
from protocol_helpers import (
    HEADER,
    HashRng,
    Json,
    SigningKey,
    drain,
    ecdh,
    event_to_json,
    fixed_ed25519_key,
    fixed_p256_key,
    fixed_x25519_key,
    key_pem,
    seal_record,
    sealed_count,
    self_signed_certificate,
)

HERE = Path(__file__).resolve().parent

SERVER_KEY = fixed_p256_key("imgshare test vectors: server key")
ED25519_SERVER_KEY = fixed_ed25519_key("imgshare test vectors: ed25519 server key")
OTHER_KEY = fixed_p256_key("imgshare test vectors: some other server")
ATTACKER_X25519 = fixed_x25519_key("imgshare test vectors: attacker")

USERNAME = "alice"
PASSWORD = "correct horse battery staple"
IMAGE_NAME = "holiday.png"
CHUNK_SIZE = 4096
IMAGE_SIZE = 2 * CHUNK_SIZE + 1234  # two full chunks and a short last one
IMAGE_ID = bytes.fromhex("1d5a0000000000000000000000000001")
SERVER_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

#: An X25519 point of order 8: any private key gives the all-zero shared secret.
X25519_LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")

HANDSHAKE_NAMES = ("ClientHello", "ServerHello", "ServerVerify", "ServerFinished")


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"generator self-check failed: {what}")


def image_plaintext(size: int = IMAGE_SIZE) -> bytes:
    """A made-up image: a fixed byte pattern, not random, so it is easy to recreate."""
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(size))


class Recorder:
    """Runs a client and a server through a conversation and records every record."""

    def __init__(self, seed: str, group: Group, server_key: SigningKey = SERVER_KEY) -> None:
        self.group = group
        self.server_key = server_key
        self.certificate = self_signed_certificate(server_key)
        self.client_rng = HashRng(f"{seed}: client")
        self.server_rng = HashRng(f"{seed}: server")
        self.limits = Limits()
        self.client = ClientConnection(
            PinnedCertificate(self.certificate),
            group=group,
            limits=self.limits,
            rng=self.client_rng,
        )
        self.server = ServerConnection(
            self.certificate, server_key, limits=self.limits, rng=self.server_rng
        )
        self.steps: list[Json] = []
        self.keys: dict[str, bytes] = {}

    def record(self, index: int) -> bytes:
        return bytes.fromhex(self.steps[index]["record"])

    def handshake(self) -> None:
        client_hello = self.client.initiate()
        _check(self._feed(self.server, client_hello) == [], "server quiet after ClientHello")
        flight = self.server.data_to_send()
        records = []
        while flight:
            length = HEADER.unpack_from(flight)[0]
            records.append(flight[: 4 + length])
            flight = flight[4 + length :]
        _check(len(records) == 3, "server flight is three records")
        for name, record in zip(HANDSHAKE_NAMES, [client_hello, *records], strict=True):
            sender = "client" if name == "ClientHello" else "server"
            self.steps.append({"from": sender, "handshake": name, "record": record.hex()})
        (done,) = self._feed(self.client, b"".join(records))
        client_finished = self.client.data_to_send()
        self.steps.append(
            {"from": "client", "handshake": "ClientFinished", "record": client_finished.hex()}
        )
        (server_done,) = self._feed(self.server, client_finished)
        _check(done == server_done, "both sides complete the same handshake")
        self._derive(client_hello, records[0])

    def _derive(self, client_hello: bytes, server_hello: bytes) -> None:
        share = messages.ServerHello.parse(server_hello[5:]).key_share
        shared = ecdh(self.group, self.client_rng.draws[-1], share)
        hello_hash = hashlib.sha256(client_hello + server_hello).digest()
        derived = keys.derive_session_keys(shared, hello_hash)
        self.keys = {
            "shared_secret": shared,
            "hello_transcript_hash": hello_hash,
            "c2s": derived.client_to_server,
            "s2c": derived.server_to_client,
            "client_finished": derived.client_finished,
            "server_finished": derived.server_finished,
            "session_id": derived.session_id,
        }

    @staticmethod
    def _feed(conn: ClientConnection | ServerConnection, data: bytes) -> list[ev.Event]:
        conn.receive_data(data)
        return drain(conn)

    def message(self, sender: str, event: ev.Event) -> int:
        """Send ``event`` from ``sender``; check the peer receives it; return the step index."""
        conn, peer = (
            (self.client, self.server) if sender == "client" else (self.server, self.client)
        )
        record = conn.send(event)
        _check(self._feed(peer, record) == [event], f"{type(event).__name__} arrives intact")
        self.steps.append({"from": sender, "record": record.hex(), "event": event_to_json(event)})
        return len(self.steps) - 1

    def seal(self, sender: str, plaintext: bytes, after: int) -> bytes:
        """A SEALED record from ``sender`` that the peer expects right after step ``after``."""
        key = self.keys["c2s" if sender == "client" else "s2c"]
        return seal_record(key, sealed_count(self.steps[:after], sender), plaintext)

    def session(self) -> Json:
        return {
            "group": self.group.name,
            "limits": dataclasses.asdict(self.limits),
            "server_key_pem": key_pem(self.server_key),
            "server_certificate": self.certificate.hex(),
            "client_rng": [d.hex() for d in self.client_rng.draws],
            "server_rng": [d.hex() for d in self.server_rng.draws],
            "keys": {name: value.hex() for name, value in self.keys.items()},
            "steps": self.steps,
        }


@dataclasses.dataclass
class Upload:
    header: UploadHeader
    content_key: bytes
    chunks: list[bytes]
    hmac: bytes
    rng: HashRng
    steps: dict[str, int]  # step index of each message, by name


def login(rec: Recorder) -> None:
    rec.message("client", ev.Login(USERNAME, PASSWORD))
    rec.message("server", ev.LoginOk(USERNAME))


def upload(rec: Recorder, seed: str, plaintext: bytes) -> Upload:
    rng = HashRng(seed)
    header, content_key = new_upload(IMAGE_NAME, len(plaintext), rng, CHUNK_SIZE)
    sealer = StreamSealer(header, content_key)
    at = {"UploadBegin": rec.message("client", ev.UploadBegin(header, content_key))}
    at["UploadReady"] = rec.message("server", ev.UploadReady(0))
    chunks = []
    for i in range(header.chunk_count):
        data = sealer.seal(plaintext[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE])
        at[f"chunk {i}"] = rec.message("client", ev.Chunk(i, data, i == header.chunk_count - 1))
        chunks.append(data)
    mac = sealer.finish()
    at["UploadEnd"] = rec.message("client", ev.UploadEnd(mac))
    at["Receipt"] = rec.message("server", rec.server.sign_receipt(receipt_body(header, mac)))
    return Upload(header, content_key, chunks, mac, rng, at)


def receipt_body(header: UploadHeader, mac: bytes, **changes: Any) -> ev.ReceiptBody:
    body = ev.ReceiptBody(
        image_id=IMAGE_ID,
        upload_id=header.upload_id,
        size=header.size,
        hmac=mac,
        header_sha256=hashlib.sha256(header.encode()).digest(),
        server_time_ms=SERVER_TIME_MS,
        username=USERNAME,
    )
    return dataclasses.replace(body, **changes)


def download(rec: Recorder, up: Upload) -> dict[str, int]:
    """The server streams the stored chunks verbatim, with the content key for this session."""
    at = {"Download": rec.message("client", ev.Download(IMAGE_ID))}
    at["DownloadBegin"] = rec.message(
        "server", ev.DownloadBegin(IMAGE_ID, up.header, up.content_key)
    )
    for i, data in enumerate(up.chunks):
        at[f"chunk {i}"] = rec.message("server", ev.Chunk(i, data, i == len(up.chunks) - 1))
    at["DownloadEnd"] = rec.message("server", ev.DownloadEnd(up.hmac))
    return at


# --- good vectors ---------------------------------------------------------------------


def handshake_vectors() -> Json:
    cases = []
    for name, group, key, description in (
        ("x25519", Group.X25519, SERVER_KEY, "X25519 key exchange, ECDSA P-256 server key"),
        ("p256", Group.SECP256R1, SERVER_KEY, "P-256 key exchange, ECDSA P-256 server key"),
        ("x25519_ed25519", Group.X25519, ED25519_SERVER_KEY, "X25519, Ed25519 server key"),
    ):
        rec = Recorder(f"imgshare vectors: session 1 {name}", group, key)
        rec.handshake()
        cases.append(
            {"name": name, "description": description, "expect": "success", **rec.session()}
        )
    return {
        "description": "Application handshakes, every record both ways, with derived keys.",
        "cases": cases,
    }


def upload_vectors() -> Json:
    rec = Recorder("imgshare vectors: session 1 x25519", Group.X25519)
    rec.handshake()
    login(rec)
    plaintext = image_plaintext()
    up = upload(rec, "imgshare vectors: upload", plaintext)
    return {
        "description": (
            "handshake.json's x25519 session continued: login, then an upload of three "
            "chunks and the signed receipt."
        ),
        "expect": "success",
        "session": rec.session(),
        "upload": {
            "rng": [d.hex() for d in up.rng.draws],
            "plaintext": plaintext.hex(),
            "header": up.header.encode().hex(),
            "content_key": up.content_key.hex(),
            "image_hmac": up.hmac.hex(),
            "image_id": IMAGE_ID.hex(),
            "server_time_ms": SERVER_TIME_MS,
        },
    }


def download_vectors() -> Json:
    first = Recorder("imgshare vectors: session 1 x25519", Group.X25519)
    first.handshake()
    login(first)
    plaintext = image_plaintext()
    up = upload(first, "imgshare vectors: upload", plaintext)
    rec = Recorder("imgshare vectors: session 2 x25519", Group.X25519)
    rec.handshake()
    login(rec)
    download(rec, up)
    return {
        "description": (
            "A second session downloads upload.json's image: the content key travels "
            "sealed for this session, the chunk records are the uploaded ones verbatim."
        ),
        "expect": "success",
        "session": rec.session(),
        "download": {
            "plaintext": plaintext.hex(),
            "content_key": up.content_key.hex(),
            "image_hmac": up.hmac.hex(),
            "image_id": IMAGE_ID.hex(),
        },
    }


# --- bad cases ------------------------------------------------------------------------


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes((data[index] ^ mask,)) + data[index + 1 :]


def chunk_record(data: bytes) -> bytes:
    return encode_record(RecordType.CHUNK, data)


def _hello_record(record: bytes, **changes: Any) -> bytes:
    hello = messages.ClientHello.parse(record[5:])
    return encode_record(RecordType.CLIENT_HELLO, dataclasses.replace(hello, **changes).encode())


def _server_hello_record(record: bytes, **changes: Any) -> bytes:
    hello = messages.ServerHello.parse(record[5:])
    return encode_record(RecordType.SERVER_HELLO, dataclasses.replace(hello, **changes).encode())


HANDSHAKE = ("HandshakeError", "HANDSHAKE_FAILED")
INTEGRITY = ("IntegrityError", "INTEGRITY_FAILED")
MALFORMED = ("RemoteProtocolError", "MALFORMED")
UNEXPECTED = ("RemoteProtocolError", "UNEXPECTED_MESSAGE")
TOO_LARGE = ("RemoteProtocolError", "TOO_LARGE")


class BadCases:
    """Builds the bad cases against the recorded sessions ``x25519`` and ``p256``.

    Step numbers in the x25519 session: 0-4 handshake (ClientHello ... ClientFinished),
    5-6 Login/LoginOk, 7-13 the upload (UploadBegin, UploadReady, 3 chunks, UploadEnd,
    Receipt), 14-19 the download (Download, DownloadBegin, 3 chunks, DownloadEnd).
    """

    def __init__(self) -> None:
        self.full = Recorder("imgshare vectors: bad cases x25519", Group.X25519)
        self.full.handshake()
        login(self.full)
        self.up = upload(self.full, "imgshare vectors: bad cases upload", image_plaintext())
        self.down = download(self.full, self.up)
        self.p256 = Recorder("imgshare vectors: bad cases p256", Group.SECP256R1)
        self.p256.handshake()
        # The same image uploaded in another session: chunks of the same lengths under
        # another content key, upload id and nonce prefix.
        elsewhere = Recorder("imgshare vectors: bad cases elsewhere", Group.X25519)
        elsewhere.handshake()
        self.other = upload(elsewhere, "imgshare vectors: other upload", image_plaintext())
        self.cases: list[Json] = []

    def add(
        self,
        name: str,
        receiver: str,
        after: int,
        data: bytes,
        expect: tuple[str, str],
        description: str,
        *,
        stream: bool = False,
        eof: bool = False,
        session: str = "x25519",
    ) -> None:
        self.cases.append(
            {
                "name": name,
                "description": description,
                "session": session,
                "receiver": receiver,
                "after_step": after,
                "input": data.hex(),
                "eof": eof,
                "expect": {"error": expect[0], "code": expect[1]},
                "detected_by": "stream" if stream else "connection",
            }
        )

    def build(self) -> Json:
        self.client_hello_cases()
        self.server_hello_cases()
        self.record_cases()
        self.message_cases()
        self.upload_cases()
        self.receipt_cases()
        self.download_cases()
        return {
            "description": (
                "Each case: replay steps[:after_step] of the named session as `receiver`, "
                "then feed `input` (and end of stream if `eof`); the receiver must raise "
                "`expect.error` with code `expect.code`. `detected_by` is the layer that "
                "raises: the connection itself, or the application's StreamOpener "
                "(chunk tags and the image HMAC)."
            ),
            "sessions": {"x25519": self.full.session(), "p256": self.p256.session()},
            "cases": self.cases,
        }

    def client_hello_cases(self) -> None:
        hello, p256_hello, add = self.full.record(0), self.p256.record(0), self.add
        share = messages.ClientHello.parse(p256_hello[5:]).key_share
        compressed = bytes((2 + (share[64] & 1),)) + share[1:33]
        for name, data, expect, description in (
            ("version_unsupported", _hello_record(hello, versions=(2,)),
             ("HandshakeError", "UNSUPPORTED_VERSION"), "ClientHello offers only version 2"),
            ("group_unsupported", _hello_record(hello, group=0x0018, key_share=bytes(97)),
             ("HandshakeError", "UNSUPPORTED_GROUP"), "ClientHello asks for secp384r1 (0x0018)"),
            ("client_hello_bad_magic", flip(hello, 5), MALFORMED,
             "ClientHello does not start with IMGSHARE"),
            ("client_hello_trailing_bytes",
             encode_record(RecordType.CLIENT_HELLO, hello[5:] + b"\x00"), MALFORMED,
             "ClientHello with one byte after the random"),
            ("shared_secret_all_zero", _hello_record(hello, key_share=bytes(32)), HANDSHAKE,
             "client key share is the all-zero X25519 point: the shared secret is all zero"),
            ("x25519_low_order_point", _hello_record(hello, key_share=X25519_LOW_ORDER),
             HANDSHAKE, "client key share is an X25519 point of order 8: all-zero secret"),
            ("x25519_share_wrong_length", _hello_record(hello, key_share=bytes(31)), HANDSHAKE,
             "client X25519 key share of 31 bytes"),
            ("handshake_record_out_of_order", self.full.record(4), UNEXPECTED,
             "server receives a ClientFinished before any ClientHello"),
            ("sealed_before_handshake", self.full.record(5), UNEXPECTED,
             "server receives a SEALED record instead of a ClientHello"),
        ):  # fmt: skip
            add(name, "server", 0, data, expect, description)
        add("p256_point_invalid", "server", 0, _hello_record(p256_hello, key_share=flip(share, 64)),
            HANDSHAKE, "client P-256 key share is not on the curve (last byte of y changed)",
            session="p256")  # fmt: skip
        add("p256_point_compressed", "server", 0, _hello_record(p256_hello, key_share=compressed),
            HANDSHAKE, "client P-256 key share compressed: v1 requires uncompressed points",
            session="p256")  # fmt: skip
        add("finished_bad", "server", 4, flip(self.full.record(4), 20), HANDSHAKE,
            "ClientFinished with one bit flipped")  # fmt: skip

    def server_hello_cases(self) -> None:
        hello, verify, finished = (self.full.record(i) for i in (1, 2, 3))
        other_certificate = self_signed_certificate(OTHER_KEY)
        attacker = ATTACKER_X25519.public_key().public_bytes_raw()

        def changed(**changes: Any) -> bytes:
            return _server_hello_record(hello, **changes) + verify + finished

        for name, data, expect, description in (
            ("server_signature_bad", hello + flip(verify, len(verify) - 1) + finished,
             HANDSHAKE, "ServerVerify signature with one bit flipped"),
            ("server_key_share_substituted", changed(key_share=attacker), HANDSHAKE,
             "a machine in the middle replaces the server's key share with its own"),
            ("server_shared_secret_all_zero", changed(key_share=bytes(32)), HANDSHAKE,
             "server key share is the all-zero X25519 point"),
            ("certificate_untrusted", changed(certificate=other_certificate), HANDSHAKE,
             "ServerHello carries a certificate other than the pinned one"),
            ("server_finished_bad", hello + verify + flip(finished, 10), HANDSHAKE,
             "ServerFinished with one bit flipped"),
            ("server_version_unsupported", changed(version=2),
             ("HandshakeError", "UNSUPPORTED_VERSION"), "server chooses version 2, not offered"),
            ("server_group_mismatch", changed(group=Group.SECP256R1),
             ("HandshakeError", "UNSUPPORTED_GROUP"), "server answers X25519 with P-256"),
        ):  # fmt: skip
            self.add(name, "client", 1, data, expect, description)
        p256_hello = self.p256.record(1)
        share = messages.ServerHello.parse(p256_hello[5:]).key_share
        bad = _server_hello_record(p256_hello, key_share=flip(share, 64))
        self.add("p256_server_point_invalid", "client", 1,
                 bad + self.p256.record(2) + self.p256.record(3), HANDSHAKE,
                 "server P-256 key share is not on the curve", session="p256")  # fmt: skip

    def record_cases(self) -> None:
        login_record, limit = self.full.record(5), self.full.limits.max_record_size
        for name, after, data, expect, description in (
            ("record_too_large", 0, HEADER.pack(1 << 31, RecordType.CLIENT_HELLO), TOO_LARGE,
             "a record header declaring 2**31 bytes: rejected on the header alone"),
            ("record_too_large_sealed", 5, HEADER.pack(limit + 1, RecordType.SEALED), TOO_LARGE,
             "after the handshake, a SEALED header declaring max_record_size + 1 bytes"),
            ("record_empty", 0, HEADER.pack(0, RecordType.CLIENT_HELLO), MALFORMED,
             "a record header declaring length 0 (no room for the type)"),
            ("unknown_record_type", 5, HEADER.pack(2, 0x20) + b"\x00", MALFORMED,
             "after the handshake, a record of type 0x20"),
            ("handshake_record_after_handshake", 5, self.full.record(0), UNEXPECTED,
             "after the handshake, the ClientHello again"),
            ("chunk_outside_upload", 5, chunk_record(self.up.chunks[0]), UNEXPECTED,
             "after the handshake, a CHUNK record with no upload in progress"),
            ("sealed_bit_flip", 5, flip(login_record, 12), INTEGRITY,
             "the Login record with one ciphertext bit flipped"),
            ("record_replayed", 7, login_record, INTEGRITY,
             "the Login record sent a second time after the login completed"),
            ("record_reordered", 5, self.full.record(7) + login_record, INTEGRITY,
             "the UploadBegin record before the Login record"),
        ):  # fmt: skip
            self.add(name, "server", after, data, expect, description)
        self.add("eof_mid_record", "server", 5, login_record[:20], MALFORMED,
                 "the stream ends inside the Login record", eof=True)  # fmt: skip

    def message_cases(self) -> None:
        def sealed(event: ev.Event, extra: bytes = b"") -> bytes:
            return messages.encode_message(event) + extra

        too_big = dataclasses.replace(self.up.header, size=1 << 40)
        for name, plaintext, code, description in (
            ("unknown_message_type", b"\x50", "UNEXPECTED_MESSAGE", "a message of type 0x50"),
            ("message_resume_short", b"\x12" + bytes(16), "MALFORMED",
             "an UPLOAD_RESUME (0x12) too short for its content key"),
            ("message_empty", b"", "MALFORMED", "a sealed record with no plaintext at all"),
            ("message_trailing_bytes", sealed(ev.Login(USERNAME, PASSWORD), b"\x00"),
             "MALFORMED", "a Login message with one byte too many"),
            ("username_too_long", sealed(ev.Login("a" * 65, PASSWORD)), "TOO_LARGE",
             "a Login whose username is 65 bytes"),
            ("username_not_utf8", b"\x01\x02\xff\xfe\x00\x01x", "MALFORMED",
             "a Login whose username is not UTF-8"),
            ("unexpected_message", sealed(ev.LoginOk(USERNAME)), "UNEXPECTED_MESSAGE",
             "a client sends a server's LoginOk"),
            ("image_too_large", sealed(ev.UploadBegin(too_big, bytes(32))), "TOO_LARGE",
             "an UploadBegin declaring 2**40 bytes, over the image size limit"),
        ):  # fmt: skip
            data = self.full.seal("client", plaintext, 5)
            self.add(name, "server", 5, data, ("RemoteProtocolError", code), description)

    def upload_cases(self) -> None:
        at, c = self.up.steps, [chunk_record(d) for d in self.up.chunks]
        ready = at["UploadReady"] + 1  # the server has sent UploadReady
        upload_end = self.full.record(at["UploadEnd"])
        spliced = chunk_record(self.other.chunks[1])
        last_extended = chunk_record(self.up.chunks[2] + b"\x00")
        bad_hmac = self.full.seal(
            "client", messages.encode_message(ev.UploadEnd(flip(self.up.hmac, 0))), at["UploadEnd"]
        )
        for name, data, expect, stream, description in (
            ("stream_truncated_upload_end", c[0] + c[1] + upload_end, UNEXPECTED, False,
             "UploadEnd (with the right HMAC) after 2 of 3 chunks"),
            ("chunk_dropped", c[0] + c[2], INTEGRITY, False,
             "chunk 1 left out: the short last chunk arrives where a full one must"),
            ("chunk_dropped_first", c[1], INTEGRITY, True,
             "chunk 0 left out: chunk 1 has the right length but another nonce"),
            ("chunk_reordered", c[1] + c[0], INTEGRITY, True, "chunks 1 and 0 swapped"),
            ("chunk_duplicated", c[0] + c[0], INTEGRITY, True, "chunk 0 sent twice"),
            ("chunk_bit_flip", c[0] + flip(c[1], 100), INTEGRITY, True,
             "chunk 1 with one ciphertext bit flipped"),
            ("chunk_tag_bit_flip", c[0] + c[1] + flip(c[2], len(c[2]) - 1), INTEGRITY, True,
             "chunk 2 (the last) with one tag bit flipped"),
            ("chunk_spliced", c[0] + spliced, INTEGRITY, True,
             "chunk 1 from another upload of the same image (other key, id, nonce prefix)"),
            ("chunk_wrong_length", chunk_record(self.up.chunks[0][:-1]), INTEGRITY, False,
             "chunk 0 one byte short"),
            ("chunk_last_extended", c[0] + c[1] + last_extended, INTEGRITY, False,
             "the last chunk with one byte appended"),
            ("data_after_last_chunk", c[0] + c[1] + c[2] + c[2], UNEXPECTED, False,
             "a fourth chunk after the last one"),
            ("hmac_bad", c[0] + c[1] + c[2] + bad_hmac, INTEGRITY, True,
             "every chunk intact, but UploadEnd carries a wrong image HMAC"),
        ):  # fmt: skip
            self.add(name, "server", ready, data, expect, description, stream=stream)
        self.add("stream_truncated", "server", ready, c[0] + c[1], MALFORMED,
                 "the stream ends after 2 of 3 chunks", eof=True)  # fmt: skip
        self.add("chunk_before_upload_ready", "server", at["UploadBegin"] + 1, c[0], UNEXPECTED,
                 "chunk 0 sent before the server answered UploadReady")  # fmt: skip

    def receipt_cases(self) -> None:
        at = self.up.steps
        sent_end = at["UploadEnd"] + 1  # the client has sent UploadEnd
        good = receipt_body(self.up.header, self.up.hmac)
        signed = self.full.server.sign_receipt(good)

        def sealed(receipt: ev.Receipt) -> bytes:
            return self.full.seal("server", messages.encode_message(receipt), sent_end)

        def resigned(**changes: Any) -> bytes:
            return sealed(self.full.server.sign_receipt(dataclasses.replace(good, **changes)))

        for name, data, description in (
            ("receipt_tampered",
             sealed(dataclasses.replace(signed, body=dataclasses.replace(good, size=1))),
             "the receipt's size changed after signing"),
            ("receipt_signature_bad",
             sealed(dataclasses.replace(signed, signature=flip(signed.signature, 10))),
             "the receipt's signature with one bit flipped"),
            ("receipt_wrong_hmac", resigned(hmac=flip(self.up.hmac, 0)),
             "a correctly signed receipt for another HMAC than the one sent"),
            ("receipt_wrong_upload", resigned(upload_id=bytes(16)),
             "a correctly signed receipt for another upload id"),
        ):  # fmt: skip
            self.add(name, "client", sent_end, data, INTEGRITY, description)

    def download_cases(self) -> None:
        down, c = self.down, [chunk_record(d) for d in self.up.chunks]
        asked, began = down["Download"] + 1, down["DownloadBegin"] + 1
        wrong_image = ev.DownloadBegin(bytes(16), self.up.header, self.up.content_key)
        wrong_hmac = ev.DownloadEnd(flip(self.up.hmac, 31))
        seal = self.full.seal
        self.add("download_wrong_image", "client", asked,
                 seal("server", messages.encode_message(wrong_image), asked), UNEXPECTED,
                 "DownloadBegin for another image than the one asked for")  # fmt: skip
        self.add("download_chunk_bit_flip", "client", began, flip(c[0], 50), INTEGRITY,
                 "a downloaded chunk with one bit flipped", stream=True)  # fmt: skip
        self.add("download_truncated", "client", began, c[0] + c[1], MALFORMED,
                 "the download stream ends after 2 of 3 chunks", eof=True)  # fmt: skip
        end = down["DownloadEnd"]
        self.add("download_hmac_bad", "client", end,
                 seal("server", messages.encode_message(wrong_hmac), end), INTEGRITY,
                 "every chunk intact, but DownloadEnd carries a wrong image HMAC",
                 stream=True)  # fmt: skip


def bad_case_vectors() -> Json:
    return BadCases().build()


def build_all() -> dict[str, str]:
    """File name -> exact file text, for every vector file."""
    files = {
        "handshake.json": handshake_vectors(),
        "upload.json": upload_vectors(),
        "download.json": download_vectors(),
        "bad_cases.json": bad_case_vectors(),
    }
    return {name: json.dumps(data, indent=1) + "\n" for name, data in files.items()}


def main() -> None:
    for name, text in build_all().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
