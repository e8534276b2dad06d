"""The tables of a durable turnq store and the forward migrations that build them.

Every ``ChannelUnit`` operation is one indexed statement: tickets are keyed ``(channel_id, seq)`` so the line is
an index range; ``(channel_id, client_id)`` and ``(channel_id, request_id)`` are unique indexes for the lookups a
request starts with; partial indexes on the wait and grace deadlines find the earliest one without a scan. The
channel row carries its counters and the holder's grant, plus ``ticket_count`` and ``graced_count`` so depth and
"is anyone in grace" are read with the row instead of counted.

``version`` on the channel row grows with every committed unit that changed the channel or announced something;
the PostgreSQL backend uses it to deliver batches in commit order and to check that a read taken while waiting
for the row lock is still current.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from turnq.core import ErrorCode, TurnqError

# The schema version this code writes. A database at a newer version is refused: it was upgraded by a newer
# turnq whose changes this one does not know how to keep.
SCHEMA_VERSION = 2

# SQLite makes an ``INTEGER PRIMARY KEY`` the rowid; PostgreSQL gets a 64-bit identity.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

schema_versions = sa.Table(
    "turnq_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

channels = sa.Table(
    "turnq_channels",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("lease_ms", sa.BigInteger, nullable=False),
    sa.Column("max_depth", sa.BigInteger),
    sa.Column("max_wait_ms", sa.BigInteger),
    sa.Column("grace_ms", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("fencing", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("ticket_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("graced_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("holder_client_id", sa.Text),
    sa.Column("holder_request_id", sa.Text),
    sa.Column("holder_granted_at", sa.BigInteger),
    sa.Column("holder_lease_deadline", sa.BigInteger),
    sa.Column("holder_fencing_token", sa.BigInteger),
    sa.Column("holder_enqueued_at", sa.BigInteger),
)

tickets = sa.Table(
    "turnq_tickets",
    metadata,
    sa.Column("channel_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("client_id", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("enqueued_at", sa.BigInteger, nullable=False),
    sa.Column("wait_deadline", sa.BigInteger),
    sa.Column("grace_deadline", sa.BigInteger),
    sa.Column("attachment", sa.Text),
    sa.UniqueConstraint("channel_id", "client_id", name="turnq_tickets_client"),
    sa.UniqueConstraint("channel_id", "request_id", name="turnq_tickets_request"),
    # The line is read in seq order; a clustered key keeps a channel's tickets together on SQLite.
    sqlite_with_rowid=False,
)

# Server processes sharing the store, and when each was last heard from (presence across processes).
instances = sa.Table(
    "turnq_instances",
    metadata,
    sa.Column("instance", sa.Text, primary_key=True),
    sa.Column("heard_at", sa.BigInteger, nullable=False),
)

sa.Index(
    "turnq_tickets_wait",
    tickets.c.channel_id,
    tickets.c.wait_deadline,
    tickets.c.seq,
    sqlite_where=tickets.c.wait_deadline.is_not(None),
    postgresql_where=tickets.c.wait_deadline.is_not(None),
)
sa.Index(
    "turnq_tickets_grace",
    tickets.c.channel_id,
    tickets.c.grace_deadline,
    tickets.c.seq,
    sqlite_where=tickets.c.grace_deadline.is_not(None),
    postgresql_where=tickets.c.grace_deadline.is_not(None),
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward step. ``apply`` runs inside the migration's transaction on a synchronous SQLAlchemy
    connection (the async engines hand one over through ``run_sync``)."""

    version: int
    description: str
    apply: Callable[[sa.Connection], None]


def _v1(conn: sa.Connection) -> None:
    # Version 1 is the tables as first released. Later versions must not edit this step: they add their own
    # ALTERs, so a database created by any release reaches the same shape.
    metadata.create_all(conn, tables=[channels, tickets])


def _v2(conn: sa.Connection) -> None:
    metadata.create_all(conn, tables=[instances])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "channels and tickets", _v1),
    Migration(2, "server instances", _v2),
)


class SchemaVersionError(TurnqError):
    """The database was written by a newer turnq; this one refuses to touch it."""

    def __init__(self, url: str, found: int, supported: int) -> None:
        super().__init__(
            ErrorCode.BACKEND_UNAVAILABLE,
            f"the turnq database at {url} has schema version {found}, newer than this turnq supports "
            f"({supported}); upgrade turnq on this host (or point it at another database)",
        )
        self.found = found
        self.supported = supported


def current_version(conn: sa.Connection) -> int:
    """The schema version recorded in the database; 0 for a database turnq has never touched."""
    if not sa.inspect(conn).has_table(schema_versions.name):
        return 0
    found = conn.execute(sa.select(sa.func.max(schema_versions.c.version))).scalar()
    return int(found or 0)


def migrate(conn: sa.Connection, url: str, now_ms: int) -> tuple[int, int]:
    """Apply every missing migration in order, inside the caller's transaction; returns (before, after).

    The caller holds whatever lock keeps two processes from migrating at once (SQLite: the write lock of
    ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so a server and ``turnq db upgrade`` can start together.
    """
    before = current_version(conn)
    if before > SCHEMA_VERSION:
        raise SchemaVersionError(url, before, SCHEMA_VERSION)
    if before == 0:
        metadata.create_all(conn, tables=[schema_versions])
    for step in MIGRATIONS:
        if step.version > before:
            step.apply(conn)
            conn.execute(
                schema_versions.insert().values(
                    version=step.version, description=step.description, applied_at=now_ms
                )
            )
    return before, SCHEMA_VERSION
