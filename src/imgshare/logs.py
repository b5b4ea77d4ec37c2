"""Log lines for people (default) or machines (``--log-format json``), to stderr.

Library code logs with ``extra={"fields": {...}}``; the formatter appends the fields
as ``key=value`` (human) or merges them into one JSON object per line. Nothing here
knows about keys or passwords: callers never pass them (they are not in any event's
``repr`` either).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from imgshare.safetext import escape

__all__ = [
    "HumanFormatter",
    "JsonFormatter",
    "SummarizedLog",
    "configure",
    "escape",
    "fields",
    "label_process",
]


#: Fields every line of this process carries (``worker=1`` in a worker process).
_PROCESS_FIELDS: dict[str, Any] = {}


def label_process(**values: Any) -> None:
    """Add ``values`` to every log line this process writes from now on: the server's
    processes share one log stream, and each line says which one wrote it."""
    _PROCESS_FIELDS.update(values)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    found = dict(fields) if isinstance(fields, dict) else {}
    return {**found, **_PROCESS_FIELDS} if _PROCESS_FIELDS else found


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class HumanFormatter(logging.Formatter):
    """One line per record; a traceback follows on lines that start with ``  | ``, so
    that no text inside it (an exception may quote a client) passes for a record."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{escape(k)}={escape(str(v))}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {escape(record.getMessage())}"
        if extra:
            line = f"{line}  {extra}"
        if record.exc_info:
            trace = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n  | {escape(part)}" for part in trace)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = _fields(record)
        entry.update(  # last, so that no field can overwrite them
            time=_timestamp(record),
            level=record.levelname.lower(),
            logger=record.name,
            message=record.getMessage(),
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: str = "human", level: str = "info", stream: TextIO | None = None) -> None:
    """Send imgshare's logs to ``stream`` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    root = logging.getLogger("imgshare")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` argument carrying structured fields: ``log.info(msg, extra=fields(id=...))``."""
    return {"fields": values}


class SummarizedLog:
    """Log lines that an attacker can cause, at a bounded rate.

    Of each kind of event (a failed TLS handshake, a refused connection...), the first
    ``burst`` in every ``interval`` seconds are logged one line each; the rest are only
    counted, and ``flush()`` (called often, e.g. from the accept loop) logs one summary
    line per kind once the interval is over: a scan that fails 16,000 handshakes
    writes a few lines a minute, not 16,000. Thread-safe.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        burst: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._started = clock()
        self._seen: Counter[str] = Counter()
        self._addresses: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def event(self, kind: str, message: str, peer: str = "", **values: Any) -> None:
        """Log (or count) one event of ``kind``; ``peer`` is the client's address."""
        with self._lock:
            self._seen[kind] += 1
            addresses = self._addresses.setdefault(kind, set())
            if len(addresses) < 10_000:  # a bound on memory, not on the count
                addresses.add(peer.rsplit(":", 1)[0])
            quiet = self._seen[kind] > self._burst
        if not quiet:
            self._log.info(message, extra=fields(event=kind, peer=peer, **values))

    def flush(self, *, force: bool = False) -> None:
        """Log a summary per kind whose interval is over (all of them with ``force``)."""
        now = self._clock()
        with self._lock:
            if not force and now - self._started < self._interval:
                return
            seen, self._seen = self._seen, Counter()
            addresses, self._addresses = self._addresses, {}
            elapsed, self._started = now - self._started, now
        for kind, count in sorted(seen.items()):
            if count > self._burst:
                self._log.warning(
                    "%d more %s event(s) in the last %.0f s, not logged one by one",
                    count - self._burst,
                    kind,
                    elapsed,
                    extra=fields(event=kind, total=count, addresses=len(addresses[kind])),
                )
