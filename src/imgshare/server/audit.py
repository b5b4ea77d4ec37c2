"""The audit trail's writer: security events reach the catalog in batches.

A busy server logs in hundreds of sessions a second with tokens; one write
transaction per login would cost more than the login. So the request handlers only
queue their events here (a list append under a lock), and one thread writes what has
queued every ``interval`` seconds in one transaction. The catalog's audit commits skip
the WAL's fsync anyway (docs/design.md, decision 17): a crash may lose the last
moments of events, never a user, an image or a share. ``flush`` writes at once (tests,
shutdown).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from imgshare.errors import StorageError
from imgshare.store import Catalog
from imgshare.store.access import AuditEvent

log = logging.getLogger(__name__)

#: How long an event may wait to be written (seconds).
DEFAULT_INTERVAL = 0.25
#: More than this many waiting events are written at once, whatever the time.
_BATCH = 500


class AuditTrail:
    """Queues security events and writes them in batches; thread-safe."""

    def __init__(self, catalog: Catalog, interval: float = DEFAULT_INTERVAL) -> None:
        self._catalog = catalog
        self._interval = interval
        self._queue: list[AuditEvent] = []
        self._lock = threading.Lock()  # guards _queue
        self._write_lock = threading.Lock()  # one batch at a time, in order
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def record(
        self, event: str, user_name: str | None, network: str | None, now: int, **detail: Any
    ) -> None:
        """Queue one event (written within ``interval`` seconds)."""
        with self._lock:
            if self._closed:
                raise StorageError("the audit trail is closed")
            self._queue.append(AuditEvent(now, event, user_name, network, detail))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
                self._thread.start()
            if len(self._queue) >= _BATCH:
                self._wake.set()

    def flush(self) -> None:
        """Write every queued event now."""
        with self._write_lock:
            with self._lock:
                batch, self._queue = self._queue, []
            if not batch:
                return
            try:
                self._catalog.audit_many(batch)
            except StorageError as exc:  # the trail must not take requests down with it
                log.error("%d audit event(s) not recorded: %s", len(batch), exc)

    def close(self) -> None:
        """Write what is queued and stop the writer (idempotent)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()
        self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()
            with self._lock:
                if self._closed:
                    return
