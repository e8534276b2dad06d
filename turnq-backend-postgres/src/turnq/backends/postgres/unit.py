"""The PostgreSQL unit: :class:`~turnq.backends.sql.SqlUnit` with its reads sent on the unit's connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from turnq.backends.sql.rows import ChannelRow, ticket_from_row
from turnq.backends.sql.unit import SqlUnit
from turnq.core import Ticket

from . import statements as q


class PostgresUnit(SqlUnit):
    def __init__(
        self,
        conn: asyncpg.Connection,
        row: ChannelRow,
        probe: list[tuple[int, int, Ticket]],
        clients: list[str],
        requests: list[str],
    ) -> None:
        super().__init__(row, probe, clients, requests)
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
