"""Units of one busy channel sharing a transaction (group commit).

Units on one channel in one process already take turns (an asyncio lock before the row lock). When a unit ends
while others are waiting for the channel, it does not commit: it leaves its transaction open, with what it
learned and wrote, to the next one, and waits. The last unit of the run (nobody waiting, or the group full)
commits every unit's writes and notifications at once; then each unit's batch is delivered, in order, and every
caller is answered. A hot channel thus pays one ``BEGIN``, one lock-and-probe and one durable ``COMMIT`` per
group instead of per unit, and nothing is published or answered before its commit, exactly as alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection
from turnq.core import EventBatch

from .payload import Envelope, encode
from .unit import PostgresUnit

# A pooled connection as the backend holds it: SQLAlchemy's handle (for the pool) and the driver's (for the SQL).
Held = tuple[AsyncConnection, asyncpg.Connection]

# A group ends after this many units, so the first one's caller never waits long for its answer.
MAX_GROUP = 16


@dataclass
class Group:
    """An open transaction on one channel and the units that have run in it."""

    unit: PostgresUnit
    origin: str
    held: Held  # the pooled connection the transaction is open on
    size: int = 0
    # Each unit's batch, in order, with the version its notification carries (None: it sent none).
    batches: list[tuple[int | None, EventBatch]] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)
    # The callers of units that ended and wait for the group's commit.
    waiting: list[asyncio.Future[None]] = field(default_factory=list)

    def close_unit(self, changed: bool) -> None:
        """The current unit's body is done: record its batch (and its notification, if it changed or announced
        anything), then let the next unit start on the same state."""
        u = self.unit
        self.size += 1
        if u.events or u.concluded:
            batch = EventBatch(
                u.row.spec.name,
                tuple(u.events),
                u.next_deadline,
                u.depth_after,
                origin=self.origin,
                deleted=u.deleted,
            )
            version = None
            if batch.events or changed:
                u.row.version += 1
                version = u.row.version
                self.payloads.extend(encode(Envelope(self.origin, u.row.id, version, batch)))
            self.batches.append((version, batch))

    @property
    def full(self) -> bool:
        return self.size >= MAX_GROUP or self.unit.deleted

    def answer(self, error: BaseException | None) -> None:
        for future in self.waiting:
            if not future.done():  # a caller that gave up still had its unit committed (or not) with the rest
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        self.waiting.clear()
