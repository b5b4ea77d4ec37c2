"""Limits on connections: how many, how many not logged in yet, and how slow.

``ConnectionCaps`` counts open connections in total and per address (networks in
``trusted`` skip the per-address cap; none are trusted by default). Connections that
have not logged in yet have a cap of their own, well below the total, so clients that
never log in can never take the places of users who did (docs/design.md, decision 12).
When that cap is full, a new connection takes the place of a waiting one whose login
is not being checked: first one that has failed a login, then one of the address with
the most waiting connections, then the oldest. Squatters pile up on their own
addresses and password guessers fail logins, so they make room for each other first:
a user's single connection is displaced only when every other waiting connection is
as innocent as it is, and even then only if it is the oldest.

``TransferMeter`` enforces a minimum transfer rate: while an image streams, the peer
must move at least ``min_bytes`` in every ``window`` seconds spent waiting for it.
Only time spent waiting on the peer counts, not the server's own work or a slow disk
pushing back, so a slow server never cuts a fast client.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Protocol


@functools.lru_cache(maxsize=4096)  # parsed for every connection, from few addresses
def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a peer (IPv4-mapped IPv6 as IPv4, scope dropped), or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def network_of(address: str | None) -> str | None:
    """The key of a client address for caps and throttles: IPv4 as is, IPv6 by its
    /64 (one customer's block), or None when there is no usable address."""
    ip = _ip(address) if address else None
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Waiting(Protocol):
    """What the caps need of a connection: its peer, whether a login is being
    checked, how many logins it failed, and a way to end it from another thread."""

    peer: str

    @property
    def logging_in(self) -> bool: ...

    @property
    def failed_logins(self) -> int: ...

    def abort(self) -> None: ...


class ConnectionCaps:
    """Counts connections; thread-safe. See the module docstring for the rules."""

    def __init__(
        self,
        total: int,
        per_address: int,
        unauthenticated: int,
        trusted: Sequence[str] = (),
    ) -> None:
        self._total = total
        self._per_address = per_address
        self._unauthenticated = unauthenticated
        self._trusted = [ipaddress.ip_network(n) for n in trusted]
        self._counts: Counter[str] = Counter()
        self._open = 0
        # Not logged in yet, per address, with their order of arrival; how many in all.
        self._waiting: dict[str, dict[Waiting, int]] = {}
        self._waiting_count = 0
        self._arrivals = 0
        self._lock = threading.Lock()

    @property
    def not_logged_in(self) -> int:
        with self._lock:
            return self._waiting_count

    def _make_room(self) -> Waiting | None:
        """Take a waiting connection out of the count, to be aborted (see the module
        docstring for which); None if every waiting one is logging in."""
        best: tuple[tuple[bool, int, int], Waiting, str] | None = None
        for address, queue in self._waiting.items():
            for connection, arrived in queue.items():
                if connection.logging_in:
                    continue
                rank = (connection.failed_logins == 0, -len(queue), arrived)
                if best is None or rank < best[0]:
                    best = (rank, connection, address)
        if best is None:
            return None
        self._forget_waiting(best[1], best[2])
        return best[1]

    def _forget_waiting(self, connection: Waiting, address: str) -> None:
        queue = self._waiting.get(address)
        if queue is None or connection not in queue:
            return
        del queue[connection]
        self._waiting_count -= 1
        if not queue:
            del self._waiting[address]

    def acquire(self, connection: Waiting, address: str) -> tuple[str | None, Waiting | None]:
        """Count a new connection, not logged in yet, from ``address`` (counted with
        the rest of its network: an IPv6 /64 is one client).

        Returns ``(refusal, evicted)``: why it is refused (None if it may stay), and
        the connection it displaced, which the caller must ``abort()``.
        """
        trusted = self._is_trusted(address)
        address = network_of(address) or address
        with self._lock:
            if self._open >= self._total:
                return "too many connections", None
            if self._counts[address] >= self._per_address and not trusted:
                return "too many connections from this address", None
            evicted = None
            if self._waiting_count >= self._unauthenticated:
                evicted = self._make_room()
                if evicted is None:
                    return "too many connections logging in", None
            self._arrivals += 1
            self._waiting.setdefault(address, {})[connection] = self._arrivals
            self._waiting_count += 1
            self._counts[address] += 1
            self._open += 1
            return None, evicted

    def logged_in(self, connection: Waiting, address: str) -> None:
        """The connection logged in: it no longer counts against the login cap."""
        address = network_of(address) or address
        with self._lock:
            self._forget_waiting(connection, address)

    def release(self, connection: Waiting, address: str) -> None:
        """The connection ended."""
        address = network_of(address) or address
        with self._lock:
            self._forget_waiting(connection, address)
            self._open -= 1
            self._counts[address] -= 1
            if self._counts[address] <= 0:
                del self._counts[address]

    def _is_trusted(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in trusted for trusted in self._trusted)


class TooSlow(Exception):
    """The peer moved fewer bytes than the minimum rate allows."""


class TransferMeter:
    """At least ``min_bytes`` in every ``window`` seconds of waiting on the peer.

    The I/O layer asks ``time_left()`` for its socket timeout, then reports each call
    with ``moved(bytes, seconds waited)``; ``moved`` raises ``TooSlow`` at the end of
    a window that fell short. ``restart()`` begins a new transfer.
    """

    def __init__(self, min_bytes: int, window: float) -> None:
        self.min_bytes = min_bytes
        self.window = window
        self._waited = 0.0
        self._bytes = 0

    def restart(self) -> None:
        self._waited = 0.0
        self._bytes = 0

    def time_left(self) -> float:
        """Seconds of waiting left in this window (at least a millisecond)."""
        return max(0.001, self.window - self._waited)

    def moved(self, count: int, waited: float) -> None:
        """Account for one I/O call; raise ``TooSlow`` if a window ended short."""
        self._waited += waited
        self._bytes += count
        if self._waited < self.window:
            return
        if self._bytes < self.min_bytes:
            raise TooSlow(
                f"fewer than {self.min_bytes} bytes in {self.window:g} s: below the minimum "
                "transfer rate"
            )
        self.restart()
