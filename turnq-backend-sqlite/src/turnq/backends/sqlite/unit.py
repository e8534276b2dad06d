"""The SQLite unit: the memory backend's unit over this process's copy of the store, recording what it changes.

Reads never leave memory (the backend loaded the store when it opened and keeps it current), so the rules run
at memory speed. What a unit changes is recorded as it happens and turned, when the body ends, into the SQL
that makes the file say the same (:meth:`JournalUnit.writes`); the journal commits it before anyone hears of
the change. A body that fails puts its channel back as it found it (:meth:`JournalUnit.undo`), so memory never
holds a change the file will not.

Presence (which stream a ticket is attached to, and its grace deadline) is not written: only this process
serves the file, and when it starts again every ticket is detached with a fresh grace anyway. So an attach or a
detach that only moves presence costs no write at all, and a turn writes twice: its enqueue and its release.
"""

from __future__ import annotations

from typing import Any

from turnq.backends.sql.rows import channel_write_params
from turnq.core import Ticket
from turnq.core.memory import ChannelState, MemoryUnit

from . import statements as q

# One statement and its parameters; a list of parameter tuples runs it once per tuple.
Write = tuple[str, Any]


class StoredChannel(ChannelState):
    """A channel as this process holds it: the memory state plus its row id and the row's version.

    ``stale`` marks a state that no longer tells the truth (the store was reloaded after a failed commit); a unit
    that finds it so starts again on the new state.
    """

    __slots__ = ("id", "stale", "version")

    def __init__(self, spec: Any, channel_id: int) -> None:
        super().__init__(spec)
        self.id = channel_id
        self.version = 0
        self.stale = False

    def row_params(self) -> tuple[Any, ...]:
        """Values for UPDATE_CHANNEL (the row's counters and holder, then the id)."""
        return channel_write_params(
            self.id,
            self.fencing,
            self.seq,
            len(self.tickets),
            len(self.grace_index),
            self.version,
            self.holder,
        )


def ticket_params(channel_id: int, t: Ticket) -> tuple[Any, ...]:
    return (
        channel_id,
        t.seq,
        t.client_id,
        t.request_id,
        t.enqueued_at,
        t.wait_deadline,
        t.grace_deadline,
        t.attachment,
    )


class JournalUnit(MemoryUnit):
    __slots__ = ("_inserted", "_presence", "_removed", "_row_start", "_stored")

    def __init__(self, state: StoredChannel) -> None:
        super().__init__(state)
        self._stored = state
        self._row_start = (state.holder, state.fencing, state.seq)
        self._inserted: dict[int, Ticket] = {}  # pushed by this unit (and not removed again)
        self._removed: dict[int, Ticket] = {}  # stored before this unit, removed by it
        self._presence: dict[int, tuple[Ticket, str | None, int | None]] = {}  # as first handed out

    # ---------------------------------------------------------------- recording

    def _track(self, ticket: Ticket | None) -> Ticket | None:
        if ticket is not None and ticket.seq not in self._presence and ticket.seq not in self._inserted:
            self._presence[ticket.seq] = (ticket, ticket.attachment, ticket.grace_deadline)
        return super()._track(ticket)

    async def push(self, ticket: Ticket) -> None:
        await super().push(ticket)
        self._inserted[ticket.seq] = ticket

    async def remove(self, ticket: Ticket) -> None:
        self._track(ticket)
        await super().remove(ticket)
        if self._inserted.pop(ticket.seq, None) is None:
            self._removed[ticket.seq] = ticket

    # ---------------------------------------------------------------- what the body did

    def writes(self) -> list[Write]:
        """The SQL that brings the file to what this unit left in memory: removals first, so a client's new
        ticket never meets its old one in the unique index; the channel row last, with a new version."""
        s = self._stored
        if s.deleted:
            return [(q.DELETE_CHANNEL_TICKETS, (s.id,)), (q.DELETE_CHANNEL, (s.id,))]
        out: list[Write] = []
        if self._removed:
            out.append((q.DELETE_TICKET, [(s.id, seq) for seq in self._removed]))
        if self._inserted:
            out.append((q.INSERT_TICKET, [ticket_params(s.id, t) for t in self._inserted.values()]))
        if out or (s.holder, s.fencing, s.seq) != self._row_start:
            s.version += 1
            out.append((q.UPDATE_CHANNEL, s.row_params()))
        return out

    def undo(self) -> None:
        """Put the channel back as this unit found it (its body failed, so nothing of it may last)."""
        s = self._stored
        s.holder, s.fencing, s.seq = self._row_start
        s.deleted = False
        for seq in self._inserted:
            s.tickets.pop(seq, None)
        for seq, ticket in self._removed.items():
            s.tickets[seq] = ticket
        for ticket, attachment, grace in self._presence.values():
            ticket.attachment, ticket.grace_deadline = attachment, grace
        s.reindex()
