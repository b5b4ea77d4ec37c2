"""Thumbnails (docs/protocol.md, section 7.11), against the real server with real
Pillow images: made after the receipt without being asked, served through THUMBNAIL
with no metadata, readable by whoever may read the image (and nobody else), sealed on
disk, and gone with the image."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import RunningServer, noise_bytes, wait_until
from PIL import Image

from imgshare.errors import PeerError
from imgshare.protocol.constants import ErrorCode
from imgshare.store import open_catalog
from imgshare.store.thumbnails import NONE, STORED

Factory = Callable[..., RunningServer]


def thumb_file(server: RunningServer, image_id: str) -> Path:
    return server.data / "thumbs" / "objects" / image_id[:2] / image_id


def state(server: RunningServer, image_id: str) -> int | None:
    with open_catalog(server.data) as catalog:
        return catalog.thumbnail_state(image_id)


def photo_with_metadata(path: Path) -> Path:
    """A 1200 x 800 JPEG whose EXIF holds a GPS position, a camera and an orientation
    (6: turned 90 degrees: it shows 800 x 1200)."""
    image = Image.frombytes("RGB", (1200, 800), noise_bytes(1200 * 800 * 3, seed=5))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS
    image.save(path, "JPEG", quality=85, exif=exif, comment=b"at home")
    return path


def test_a_thumbnail_is_made_after_the_receipt_without_metadata(
    server: RunningServer, tmp_path: Path
) -> None:
    client = server.login()
    result = client.upload(photo_with_metadata(tmp_path / "photo.jpg"))
    # Nobody asked: the server's background maker makes it once the server is idle.
    wait_until(lambda: state(server, result.id) == STORED, timeout=15)
    assert thumb_file(server, result.id).exists()

    answer = client.thumbnail_data(result.id)
    assert answer.media_type == "image/jpeg" and answer.image_id.hex() == result.id
    assert (answer.width, answer.height) == (171, 256)  # upright (EXIF 6), long side 256
    with Image.open(io.BytesIO(answer.data)) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (171, 256)
        assert "exif" not in thumb.info and not thumb.getexif()
        assert "icc_profile" not in thumb.info and "comment" not in thumb.info
    assert b"SecretCam" not in answer.data and b"at home" not in answer.data
    # Sealed on disk: neither the JPEG nor its markers are there in the clear.
    stored = thumb_file(server, result.id).read_bytes()
    assert answer.data[:64] not in stored and b"JFIF" not in stored
    assert client.thumbnail(result.id) == answer.data


def test_a_picture_with_transparency_gets_a_png(server: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "logo.png"
    Image.new("RGBA", (600, 300), (200, 30, 30, 0)).save(path)
    client = server.login()
    result = client.upload(path)
    answer = client.thumbnail_data(result.id)
    assert answer.media_type == "image/png" and (answer.width, answer.height) == (256, 128)
    with Image.open(io.BytesIO(answer.data)) as thumb:
        assert thumb.mode == "RGBA" and thumb.getpixel((0, 0))[3] == 0


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF", "BMP", "PNG"])
def test_every_format_gets_a_thumbnail(server: RunningServer, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"noise.{fmt.lower()}"
    Image.frombytes("RGB", (320, 200), noise_bytes(320 * 200 * 3, seed=2)).save(path, fmt)
    client = server.login()
    answer = client.thumbnail_data(client.upload(path).id)
    assert (answer.width, answer.height) == (256, 160)
    with Image.open(io.BytesIO(answer.data)) as thumb:
        thumb.load()


def test_made_on_demand_when_the_maker_has_not_come_to_it(
    server: RunningServer, tmp_path: Path
) -> None:
    service = server.server.service
    maker = service._maker
    assert maker is not None
    maker.stop()  # as if the server were busy with uploads all along
    client = server.login()
    path = tmp_path / "a.jpg"
    Image.frombytes("RGB", (640, 480), noise_bytes(640 * 480 * 3, seed=3)).save(path)
    result = client.upload(path)
    assert state(server, result.id) == 0
    answer = client.thumbnail_data(result.id)
    assert (answer.width, answer.height) == (256, 192)
    assert state(server, result.id) == STORED and thumb_file(server, result.id).exists()


def test_shared_thumbnails_follow_the_image_and_go_with_it(
    make_server: Factory, tmp_path: Path
) -> None:
    server = make_server(users=("alice", "bob", "carol"))
    alice, bob, carol = (server.login(name) for name in ("alice", "bob", "carol"))
    path = tmp_path / "a.jpg"
    Image.frombytes("RGB", (640, 480), noise_bytes(640 * 480 * 3, seed=4)).save(path)
    image_id = alice.upload(path).id

    def refused(session: object, image: str) -> str:
        with pytest.raises(PeerError) as caught:
            session.thumbnail(image)  # type: ignore[attr-defined]
        assert caught.value.code == ErrorCode.NOT_FOUND
        return str(caught.value)

    unknown = refused(bob, "00" * 16)
    assert refused(bob, image_id) == unknown  # worded like an id that does not exist
    alice.share(image_id, "bob")
    assert bob.thumbnail(image_id) == alice.thumbnail(image_id)
    refused(carol, image_id)
    alice.unshare(image_id, "bob")
    refused(bob, image_id)

    assert thumb_file(server, image_id).exists()
    alice.delete(image_id)
    assert not thumb_file(server, image_id).exists()  # gone on disk with the image
    refused(alice, image_id)


def test_an_image_no_thumbnail_can_be_made_of_answers_not_found(
    server: RunningServer, tmp_path: Path
) -> None:
    client = server.login()
    path = tmp_path / "a.png"
    Image.frombytes("RGB", (64, 48), noise_bytes(64 * 48 * 3, seed=6)).save(path)
    image_id = client.upload(path).id
    with open_catalog(server.data) as catalog:
        catalog.set_thumbnail(image_id, NONE)
    with pytest.raises(PeerError) as caught:
        client.thumbnail(image_id)
    assert caught.value.code == ErrorCode.NOT_FOUND and "no thumbnail" in str(caught.value)
