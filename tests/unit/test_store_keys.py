"""Storage key: file creation and checks, environment form, wrapping bound to the id."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imgshare.errors import ConfigError, StorageError
from imgshare.store.keys import (
    WRAPPED_KEY_SIZE,
    StorageKey,
    generate_storage_key,
    load_or_create_storage_key,
    storage_key_from_env,
)

KEY = bytes(range(32))
CONTENT_KEY = bytes(range(100, 132))
IMAGE_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER_ID = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def test_wrap_round_trip_and_format() -> None:
    key = StorageKey(KEY)
    wrapped = key.wrap(CONTENT_KEY, IMAGE_ID)
    assert len(wrapped) == WRAPPED_KEY_SIZE == 61
    assert wrapped[0] == 1
    assert key.unwrap(wrapped, IMAGE_ID) == CONTENT_KEY
    assert key.wrap(CONTENT_KEY, IMAGE_ID) != wrapped  # fresh nonce each time


def test_deterministic_wrap_pins_every_byte() -> None:
    nonce = bytes(12)
    expected_ad = b"imgshare storage key wrap v1" + b"\x01" + IMAGE_ID
    expected = b"\x01" + nonce + AESGCM(KEY).encrypt(nonce, CONTENT_KEY, expected_ad)
    assert StorageKey(KEY)._wrap(nonce, CONTENT_KEY, IMAGE_ID) == expected


def test_wrapped_key_is_bound_to_its_image_id() -> None:
    key = StorageKey(KEY)
    wrapped = key.wrap(CONTENT_KEY, IMAGE_ID)
    with pytest.raises(StorageError, match=r"^stored key does not verify$"):
        key.unwrap(wrapped, OTHER_ID)


@pytest.mark.parametrize("position", [0, 1, 12, 13, 40, 60])
def test_any_flipped_byte_fails_opaquely(position: int) -> None:
    key = StorageKey(KEY)
    wrapped = bytearray(key.wrap(CONTENT_KEY, IMAGE_ID))
    wrapped[position] ^= 0x01
    with pytest.raises(StorageError, match=r"^stored key does not verify$"):
        key.unwrap(bytes(wrapped), IMAGE_ID)


@pytest.mark.parametrize("length", [0, 60, 62])
def test_wrong_length_fails(length: int) -> None:
    with pytest.raises(StorageError, match="does not verify"):
        StorageKey(KEY).unwrap(bytes(length), IMAGE_ID)


def test_other_storage_key_fails() -> None:
    wrapped = StorageKey(KEY).wrap(CONTENT_KEY, IMAGE_ID)
    with pytest.raises(StorageError):
        generate_storage_key().unwrap(wrapped, IMAGE_ID)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ConfigError):
        StorageKey(bytes(31))
    with pytest.raises(ValueError, match="content key"):
        StorageKey(KEY).wrap(bytes(16), IMAGE_ID)
    with pytest.raises(ValueError, match="image id"):
        StorageKey(KEY).wrap(CONTENT_KEY, b"")


def test_repr_hides_the_key() -> None:
    key = StorageKey(KEY)
    for text in (repr(key), str(key), f"{key}"):
        assert "hidden" in text
        assert KEY.hex() not in text and repr(KEY)[2:20] not in text


def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "storage.key"
    old_umask = os.umask(0)  # even with no umask, the file must be private
    try:
        first = load_or_create_storage_key(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["storage.key"]  # no temp left
    second = load_or_create_storage_key(path)
    assert second.unwrap(first.wrap(CONTENT_KEY, IMAGE_ID), IMAGE_ID) == CONTENT_KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "storage.key"
    path.write_bytes(KEY)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_or_create_storage_key(path)
    assert KEY.hex() not in str(info.value)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_key_file_of_wrong_length_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "storage.key"
    path.write_bytes(bytes(size))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        load_or_create_storage_key(path)


def test_key_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "storage.key"
    path.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_or_create_storage_key(path)


def test_concurrent_starters_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "storage.key"
    keys: list[StorageKey] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        keys.append(load_or_create_storage_key(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wrapped = keys[0].wrap(CONTENT_KEY, IMAGE_ID)
    assert all(k.unwrap(wrapped, IMAGE_ID) == CONTENT_KEY for k in keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["storage.key"]


def test_key_from_env_accepts_standard_and_urlsafe_base64() -> None:
    key = bytes([0xFB, 0xFF] * 16)  # encodes with '+' '/' or '-' '_'
    wrapped = StorageKey(key).wrap(CONTENT_KEY, IMAGE_ID)
    for text in (
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        " " + base64.b64encode(key).decode() + "\n",
    ):
        assert storage_key_from_env(text).unwrap(wrapped, IMAGE_ID) == CONTENT_KEY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(bytes(16)).decode(), "exactly 32 bytes"),
        (base64.b64encode(bytes(48)).decode(), "exactly 32 bytes"),
        ("", "exactly 32 bytes"),
    ],
)
def test_key_from_env_rejects_bad_values_without_quoting_them(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        storage_key_from_env(value)
    assert not value or value not in str(info.value)
