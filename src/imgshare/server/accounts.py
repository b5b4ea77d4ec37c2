"""Minimal accounts: user names, argon2id password hashes, constant-answer logins.

Password hashing: argon2id, time_cost=3, memory_cost=64 MiB, parallelism=1,
16-byte salt, 32-byte hash. That is stronger than every OWASP option (the strongest
is m=46 MiB, t=1, p=1) and is RFC 9106's second recommendation with one lane: about
170 ms and 64 MiB per hash on the 2-core dev machine. One lane, because concurrency
comes from the semaphore below rather than from threads inside one hash. Hashes made
with other parameters are upgraded on the next successful login
(``check_needs_rehash``).

Logins give the same answer and take the same time whether the user is unknown or
the password wrong: an unknown user is verified against a dummy hash made at start-up
with the same parameters. Hashes go through a ``HashGate`` (at most
``max_concurrent_hashes`` at once, 2 on this machine, and a bounded wait), so a login
flood is answered "try again" (``TryLaterError``) instead of exhausting memory or
failing right passwords; a ``Throttle`` (the server's ``LoginThrottle``) slows
attempts after failed logins, per account and per network.

Passwords are NFKC-normalised (NIST SP 800-63B) so that the same password typed on
different systems matches; their length (8..1024 characters) is checked after that.
Passwords never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import unicodedata
from typing import Protocol

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from imgshare.errors import AuthError, ConfigError, ForbiddenError, StorageError
from imgshare.protocol.constants import USERNAME_PATTERN
from imgshare.server.credentials import secret_hash
from imgshare.server.logins import HashGate, Line
from imgshare.store.access import InvitationError
from imgshare.store.catalog import Catalog, DeletedImage, User, UserExistsError, now_ms

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(USERNAME_PATTERN)
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
ARGON2_TIME_COST = 3
ARGON2_MEMORY_COST_KIB = 65536
ARGON2_PARALLELISM = 1
DEFAULT_MAX_CONCURRENT_HASHES = 2
_AUTH_FAILED = "invalid username or password"


def default_hasher() -> PasswordHasher:
    """The argon2id hasher with the documented parameters."""
    return PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_COST_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


class Throttle(Protocol):
    """Login throttling (``imgshare.server.logins.LoginThrottle`` in the server).

    ``admit`` raises ``TryLaterError`` to refuse an attempt for now, alike for known
    and unknown names, and returns the line it waits in at the hash gate.
    """

    def admit(self, name: str, address: str | None) -> Line: ...
    def failed(self, name: str, address: str | None) -> None: ...
    def succeeded(self, name: str, address: str | None) -> None: ...


class NoThrottle:
    """The ``Throttle`` of admin tools: allows everything, remembers nothing."""

    def admit(self, name: str, address: str | None) -> Line:
        """Allow the attempt, first in line."""
        return Line.KNOWN

    def failed(self, name: str, address: str | None) -> None:
        """Forget it."""

    def succeeded(self, name: str, address: str | None) -> None:
        """Forget it."""


def check_username(name: str) -> str:
    """Return ``name`` if it is a valid user name; raise ``ConfigError`` otherwise."""
    if not isinstance(name, str) or not USERNAME_RE.fullmatch(name):
        raise ConfigError(
            "a user name is 1 to 32 characters: lowercase letters, digits, '_', '.' "
            "and '-', starting with a letter or digit"
        )
    return name


def _normalize_password(password: str) -> str | None:
    """The NFKC form of an acceptable password, or ``None``."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        return None
    secret = unicodedata.normalize("NFKC", password)
    if not MIN_PASSWORD_LENGTH <= len(secret) <= MAX_PASSWORD_LENGTH:
        return None
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return None
    return secret


def _check_password(password: str) -> str:
    secret = _normalize_password(password)
    if secret is None:
        raise ConfigError(
            f"a password is {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters "
            "of valid Unicode"
        )
    return secret


class Accounts:
    """Users and passwords over a ``Catalog``; thread-safe."""

    def __init__(
        self,
        catalog: Catalog,
        hasher: PasswordHasher | None = None,
        *,
        gate: HashGate | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        """Computes one hash (the dummy for unknown users), so it takes ~170 ms."""
        self._catalog = catalog
        self._hasher = hasher or default_hasher()
        self._gate = gate or HashGate(DEFAULT_MAX_CONCURRENT_HASHES)
        self._throttle: Throttle = throttle or NoThrottle()
        # Same parameters as real hashes, so an unknown user costs the same time.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))

    def __repr__(self) -> str:
        return f"Accounts({self._catalog!r})"

    def _hash(self, secret: str, line: Line = Line.KNOWN) -> str:
        with self._gate.slot(line):
            return self._hasher.hash(secret)

    def _verify(self, stored_hash: str, secret: str, line: Line) -> bool:
        with self._gate.slot(line):
            try:
                return self._hasher.verify(stored_hash, secret)
            except InvalidHashError:
                log.error("a stored password hash is malformed")
                return False
            except VerificationError:  # includes VerifyMismatchError
                return False

    def add_user(self, name: str, password: str) -> User:
        """Create a user. Raises ``ConfigError`` for a bad name or password,
        ``UserExistsError`` if the name is taken, ``StorageError``."""
        check_username(name)
        secret = _check_password(password)
        if self._catalog.get_user_by_name(name) is not None:
            raise UserExistsError(f"user {name!r} already exists")
        user = self._catalog.add_user(name, self._hash(secret))
        log.info("added user %s", name)
        return user

    def register(
        self, name: str, password: str, *, mode: str, invitation: str | None = None
    ) -> User:
        """Let someone make their own account, as ``mode`` allows: "closed" (nobody),
        "invite" (with a valid one-time code) or "open".

        Raises ``ForbiddenError`` (closed, or no valid invitation), ``ConfigError``
        for a name or password that breaks the rules, ``UserExistsError``,
        ``TryLaterError`` (the hash gate), ``StorageError``.
        """
        if mode == "closed":
            raise ForbiddenError(
                "registration is closed on this server: ask its administrator for an account"
            )
        check_username(name)
        secret = _check_password(password)
        code_hash = None
        if mode == "invite":
            if not invitation:
                raise ForbiddenError("this server registers by invitation only: give its code")
            code_hash = secret_hash(invitation.encode("utf-8"))
            # Before the name and the hash: a made-up code costs one lookup and learns
            # nothing about which names exist.
            if not self._catalog.invitation_usable(code_hash, now_ms()):
                raise ForbiddenError("invalid, used or expired invitation")
        if self._catalog.get_user_by_name(name) is not None:
            raise UserExistsError(f"the name {name!r} is taken")
        try:
            user = self._catalog.add_user(
                name, self._hash(secret, Line.UNKNOWN), invitation=code_hash
            )
        except InvitationError as exc:
            raise ForbiddenError("invalid, used or expired invitation") from exc
        log.info("registered user %s", name)
        return user

    def change_password(
        self,
        user: User,
        old_password: str,
        new_password: str,
        address: str | None = None,
        *,
        now: int,
        revoke_tokens: bool = False,
        keep_token: int | None = None,
    ) -> int:
        """Replace a user's password, proving the old one first (through the throttle
        and the hash gate, like a login). Sessions that logged in with a password
        before ``now`` end at their next request; with ``revoke_tokens`` so do all
        tokens but ``keep_token``, whose number is returned. Raises ``AuthError`` for a
        wrong old password, ``ConfigError`` for a new one that breaks the rules,
        ``TryLaterError``, ``StorageError``."""
        secret = _check_password(new_password)
        self.authenticate(user.name, old_password, address)
        revoked = self._catalog.change_password_hash(
            user.id, self._hash(secret), now, revoke_tokens=revoke_tokens, keep_token=keep_token
        )
        log.info("changed the password of user %s", user.name)
        return revoked

    def set_password(self, name: str, password: str) -> int:
        """The administrator's reset: a new password, and every session and token of
        the user ended. Returns how many tokens were revoked. Raises ``ConfigError``
        (bad input, no such user)."""
        check_username(name)
        secret = _check_password(password)
        user = self._catalog.get_user_by_name(name)
        if user is None:
            raise ConfigError(f"no user named {name!r}")
        revoked = self._catalog.change_password_hash(
            user.id, self._hash(secret), now_ms(), revoke_tokens=True
        )
        log.info("reset the password of user %s", name)
        return revoked

    def remove_user(self, name: str, *, purge: bool = False) -> list[DeletedImage]:
        """Remove a user; with ``purge`` also their images, returned for disk clean-up.

        Raises ``ConfigError`` if there is no such user or they own images and
        ``purge`` is false.
        """
        check_username(name)
        removed = self._catalog.remove_user(name, purge=purge)
        log.info("removed user %s (%d image(s))", name, len(removed))
        return removed

    def list_users(self) -> list[User]:
        """All users, by name."""
        return self._catalog.list_users()

    def authenticate(self, name: str, password: str, address: str | None = None) -> User:
        """Return the user if the password is right.

        Raises ``AuthError("invalid username or password")`` alike for an unknown user,
        a wrong password, and malformed input, after the same amount of hashing work,
        and counts it against the name and ``address`` (the client's IP address);
        ``TryLaterError`` when the throttle or the hash gate says "not now" (nothing
        counted); ``StorageError``.
        """
        line = self._throttle.admit(name, address)
        secret = _normalize_password(password)
        user = None
        if secret is not None and isinstance(name, str) and USERNAME_RE.fullmatch(name):
            user = self._catalog.get_user_by_name(name)
        stored = user.password_hash if user is not None else self._dummy_hash
        candidate = secret if secret is not None else "-" * MIN_PASSWORD_LENGTH
        ok = self._verify(stored, candidate, line)
        if not ok or user is None or secret is None:
            self._throttle.failed(name, address)
            raise AuthError(_AUTH_FAILED)
        self._throttle.succeeded(name, address)
        if self._hasher.check_needs_rehash(stored):
            user = self._rehash(user, secret)
        return user

    def _rehash(self, user: User, secret: str) -> User:
        """Upgrade a hash made with old parameters; a failure does not fail the login."""
        new_hash = self._hash(secret)
        try:
            self._catalog.set_password_hash(user.id, new_hash)
        except StorageError as exc:
            log.warning("could not upgrade the password hash of user %s: %s", user.name, exc)
            return user
        log.info("upgraded the password hash of user %s", user.name)
        return dataclasses.replace(user, password_hash=new_hash)
