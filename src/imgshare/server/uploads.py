"""The memory that uploads in flight may hold in one server process.

An upload holds its pipeline's buffers (``upload.buffer_memory``), two threads and a
few open files until it ends, however slowly its client sends. Before an upload
starts it reserves its worst case, at least ``MIN_UPLOAD_MEMORY``, from its process's
budget; a full budget is "try again" (``TryLaterError``). This bounds both the memory
and the number of uploads a process holds (docs/security.md states the worst case).

The budget is per process because memory is: with N worker processes each gets 1/N
of ``upload_memory``. What must hold across processes (the quota, the upload places
per user) is reserved in the catalog by the store (``imgshare.store.images``).
"""

from __future__ import annotations

import threading

from imgshare.errors import TryLaterError

MIB = 1024 * 1024
#: What an upload costs besides its buffers (two threads, files, state), rounded up.
MIN_UPLOAD_MEMORY = 1 * MIB
#: A retry hint for a full budget: uploads of photos take about this long.
_RETRY_SECONDS = 1.0


class MemoryHold:
    """Memory held by one upload until ``release`` (idempotent)."""

    def __init__(self, budget: MemoryBudget, size: int) -> None:
        self._budget: MemoryBudget | None = budget
        self.size = size

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give_back(self.size)


class MemoryBudget:
    """Upload memory of one process; thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def hold(self, buffer_memory: int) -> MemoryHold:
        """Hold an upload's worst case (at least ``MIN_UPLOAD_MEMORY``). Raises
        ``TryLaterError`` when the budget cannot hold it."""
        size = max(MIN_UPLOAD_MEMORY, buffer_memory)
        with self._lock:
            if self._used + size > self.limit:
                raise TryLaterError("the server is receiving too many images", _RETRY_SECONDS)
            self._used += size
        return MemoryHold(self, size)

    def _give_back(self, size: int) -> None:
        with self._lock:
            self._used -= size
