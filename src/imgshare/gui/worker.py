"""One background thread for the GUI's work, and the queue that hands results back.

Tk is not thread-safe: only the thread that made the window may touch it. Anything
that waits on the network runs here instead, one job at a time (an ``imgshare.Client``
serves one thread at a time, docs/client.md), and its result, or its error, comes
back as a callback that the window's thread runs when it calls ``poll`` (from Tk's
``after`` timer). Other threads (``Client.send``'s workers reporting progress) hand
callbacks over with ``post``. Nothing here imports Tk, so it is tested on its own.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Worker:
    """Runs jobs in order on one daemon thread; ``poll`` runs their callbacks."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._pending = 0  # jobs submitted and not yet handed back; main thread only
        self._thread = threading.Thread(target=self._run, name="imgshare-gui-worker", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """Whether a job is waiting or running (its callback not yet run)."""
        return self._pending > 0

    def submit(
        self,
        job: Callable[[], T],
        on_done: Callable[[T], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Run ``job()`` on the worker thread; then, at a later ``poll``, on the
        calling thread, ``on_done(result)`` or ``on_error(exception)``."""
        self._pending += 1

        def run() -> None:
            try:
                result = job()
            except Exception as exc:  # handed to the window, which shows it
                log.debug("a GUI job failed", exc_info=True)
                self._done.put(functools.partial(self._finish, on_error, exc))
            else:
                self._done.put(functools.partial(self._finish, on_done, result))

        self._jobs.put(run)

    def _finish(self, callback: Callable[[T], None], value: T) -> None:
        self._pending -= 1
        callback(value)

    def post(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the polling thread at its next ``poll``."""
        self._done.put(callback)

    def poll(self) -> int:
        """Run every callback handed back so far (call it from the window's thread);
        return how many ran."""
        count = 0
        while True:
            try:
                callback = self._done.get_nowait()
            except queue.Empty:
                return count
            count += 1
            try:
                callback()
            except Exception:  # one broken callback must not stop the others
                log.exception("a GUI callback failed")

    def stop(self) -> None:
        """Let the thread end after the job it is running (it is a daemon thread, so
        a job stuck on the network does not keep the program alive)."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
