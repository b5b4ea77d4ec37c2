"""Admission of uploads: quota, uploads in flight per user, and the memory they hold.

An upload holds its pipeline's buffers (``pipeline.memory_for``), two threads and two
open files until it ends, however slowly its client sends. So before an upload starts
it reserves, all at once or not at all:

* its size against the owner's quota, counted with what is stored and what is still
  arriving, so concurrent uploads cannot overshoot the quota together;
* one of ``per_user`` places for the owner's uploads in flight, so one account
  cannot take every place;
* its worst-case buffer memory, at least ``MIN_UPLOAD_MEMORY``, from ``memory``, the
  server's budget for all uploads in flight: this bounds both the memory and the
  number of uploads (docs/security.md states the worst case).

A full place or budget is "try again" (``TryLaterError``), an over-quota upload a
``QuotaError``. Reservations live in this process (one server per data folder);
``release`` is idempotent per reservation.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from imgshare.errors import QuotaError, TryLaterError
from imgshare.store import Catalog

MIB = 1024 * 1024
#: What an upload costs besides its buffers (two threads, files, state), rounded up.
MIN_UPLOAD_MEMORY = 1 * MIB
#: A retry hint for a full budget: uploads of photos take about this long.
_RETRY_SECONDS = 1.0


@dataclass(eq=False)
class Reservation:
    """What one upload holds until ``UploadSlots.release``."""

    user_id: int
    size: int
    memory: int
    released: bool = field(default=False)


class UploadSlots:
    """Reserves quota, a per-user place and memory for each upload; thread-safe."""

    def __init__(self, catalog: Catalog, quota_bytes: int, per_user: int, memory: int) -> None:
        self._catalog = catalog
        self.quota_bytes = quota_bytes
        self.per_user = per_user
        self.memory = memory
        self._bytes: Counter[int] = Counter()  # per user: bytes still arriving
        self._uploads: Counter[int] = Counter()  # per user: uploads in flight
        self._memory_used = 0
        self._lock = threading.Lock()

    @property
    def memory_used(self) -> int:
        with self._lock:
            return self._memory_used

    def in_flight(self, user_id: int) -> int:
        """How many uploads of this user are in flight."""
        with self._lock:
            return self._uploads[user_id]

    def reserve(self, user_id: int, size: int, buffer_memory: int) -> Reservation:
        """Reserve for an upload of ``size`` bytes whose buffers need ``buffer_memory``.

        Raises ``QuotaError``, or ``TryLaterError`` when the user's places or the
        server's memory budget are taken; ``StorageError`` from the catalog.
        """
        memory = max(MIN_UPLOAD_MEMORY, buffer_memory)
        with self._lock:
            if self._uploads[user_id] >= self.per_user:
                raise TryLaterError(
                    f"you already have {self.per_user} uploads in flight", _RETRY_SECONDS
                )
            if self._memory_used + memory > self.memory:
                raise TryLaterError("the server is receiving too many images", _RETRY_SECONDS)
            if self.quota_bytes:
                stored = self._catalog.used_bytes(user_id)
                if stored + self._bytes[user_id] + size > self.quota_bytes:
                    raise QuotaError(
                        f"this upload would exceed your quota of {self.quota_bytes} bytes"
                    )
            self._bytes[user_id] += size
            self._uploads[user_id] += 1
            self._memory_used += memory
        return Reservation(user_id, size, memory)

    def release(self, reservation: Reservation) -> None:
        """The upload ended: stored (the catalog counts it now) or thrown away."""
        with self._lock:
            if reservation.released:
                return
            reservation.released = True
            user = reservation.user_id
            self._bytes[user] -= reservation.size
            self._uploads[user] -= 1
            if self._uploads[user] <= 0:
                del self._uploads[user], self._bytes[user]
            self._memory_used -= reservation.memory
