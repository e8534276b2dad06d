"""The whole-store reads both engines run through SQLAlchemy Core: channel views and every channel's nearest
deadline (what a reaper needs when it starts)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from turnq.core import ChannelView

from .rows import CHANNEL_COLUMNS, channel_from_row, nearest
from .schema import channels, tickets

_CHANNEL = [channels.c[n] for n in CHANNEL_COLUMNS]


def select_channel(name: str) -> sa.Select[Any]:
    return sa.select(*_CHANNEL).where(channels.c.name == name)


def select_channels() -> sa.Select[Any]:
    return sa.select(*_CHANNEL).order_by(channels.c.name)


def channel_views(rows: Iterable[Sequence[Any]]) -> list[ChannelView]:
    return [channel_from_row(r).view() for r in rows]


def select_deadlines(channel_ids: Sequence[int] | None = None) -> sa.Select[Any]:
    """Per channel (all, or those of ``channel_ids``): the holder's lease, the earliest wait deadline of a
    waiter, the earliest grace deadline.

    One statement; each subquery is a seek on its partial index.
    """
    c, t = channels, tickets
    not_holder = sa.or_(c.c.holder_request_id.is_(None), t.c.request_id != c.c.holder_request_id)
    wait = (
        sa.select(sa.func.min(t.c.wait_deadline))
        .where(t.c.channel_id == c.c.id, t.c.wait_deadline.is_not(None), not_holder)
        .scalar_subquery()
    )
    grace = (
        sa.select(sa.func.min(t.c.grace_deadline))
        .where(t.c.channel_id == c.c.id, t.c.grace_deadline.is_not(None))
        .scalar_subquery()
    )
    stmt = sa.select(c.c.name, c.c.holder_lease_deadline, wait, grace)
    return stmt if channel_ids is None else stmt.where(c.c.id.in_(channel_ids))


def deadlines_from_rows(rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    out = {}
    for row in rows:
        deadline = nearest(row[1], row[2], row[3])
        if deadline is not None:
            out[str(row[0])] = deadline
    return out
