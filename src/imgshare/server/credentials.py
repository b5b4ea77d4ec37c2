"""Secrets other than passwords: API tokens and invitation codes.

Both are 256 random bits, shown once and kept only as a SHA-256 (a secret that
cannot be guessed needs no slow hash): checking a token costs one indexed lookup,
not an argon2id hash, which is what makes "log in once" cheap. Their text form is a
prefix that says what they are, then URL-safe base64: ``imgshare-token-...`` and
``imgshare-invite-...``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from imgshare.errors import AuthError
from imgshare.store import Catalog, User
from imgshare.store.access import TokenRecord

TOKEN_PREFIX = b"imgshare-token-"
INVITE_PREFIX = "imgshare-invite-"
_SECRET_BYTES = 32


def _random(prefix: bytes) -> bytes:
    body = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=")
    return prefix + body


def secret_hash(secret: bytes) -> bytes:
    """What the catalog keeps of a token or an invitation code."""
    return hashlib.sha256(secret).digest()


class Tokens:
    """API tokens over a catalog; thread-safe."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def create(self, user: User, name: str, now: int, expires_ms: int) -> tuple[TokenRecord, bytes]:
        """A new token: its row, and its secret (to show once, never stored)."""
        secret = _random(TOKEN_PREFIX)
        record = self._catalog.add_token(user.id, name, secret_hash(secret), now, expires_ms)
        return record, secret

    def login(self, secret: bytes, now: int) -> tuple[User, int]:
        """The user a live token belongs to, and the token's id. Raises ``AuthError``
        alike for an unknown, expired and revoked token."""
        if not secret.startswith(TOKEN_PREFIX):
            raise AuthError("invalid or expired token")
        found = self._catalog.token_owner(secret_hash(secret), now)
        if found is None:
            raise AuthError("invalid or expired token")
        return found


def new_invitation(catalog: Catalog, now: int, expires_ms: int) -> str:
    """A one-time invitation code, valid until ``expires_ms``, to print once."""
    code = _random(INVITE_PREFIX.encode()).decode("ascii")
    catalog.add_invitation(secret_hash(code.encode()), now, expires_ms)
    return code
