"""Durations as people type them on a command line: ``500ms``, ``60s``, ``5m``, ``1h30m``.

A bare number is seconds, the unit a shell user reaches for first (``--timeout 30``).
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms when it cannot be read."""
    value = text.strip().lower()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(f"cannot read duration {text!r}: use e.g. 500ms, 60s, 5m, 1h30m") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"duration {text!r} must be a finite, non-negative time")
    return seconds


def parse_duration_ms(text: str) -> int:
    """Whole milliseconds in ``text``, the unit of the wire protocol's ``leaseMs`` and friends."""
    return round(parse_duration(text) * 1000)


def format_duration(seconds: float) -> str:
    """A short human form, the inverse of :func:`parse_duration` for display."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"
