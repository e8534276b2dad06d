"""The PostgreSQL unit: :class:`~turnq.backends.sql.SqlUnit` with its reads sent on the unit's connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from turnq.backends.sql.rows import ChannelRow, ticket_from_row
from turnq.backends.sql.unit import SqlUnit
from turnq.core import Ticket

from . import statements as q
from .payload import Envelope, encode


class PostgresUnit(SqlUnit):
    def __init__(
        self, conn: asyncpg.Connection, row: ChannelRow, probe: list[tuple[int, int, Ticket]]
    ) -> None:
        super().__init__(row, probe)
        self._conn = conn

    async def _q_find_by_client(self, client_id: str) -> Ticket | None:
        r = await self._conn.fetchrow(q.FIND_BY_CLIENT, self.row.id, client_id)
        return ticket_from_row(r) if r is not None else None

    async def _q_find_by_request(self, request_id: str) -> Ticket | None:
        r = await self._conn.fetchrow(q.FIND_BY_REQUEST, self.row.id, request_id)
        return ticket_from_row(r) if r is not None else None

    async def _q_count_before(self, seq: int) -> int:
        return int(await self._conn.fetchval(q.COUNT_BEFORE, self.row.id, seq))

    async def _q_at_ranks(self, ranks: list[int], exclude: list[int]) -> list[tuple[int, Ticket]]:
        rows = await self._conn.fetch(q.AT_RANKS, self.row.id, exclude, max(ranks) + 1, ranks)
        return [(int(r[0]), ticket_from_row(r, 1)) for r in rows]

    async def _q_all(self) -> list[Ticket]:
        return [ticket_from_row(r) for r in await self._conn.fetch(q.ALL_TICKETS, self.row.id)]

    async def _q_first_graces(self, exclude: list[int], limit: int) -> list[Ticket]:
        return [
            ticket_from_row(r) for r in await self._conn.fetch(q.FIRST_GRACES, self.row.id, exclude, limit)
        ]

    async def _q_first_waits(self, exclude: list[int], limit: int) -> list[Ticket]:
        return [
            ticket_from_row(r) for r in await self._conn.fetch(q.FIRST_WAITS, self.row.id, exclude, limit)
        ]


def probe_rows(records: Sequence[Any], at: int) -> list[tuple[int, int, Ticket]]:
    """Probe rows from ``(kind, rank, ticket…)`` columns starting at ``at``; a LEFT JOIN's empty row is skipped."""
    return [(r[at], r[at + 1], ticket_from_row(r, at + 2)) for r in records if r[at] is not None]


def write_params(unit: SqlUnit, notify_channel: str, payloads: list[str]) -> tuple[Any, ...]:
    """Parameters of WRITE_AND_NOTIFY for everything the unit changed."""
    p = unit.pending
    ins = list(p.inserts.values())
    saves = list(p.saves.values())
    return (
        unit.row.id,
        list(p.deletes),
        [t.seq for t in ins],
        [t.client_id for t in ins],
        [t.request_id for t in ins],
        [t.enqueued_at for t in ins],
        [t.wait_deadline for t in ins],
        [t.grace_deadline for t in ins],
        [t.attachment for t in ins],
        [t.seq for t in saves],
        [t.grace_deadline for t in saves],
        [t.attachment for t in saves],
        *unit.row.write_params()[:-1],  # the id is $1
        notify_channel,
        payloads,
    )


def envelope_payloads(origin: str, unit: SqlUnit, batch_events: Any) -> list[str]:
    return encode(Envelope(origin, unit.row.id, unit.row.version, batch_events))
