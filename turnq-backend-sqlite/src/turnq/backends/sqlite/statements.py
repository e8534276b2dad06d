"""The SQL the SQLite backend sends: reading the whole store when it opens, and the writes units make, each one
row by its key (see turnq.backends.sql.schema)."""

from __future__ import annotations

from turnq.backends.sql.rows import CHANNEL_COLUMNS, CHANNEL_WRITE_COLUMNS, TICKET_COLUMNS, columns

T = columns(TICKET_COLUMNS)
C = columns(CHANNEL_COLUMNS)

ALL_CHANNELS = f"SELECT {C} FROM turnq_channels ORDER BY id"
# Every ticket, each channel's line in order (the primary key's order, so no sort).
ALL_TICKETS = f"SELECT channel_id, {T} FROM turnq_tickets ORDER BY channel_id, seq"

INSERT_TICKET = f"INSERT INTO turnq_tickets (channel_id, {T}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
DELETE_TICKET = "DELETE FROM turnq_tickets WHERE channel_id = ? AND seq = ?"
UPDATE_CHANNEL = (
    f"UPDATE turnq_channels SET {', '.join(c + ' = ?' for c in CHANNEL_WRITE_COLUMNS)} WHERE id = ?"
)
DELETE_CHANNEL = "DELETE FROM turnq_channels WHERE id = ?"
DELETE_CHANNEL_TICKETS = "DELETE FROM turnq_tickets WHERE channel_id = ?"
INSERT_CHANNEL = (
    "INSERT INTO turnq_channels (id, name, lease_ms, max_depth, max_wait_ms, grace_ms, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
