"""The SQLite unit: :class:`~turnq.backends.sql.SqlUnit` with its reads run on the writer's thread."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from turnq.backends.sql.rows import ChannelRow, ticket_from_row
from turnq.backends.sql.unit import SqlUnit
from turnq.core import Ticket

from . import statements as q
from .writer import Writer


def _seqs(seqs: list[int]) -> str:
    return json.dumps(seqs)


class SqliteUnit(SqlUnit):
    def __init__(
        self,
        writer: Writer,
        row: ChannelRow,
        probe: list[tuple[int, int, Ticket]],
        client_id: str | None,
        request_id: str | None,
    ) -> None:
        super().__init__(row, probe, client_id, request_id)
        self._writer = writer

    async def _one(self, sql: str, params: tuple[Any, ...]) -> Ticket | None:
        row = await self._writer.run(lambda c: c.execute(sql, params).fetchone())
        return ticket_from_row(row) if row is not None else None

    async def _many(self, sql: str, params: tuple[Any, ...]) -> list[Ticket]:
        rows = await self._writer.run(lambda c: c.execute(sql, params).fetchall())
        return [ticket_from_row(r) for r in rows]

    async def _q_find_by_client(self, client_id: str) -> Ticket | None:
        return await self._one(q.FIND_BY_CLIENT, (self.row.id, client_id))

    async def _q_find_by_request(self, request_id: str) -> Ticket | None:
        return await self._one(q.FIND_BY_REQUEST, (self.row.id, request_id))

    async def _q_count_before(self, seq: int) -> int:
        params = (self.row.id, seq)
        row = await self._writer.run(lambda c: c.execute(q.COUNT_BEFORE, params).fetchone())
        return int(row[0])

    async def _q_at_ranks(self, ranks: list[int], exclude: list[int]) -> list[tuple[int, Ticket]]:
        params = (self.row.id, _seqs(exclude), max(ranks) + 1, _seqs(ranks))
        rows = await self._writer.run(lambda c: c.execute(q.AT_RANKS, params).fetchall())
        return [(int(r[0]), ticket_from_row(r, 1)) for r in rows]

    async def _q_all(self) -> list[Ticket]:
        return await self._many(q.ALL_TICKETS, (self.row.id,))

    async def _q_first_graces(self, exclude: list[int], limit: int) -> list[Ticket]:
        return await self._many(q.FIRST_GRACES, (self.row.id, _seqs(exclude), limit))

    async def _q_first_waits(self, exclude: list[int], limit: int) -> list[Ticket]:
        return await self._many(q.FIRST_WAITS, (self.row.id, _seqs(exclude), limit))


def write_unit(c: sqlite3.Connection, unit: SqlUnit) -> None:
    """Send a unit's changes (on the writer's thread, inside its transaction): removals first, so a client's
    new ticket never meets its old one in the unique index."""
    cid = unit.row.id
    if unit.deleted:
        c.execute(q.DELETE_CHANNEL_TICKETS, (cid,))
        c.execute(q.DELETE_CHANNEL, (cid,))
        return
    p = unit.pending
    if p.deletes:
        c.executemany(q.DELETE_TICKET, [(cid, s) for s in p.deletes])
    if p.inserts:
        c.executemany(
            q.INSERT_TICKET,
            [
                (
                    cid,
                    t.seq,
                    t.client_id,
                    t.request_id,
                    t.enqueued_at,
                    t.wait_deadline,
                    t.grace_deadline,
                    t.attachment,
                )
                for t in p.inserts.values()
            ],
        )
    if p.saves:
        c.executemany(q.SAVE_TICKET, [(t.grace_deadline, t.attachment, cid, t.seq) for t in p.saves.values()])
    if unit.row_changed or p:
        unit.row.version += 1
        c.execute(q.UPDATE_CHANNEL, unit.row.write_params())
