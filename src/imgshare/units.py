"""Numbers for people: sizes in the one form every command shows them.

No imports at all, so the command line, the client library and the GUI all show
sizes with this one function without paying for more.
"""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(count: int | float) -> str:
    """A byte count the way people read it: ``812 B``, ``1.4 KiB``, ``13.2 MiB``,
    ``201 MiB``, ``1.07 GiB`` (powers of 1024, three significant digits)."""
    if count < 1024:
        return f"{int(count)} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 999.5 or unit == _UNITS[-1]:
            break
    if value >= 100:
        return f"{value:.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def human_rate(bytes_per_second: float) -> str:
    """A transfer speed: ``human_size`` per second (``38.2 MiB/s``)."""
    return f"{human_size(bytes_per_second)}/s"
