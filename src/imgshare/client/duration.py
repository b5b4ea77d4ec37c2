"""Durations as people type them: ``90s``, ``30m``, ``12h``, ``7d``, ``2w``, ``1d12h``.

Shares and tokens expire at a point in time (milliseconds since the epoch on the
wire); people say how long from now. ``parse_duration`` turns the text into seconds
and ``expires_at`` into that point in time.
"""

from __future__ import annotations

import re
import time

from imgshare.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_PART = re.compile(r"(\d+)([smhdw])")
#: Longer than any share or token should live, and far inside the wire's u64.
MAX_DURATION = 100 * 365 * 86_400
_EXAMPLES = "a number and a unit, e.g. 90s, 30m, 12h, 7d or 2w (or 1d12h)"


def parse_duration(text: str) -> int:
    """Seconds in ``text`` (one or more number-unit pairs: s, m, h, d, w).

    Raises ``ConfigError`` with the text and what a duration looks like.
    """
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ConfigError(f"no duration given: write {_EXAMPLES}")
    position, seconds = 0, 0
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(compact):
        raise ConfigError(f"{text!r} is not a duration: write {_EXAMPLES}")
    if seconds <= 0:
        raise ConfigError(f"{text!r} is no time at all: give a duration longer than 0")
    if seconds > MAX_DURATION:
        raise ConfigError(f"{text!r} is too long: at most 100 years (36500d)")
    return seconds


def expires_at(seconds: int, now: float | None = None) -> int:
    """The time ``seconds`` from ``now`` (default: the clock), in ms since the epoch."""
    start = time.time() if now is None else now
    return round((start + seconds) * 1000)
