"""``sqlite:///path/to/turnq.db?synchronous=normal&busy_timeout=5000`` and what each part means.

Paths follow SQLAlchemy's convention: three slashes and a relative path (``sqlite:///turnq.db``), four for an
absolute one (``sqlite:////var/lib/turnq/turnq.db``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

# NORMAL in WAL mode fsyncs only at checkpoints: every commit survives a crash of the process (kill -9
# included), but the last commits before a power loss or kernel crash may be lost. FULL fsyncs the WAL on every
# commit and survives those too, at the cost of a disk flush per state change.
SYNCHRONOUS_LEVELS = ("normal", "full", "extra")
DEFAULT_SYNCHRONOUS = "normal"
DEFAULT_BUSY_TIMEOUT_MS = 5_000


@dataclass(frozen=True, slots=True)
class SqliteUrl:
    path: str
    synchronous: str = DEFAULT_SYNCHRONOUS
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS


def parse_sqlite_url(url: str) -> SqliteUrl:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise ValueError(
            f"sqlite URL {url!r} has a host part; write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ValueError(
            f"sqlite URL {url!r} names no database file; use sqlite:///path/to/turnq.db "
            "(or memory:// for a store that need not survive a restart)"
        )
    synchronous = DEFAULT_SYNCHRONOUS
    busy = DEFAULT_BUSY_TIMEOUT_MS
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "synchronous":
            synchronous = value.lower()
            if synchronous not in SYNCHRONOUS_LEVELS:
                raise ValueError(
                    f"synchronous={value!r} in the sqlite URL: use one of {', '.join(SYNCHRONOUS_LEVELS)}"
                )
        elif key == "busy_timeout":
            if not value.isdigit():
                raise ValueError(f"busy_timeout={value!r} in the sqlite URL: milliseconds, a whole number")
            busy = int(value)
        else:
            raise ValueError(
                f"unknown parameter {key!r} in the sqlite URL (known: synchronous, busy_timeout)"
            )
    return SqliteUrl(path=path, synchronous=synchronous, busy_timeout_ms=busy)
