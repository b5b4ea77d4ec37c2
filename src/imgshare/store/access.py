"""Who may do what, in the catalog: shares, API tokens, invitations, the audit trail.

``AccessTables`` is a part of ``SQLCatalog`` (the tables are in its schema, version
4, in SQLite and PostgreSQL alike), kept apart because it is one idea: the rows that
grant access, and the record of who used them. Its queries are the shared SQL of
``imgshare.store.catalog``.

* A share lets one user fetch another's image until it expires (0: until unshared).
  An expired share stops working at once (every check compares its expiry with now);
  ``expire_shares`` then removes it and says so in the audit trail.
* A token is a random secret whose SHA-256 is stored; logging in with one costs one
  indexed lookup. ``last_used_ms`` is written at most once a minute per token.
* An invitation is a one-time code (also hashed) that lets one person register while
  registration is by invitation.
* The audit trail keeps security events with the user they concern, the client's
  network and a JSON detail; its commits are not durable ones (SQLite skips the WAL's
  fsync, PostgreSQL's ``synchronous_commit`` is off for them; the next durable commit
  takes them along), so a crash may lose the last few events, never a user or image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from imgshare.errors import ForbiddenError

if TYPE_CHECKING:
    from imgshare.store.catalog import Database, ImageRecord, User

T = TypeVar("T")


class _Transactions(Protocol):
    def _read(self, action: str, body: Callable[[Database], T]) -> T: ...
    def _write(self, action: str, body: Callable[[Database], T], *, durable: bool = True) -> T: ...


_Base: Any = _Transactions if TYPE_CHECKING else object

#: Write a token's last use at most this often (ms): a login need not be a write.
_LAST_USED_STEP = 60_000
#: The largest integer SQLite (and a PostgreSQL BIGINT) holds. The wire carries times
#: and ids as u64: a request handler refuses (or, for a bound, clamps) a larger one,
#: which the database would not even take.
MAX_INTEGER = 2**63 - 1


class InvitationError(ForbiddenError):
    """The invitation code is unknown, used or expired (one answer for all three)."""


@dataclass(frozen=True, slots=True)
class ShareRecord:
    username: str
    granted_ms: int
    expires_ms: int  # 0: until unshared


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: int
    user_id: int
    name: str
    created_ms: int
    expires_ms: int  # 0: never
    last_used_ms: int  # 0: never


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """A security event on its way to the trail."""

    time_ms: int
    event: str
    user_name: str | None
    network: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    time_ms: int
    event: str
    user_name: str | None
    network: str | None
    detail: dict[str, Any]


_LIVE_SHARE = "(shares.expires_ms = 0 OR shares.expires_ms > ?)"
_LIVE_TOKEN = "(tokens.expires_ms = 0 OR tokens.expires_ms > ?)"
_TOKEN_COLUMNS = "id, user_id, name, created_ms, expires_ms, last_used_ms"


class AccessTables(_Base):  # type: ignore[misc]
    """Shares, tokens, invitations and the audit trail (part of ``SQLCatalog``)."""

    # -- shares ---------------------------------------------------------------------

    def share_image(self, image_id: str, user_id: int, now: int, expires_ms: int) -> None:
        """Let ``user_id`` fetch ``image_id`` until ``expires_ms`` (0: until unshared);
        sharing again replaces the expiry."""
        self._write(
            "share an image",
            lambda db: db.execute(
                "INSERT INTO shares (image_id, user_id, granted_ms, expires_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (image_id, user_id) DO UPDATE SET "
                "granted_ms = excluded.granted_ms, expires_ms = excluded.expires_ms",
                (image_id, user_id, now, expires_ms),
            ),
        )

    def unshare_image(self, image_id: str, user_id: int) -> bool:
        """Take a share back; return whether there was one."""
        count: int = self._write(
            "unshare an image",
            lambda db: (
                db.execute(
                    "DELETE FROM shares WHERE image_id = ? AND user_id = ?", (image_id, user_id)
                ).rowcount
            ),
        )
        return count > 0

    def shares_of(self, image_id: str, now: int) -> list[ShareRecord]:
        """The live shares of an image, by user name."""
        rows = self._read(
            "list shares",
            lambda db: db.execute(
                "SELECT users.name, shares.granted_ms, shares.expires_ms FROM shares "
                "JOIN users ON users.id = shares.user_id "
                f"WHERE shares.image_id = ? AND {_LIVE_SHARE} ORDER BY users.name",
                (image_id, now),
            ).fetchall(),
        )
        return [ShareRecord(*row) for row in rows]

    def readable_image(self, image_id: str, user_id: int, now: int) -> ImageRecord | None:
        """The image if ``user_id`` owns it or holds a live share of it, else None:
        an image one may not read and one that does not exist look the same."""
        from imgshare.store.catalog import IMAGE_COLUMNS, image_from_row

        columns = ", ".join(f"images.{c.strip()}" for c in IMAGE_COLUMNS.split(","))
        row = self._read(
            "get image",
            lambda db: db.execute(
                f"SELECT {columns} FROM images WHERE images.id = ? AND (images.owner_id = ? "
                "OR EXISTS (SELECT 1 FROM shares WHERE shares.image_id = images.id AND "
                f"shares.user_id = ? AND {_LIVE_SHARE}))",
                (image_id, user_id, user_id, now),
            ).fetchone(),
        )
        return None if row is None else image_from_row(row)

    def list_page(
        self,
        user_id: int,
        *,
        shared: bool,
        after: tuple[int, str],
        limit: int,
        now: int,
    ) -> tuple[list[tuple[ImageRecord, str]], bool]:
        """A page of images, oldest first, after ``(created ms, id)``: the user's own,
        or (``shared``) others' shared with them; each with its owner's name. Returns
        the page and whether more follow."""
        from imgshare.store.catalog import IMAGE_COLUMNS, image_from_row

        columns = ", ".join(f"images.{c.strip()}" for c in IMAGE_COLUMNS.split(","))
        if shared:
            where = (
                "JOIN shares ON shares.image_id = images.id AND shares.user_id = ? "
                f"AND {_LIVE_SHARE} WHERE TRUE"
            )
            params: tuple[Any, ...] = (user_id, now)
        else:
            where, params = "WHERE images.owner_id = ?", (user_id,)
        rows = self._read(
            "list images",
            lambda db: db.execute(
                f"SELECT {columns}, users.name FROM images "
                f"JOIN users ON users.id = images.owner_id {where} "
                "AND (images.created_at, images.id) > (?, ?) "
                "ORDER BY images.created_at, images.id LIMIT ?",
                (*params, after[0], after[1], limit + 1),
            ).fetchall(),
        )
        page = [(image_from_row(row[:-1]), str(row[-1])) for row in rows[:limit]]
        return page, len(rows) > limit

    def expire_shares(self, now: int) -> list[tuple[str, str, str]]:
        """Remove shares whose time is up; return ``(image id, owner, user)`` of each.
        Each is returned by exactly one call, however many processes expire at once."""
        rows = self._write(
            "expire shares",
            lambda db: db.execute(
                "DELETE FROM shares WHERE expires_ms != 0 AND expires_ms <= ? RETURNING "
                "image_id, (SELECT users.name FROM images JOIN users ON "
                "users.id = images.owner_id WHERE images.id = shares.image_id), "
                "(SELECT users.name FROM users WHERE users.id = shares.user_id)",
                (now,),
            ).fetchall(),
        )
        return sorted((str(a), str(b), str(c)) for a, b, c in rows)

    # -- tokens ---------------------------------------------------------------------

    def add_token(
        self, user_id: int, name: str, secret_hash: bytes, now: int, expires_ms: int
    ) -> TokenRecord:
        """Store a new token's hash; return its row."""
        row = self._write(
            "create a token",
            lambda db: db.execute(
                "INSERT INTO tokens (user_id, name, secret_hash, created_ms, expires_ms) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (user_id, name, secret_hash, now, expires_ms),
            ).fetchone(),
        )
        return TokenRecord(int(row[0]), user_id, name, now, expires_ms, 0)

    def token_owner(self, secret_hash: bytes, now: int) -> tuple[User, int] | None:
        """The user a live token belongs to, and the token's id; None otherwise."""
        from imgshare.store.catalog import USER_COLUMNS, user_from_row

        columns = ", ".join(f"users.{c.strip()}" for c in USER_COLUMNS.split(","))
        row = self._read(
            "check a token",
            lambda db: db.execute(
                f"SELECT {columns}, tokens.id, tokens.last_used_ms FROM tokens "
                f"JOIN users ON users.id = tokens.user_id "
                f"WHERE tokens.secret_hash = ? AND {_LIVE_TOKEN}",
                (secret_hash, now),
            ).fetchone(),
        )
        if row is None:
            return None
        token_id, last_used = int(row[-2]), int(row[-1])
        if now - last_used >= _LAST_USED_STEP:
            self._write(
                "note a token's use",
                lambda db: db.execute(
                    "UPDATE tokens SET last_used_ms = ? WHERE id = ?", (now, token_id)
                ),
                durable=False,
            )
        return user_from_row(row[:-2]), token_id

    def token_alive(self, token_id: int, now: int) -> bool:
        """Whether a token still exists and has not expired."""
        row = self._read(
            "check a token",
            lambda db: db.execute(
                f"SELECT 1 FROM tokens WHERE id = ? AND {_LIVE_TOKEN}", (token_id, now)
            ).fetchone(),
        )
        return row is not None

    def list_tokens(self, user_id: int) -> list[TokenRecord]:
        """A user's tokens, oldest first (expired ones included, marked by their time)."""
        rows = self._read(
            "list tokens",
            lambda db: db.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE user_id = ? ORDER BY id",
                (user_id,),
            ).fetchall(),
        )
        return [TokenRecord(*row) for row in rows]

    def revoke_token(self, user_id: int, token_id: int) -> TokenRecord | None:
        """Delete one of the user's tokens; return it, or None if there was none."""
        row = self._write(
            "revoke a token",
            lambda db: db.execute(
                f"DELETE FROM tokens WHERE id = ? AND user_id = ? RETURNING {_TOKEN_COLUMNS}",
                (token_id, user_id),
            ).fetchone(),
        )
        return None if row is None else TokenRecord(*row)

    def revoke_tokens(self, user_id: int, keep: int | None = None) -> int:
        """Delete all of a user's tokens but ``keep``; return how many."""
        return int(self._write("revoke tokens", lambda db: self.delete_tokens(db, user_id, keep)))

    @staticmethod
    def delete_tokens(db: Database, user_id: int, keep: int | None) -> int:
        """``revoke_tokens`` inside the caller's transaction."""
        if keep is None:
            cursor = db.execute("DELETE FROM tokens WHERE user_id = ?", (user_id,))
        else:
            cursor = db.execute("DELETE FROM tokens WHERE user_id = ? AND id != ?", (user_id, keep))
        return int(cursor.rowcount)

    # -- invitations ----------------------------------------------------------------

    def add_invitation(self, code_hash: bytes, now: int, expires_ms: int) -> None:
        self._write(
            "create an invitation",
            lambda db: db.execute(
                "INSERT INTO invitations (code_hash, created_ms, expires_ms) VALUES (?, ?, ?)",
                (code_hash, now, expires_ms),
            ),
        )

    def invitation_usable(self, code_hash: bytes, now: int) -> bool:
        """Whether an invitation exists, is unused and has not expired (checked before
        any other step of a registration, so a made-up code costs one lookup)."""
        row = self._read(
            "check an invitation",
            lambda db: db.execute(
                "SELECT 1 FROM invitations WHERE code_hash = ? AND used_ms IS NULL "
                "AND expires_ms > ?",
                (code_hash, now),
            ).fetchone(),
        )
        return row is not None

    def use_invitation(self, db: Database, code_hash: bytes, now: int) -> None:
        """Mark an invitation used, inside the caller's transaction (the one that adds
        the user, who is then its ``used_by``). Raises ``InvitationError``.

        One conditional ``UPDATE``: of two registrations racing one code (two nodes),
        the second waits for the first's row lock, then finds it used and changes
        nothing."""
        cursor = db.execute(
            "UPDATE invitations SET used_ms = ? WHERE code_hash = ? AND used_ms IS NULL "
            "AND expires_ms > ?",
            (now, code_hash, now),
        )
        if cursor.rowcount != 1:
            raise InvitationError("invalid, used or expired invitation")

    # -- the audit trail ------------------------------------------------------------

    def audit(
        self,
        event: str,
        user_name: str | None,
        network: str | None,
        now: int,
        **detail: Any,
    ) -> None:
        """Record a security event (see the module docstring on durability)."""
        self.audit_many([AuditEvent(now, event, user_name, network, detail)])

    def audit_many(self, events: Sequence[AuditEvent]) -> None:
        """Record several security events in one transaction."""
        rows = [
            (e.time_ms, e.event, e.user_name, e.network, json.dumps(e.detail, sort_keys=True))
            for e in events
        ]

        def insert(db: Database) -> None:
            for row in rows:
                db.execute(
                    "INSERT INTO audit (time_ms, event, user_name, network, detail) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                )

        self._write("record events", insert, durable=False)

    def audit_events(
        self, *, user_name: str | None = None, event: str | None = None, limit: int = 1000
    ) -> list[AuditRecord]:
        """The newest ``limit`` events (of one user, or one kind), oldest first."""
        clauses, params = [], []
        if user_name is not None:
            clauses.append("user_name = ?")
            params.append(user_name)
        if event is not None:
            clauses.append("event = ?")
            params.append(event)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(
            "read the audit trail",
            lambda db: db.execute(
                "SELECT id, time_ms, event, user_name, network, detail FROM audit "
                f"{where} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall(),
        )
        return [
            AuditRecord(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))
            for row in reversed(rows)
        ]

    def count_events(self, event: str, network: str, since_ms: int) -> int:
        """How many ``event`` events came from ``network`` since ``since_ms``."""
        row = self._read(
            "count events",
            lambda db: db.execute(
                "SELECT COUNT(*) FROM audit WHERE event = ? AND network = ? AND time_ms >= ?",
                (event, network, since_ms),
            ).fetchone(),
        )
        return int(row[0])
