"""turnq PostgreSQL backend: ``postgresql://user@host/db`` (see :mod:`.backend`)."""

from __future__ import annotations

from typing import Any

from turnq.core import hookimpl

from .backend import PostgresBackend
from .url import parse_postgres_url

__all__ = ["PostgresBackend", "parse_postgres_url", "turnq_backend_schemes"]


@hookimpl
def turnq_backend_schemes() -> dict[str, Any]:
    return {"postgresql": PostgresBackend}
