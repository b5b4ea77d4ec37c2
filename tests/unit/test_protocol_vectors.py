"""The JSON test vectors, checked both ways.

1. ``generate.build_all()`` reproduces the committed files byte for byte.
2. Replaying each file through fresh connections (built only from what the file holds)
   reproduces every record, and reference code written from the spec (plain HMAC,
   AESGCM, ECDH from ``cryptography``) agrees with every key, MAC and record.
3. Every bad case raises exactly its expected error, from the expected layer.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imgshare.errors import IntegrityError, ProtocolError
from imgshare.protocol import ErrorCode, Group, RecordType
from imgshare.protocol import events as ev
from imgshare.protocol.keys import handshake_signed_content, verify
from protocol_helpers import (
    SPLITS,
    Json,
    Replayer,
    drain,
    ecdh,
    open_record,
    record_type,
    reference_image_hmac,
    reference_keys,
    sealed_count,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
HANDSHAKE_ORDER = ["ClientHello", "ServerHello", "ServerVerify", "ServerFinished", "ClientFinished"]


def load(name: str) -> Json:
    data: Json = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def bad_cases() -> list[Any]:
    """One parametrize entry per bad case (docs/design.md, C7)."""
    data = load("bad_cases.json")
    return [
        pytest.param(data["sessions"][case["session"]], case, id=case["name"])
        for case in data["cases"]
    ]


def handshake_cases() -> list[Any]:
    return [pytest.param(case, id=case["name"]) for case in load("handshake.json")["cases"]]


def records(session: Json) -> dict[str, bytes]:
    return {
        step["handshake"]: bytes.fromhex(step["record"])
        for step in session["steps"]
        if "handshake" in step
    }


# --- 1. the generator reproduces the files ---------------------------------------------


def test_generator_reproduces_committed_files() -> None:
    generated = load_generator().build_all()
    assert sorted(generated) == sorted(p.name for p in VECTORS.glob("*.json"))
    for name, text in generated.items():
        assert text == (VECTORS / name).read_text(encoding="utf-8"), f"{name} is stale"


# --- 2. good vectors replayed and checked against reference code -----------------------


def replay_both_sides(session: Json, split: str = "whole") -> dict[str, Replayer]:
    sides = {}
    for side in ("client", "server"):
        replayer = Replayer(session, side, SPLITS[split])
        replayer.play(session["steps"])
        assert replayer.rng.remaining == 0, "every recorded draw is used"
        assert replayer.conn.data_to_send() == b"" and not replayer.pending
        sides[side] = replayer
    return sides


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize("case", handshake_cases())
def test_handshake_vector_replays(case: Json, split: str) -> None:
    assert case["expect"] == "success"
    sides = replay_both_sides(case, split)
    assert [s["handshake"] for s in case["steps"]] == HANDSHAKE_ORDER
    for replayer in sides.values():
        (done,) = replayer.received
        assert isinstance(done, ev.HandshakeComplete)
        assert done.session_id.hex() == case["keys"]["session_id"]


@pytest.mark.parametrize("case", handshake_cases())
def test_handshake_vector_matches_reference(case: Json) -> None:
    """Hellos, shared secret, key schedule, signature and Finished, recomputed from the spec."""
    group = Group[case["group"]]
    rec = records(case)
    client_rng = [bytes.fromhex(d) for d in case["client_rng"]]
    server_rng = [bytes.fromhex(d) for d in case["server_rng"]]
    certificate = bytes.fromhex(case["server_certificate"])
    share_size = {Group.X25519: 32, Group.SECP256R1: 65}[group]

    client_hello = rec["ClientHello"]
    client_share = client_hello[5 + 8 + 1 + 2 + 2 + 2 :][:share_size]
    expected_body = (
        b"IMGSHARE"
        + b"\x01"
        + b"\x00\x01"
        + struct.pack(">HH", group, share_size)
        + client_share
        + client_rng[0]
    )
    assert client_hello == struct.pack(">IB", len(expected_body) + 1, 1) + expected_body

    server_hello = rec["ServerHello"]
    server_share = server_hello[5 + 2 + 2 + 2 :][:share_size]
    expected_body = (
        struct.pack(">HHH", 1, group, share_size)
        + server_share
        + server_rng[0]
        + struct.pack(">H", len(certificate))
        + certificate
    )
    assert server_hello == struct.pack(">IB", len(expected_body) + 1, 2) + expected_body

    keys = {name: bytes.fromhex(value) for name, value in case["keys"].items()}
    shared = ecdh(group, client_rng[-1], server_share)
    assert shared == ecdh(group, server_rng[-1], client_share) == keys["shared_secret"]
    hello_hash = hashlib.sha256(client_hello + server_hello).digest()
    assert hello_hash == keys["hello_transcript_hash"]
    derived = reference_keys(shared, hello_hash)
    assert {name: keys[name] for name in derived} == derived
    assert len(set(derived.values())) == len(derived), "every label gives its own key"

    verify_body = rec["ServerVerify"][5:]
    scheme, length = struct.unpack(">HH", verify_body[:4])
    assert len(verify_body) == 4 + length
    public_key = x509.load_der_x509_certificate(certificate).public_key()
    content = b" " * 64 + b"imgshare v1 server handshake" + b"\x00" + hello_hash
    assert content == handshake_signed_content(hello_hash)
    assert verify(public_key, scheme, verify_body[4:], content)  # type: ignore[arg-type]

    server_transcript = client_hello + server_hello + rec["ServerVerify"]
    server_mac = hashlib.sha256(server_transcript).digest()
    assert rec["ServerFinished"][5:] == _hmac(derived["server_finished"], server_mac)
    client_mac = hashlib.sha256(server_transcript + rec["ServerFinished"]).digest()
    assert rec["ClientFinished"][5:] == _hmac(derived["client_finished"], client_mac)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def test_upload_vector_continues_the_x25519_handshake() -> None:
    (x25519,) = [c for c in load("handshake.json")["cases"] if c["name"] == "x25519"]
    session = load("upload.json")["session"]
    assert session["steps"][:5] == x25519["steps"]
    assert session["keys"] == x25519["keys"]


@pytest.mark.parametrize("split", ["whole", "ragged"])
def test_upload_vector_replays(split: str) -> None:
    vector = load("upload.json")
    assert vector["expect"] == "success"
    up = vector["upload"]
    sides = replay_both_sides(vector["session"], split)
    server = sides["server"]
    assert bytes(server.plaintext) == bytes.fromhex(up["plaintext"])
    assert server.stream_hmacs == [bytes.fromhex(up["image_hmac"])]
    receipt = sides["client"].received[-1]
    assert isinstance(receipt, ev.Receipt)  # the client's core checked it
    assert receipt.body.image_id.hex() == up["image_id"]
    assert receipt.body.server_time_ms == up["server_time_ms"]
    assert receipt.body.hmac.hex() == up["image_hmac"]
    assert receipt.body.header_sha256 == hashlib.sha256(bytes.fromhex(up["header"])).digest()


def sealed_plaintexts(session: Json) -> list[tuple[str, bytes]]:
    """Open every SEALED record with the vector's keys at its counter (reference AESGCM)."""
    keys = session["keys"]
    out = []
    for number, step in enumerate(session["steps"]):
        record = bytes.fromhex(step["record"])
        if record_type(record) == RecordType.SEALED:
            key = bytes.fromhex(keys["c2s" if step["from"] == "client" else "s2c"])
            sequence = sealed_count(session["steps"][:number], step["from"])
            out.append((step["event"]["type"], open_record(key, sequence, record)))
    return out


def test_upload_vector_matches_reference() -> None:
    vector = load("upload.json")
    up, session = vector["upload"], vector["session"]
    plaintext = bytes.fromhex(up["plaintext"])
    content_key = bytes.fromhex(up["content_key"])
    upload_id, prefix, content_key_drawn = (bytes.fromhex(d) for d in up["rng"])
    assert content_key == content_key_drawn
    header = bytes.fromhex(up["header"])
    name = b"holiday.png"
    assert header == (
        struct.pack(">H", 1)
        + upload_id
        + prefix
        + struct.pack(">IQ", 4096, len(plaintext))
        + struct.pack(">H", len(name))
        + name
    )
    assert bytes.fromhex(up["image_hmac"]) == reference_image_hmac(content_key, plaintext)

    opened = sealed_plaintexts(session)
    assert [kind for kind, _ in opened] == [
        "Login",
        "LoginOk",
        "UploadBegin",
        "UploadReady",
        "UploadEnd",
        "Receipt",
    ]
    assert dict(opened)["UploadBegin"] == b"\x10" + content_key + header
    assert dict(opened)["UploadEnd"] == b"\x11" + bytes.fromhex(up["image_hmac"])

    chunks = [
        bytes.fromhex(s["record"])
        for s in session["steps"]
        if s.get("event", {}).get("type") == "Chunk"
    ]
    assert [len(c) - 5 - 16 for c in chunks] == [4096, 4096, len(plaintext) - 8192]
    aead = AESGCM(content_key)
    recovered = b"".join(
        aead.decrypt(prefix + struct.pack(">IB", i, i == len(chunks) - 1), c[5:], header)
        for i, c in enumerate(chunks)
    )
    assert recovered == plaintext


@pytest.mark.parametrize("split", ["whole", "ragged"])
def test_download_vector_replays(split: str) -> None:
    vector = load("download.json")
    assert vector["expect"] == "success"
    down = vector["download"]
    client = replay_both_sides(vector["session"], split)["client"]
    assert bytes(client.plaintext) == bytes.fromhex(down["plaintext"])
    assert client.stream_hmacs == [bytes.fromhex(down["image_hmac"])]


def test_download_streams_the_uploaded_chunks_verbatim() -> None:
    upload, download = load("upload.json"), load("download.json")

    def chunk_records(session: Json) -> list[str]:
        return [s["record"] for s in session["steps"] if s.get("event", {}).get("type") == "Chunk"]

    assert chunk_records(download["session"]) == chunk_records(upload["session"])
    assert len(chunk_records(upload["session"])) == 3
    assert download["download"]["content_key"] == upload["upload"]["content_key"]
    assert download["session"]["keys"]["session_id"] != upload["session"]["keys"]["session_id"]
    opened = dict(sealed_plaintexts(download["session"]))
    image_id = bytes.fromhex(download["download"]["image_id"])
    # The content key travels sealed under this session's s2c key, never in clear.
    content_key = bytes.fromhex(download["download"]["content_key"])
    assert opened["DownloadBegin"] == (
        b"\xa0" + content_key + image_id + bytes.fromhex(upload["upload"]["header"])
    )
    for vector in (upload, download):
        for step in vector["session"]["steps"]:
            assert content_key not in bytes.fromhex(step["record"])


# --- 3. bad cases ---------------------------------------------------------------------


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize(("session", "case"), bad_cases())
def test_bad_case(session: Json, case: Json, split: str) -> None:
    steps = session["steps"][: case["after_step"]]
    replayer = Replayer(session, case["receiver"], SPLITS[split])
    replayer.play(steps)
    data = bytes.fromhex(case["input"])
    if split == "bytewise" and len(data) > 4096:
        replayer.split = SPLITS["ragged"]  # the same coverage of record edges, faster
    with pytest.raises(ProtocolError) as caught:
        replayer.receive(data, eof=case["eof"])
    error = caught.value
    assert (type(error).__name__, ErrorCode(error.code).name) == (
        case["expect"]["error"],
        case["expect"]["code"],
    ), str(error)
    assert replayer.raised_by == case["detected_by"]
    if case["detected_by"] == "connection":
        assert reported_code(session, case, steps, replayer) == ErrorCode(error.code)


def reported_code(session: Json, case: Json, steps: list[Json], replayer: Replayer) -> int:
    """The code of the fatal report the receiver queued for its peer (ALERT or sealed ERROR)."""
    out = replayer.conn.data_to_send()
    assert out, "a RemoteProtocolError queues a report for the peer"
    side = case["receiver"]
    # Each side can seal once it has its keys: the client after it received
    # ServerFinished (step 4), the server as soon as it has answered the ClientHello
    # (step 1), since the client may already be idle with keys then (spec 8).
    if len(steps) < (4 if side == "client" else 1):
        assert record_type(out) == RecordType.ALERT
        return int(struct.unpack(">H", out[5:7])[0])
    assert record_type(out) == RecordType.SEALED
    key = bytes.fromhex(session["keys"]["c2s" if side == "client" else "s2c"])
    plaintext = open_record(key, sealed_count(steps, side), out)
    assert plaintext[0] == 0xFF and plaintext[3] == 1, "a fatal ERROR message"
    return int(struct.unpack(">H", plaintext[1:3])[0])


def test_bad_cases_cover_the_required_names() -> None:
    names = {case["name"] for case in load("bad_cases.json")["cases"]}
    required = {
        "stream_truncated", "chunk_dropped", "chunk_reordered", "chunk_duplicated",
        "chunk_bit_flip", "chunk_spliced", "data_after_last_chunk", "hmac_bad",
        "server_signature_bad", "server_key_share_substituted", "shared_secret_all_zero",
        "record_replayed", "finished_bad", "version_unsupported", "group_unsupported",
        "record_too_large", "receipt_tampered", "unknown_record_type",
        "unknown_message_type", "sealed_bit_flip", "p256_point_invalid",
    }  # fmt: skip
    assert required <= names
    assert len(names) == len(load("bad_cases.json")["cases"]), "names are unique"


def test_stream_detected_cases_pass_the_connection() -> None:
    """For ``detected_by: stream`` the connection alone accepts the input: no error."""
    data = load("bad_cases.json")
    stream_cases = [c for c in data["cases"] if c["detected_by"] == "stream"]
    assert len(stream_cases) >= 6
    for case in stream_cases:
        session = data["sessions"][case["session"]]
        replayer = Replayer(session, case["receiver"])
        replayer.play(session["steps"][: case["after_step"]])
        replayer.conn.receive_data(bytes.fromhex(case["input"]))
        events = drain(replayer.conn)
        assert events, case["name"]
        with pytest.raises(IntegrityError):  # ... and the application's opener does not
            for event in events:
                replayer.on_event(event)
