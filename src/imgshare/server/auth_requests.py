"""Requests about who you are: logging in (password, token, client certificate),
registering, changing a password, and API tokens; and INFO, what the server accepts,
which a client asks before it logs in or registers.

Each handler takes the session and its request and yields the answers; every outcome
that matters for security is recorded in the catalog's audit trail. Logging in with a
token or a certificate costs a lookup, not a password hash.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from imgshare.errors import AuthError, ImgshareError, TryLaterError
from imgshare.logs import fields
from imgshare.protocol import events as ev
from imgshare.protocol.constants import MAX_PAGE_ENTRIES, ErrorCode, Registration
from imgshare.server.answers import Answers, error, refusal, try_later
from imgshare.store import User
from imgshare.store.access import MAX_INTEGER
from imgshare.store.catalog import now_ms

if TYPE_CHECKING:
    from imgshare.server.session import Session

log = logging.getLogger("imgshare.server.session")

#: Open registration: the window over which ``registrations_per_address`` count.
REGISTRATION_WINDOW_MS = 3_600_000


def _logged_in(session: Session, user: User, method: str, token_id: int | None = None) -> Answers:
    session.log_in(user, method, token_id)
    session.service.audit.record("login", user.name, session.network, now_ms(), method=method)
    log.info("login", extra=fields(peer=session.peer, user=user.name, method=method))
    yield ev.LoginOk(user.name)


def _failed(session: Session, name: str, method: str, message: str) -> Answers:
    """A failed login: counted on the connection, fatal at the limit."""
    session.login_failures += 1
    session.service.audit.record(
        "login_failed", name or None, session.network, now_ms(), method=method
    )
    if session.login_failures >= session.service.max_login_failures:
        yield ev.Error(ErrorCode.AUTH_FAILED, "too many failed logins", fatal=True)
    else:
        yield error(ErrorCode.AUTH_FAILED, message)


def login(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.Login)
    service = session.service
    try:
        user = service.accounts.authenticate(event.username, event.password, session.address)
    except TryLaterError as exc:
        service.events.event(
            "login_deferred", f"login deferred: {exc}", session.peer, user=event.username
        )
        yield try_later(exc)
        return
    except AuthError:
        yield from _failed(session, event.username, "password", "invalid username or password")
        return
    yield from _logged_in(session, user, "password")


def token_login(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.TokenLogin)
    try:
        user, token_id = session.service.tokens.login(event.token, now_ms())
    except AuthError:
        yield from _failed(session, "", "token", "invalid or expired token")
        return
    yield from _logged_in(session, user, "token", token_id)


def cert_login(session: Session, event: ev.Event) -> Answers:
    name = session.certificate_name
    user = session.service.catalog.get_user_by_name(name) if name else None
    if user is None:
        message = "no client certificate" if not name else "no user for this certificate"
        yield from _failed(session, name or "", "certificate", message)
        return
    yield from _logged_in(session, user, "certificate")


def register(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.Register)
    service = session.service
    now = now_ms()
    try:
        if service.registration == "open" and session.network is not None:
            recent = service.catalog.count_events(
                "registered", session.network, now - REGISTRATION_WINDOW_MS
            )
            if recent >= service.registrations_per_address:
                raise TryLaterError("too many registrations from your network lately", 600.0)
        invitation = event.invitation.decode("utf-8", "replace") or None
        user = service.accounts.register(
            event.username, event.password, mode=service.registration, invitation=invitation
        )
    except ImgshareError as exc:
        yield refusal(exc)
        return
    # Written at once, not queued: the open-registration limit above counts these.
    service.catalog.audit("registered", user.name, session.network, now, mode=service.registration)
    yield ev.Ok()


def passwd(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.Passwd)
    user = session.me
    service = session.service
    now = now_ms()
    try:
        revoked = service.accounts.change_password(
            user,
            event.old_password,
            event.new_password,
            session.address,
            now=now,
            revoke_tokens=event.revoke_tokens,
            keep_token=session.token_id,
        )
    except ImgshareError as exc:
        yield refusal(exc)
        return
    session.logged_in_ms = now  # this session goes on; others with the password end
    service.audit.record(
        "password_changed", user.name, session.network, now, tokens_revoked=revoked
    )
    yield ev.Ok()


def token_create(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.TokenCreate)
    user = session.me
    now = now_ms()
    name = event.name.strip()
    if not name or not name.isprintable():
        yield error(ErrorCode.INVALID_ARGUMENT, "a token needs a name of printable characters")
        return
    if event.expires_ms and event.expires_ms <= now:
        yield error(ErrorCode.INVALID_ARGUMENT, "the token would have expired already")
        return
    if event.expires_ms > MAX_INTEGER:
        yield error(ErrorCode.INVALID_ARGUMENT, "the token's expiry is out of range")
        return
    catalog = session.service.catalog
    if len(catalog.list_tokens(user.id)) >= MAX_PAGE_ENTRIES:
        yield error(ErrorCode.INVALID_ARGUMENT, "too many tokens: revoke some first")
        return
    record, secret = session.service.tokens.create(user, name, now, event.expires_ms)
    session.service.audit.record(
        "token_created", user.name, session.network, now, token_id=record.id, name=name
    )
    yield ev.Token(record.id, secret, record.expires_ms)


def token_list(session: Session, event: ev.Event) -> Answers:
    user = session.me
    tokens = session.service.catalog.list_tokens(user.id)
    yield ev.Tokens(
        tuple(
            ev.TokenInfo(t.id, t.name, t.created_ms, t.expires_ms, t.last_used_ms) for t in tokens
        )
    )


def token_revoke(session: Session, event: ev.Event) -> Answers:
    assert isinstance(event, ev.TokenRevoke)
    user = session.me
    catalog = session.service.catalog
    revoked = (
        catalog.revoke_token(user.id, event.token_id) if event.token_id <= MAX_INTEGER else None
    )
    if revoked is None:
        yield error(ErrorCode.NOT_FOUND, "no such token")
        return
    session.service.audit.record(
        "token_revoked",
        user.name,
        session.network,
        now_ms(),
        token_id=revoked.id,
        name=revoked.name,
    )
    yield ev.Ok()


def info(session: Session, event: ev.Event) -> Answers:
    """The limits a client can check before it sends, and how to get an account."""
    service, limits = session.service, session.conn.limits
    yield ev.ServerInfo(
        max_image_size=limits.max_image_size,
        max_record_size=limits.max_record_size,
        max_pixels=service.image_policy.max_pixels,
        registration=Registration[service.registration.upper()],
        max_login_failures=service.max_login_failures,
    )
