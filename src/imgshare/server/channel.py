"""One connection's TLS socket, read and written with deadlines, and a reader that can
be woken.

The socket is non-blocking: a read or write first just tries (the fast path, no extra
system call while data flows), and only when OpenSSL wants more does the connection's
thread wait, in ``poll``, on the socket and on an optional wake-up file descriptor.
That is how an upload's pipeline tells a reader, blocked on a silent peer, that a
chunk failed to verify: it writes to the descriptor, and the reader returns at once
(``Woken``) instead of polling on a timer.

Time spent in ``poll`` is time spent waiting on the peer; the transfer meter charges
only that (``imgshare.server.caps.TransferMeter``), so the server's own work never
counts against a client.
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import Callable

#: Bulk writes go out in pieces this big, so that the meter sees progress.
SEND_PIECE = 64 * 1024


class Woken(Exception):
    """A read was interrupted through the wake-up descriptor."""


#: Told how many bytes a call moved and how long it waited; may raise to stop it.
Progress = Callable[[int, float], None]


class Channel:
    """The TLS socket of one connection, owned by that connection's thread.

    ``recv_into`` and ``send_all`` wait at most ``timeout`` seconds of silence in all
    (``TimeoutError``); with a ``progress`` callback they report every call instead
    and the callback decides (the transfer meter raises when a peer is too slow).
    """

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        tls.setblocking(False)

    def _wait(self, events: int, timeout: float, wake: int | None) -> float:
        """Wait until the socket is ready for ``events`` or ``timeout`` passes; return
        the seconds waited. Raises ``Woken`` if ``wake`` became readable."""
        poller = select.poll()
        poller.register(self.tls.fileno(), events)
        if wake is not None:
            poller.register(wake, select.POLLIN)
        started = time.monotonic()
        ready = poller.poll(max(0, int(timeout * 1000 + 0.999)))
        waited = time.monotonic() - started
        if wake is not None and any(fd == wake for fd, _ in ready):
            raise Woken()
        return waited

    def recv_into(
        self,
        view: memoryview,
        timeout: float,
        *,
        whole: bool = False,
        wake: int | None = None,
        progress: Progress | None = None,
        budget: Callable[[], float] | None = None,
    ) -> int:
        """Read into ``view``: what is there (at least one byte), or with ``whole``
        until it is full; 0 at the end of the stream.

        Raises ``TimeoutError`` after ``timeout`` seconds without a byte (unless
        ``progress`` is given, which then decides), ``Woken``, ``OSError``.
        ``budget``, if given, says how long the next wait may be.
        """
        got = 0
        silent = 0.0
        while True:
            try:
                count = self.tls.recv_into(view[got:])
            except ssl.SSLWantReadError:
                events = select.POLLIN
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            else:
                if progress is not None:
                    progress(count, 0.0)
                got += count
                if count == 0 or not whole or got == len(view):
                    return got
                silent = 0.0
                continue
            limit = budget() if budget is not None else timeout - silent
            waited = self._wait(events, limit, wake)
            silent += waited
            if progress is not None:
                progress(0, waited)
            elif silent >= timeout:
                raise TimeoutError("the peer was silent too long")

    def send_all(
        self,
        data: bytes | bytearray | memoryview,
        timeout: float,
        *,
        progress: Progress | None = None,
        budget: Callable[[], float] | None = None,
    ) -> None:
        """Write all of ``data``. Raises ``TimeoutError`` after ``timeout`` seconds in
        which the peer took nothing (unless ``progress`` decides), ``OSError``."""
        view = memoryview(data).cast("B")
        silent = 0.0
        while view:
            piece = view[:SEND_PIECE]
            try:
                # A retry after "want" must offer the same bytes (OpenSSL's rule), and it
                # does: the view only moves by what was sent.
                sent = self.tls.send(piece)
            except ssl.SSLWantWriteError:
                events = select.POLLOUT
            except ssl.SSLWantReadError:
                events = select.POLLIN
            else:
                if progress is not None:
                    progress(sent, 0.0)
                view = view[sent:]
                silent = 0.0
                continue
            limit = budget() if budget is not None else timeout - silent
            waited = self._wait(events, limit, None)
            silent += waited
            if progress is not None:
                progress(0, waited)
            elif silent >= timeout:
                raise TimeoutError("the peer took nothing for too long")
