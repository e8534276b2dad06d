"""turnq SQLite backend: ``sqlite:///path/to/turnq.db`` (see :mod:`.backend`)."""

from __future__ import annotations

from typing import Any

from turnq.core import hookimpl

from .backend import SqliteBackend
from .url import parse_sqlite_url

__all__ = ["SqliteBackend", "parse_sqlite_url", "turnq_backend_schemes"]


@hookimpl
def turnq_backend_schemes() -> dict[str, Any]:
    return {"sqlite": SqliteBackend}
