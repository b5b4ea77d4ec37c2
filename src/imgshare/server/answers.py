"""How a request is answered when it fails: one mapping from our errors to wire codes.

Every request handler answers a refusal the same way, so that a client always gets the
same code for the same reason (docs/protocol.md, section 8).
"""

from __future__ import annotations

from collections.abc import Iterator

from imgshare.errors import (
    AuthError,
    ConfigError,
    ForbiddenError,
    ImgshareError,
    QuotaError,
    TryLaterError,
)
from imgshare.protocol import events as ev
from imgshare.protocol.constants import MAX_RETRY_AFTER_MS, ErrorCode
from imgshare.store import UserExistsError

#: What a request handler yields: the events to send, in order.
Answers = Iterator[ev.Event]

#: Why a request was not served while the database or the bucket cannot be reached
#: (docs/operations.md, "Several nodes"): says what to do, never the library's text.
UNAVAILABLE = "the server's storage (its database or object store) is unreachable: try again later"


def error(code: ErrorCode, message: str) -> ev.Error:
    """A non-fatal ERROR: the request is answered, the session goes on."""
    return ev.Error(code, message, fatal=False)


def try_later(exc: TryLaterError) -> ev.Error:
    """The TRY_LATER answer for ``exc``, with its retry hint."""
    retry_after_ms = min(MAX_RETRY_AFTER_MS, max(1, round(exc.retry_after * 1000)))
    return ev.Error(ErrorCode.TRY_LATER, str(exc), retry_after_ms=retry_after_ms)


def refusal(exc: ImgshareError) -> ev.Error:
    """The answer to a request refused with ``exc`` (checked in this order)."""
    if isinstance(exc, TryLaterError):
        return try_later(exc)
    if isinstance(exc, QuotaError):
        return error(ErrorCode.QUOTA_EXCEEDED, str(exc))
    if isinstance(exc, ForbiddenError):
        return error(ErrorCode.FORBIDDEN, str(exc))
    if isinstance(exc, UserExistsError):
        return error(ErrorCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, ConfigError):
        return error(ErrorCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, AuthError):
        return error(ErrorCode.AUTH_FAILED, str(exc))
    return error(ErrorCode.INTERNAL, "the server could not do that")
