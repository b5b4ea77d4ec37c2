"""Catalog rows for the unit tests: one maker of an image row, shared."""

from __future__ import annotations

import secrets

from imgshare.store import ImageRecord, User


def make_record(owner: User | int, *, size: int = 1234, inbox: bool = True) -> ImageRecord:
    """A well-formed image row of ``owner`` (a user or a user id) with random bytes."""
    image_id = secrets.token_hex(16)
    return ImageRecord(
        id=image_id,
        owner_id=owner if isinstance(owner, int) else owner.id,
        name="holiday photo.jpg",
        size=size,
        hmac=secrets.token_bytes(32),
        format="JPEG",
        width=640,
        height=480,
        header=b"IMGSHARE-HEADER" + secrets.token_bytes(40),
        wrapped_key=secrets.token_bytes(61),
        inbox_name=f"20240101T000000Z-{image_id}.jpg" if inbox else None,
        created_at=1_700_000_000_000,
    )
