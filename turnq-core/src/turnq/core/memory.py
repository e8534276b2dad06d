"""The in-memory backend (``memory://``): fast, not durable; for tests, development and throwaway servers.

A unit of work is an asyncio lock per channel. Tickets sit in a sorted map keyed by ``seq`` so rank lookups and
removals from the middle of the line are O(log n); deadlines are kept in sorted indexes so the earliest one is
O(1) to find. :class:`ChannelState` and :class:`MemoryUnit` are public so that a durable backend serving one
process can keep its working state the same way and add a journal (the SQLite backend does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

from sortedcontainers import SortedDict, SortedList

from .errors import ErrorCode, TurnqError
from .hookspecs import hookimpl
from .model import ChannelSpec, ChannelView, Event, EventBatch, Grant, Ticket
from .store import Backend, ChannelUnit, Listener


class ChannelState:
    """One channel's line, holder and counters, with the indexes the unit's reads need."""

    __slots__ = (
        "by_client",
        "by_request",
        "deleted",
        "fencing",
        "grace_index",
        "holder",
        "lock",
        "seq",
        "spec",
        "tickets",
        "wait_index",
    )

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.lock = asyncio.Lock()
        self.holder: Grant | None = None
        self.fencing = 0
        self.seq = 0
        self.deleted = False
        self.tickets: Any = SortedDict()  # seq -> Ticket
        self.by_client: dict[str, Ticket] = {}
        self.by_request: dict[str, Ticket] = {}
        self.wait_index: Any = SortedList()  # (wait_deadline, seq)
        self.grace_index: Any = SortedList()  # (grace_deadline, seq)

    def view(self) -> ChannelView:
        return ChannelView(self.spec, len(self.tickets), self.holder)

    def add(self, ticket: Ticket) -> None:
        """Put a ticket in the line and every index (its seq must be new)."""
        self.tickets[ticket.seq] = ticket
        self.by_client[ticket.client_id] = ticket
        self.by_request[ticket.request_id] = ticket
        if ticket.wait_deadline is not None:
            self.wait_index.add((ticket.wait_deadline, ticket.seq))
        if ticket.grace_deadline is not None:
            self.grace_index.add((ticket.grace_deadline, ticket.seq))

    def earliest_wait(self, exclude_request_id: str | None) -> int | None:
        """The smallest ``wait_deadline`` among tickets other than the one excluded (the holder's)."""
        excluded = self.by_request.get(exclude_request_id) if exclude_request_id else None
        for deadline, seq in self.wait_index.islice(0, 2):
            if excluded is None or seq != excluded.seq:
                return int(deadline)
        return None

    def reindex(self) -> None:
        """Rebuild the lookups and deadline indexes from ``tickets`` (after the line was put back wholesale)."""
        line = list(self.tickets.values())
        self.by_client.clear()
        self.by_request.clear()
        self.wait_index.clear()
        self.grace_index.clear()
        self.tickets.clear()
        for ticket in line:
            self.add(ticket)


class MemoryUnit(ChannelUnit):
    __slots__ = ("_deadline", "_depth", "_events", "_graces", "_state")

    def __init__(self, state: ChannelState) -> None:
        self._state = state
        self.spec = state.spec
        self._events: list[Event] = []
        self._deadline: int | None = None
        self._depth = -1
        # The grace deadline each ticket had when this unit first touched it, so save() can fix the index.
        self._graces: dict[int, int | None] = {}

    @property
    def holder(self) -> Grant | None:
        return self._state.holder

    def set_holder(self, grant: Grant | None) -> None:
        self._state.holder = grant

    def next_fencing_token(self) -> int:
        self._state.fencing += 1
        return self._state.fencing

    def next_seq(self) -> int:
        self._state.seq += 1
        return self._state.seq

    async def depth(self) -> int:
        return len(self._state.tickets)

    async def find_by_client(self, client_id: str) -> Ticket | None:
        return self._track(self._state.by_client.get(client_id))

    async def find_by_request(self, request_id: str) -> Ticket | None:
        return self._track(self._state.by_request.get(request_id))

    def _track(self, ticket: Ticket | None) -> Ticket | None:
        """Every stored ticket the rules are handed passes here first, before they can change it."""
        if ticket is not None and ticket.seq not in self._graces:
            self._graces[ticket.seq] = ticket.grace_deadline
        return ticket

    async def rank(self, ticket: Ticket) -> int:
        return int(self._state.tickets.index(ticket.seq))

    async def at_ranks(self, ranks: Sequence[int]) -> list[tuple[int, Ticket]]:
        tickets = self._state.tickets
        n = len(tickets)
        out = []
        for r in ranks:
            if r >= n:
                break
            ticket = tickets.peekitem(r)[1]
            self._track(ticket)
            out.append((r, ticket))
        return out

    async def tickets(self) -> list[Ticket]:
        return list(self._state.tickets.values())

    async def push(self, ticket: Ticket) -> None:
        self._state.add(ticket)
        self._graces[ticket.seq] = ticket.grace_deadline

    async def remove(self, ticket: Ticket) -> None:
        s = self._state
        del s.tickets[ticket.seq]
        del s.by_client[ticket.client_id]
        del s.by_request[ticket.request_id]
        if ticket.wait_deadline is not None:
            s.wait_index.discard((ticket.wait_deadline, ticket.seq))
        old = self._graces.pop(ticket.seq, ticket.grace_deadline)
        if old is not None:
            s.grace_index.discard((old, ticket.seq))

    async def save(self, ticket: Ticket) -> None:
        old = self._graces.get(ticket.seq, ticket.grace_deadline)
        if old != ticket.grace_deadline:
            if old is not None:
                self._state.grace_index.discard((old, ticket.seq))
            if ticket.grace_deadline is not None:
                self._state.grace_index.add((ticket.grace_deadline, ticket.seq))
        self._graces[ticket.seq] = ticket.grace_deadline

    async def earliest_wait_deadline(self, exclude_request_id: str | None) -> int | None:
        return self._state.earliest_wait(exclude_request_id)

    async def earliest_grace(self) -> Ticket | None:
        index = self._state.grace_index
        if not index:
            return None
        return self._track(self._state.tickets[index[0][1]])

    async def delete_channel(self) -> None:
        self._state.deleted = True

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def conclude(self, next_deadline: int | None, depth: int) -> None:
        self._deadline = next_deadline
        self._depth = depth

    def batch(self) -> EventBatch | None:
        """What listeners hear of this unit once it is done: its events and conclusion, or None if it had
        neither."""
        if not self._events and self._depth < 0:
            return None
        s = self._state
        return EventBatch(
            s.spec.name, tuple(self._events), self._deadline, max(self._depth, 0), deleted=s.deleted
        )


S = TypeVar("S", bound=ChannelState)


async def lock_channel(channels: dict[str, S], channel: str) -> S:
    """The channel's state with its lock held; CHANNEL_NOT_FOUND if there is none or it was deleted while this
    waited for the lock."""
    state = channels.get(channel)
    if state is None:
        raise TurnqError(ErrorCode.CHANNEL_NOT_FOUND, f"channel {channel!r} does not exist")
    await state.lock.acquire()
    if state.deleted:
        state.lock.release()
        raise TurnqError(ErrorCode.CHANNEL_NOT_FOUND, f"channel {channel!r} does not exist")
    return state


class _UnitScope:
    """One unit of work on a channel: its lock held for the unit's life, its batch delivered once it is done.

    A class rather than an ``asynccontextmanager`` generator: every operation opens one, and the generator's
    machinery (a generator, its ``anext`` awaitables, the lock's own context manager) roughly doubled the cost of
    opening and closing a unit.
    """

    __slots__ = ("_backend", "_channel", "_state", "_unit")

    def __init__(self, backend: MemoryBackend, channel: str) -> None:
        self._backend = backend
        self._channel = channel

    async def __aenter__(self) -> ChannelUnit:
        state = self._state = await lock_channel(self._backend._channels, self._channel)
        unit = self._unit = MemoryUnit(state)
        return unit

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """A unit that raised is abandoned (nothing is delivered); one that finished is delivered after its lock
        is released, as every backend does after its commit."""
        state = self._state
        try:
            if exc_type is None and state.deleted:
                self._backend._channels.pop(self._channel, None)
        finally:
            state.lock.release()
        if exc_type is not None:
            return
        batch = self._unit.batch()
        if batch is not None:
            for listener in self._backend._listeners:
                listener(batch)


class MemoryBackend(Backend):
    """Everything in this process's memory; gone when the process ends."""

    name = "memory"
    durable = False

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._channels: dict[str, ChannelState] = {}
        self._listeners: list[Listener] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_channel(self, spec: ChannelSpec) -> None:
        if spec.name in self._channels:
            raise TurnqError(ErrorCode.CHANNEL_EXISTS, f"channel {spec.name!r} already exists")
        self._channels[spec.name] = ChannelState(spec)

    async def get_channel(self, name: str) -> ChannelView | None:
        state = self._channels.get(name)
        return state.view() if state is not None else None

    async def list_channels(self) -> list[ChannelView]:
        return [s.view() for s in self._channels.values()]

    def unit(self, channel: str) -> AbstractAsyncContextManager[ChannelUnit]:
        return _UnitScope(self, channel)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    async def deadlines(self) -> dict[str, int]:
        return {}

    async def restart_grace(self, now: int, min_window_ms: int) -> None:
        return None


@hookimpl
def turnq_backend_schemes() -> dict[str, Any]:
    return {"memory": MemoryBackend}
