"""Which server processes are alive, and giving the tickets of those that are not a grace to come back.

Every ``turnq serve`` on the database says it is alive every second (:func:`heartbeat`); one that has been
silent too long is taken for dead, and the tickets whose streams it held are detached with a fresh grace, so
their clients can resubscribe to another server. A stream's attachment names its server process before the
first ``/`` (``instance/n``), which is how a ticket's server is known.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection
from turnq.backends.sql.schema import channels, instances, tickets


async def heartbeat(conn: AsyncConnection, instance: str, now: int) -> bool:
    """Record ``instance`` as alive; False if it was not known as alive (new, or taken for dead)."""
    stmt: sa.Executable = (
        pg.insert(instances)
        .values(instance=instance, heard_at=now)
        .on_conflict_do_update(index_elements=["instance"], set_={"heard_at": now})
        .returning(sa.literal_column("xmax = 0"))  # true for a row inserted, false for one updated
    )
    inserted = (await conn.execute(stmt)).scalar()
    return not inserted


async def forget(conn: AsyncConnection, instance: str) -> None:
    """Remove ``instance`` (a server stopping on purpose)."""
    await conn.execute(sa.delete(instances).where(instances.c.instance == instance))


async def forget_stale(conn: AsyncConnection, stale_before: int) -> list[str]:
    """Remove the instances silent since ``stale_before``; returns them."""
    gone = await conn.execute(
        sa.delete(instances).where(instances.c.heard_at < stale_before).returning(instances.c.instance)
    )
    return [str(i) for i in gone.scalars().all()]


def attached_to(gone: list[str]) -> sa.ColumnElement[bool]:
    return sa.func.split_part(tickets.c.attachment, "/", 1).in_(gone)


async def detach(
    conn: AsyncConnection, which: sa.ColumnElement[bool], now: int, min_window_ms: int
) -> list[Any]:
    """Detach the tickets ``which`` selects, each with a grace of ``max(channel grace, min_window_ms)`` from
    ``now``; returns ``(id, name, version, ticket_count)`` of every channel touched, its version advanced.

    Channel rows are locked first, in id order (units lock one row, then its tickets; several servers running
    this lock in the same order), then tickets change, then each row's count of tickets in grace.
    """
    c, t = channels, tickets
    ids = (await conn.execute(sa.select(t.c.channel_id).where(which).distinct())).scalars().all()
    if not ids:
        return []
    await conn.execute(sa.select(c.c.id).where(c.c.id.in_(ids)).order_by(c.c.id).with_for_update())
    await conn.execute(
        sa.update(t)
        .values(attachment=None, grace_deadline=now + sa.func.greatest(c.c.grace_ms, min_window_ms))
        .where(c.c.id == t.c.channel_id, t.c.channel_id.in_(ids), which)
    )
    graced = (
        sa.select(sa.func.count())
        .where(t.c.channel_id == c.c.id, t.c.grace_deadline.is_not(None))
        .scalar_subquery()
    )
    bumped = await conn.execute(
        sa.update(c)
        .where(c.c.id.in_(ids))
        .values(graced_count=graced, version=c.c.version + 1)
        .returning(c.c.id, c.c.name, c.c.version, c.c.ticket_count)
    )
    return list(bumped.all())
