"""``postgresql://user:password@host:5432/db?schema=turnq&pool_size=10`` and what each turnq parameter means.

``postgres://`` and ``postgresql+asyncpg://`` are accepted too. Parameters turnq does not know (``sslmode``,
``sslrootcert``, ``application_name``…) pass through to asyncpg, which treats those it does not know as server
settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,47}")


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    dsn: str  # for asyncpg: postgresql://…, without turnq's own parameters
    schema: str | None = None
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout: float = 5.0
    connect_timeout: float = 5.0
    command_timeout: float = 10.0
    lock_timeout_ms: int = 5_000
    server_settings: dict[str, str] = field(default_factory=dict)

    @property
    def notify_channel(self) -> str:
        """The NOTIFY channel: per schema, since channels are shared by the whole database."""
        return f"turnq_events.{self.schema}" if self.schema else "turnq_events"


_FLOATS = {"pool_timeout", "connect_timeout", "command_timeout"}
_INTS = {"pool_size", "max_overflow", "lock_timeout"}


def parse_postgres_url(url: str) -> PostgresUrl:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("postgresql", "postgres", "postgresql+asyncpg", "postgres+asyncpg"):
        raise ValueError(f"not a postgresql URL (scheme {parts.scheme!r})")
    values: dict[str, float | int | str] = {}
    passthrough = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            if not _SCHEMA.fullmatch(value):
                raise ValueError(
                    f"schema={value!r} in the postgresql URL: use 1-48 lowercase letters, digits and underscores"
                )
            values[key] = value
        elif key in _FLOATS or key in _INTS:
            try:
                number = float(value) if key in _FLOATS else int(value)
            except ValueError:
                raise ValueError(f"{key}={value!r} in the postgresql URL is not a number") from None
            if number < 0 or (key == "pool_size" and number < 1):
                raise ValueError(f"{key}={value!r} in the postgresql URL is out of range")
            values[key] = number
        else:
            passthrough.append((key, value))
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(passthrough), ""))
    schema = values.get("schema")
    return PostgresUrl(
        dsn=dsn,
        schema=str(schema) if schema is not None else None,
        pool_size=int(values.get("pool_size", 10)),
        max_overflow=int(values.get("max_overflow", 10)),
        pool_timeout=float(values.get("pool_timeout", 5.0)),
        connect_timeout=float(values.get("connect_timeout", 5.0)),
        command_timeout=float(values.get("command_timeout", 10.0)),
        lock_timeout_ms=int(values.get("lock_timeout", 5_000)),
    )
