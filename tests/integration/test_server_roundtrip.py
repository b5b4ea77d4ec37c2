"""Images go in and come back out byte for byte (issue 4, "Done when").

Real server on 127.0.0.1:0, real TLS, real files and SQLite. For each upload the
tests check what the design promises: the download is byte-identical, the server
logged the same HMAC the client computed, the inbox copy is the original, the sealed
object is the uploader's STREAM chunks (not the plaintext) and the catalog has the row
before the receipt arrives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    FORMATS,
    RunningServer,
    catalog_image,
    catalog_images,
    inbox_files,
    noise_image,
    object_path,
    open_sealed_object,
    png_of_exact_size,
    server_hmacs,
)

from imgshare import pki
from imgshare.client import ClientSession, UploadResult
from imgshare.errors import PeerError
from imgshare.protocol import events as ev
from imgshare.protocol.constants import DEFAULT_CHUNK_SIZE, TAG_SIZE, ErrorCode

MIB = 1024 * 1024


def _check_stored(
    server: RunningServer,
    result: UploadResult,
    original: bytes,
    caplog: pytest.LogCaptureFixture,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Everything the server keeps of one upload matches the original."""
    data = server.data
    # the receipt vouches for exactly these bytes
    assert result.size == len(original)
    assert result.sha256 == hashlib.sha256(original).hexdigest()
    assert result.receipt.body.hmac.hex() == result.hmac
    # the HMAC line of the server's log is the client's HMAC
    assert result.hmac in server_hmacs(caplog.records)
    # the inbox copy is the original
    copies = [p for p in inbox_files(data, "alice") if result.id in p.name]
    assert len(copies) == 1
    assert copies[0].read_bytes() == original
    # the sealed object is ciphertext: the chunks exactly, tag and all
    chunks = -(-len(original) // chunk_size)
    sealed = object_path(data, result.id).read_bytes()
    assert len(sealed) == len(original) + TAG_SIZE * chunks
    assert sealed[: min(64, len(original))] != original[:64]
    assert original[: min(len(original), 4096)] not in sealed
    assert open_sealed_object(data, result.id) == original
    # the catalog row
    row = catalog_image(data, result.id)
    assert row is not None
    assert row["size"] == len(original)
    assert row["hmac"].hex() == result.hmac
    assert row["name"] == result.name
    assert row["inbox_name"] == copies[0].name


def _round_trip(
    server: RunningServer,
    client: ClientSession,
    path: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> UploadResult:
    original = path.read_bytes()
    result = client.upload(path, sha256=True)
    _check_stored(server, result, original, caplog)
    out = tmp_path / f"back-{path.name}"
    fetched = client.download(result.id, out)
    assert out.read_bytes() == original
    assert fetched.hmac == result.hmac
    assert fetched.sha256 == result.sha256
    assert fetched.name == path.name
    return result


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip_each_format(
    fmt: str,
    server: RunningServer,
    client: ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = noise_image(tmp_path / f"noise.{FORMATS[fmt]}", fmt, (80, 60), seed=len(fmt))
    result = _round_trip(server, client, path, tmp_path, caplog)
    row = catalog_image(server.data, result.id)
    assert row is not None
    assert (row["format"], row["width"], row["height"]) == (fmt, 80, 60)
    assert inbox_files(server.data, "alice")[0].suffix == f".{FORMATS[fmt]}"


def test_round_trip_one_pixel_png(
    server: RunningServer, client: ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = noise_image(tmp_path / "dot.png", "PNG", (1, 1))
    assert path.stat().st_size < 100
    _round_trip(server, client, path, tmp_path, caplog)


def test_round_trip_several_mib(
    server: RunningServer, client: ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = noise_image(tmp_path / "big.bmp", "BMP", (1400, 1300), seed=3)
    assert path.stat().st_size > 5 * MIB  # 21 chunks of 256 KiB, the last one short
    assert path.stat().st_size % DEFAULT_CHUNK_SIZE != 0
    _round_trip(server, client, path, tmp_path, caplog)


@pytest.mark.parametrize("below_cap", [1, 0], ids=["cap-1", "cap"])
def test_round_trip_at_the_size_cap(
    below_cap: int,
    make_server: Callable[..., RunningServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = 3 * MIB
    server = make_server(max_image_size=cap)
    path = png_of_exact_size(tmp_path / "edge.png", cap - below_cap)
    assert path.stat().st_size == cap - below_cap
    _round_trip(server, server.login(), path, tmp_path, caplog)


def test_a_small_chunk_size_round_trips(
    server: RunningServer, client: ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = noise_image(tmp_path / "small-chunks.png", "PNG", (60, 60))
    original = path.read_bytes()
    result = client.upload(path, chunk_size=4096, sha256=True)
    _check_stored(server, result, original, caplog, chunk_size=4096)
    out = tmp_path / "back.png"
    client.download(result.id, out)
    assert out.read_bytes() == original


def test_receipt_only_after_durability(
    server: RunningServer, client: ClientSession, tmp_path: Path
) -> None:
    """When the receipt is in the client's hands, object, inbox copy and row exist."""
    path = noise_image(tmp_path / "durable.jpg", "JPEG", (64, 64))
    original = path.read_bytes()
    result = client.upload(path)
    # checked from the client side at once, through the file system and a separate
    # SQLite connection: nothing is still in a temp file or an open transaction
    assert object_path(server.data, result.id).is_file()
    copies = [p for p in inbox_files(server.data, "alice") if result.id in p.name]
    assert [p.read_bytes() for p in copies] == [original]
    row = catalog_image(server.data, result.id)
    assert row is not None and row["hmac"].hex() == result.hmac
    assert not [p for p in server.files() if p.endswith(".part")]


def test_stored_object_is_the_chunks_as_sent(server: RunningServer, tmp_path: Path) -> None:
    """The sealed object is the concatenation of the CHUNK records the client sent."""
    data = noise_image(tmp_path / "exact.png", "PNG", (50, 50)).read_bytes()
    with server.raw() as raw:
        raw.login("alice")
        upload = raw.prepare_upload(data, "exact.png", chunk_size=4096)
        assert len(upload.chunks) >= 2
        assert isinstance(raw.begin_upload(upload), ev.UploadReady)
        for index in range(len(upload.chunks)):
            raw.send_chunk(upload, index)
        raw.send(ev.UploadEnd(upload.hmac))
        receipt = raw.receive()
    assert isinstance(receipt, ev.Receipt)
    image_id = receipt.body.image_id.hex()
    assert object_path(server.data, image_id).read_bytes() == b"".join(upload.chunks)
    row = catalog_image(server.data, image_id)
    assert row is not None and row["header"] == upload.header.encode()


def test_list_shows_own_images_only(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = make_server(users=("alice", "bob"))
    alice, bob = server.login("alice"), server.login("bob")
    first = alice.upload(noise_image(tmp_path / "a.png", "PNG", seed=1))
    second = alice.upload(noise_image(tmp_path / "b.gif", "GIF", seed=2))
    bobs = bob.upload(noise_image(tmp_path / "c.webp", "WEBP", seed=3))
    listed = alice.list_images()
    assert [e.image_id.hex() for e in listed] == [first.id, second.id]
    assert [(e.name, e.size, e.owner) for e in listed] == [
        ("a.png", first.size, "alice"),
        ("b.gif", second.size, "alice"),
    ]
    assert [e.hmac.hex() for e in listed] == [first.hmac, second.hmac]
    assert [e.image_id.hex() for e in bob.list_images()] == [bobs.id]
    assert len(catalog_images(server.data)) == 3


def test_many_uploads_on_one_session(
    server: RunningServer, client: ClientSession, tmp_path: Path
) -> None:
    results = [
        client.upload(noise_image(tmp_path / f"n{i}.png", "PNG", (20, 20), seed=i))
        for i in range(5)
    ]
    assert len({r.id for r in results}) == 5
    assert len(catalog_images(server.data)) == 5
    assert len(inbox_files(server.data, "alice")) == 5


def test_no_inbox_stores_the_sealed_object_only(
    make_server: Callable[..., RunningServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(inbox=False)
    client = server.login()
    path = noise_image(tmp_path / "private.tif", "TIFF", (40, 30))
    original = path.read_bytes()
    result = client.upload(path)
    assert inbox_files(server.data, "alice") == []
    assert open_sealed_object(server.data, result.id) == original
    row = catalog_image(server.data, result.id)
    assert row is not None
    assert row["inbox_name"] is None
    assert (row["format"], row["width"], row["height"]) == ("TIFF", 40, 30)
    assert result.hmac in server_hmacs(caplog.records)
    out = tmp_path / "back.tif"
    client.download(result.id, out)
    assert out.read_bytes() == original
    # still validated: a non-image is refused without an inbox too
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 50)
    before = server.files()
    with pytest.raises(PeerError) as caught:
        client.upload(text)
    assert caught.value.code == ErrorCode.NOT_AN_IMAGE
    assert server.files() == before
    assert len(catalog_images(server.data)) == 1
    assert not [p for p in server.files() if "inbox" in p]


def test_given_certificates_and_a_restart_on_the_same_data(
    make_server: Callable[..., RunningServer], tmp_path: Path, pki_paths: pki.CertificatePaths
) -> None:
    """``cert``/``key`` settings replace the first-start generator; a restart on the
    same data folder keeps users and images, and serves them under the same key."""
    first = make_server(cert=pki_paths.server_cert, key=pki_paths.server_key, ca=pki_paths.ca_cert)
    assert not (first.data / "certs").exists()
    path = noise_image(tmp_path / "keep.png", "PNG")
    result = first.login().upload(path)
    first.close()
    again = make_server(
        data=first.data, ca=pki_paths.ca_cert, cert=pki_paths.server_cert, key=pki_paths.server_key
    )
    out = tmp_path / "kept.png"
    fetched = again.login().download(result.id, out)
    assert out.read_bytes() == path.read_bytes()
    assert fetched.hmac == result.hmac


def test_sha256_is_computed_only_when_asked(client: ClientSession, tmp_path: Path) -> None:
    path = noise_image(tmp_path / "plain.png", "PNG", (16, 16))
    assert client.upload(path).sha256 is None
    assert client.upload(path, sha256=True).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
