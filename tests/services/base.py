"""What the throwaway servers of the tests share: the error they raise when they cannot
be found or started, and how a session fixture starts one (failing, never skipping,
the tests that need it)."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import pytest


class ServiceError(RuntimeError):
    """A server the tests need could not be found or started; the message says why
    (and the end of its log, where there is one)."""


class Service(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


def started(server: S, what: str) -> S:
    """``server`` started, or the test failed with why ("cannot start WHAT: ..."),
    after ``stop`` tidied what the attempt left."""
    failure = None
    try:
        server.start()
    except ServiceError as exc:
        server.stop()
        failure = f"cannot start {what}: {exc}"
    if failure is not None:  # outside the except: no chained traceback in the report
        pytest.fail(failure, pytrace=False)
    return server
