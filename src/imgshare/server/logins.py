"""Who may have a password checked now: the hash gate and the login throttle.

A password check costs one argon2id hash (about 170 ms and 64 MiB), so it is the
scarcest thing the server has. Two mechanisms share it out (docs/design.md,
decision 12; docs/security.md says what they defend):

``HashGate``
    At most ``slots`` hashes run at once. The others wait in one of three bounded
    lines (``Line``): logins from a network that logged in successfully lately go
    first, then those from networks nothing is known of, and last those from a
    network whose last attempt failed. Password guessers fail, so they fall to the
    last line after their first guess, and a flood of them from any number of
    addresses never stands in front of a user's network. A full line, or a wait
    longer than ``max_wait``, is answered ``TryLaterError`` (TRY_LATER on the wire),
    never "wrong password": overload must not look like a failed login, nor count as
    one.

``LoginThrottle``
    Failed logins are counted per account name (whatever the source address) and
    per client network (an IPv4 address, an IPv6 /64), in the catalog, so the count
    survives restarts and will hold across processes. Once there are ``free``
    failures, the next attempt waits ``base * 2**(failures - free)`` seconds after the
    last failure, at most ``max_delay``: an attempt inside that delay is answered
    TRY_LATER without hashing. The right password still gets in after the delay, so
    an attacker can slow an account down but never lock it. Counts are forgotten
    ``forget_after`` seconds after their last failure, and a successful login
    clears its account's count (not its network's).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imgshare.errors import TryLaterError
from imgshare.logs import fields
from imgshare.server.caps import network_of
from imgshare.store.catalog import Catalog

security_log = logging.getLogger("imgshare.security")

#: Hashes measured at start-up cost about this; the gate keeps a running average.
_FIRST_HASH_SECONDS = 0.2
#: The shortest retry hint: a client should not come back within a few milliseconds.
_MIN_RETRY_SECONDS = 0.25


class Line(enum.IntEnum):
    """Where a login waits for a hash slot: a lower line always goes first."""

    KNOWN = 0  # its network logged in successfully lately, and failed no login since
    UNKNOWN = 1  # nothing known of its network (or no network at all)
    SUSPECT = 2  # its network's last login attempt failed


class HashGate:
    """At most ``slots`` password hashes at once; bounded, ranked lines for the rest.

    Thread-safe. ``slot(line)`` is a context manager that raises ``TryLaterError``
    when that line is full or the wait exceeds ``max_wait``. A line moves only while
    every line before it is empty.
    """

    def __init__(self, slots: int, max_waiting: int = 32, max_wait: float = 5.0) -> None:
        if slots < 1 or max_waiting < 0 or max_wait < 0:
            raise ValueError("need slots >= 1, max_waiting >= 0 and max_wait >= 0")
        self._slots = slots
        self._max_waiting = max_waiting
        self._max_wait = max_wait
        self._running = 0
        self._lines: tuple[deque[object], ...] = tuple(deque() for _ in Line)
        self._changed = threading.Condition()
        self._hash_seconds = _FIRST_HASH_SECONDS

    @property
    def waiting(self) -> int:
        with self._changed:
            return sum(len(line) for line in self._lines)

    def _ahead_of(self, line: Line) -> int:
        return sum(len(waiting) for waiting in self._lines[: line + 1])

    def _retry_hint(self, ahead: int) -> float:
        return max(_MIN_RETRY_SECONDS, (ahead + 1) * self._hash_seconds / self._slots)

    def _is_next(self, ticket: object, line: Line) -> bool:
        waiting = self._lines[line]
        if self._running >= self._slots or not waiting or waiting[0] is not ticket:
            return False
        return not any(self._lines[:line])

    @contextlib.contextmanager
    def slot(self, line: Line = Line.KNOWN) -> Iterator[None]:
        """Hold one hash slot, waiting in ``line`` if none is free."""
        waiting = self._lines[line]
        ticket = object()
        with self._changed:
            ahead = self._ahead_of(line)
            if ahead == 0 and self._running < self._slots:
                self._running += 1
            elif len(waiting) >= self._max_waiting:
                raise TryLaterError("too many logins at once", self._retry_hint(ahead))
            else:
                waiting.append(ticket)
                admitted = self._changed.wait_for(
                    lambda: self._is_next(ticket, line), timeout=self._max_wait
                )
                if not admitted:
                    waiting.remove(ticket)
                    self._changed.notify_all()
                    raise TryLaterError("too many logins at once", self._retry_hint(ahead))
                waiting.popleft()
                self._running += 1
                self._changed.notify_all()  # the next in line may fit in a free slot too
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            with self._changed:
                self._running -= 1
                self._hash_seconds = 0.8 * self._hash_seconds + 0.2 * took
                self._changed.notify_all()


@dataclass(frozen=True)
class ThrottlePolicy:
    """How failed logins slow further attempts; times in seconds."""

    free_per_account: int = 5
    free_per_address: int = 20
    base_delay: float = 1.0
    max_delay: float = 60.0
    forget_after: float = 3600.0
    known_for: float = 30 * 86400.0  # a network that logged in is known this long

    def delay(self, failures: int, free: int) -> float:
        """The wait after the last of ``failures`` failures: none before ``free`` of
        them (at least one), then ``base_delay``, doubling with each further failure,
        at most ``max_delay``."""
        first = max(free, 1)
        if failures < first:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2.0 ** min(failures - first, 60)))


_PRUNE_EVERY = 60.0


class LoginThrottle:
    """Growing delays after failed logins, per account and per network (see module)."""

    def __init__(
        self,
        catalog: Catalog,
        policy: ThrottlePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self.policy = policy or ThrottlePolicy()
        self._clock = clock
        self._last_prune = 0.0
        self._prune_lock = threading.Lock()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _since_ms(self, now_ms: int) -> int:
        return now_ms - int(self.policy.forget_after * 1000)

    def admit(self, name: str, address: str | None) -> Line:
        """Allow an attempt now, or raise ``TryLaterError`` with the remaining delay.

        Returns the line the attempt waits in at the hash gate: ``KNOWN`` when its
        network logged in successfully within ``known_for`` and has failed no login
        since, ``SUSPECT`` when its network's last attempt failed, else ``UNKNOWN``.
        """
        now = self._now_ms()
        since = self._since_ms(now)
        network = network_of(address)
        counted = [("account", name, self.policy.free_per_account)]
        if network is not None:
            counted.append(("address", network, self.policy.free_per_address))
        # One transaction reads the counts and, when a delay is in force, claims the
        # attempt, so that attempts arriving together as a delay ends get one guess
        # between them, not one each.
        wait_ms = self._catalog.claim_login_attempt(counted, now, since, self._delay_ms)
        if wait_ms > 0:
            raise TryLaterError(
                "too many failed logins lately; wait before trying again", wait_ms / 1000
            )
        if network is None:
            return Line.UNKNOWN
        failures, last_failure = self._catalog.login_failures("address", network, since)
        succeeded = self._catalog.last_login_success(network)
        if failures and last_failure >= succeeded:
            return Line.SUSPECT
        if succeeded >= now - int(self.policy.known_for * 1000):
            return Line.KNOWN
        return Line.UNKNOWN

    def _delay_ms(self, failures: int, free: int) -> int:
        return int(self.policy.delay(failures, free) * 1000)

    def failed(self, name: str, address: str | None) -> None:
        """Count a failed login against the account name and the network."""
        now = self._now_ms()
        since = self._since_ms(now)
        account = self._catalog.add_login_failure("account", name, now, since)
        network = network_of(address)
        from_network = 0
        if network is not None:
            from_network = self._catalog.add_login_failure("address", network, now, since)
        event = fields(
            event="login_failed",
            user=name,
            peer=address,
            account_failures=account,
            network_failures=from_network,
        )
        delayed = account >= self.policy.free_per_account or (
            from_network >= self.policy.free_per_address
        )
        if delayed:
            security_log.warning("login failed; further logins are delayed", extra=event)
        else:
            security_log.info("login failed", extra=event)
        self._prune(now)

    def succeeded(self, name: str, address: str | None) -> None:
        """A right password: the account's count starts again, and the network is
        known to log in (its later logins go first when the gate is busy)."""
        self._catalog.clear_login_failures("account", name)
        network = network_of(address)
        if network is not None:
            self._catalog.note_login_success(network, self._now_ms())

    def _prune(self, now_ms: int) -> None:
        with self._prune_lock:
            if now_ms / 1000 - self._last_prune < _PRUNE_EVERY:
                return
            self._last_prune = now_ms / 1000
        self._catalog.forget_login_failures(self._since_ms(now_ms))
        self._catalog.forget_login_successes(now_ms - int(self.policy.known_for * 1000))
