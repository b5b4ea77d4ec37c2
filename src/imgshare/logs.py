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
import time
from typing import Any, TextIO

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL[ord("\\")] = "\\\\"


def escape(text: str) -> str:
    """Make client-controlled text safe for a one-line log: no control characters.

    A newline in an image name or an error text would otherwise forge a whole log
    line (CWE-117); backslashes are doubled so an escape can't be faked either.
    """
    return text.translate(_CONTROL)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={escape(str(v))}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} {escape(record.getMessage())}"
        if extra:
            line = f"{line}  {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
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
