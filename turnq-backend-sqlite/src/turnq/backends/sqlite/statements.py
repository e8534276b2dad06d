"""The SQL a SQLite unit sends, each statement one index lookup or range (see turnq.backends.sql.schema).

Lists of seqs travel as one JSON text parameter read with ``json_each``, so a statement's text never varies and
SQLite's statement cache keeps it prepared.
"""

from __future__ import annotations

from turnq.backends.sql.line import PROBE_RANKS
from turnq.backends.sql.rows import CHANNEL_COLUMNS, CHANNEL_WRITE_COLUMNS, TICKET_COLUMNS, columns
from turnq.backends.sql.unit import PROBE_LIMIT, PROBE_TAIL

T = columns(TICKET_COLUMNS)
C = columns(CHANNEL_COLUMNS)
_NOT_EXCLUDED = "seq NOT IN (SELECT value FROM json_each(?2))"

SELECT_CHANNEL = f"SELECT {C} FROM turnq_channels WHERE name = ?"


# What a unit reads when it opens, as separate statements run in the same hop to the connection's thread (each
# is a short index range; together they cost less than one compound statement would): the front of the line,
# the earliest grace and wait deadlines, the newest tickets, and the ticket the caller named.
FRONT = f"SELECT {T} FROM turnq_tickets WHERE channel_id = ? ORDER BY seq LIMIT {max(PROBE_RANKS) + 1}"
TAIL = f"SELECT {T} FROM turnq_tickets WHERE channel_id = ? ORDER BY seq DESC LIMIT {PROBE_TAIL}"
GRACES = (
    f"SELECT {T} FROM turnq_tickets WHERE channel_id = ? AND grace_deadline IS NOT NULL "
    f"ORDER BY grace_deadline, seq LIMIT {PROBE_LIMIT}"
)
WAITS = (
    f"SELECT {T} FROM turnq_tickets WHERE channel_id = ? AND wait_deadline IS NOT NULL "
    f"ORDER BY wait_deadline, seq LIMIT {PROBE_LIMIT}"
)

FIND_BY_CLIENT = f"SELECT {T} FROM turnq_tickets WHERE channel_id = ? AND client_id = ?"
FIND_BY_REQUEST = f"SELECT {T} FROM turnq_tickets WHERE channel_id = ? AND request_id = ?"
COUNT_BEFORE = "SELECT count(*) FROM turnq_tickets WHERE channel_id = ? AND seq < ?"

# Ranks are counted over the first ?3 tickets only, so the scan stops at the largest rank asked for.
AT_RANKS = f"""
SELECT rk, {T} FROM (
    SELECT row_number() OVER (ORDER BY seq) - 1 AS rk, {T} FROM (
        SELECT {T} FROM turnq_tickets WHERE channel_id = ?1 AND {_NOT_EXCLUDED} ORDER BY seq LIMIT ?3
    )
) WHERE rk IN (SELECT value FROM json_each(?4))
"""

ALL_TICKETS = f"SELECT {T} FROM turnq_tickets WHERE channel_id = ? ORDER BY seq"

FIRST_GRACES = f"""
SELECT {T} FROM turnq_tickets WHERE channel_id = ?1 AND grace_deadline IS NOT NULL AND {_NOT_EXCLUDED}
ORDER BY grace_deadline, seq LIMIT ?3
"""
FIRST_WAITS = f"""
SELECT {T} FROM turnq_tickets WHERE channel_id = ?1 AND wait_deadline IS NOT NULL AND {_NOT_EXCLUDED}
ORDER BY wait_deadline, seq LIMIT ?3
"""

INSERT_TICKET = f"INSERT INTO turnq_tickets (channel_id, {T}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
DELETE_TICKET = "DELETE FROM turnq_tickets WHERE channel_id = ? AND seq = ?"
SAVE_TICKET = "UPDATE turnq_tickets SET grace_deadline = ?, attachment = ? WHERE channel_id = ? AND seq = ?"
UPDATE_CHANNEL = (
    f"UPDATE turnq_channels SET {', '.join(c + ' = ?' for c in CHANNEL_WRITE_COLUMNS)} WHERE id = ?"
)
DELETE_CHANNEL = "DELETE FROM turnq_channels WHERE id = ?"
DELETE_CHANNEL_TICKETS = "DELETE FROM turnq_tickets WHERE channel_id = ?"
INSERT_CHANNEL = (
    "INSERT INTO turnq_channels (name, lease_ms, max_depth, max_wait_ms, grace_ms, created_at) "
    "VALUES (:name, :lease_ms, :max_depth, :max_wait_ms, :grace_ms, :created_at)"
)

# restart_grace: every ticket detached, with a fresh grace of max(channel grace, the minimum window).
RESTART_GRACE_TICKETS = """
UPDATE turnq_tickets SET attachment = NULL,
    grace_deadline = ?1 + (SELECT max(c.grace_ms, ?2) FROM turnq_channels c WHERE c.id = turnq_tickets.channel_id)
"""
RESTART_GRACE_CHANNELS = "UPDATE turnq_channels SET graced_count = ticket_count, version = version + 1"
