"""The SQL a PostgreSQL unit sends (tables resolved through the connection's ``search_path``)."""

from __future__ import annotations

from turnq.backends.sql.line import PROBE_RANKS
from turnq.backends.sql.rows import (
    CHANNEL_COLUMNS,
    CHANNEL_WRITE_COLUMNS,
    TICKET_COLUMNS,
    columns,
    ticket_params,
)
from turnq.backends.sql.unit import PROBE_LIMIT, PROBE_TAIL, SqlUnit

from .literals import literal, row

T = columns(TICKET_COLUMNS)
C = columns(CHANNEL_COLUMNS)
_RANKS = ", ".join(str(r) for r in PROBE_RANKS)


def _probe(channel_id: str) -> str:
    """The tickets at the probe's ranks, the earliest grace and wait deadlines, the newest tickets (ranked from
    the back), and the tickets of the clients $2 and requests $3 the callers named, tagged 0/1/2/3/4."""
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
    UNION ALL
    SELECT 4, 0, {T} FROM turnq_tickets WHERE channel_id = {channel_id} AND client_id = ANY($2::text[])
    UNION ALL
    SELECT 4, 0, {T} FROM turnq_tickets WHERE channel_id = {channel_id} AND request_id = ANY($3::text[])
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


def commit_script(unit: SqlUnit, notify_channel: str, payloads: list[str]) -> str:
    """Every pending write, the channel row, the NOTIFYs and COMMIT, as one script (see :mod:`.literals`).

    Removals go first, so a client's new ticket never meets its old one in the unique index.
    """
    cid = literal(unit.row.id)
    out: list[str] = []
    if unit.deleted:
        out.append(f"DELETE FROM turnq_tickets WHERE channel_id = {cid}")
        out.append(f"DELETE FROM turnq_channels WHERE id = {cid}")
    else:
        p = unit.pending
        if p.deletes:
            seqs = ", ".join(literal(s) for s in p.deletes)
            out.append(f"DELETE FROM turnq_tickets WHERE channel_id = {cid} AND seq IN ({seqs})")
        if p.inserts:
            values = ", ".join(row((unit.row.id, *ticket_params(t))) for t in p.inserts.values())
            out.append(f"INSERT INTO turnq_tickets (channel_id, {T}) VALUES {values}")
        for t in p.saves.values():
            out.append(
                f"UPDATE turnq_tickets SET grace_deadline = {literal(t.grace_deadline)}, "
                f"attachment = {literal(t.attachment)} WHERE channel_id = {cid} AND seq = {literal(t.seq)}"
            )
        fields = unit.row.write_params()[:-1]
        sets = ", ".join(f"{c} = {literal(v)}" for c, v in zip(CHANNEL_WRITE_COLUMNS, fields, strict=True))
        out.append(f"UPDATE turnq_channels SET {sets} WHERE id = {cid}")
    channel = literal(notify_channel)
    out.extend(f"SELECT pg_notify({channel}, {literal(payload)})" for payload in payloads)
    out.append("COMMIT")
    return ";\n".join(out)
