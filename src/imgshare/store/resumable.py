"""Resumable uploads in the catalog: a reservation that holds a durable part.

``ResumableTables`` is a part of ``SQLCatalog`` (its queries are the shared SQL of
``imgshare.store.catalog``; the columns came with schema version 5). An upload in
flight holds a reservation (``uploads_in_flight``): quota and one of its user's
upload places, leased by the process receiving it. Once part of its sealed object is
durable the reservation also records what a resume needs (docs/protocol.md, 7.10):

* the image id the server chose, the upload id, the header and the content key
  (wrapped under the storage key, the image id as associated data: the wrapping the
  image row will keep);
* how many chunks, and how many bytes of sealed object, are durable;
* until when it may be resumed (``resume_until_ms``, 24 h after it was last worked on).

Its lease (``holder``, ``expires_ms``) says whether a connection is receiving it now.
When that connection ends the upload is *parked*: no holder, a lapsed lease, the
reservation kept, so quota and the place stay held. ``claim_partial`` hands a parked
upload to the connection that resumes it; an upload whose lease is still live (its
old connection has not noticed yet that the client is gone) answers "try later".
Every rule is one statement or one transaction over a locked row, so it holds across
worker processes and nodes (the partial object itself lives in the blob store).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from imgshare.errors import TryLaterError

if TYPE_CHECKING:
    from imgshare.store.catalog import Database, ImageRecord

T = TypeVar("T")


class _Transactions(Protocol):
    _LOCK_ROWS: str

    def _read(self, action: str, body: Callable[[Database], T]) -> T: ...
    def _write(self, action: str, body: Callable[[Database], T], *, durable: bool = True) -> T: ...


_Base: Any = _Transactions if TYPE_CHECKING else object

#: A resume that finds its upload still held by a connection waits this long (s).
HELD_RETRY = 2.0

_COLUMNS = (
    "id, user_id, image_id, upload_id, header, wrapped_key, durable_chunks, "
    "durable_bytes, created_ms, resume_until_ms"
)


@dataclass(frozen=True, slots=True)
class PartialUpload:
    """A resumable upload's reservation row."""

    reservation: int
    user_id: int
    image_id: str
    upload_id: bytes
    header: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    durable_chunks: int
    durable_bytes: int
    created_ms: int
    resume_until_ms: int


def _partial(row: Any) -> PartialUpload:
    return PartialUpload(
        int(row[0]),
        int(row[1]),
        str(row[2]),
        bytes(row[3]),
        bytes(row[4]),
        bytes(row[5]),
        int(row[6]),
        int(row[7]),
        int(row[8]),
        int(row[9]),
    )


class ResumableTables(_Base):  # type: ignore[misc]
    """Resumable uploads (part of ``SQLCatalog``; see the module docstring)."""

    def mark_durable(
        self,
        reservation: int,
        *,
        image_id: str,
        upload_id: bytes,
        header: bytes,
        wrapped_key: bytes,
        chunks: int,
        sealed_bytes: int,
        now: int,
        until: int,
    ) -> bool:
        """Record that the first ``chunks`` chunks (``sealed_bytes`` bytes of sealed
        object) of the upload holding ``reservation`` are durable; return False if it
        cannot be resumed (its reservation is gone, or the user already has a
        resumable upload with that upload id). Not a durable commit: a crash that
        loses it only makes a resume start earlier (the object is cut back to what
        the row says) or lose the upload, never corrupt one."""

        def body(db: Database) -> int:
            return int(
                db.execute(
                    "UPDATE uploads_in_flight SET image_id = ?, upload_id = ?, header = ?, "
                    "wrapped_key = ?, durable_chunks = ?, durable_bytes = ?, "
                    "created_ms = CASE WHEN created_ms = 0 THEN ? ELSE created_ms END, "
                    "resume_until_ms = ? WHERE id = ? AND NOT EXISTS (SELECT 1 FROM "
                    "uploads_in_flight AS other WHERE other.user_id = uploads_in_flight.user_id "
                    "AND other.upload_id = ? AND other.id != uploads_in_flight.id)",
                    (
                        image_id,
                        upload_id,
                        header,
                        wrapped_key,
                        chunks,
                        sealed_bytes,
                        now,
                        until,
                        reservation,
                        upload_id,
                    ),
                ).rowcount
            )

        count: int = self._write("record a durable part", body, durable=False)
        return count == 1

    def park_upload(self, reservation: int, until: int) -> bool:
        """The connection receiving a resumable upload ended: keep its reservation,
        held by nobody, until ``until``. Returns False when it is not resumable (the
        caller then releases it)."""
        count: int = self._write(
            "park an upload",
            lambda db: (
                db.execute(
                    "UPDATE uploads_in_flight SET holder = '', expires_ms = 0, "
                    "resume_until_ms = ? WHERE id = ? AND upload_id IS NOT NULL",
                    (until, reservation),
                ).rowcount
            ),
            durable=False,
        )
        return count == 1

    def claim_partial(
        self, user_id: int, upload_id: bytes, *, holder: str, expires: int, now: int
    ) -> PartialUpload | None:
        """Hand the user's resumable upload ``upload_id`` to ``holder`` (leased until
        ``expires``); None if there is none (or it expired). Raises ``TryLaterError``
        while another connection still holds it."""

        def body(db: Database) -> PartialUpload | None:
            row = db.execute(
                f"SELECT {_COLUMNS}, expires_ms FROM uploads_in_flight WHERE user_id = ? "
                f"AND upload_id = ? AND resume_until_ms >= ?{self._LOCK_ROWS}",
                (user_id, upload_id, now),
            ).fetchone()
            if row is None:
                return None
            if int(row[-1]) >= now:
                raise TryLaterError(
                    "this upload is still being received on another connection", HELD_RETRY
                )
            db.execute(
                "UPDATE uploads_in_flight SET holder = ?, expires_ms = ? WHERE id = ?",
                (holder, expires, row[0]),
            )
            return _partial(row)

        claimed: PartialUpload | None = self._write("claim a resumable upload", body, durable=False)
        return claimed

    def evict_idle_partial(self, user_id: int, now: int) -> PartialUpload | None:
        """Drop the user's oldest resumable upload that no connection holds, to make
        room for a new one; return it (the caller removes its object) or None."""
        row = self._write(
            "drop a resumable upload",
            lambda db: db.execute(
                "DELETE FROM uploads_in_flight WHERE id = (SELECT id FROM uploads_in_flight "
                "WHERE user_id = ? AND upload_id IS NOT NULL AND expires_ms < ? "
                f"ORDER BY created_ms, id LIMIT 1) RETURNING {_COLUMNS}",
                (user_id, now),
            ).fetchone(),
            durable=False,
        )
        return None if row is None else _partial(row)

    def expire_partials(self, now: int) -> list[PartialUpload]:
        """Drop the resumable uploads nobody holds whose time is up; return them (the
        caller removes their objects). Each is returned by exactly one call."""
        rows = self._write(
            "expire resumable uploads",
            lambda db: db.execute(
                "DELETE FROM uploads_in_flight WHERE upload_id IS NOT NULL AND "
                f"expires_ms < ? AND resume_until_ms < ? RETURNING {_COLUMNS}",
                (now, now),
            ).fetchall(),
            durable=False,
        )
        return [_partial(row) for row in rows]

    def partial_image_ids(self) -> set[str]:
        """The image ids of every resumable upload (their partial objects are not
        orphans)."""
        ids: set[str] = self._read(
            "list resumable uploads",
            lambda db: {
                str(row[0])
                for row in db.execute(
                    "SELECT image_id FROM uploads_in_flight WHERE image_id IS NOT NULL"
                )
            },
        )
        return ids

    def partials_of(self, user_id: int) -> list[PartialUpload]:
        """A user's resumable uploads, oldest first."""
        rows = self._read(
            "list resumable uploads",
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM uploads_in_flight WHERE user_id = ? "
                "AND upload_id IS NOT NULL ORDER BY created_ms, id",
                (user_id,),
            ).fetchall(),
        )
        return [_partial(row) for row in rows]

    def stored_upload(self, user_id: int, header: bytes) -> ImageRecord | None:
        """The user's stored image that came with exactly this upload header (an
        upload that finished while its client was gone), or None."""
        from imgshare.store.catalog import IMAGE_COLUMNS, image_from_row

        row = self._read(
            "find a stored upload",
            lambda db: db.execute(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE owner_id = ? AND header = ?",
                (user_id, header),
            ).fetchone(),
        )
        return None if row is None else image_from_row(row)
