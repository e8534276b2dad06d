"""The SQL a PostgreSQL unit sends (tables resolved through the connection's ``search_path``)."""

from __future__ import annotations

from turnq.backends.sql.line import PROBE_RANKS
from turnq.backends.sql.rows import CHANNEL_COLUMNS, CHANNEL_WRITE_COLUMNS, TICKET_COLUMNS, columns
from turnq.backends.sql.unit import PROBE_LIMIT, PROBE_TAIL

T = columns(TICKET_COLUMNS)
C = columns(CHANNEL_COLUMNS)
_RANKS = ", ".join(str(r) for r in PROBE_RANKS)


def _probe(channel_id: str) -> str:
    """The tickets at the probe's ranks, the earliest grace and wait deadlines, and the newest tickets (ranked
    from the back), tagged 0/1/2/3."""
    return f"""
    SELECT 0 AS kind, rk, {T} FROM (
        SELECT row_number() OVER (ORDER BY seq) - 1 AS rk, {T} FROM (
            SELECT {T} FROM turnq_tickets WHERE channel_id = {channel_id}
            ORDER BY seq LIMIT {max(PROBE_RANKS) + 1}
        ) f
    ) r WHERE rk IN ({_RANKS})
    UNION ALL
    (SELECT 1, 0, {T} FROM turnq_tickets WHERE channel_id = {channel_id} AND grace_deadline IS NOT NULL
     ORDER BY grace_deadline, seq LIMIT {PROBE_LIMIT})
    UNION ALL
    (SELECT 2, 0, {T} FROM turnq_tickets WHERE channel_id = {channel_id} AND wait_deadline IS NOT NULL
     ORDER BY wait_deadline, seq LIMIT {PROBE_LIMIT})
    UNION ALL
    SELECT 3, row_number() OVER (ORDER BY seq DESC) - 1, {T} FROM (
        SELECT {T} FROM turnq_tickets WHERE channel_id = {channel_id} ORDER BY seq DESC LIMIT {PROBE_TAIL}
    ) b
    """


# Lock the channel row and read it with the probe in one round trip. The probe runs on the statement's snapshot,
# taken before any wait for the lock, while the lock returns the row's latest version. ``fresh`` says the row
# on the snapshot is that same version (every unit that changes tickets also updates the row); when it is not,
# another transaction committed meanwhile and the unit reads the probe again (PROBE) on a new snapshot.
LOCK_AND_PROBE = f"""
SELECT {columns(CHANNEL_COLUMNS, "c.")},
       (SELECT s.xmin FROM turnq_channels s WHERE s.id = c.id) = c.row_xmin AS fresh,
       p.*
FROM (SELECT {C}, xmin AS row_xmin FROM turnq_channels WHERE name = $1 FOR UPDATE) c
LEFT JOIN LATERAL ({_probe("c.id")}) p ON true
"""
PROBE = _probe("$1")

FIND_BY_CLIENT = f"SELECT {T} FROM turnq_tickets WHERE channel_id = $1 AND client_id = $2"
FIND_BY_REQUEST = f"SELECT {T} FROM turnq_tickets WHERE channel_id = $1 AND request_id = $2"
COUNT_BEFORE = "SELECT count(*) FROM turnq_tickets WHERE channel_id = $1 AND seq < $2"
AT_RANKS = f"""
SELECT rk, {T} FROM (
    SELECT row_number() OVER (ORDER BY seq) - 1 AS rk, {T} FROM (
        SELECT {T} FROM turnq_tickets WHERE channel_id = $1 AND NOT (seq = ANY($2::bigint[]))
        ORDER BY seq LIMIT $3
    ) f
) r WHERE rk = ANY($4::bigint[])
"""
ALL_TICKETS = f"SELECT {T} FROM turnq_tickets WHERE channel_id = $1 ORDER BY seq"
FIRST_GRACES = f"""
SELECT {T} FROM turnq_tickets
WHERE channel_id = $1 AND grace_deadline IS NOT NULL AND NOT (seq = ANY($2::bigint[]))
ORDER BY grace_deadline, seq LIMIT $3
"""
FIRST_WAITS = f"""
SELECT {T} FROM turnq_tickets
WHERE channel_id = $1 AND wait_deadline IS NOT NULL AND NOT (seq = ANY($2::bigint[]))
ORDER BY wait_deadline, seq LIMIT $3
"""

_SET = ", ".join(f"{c} = ${i}" for i, c in enumerate(CHANNEL_WRITE_COLUMNS, start=13))
_N = 13 + len(CHANNEL_WRITE_COLUMNS)

# Everything a unit changed, and its NOTIFY payloads, in one statement: data-modifying CTEs run once each, on
# the same snapshot (the unit never deletes and inserts the same ticket, so they never meet).
WRITE_AND_NOTIFY = f"""
WITH d AS (DELETE FROM turnq_tickets WHERE channel_id = $1 AND seq = ANY($2::bigint[])),
i AS (INSERT INTO turnq_tickets (channel_id, {T})
      SELECT $1, * FROM unnest($3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[],
                               $9::text[])),
s AS (UPDATE turnq_tickets t SET grace_deadline = u.g, attachment = u.a
      FROM unnest($10::bigint[], $11::bigint[], $12::text[]) AS u(seq, g, a)
      WHERE t.channel_id = $1 AND t.seq = u.seq),
c AS (UPDATE turnq_channels SET {_SET} WHERE id = $1)
SELECT count(pg_notify(${_N}, p)) FROM unnest(${_N + 1}::text[]) AS p
"""

DELETE_AND_NOTIFY = """
WITH d AS (DELETE FROM turnq_tickets WHERE channel_id = $1),
c AS (DELETE FROM turnq_channels WHERE id = $1)
SELECT count(pg_notify($2, p)) FROM unnest($3::text[]) AS p
"""
