"""A step that runs beside the connection, fed through a short queue, on a reused thread.

An upload's connection thread reads TLS records and parses frames while its pipeline
decrypts, hashes and writes the previous chunks: AES-GCM, hashlib and file writes
release the GIL, so the two overlap on two cores. The queue is short so that a slow
disk pushes back on the sender (through TCP) instead of growing memory. The pipeline
runs as a job on a ``ThreadReuse`` pool, so a new upload usually finds a thread that
an earlier one left idle instead of starting one.

Items can be received straight into buffers the pipeline recycles (``buffer``): a
megabyte chunk then costs no allocation and no fresh memory pages, which matter on a
VM where the first touch of a page is slow (measured per 201 MB upload: 15,000 page
faults before, 1,800 after, and about 15 % less server CPU).

A step that fails stops the work and calls ``on_failure`` at once, from the pipeline's
thread: the connection uses it to wake its reader, so that the peer hears of a
tampered chunk without the reader polling for it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from imgshare.server.threads import ThreadReuse

#: Chunks in flight per upload: enough to keep both threads busy, little memory.
DEFAULT_DEPTH = 4


def memory_for(item_size: int, depth: int = DEFAULT_DEPTH) -> int:
    """The most the recycled buffers of a pipeline hold for items of ``item_size``
    bytes: ``depth`` queued, one in the step and one being filled."""
    return (depth + 2) * item_size


class PipelineCancelled(Exception):
    """The pipeline was cancelled; its remaining items were dropped."""


Item = bytes | bytearray | memoryview

#: Pipelines made without a pool of their own share this one.
_SHARED_THREADS = ThreadReuse(keep=30.0, name="upload-pipeline")


class Pipeline:
    """Runs ``step(item)`` for each submitted item, in order, on one pooled thread.

    The first exception a step raises stops the work; ``submit`` and ``close`` raise it
    in the caller's thread, and ``on_failure`` hears of it at once.
    """

    def __init__(
        self,
        step: Callable[[Item], None],
        depth: int = DEFAULT_DEPTH,
        *,
        threads: ThreadReuse | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        inline: bool = False,
    ) -> None:
        """With ``inline``, each step runs in ``submit``, on the caller's thread: for
        small items, handing them to another thread costs more than it overlaps."""
        self._step = step
        self._inline = inline
        self._on_failure = on_failure
        self._queue: queue.Queue[Item | None] = queue.Queue(depth)
        # Buffers handed out by ``buffer``, by identity, and those whose items were
        # processed. At most depth + 2 are in use: queued, in the step, being filled.
        self._made: dict[int, bytearray] = {}
        self._spare: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        self._done = threading.Event()
        self._worker: threading.Thread | None = None
        if inline:
            self._done.set()
        else:
            (threads or _SHARED_THREADS).run(self._run)

    @property
    def error(self) -> BaseException | None:
        """What a step raised (or ``PipelineCancelled``), if anything."""
        return self._error

    def in_step(self) -> bool:
        """Whether the caller is the pipeline's own thread (inside a step)."""
        return threading.current_thread() is self._worker

    def _run(self) -> None:
        self._worker = threading.current_thread()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if self._error is None:
                    try:
                        self._step(item)
                    except BaseException as exc:  # handed to the caller's thread
                        self._error = exc
                        if self._on_failure is not None:
                            self._on_failure(exc)
                self._recycle(item)
        finally:
            self._worker = None
            self._done.set()

    def _recycle(self, item: Item) -> None:
        if isinstance(item, memoryview) and self._made.get(id(item.obj)) is item.obj:
            self._spare.put(self._made[id(item.obj)])

    def buffer(self, size: int) -> memoryview:
        """A buffer of ``size`` bytes to receive the next item into, then ``submit``.

        It comes back for reuse once its step has run, so it must not be used after
        ``submit``.
        """
        try:
            spare = self._spare.get_nowait()
        except queue.Empty:
            spare = bytearray()
        if len(spare) < size:
            self._made.pop(id(spare), None)
            spare = bytearray(size)
            self._made[id(spare)] = spare
        return memoryview(spare)[:size]

    def submit(self, item: Item) -> None:
        """Queue ``item`` (blocks while the queue is full); raise an earlier step's error
        (inline: run the step now and raise what it raises)."""
        if self._error is not None:
            raise self._error
        if not self._inline:
            self._queue.put(item)
            return
        self._worker = threading.current_thread()
        try:
            self._step(item)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._worker = None
            self._recycle(item)

    def check(self) -> None:
        """Raise the error a step raised, if any, without waiting."""
        if self._error is not None and not isinstance(self._error, PipelineCancelled):
            raise self._error

    def close(self) -> None:
        """Wait until every item is processed; raise the first step error, if any."""
        self._stop()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Drop what is queued and stop; no error is raised. Must not be called from
        within a step."""
        if self._error is None:
            self._error = PipelineCancelled()
        self._stop()

    @property
    def stopped(self) -> bool:
        return self._done.is_set()

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._inline:
                self._queue.put(None)
            self._done.wait()
            # Let the buffers go now: the owner and its step refer to each other, and
            # such a cycle waits for the garbage collector (measured: +7 MiB per big
            # upload until a collection ran).
            self._made.clear()
            while not self._spare.empty():
                self._spare.get_nowait()
