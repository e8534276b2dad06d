"""The SQL layer shared by turnq's durable backends (SQLite and PostgreSQL).

It holds what does not depend on the database engine: the schema as SQLAlchemy Core tables and its forward
migrations, the conversion between rows and the core model, whole-store views, the listener fan-out, and
:class:`SqlUnit`, a :class:`~turnq.core.ChannelUnit` for a store several servers share (the PostgreSQL backend),
which answers most reads from what the unit already knows and holds writes back until a read needs them or the
unit commits. (The SQLite backend, whose store one server owns, keeps its state in memory instead.) It is a
distribution of its own, turnq-backend-sql, which both durable backends depend on.
"""

from .listeners import ListenerSet
from .rows import ChannelRow
from .schema import SCHEMA_VERSION, SchemaVersionError, metadata
from .unit import PendingWrites, SqlUnit

__all__ = [
    "SCHEMA_VERSION",
    "ChannelRow",
    "ListenerSet",
    "PendingWrites",
    "SchemaVersionError",
    "SqlUnit",
    "metadata",
]
