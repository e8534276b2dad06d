"""The narrow interface a storage backend gives the rules.

A backend stores state and carries a feed of committed changes; it never decides who is next. Everything a turn
needs is asked of one :class:`ChannelUnit` (an atomic unit of work on one channel), in operations a database can
answer from an index, so a turn's cost does not grow with the depth of the line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from .model import ChannelSpec, ChannelView, Event, EventBatch, Grant, Ticket

Listener = Callable[[EventBatch], None]


class ChannelUnit(ABC):
    """One atomic unit of work on one channel, holding the channel's lock until it commits.

    Channel-level fields (``spec``, ``holder``, the counters) are read once when the unit opens and written back
    on commit; ticket operations may go to storage as they are called. Nothing is visible to other units, and
    no event is published, until the unit commits; an exception discards the unit's events and (for
    transactional stores) its changes.
    """

    spec: ChannelSpec

    @property
    @abstractmethod
    def holder(self) -> Grant | None:
        """The current grant, or None when nobody holds."""

    @abstractmethod
    def set_holder(self, grant: Grant | None) -> None:
        """Replace the grant (a new holder, a renewed lease, or nobody)."""

    @abstractmethod
    def next_fencing_token(self) -> int:
        """Advance and return the channel's fencing-token counter; never repeats over the channel's life."""

    @abstractmethod
    def next_seq(self) -> int:
        """Advance and return the channel's enqueue counter, which orders tickets."""

    @abstractmethod
    async def depth(self) -> int:
        """How many tickets the channel has (the holder's included)."""

    @abstractmethod
    async def find_by_client(self, client_id: str) -> Ticket | None: ...

    @abstractmethod
    async def find_by_request(self, request_id: str) -> Ticket | None: ...

    @abstractmethod
    async def rank(self, ticket: Ticket) -> int:
        """How many tickets are ahead of this one (0: the front)."""

    @abstractmethod
    async def at_ranks(self, ranks: Sequence[int]) -> list[tuple[int, Ticket]]:
        """The tickets at these ranks (ascending, any beyond the end left out), with their ranks."""

    @abstractmethod
    async def tickets(self) -> list[Ticket]:
        """Every ticket in order; for views only, never on a turn's path."""

    @abstractmethod
    async def push(self, ticket: Ticket) -> None:
        """Add a ticket at the back of the line (its ``seq`` is the largest so far)."""

    @abstractmethod
    async def remove(self, ticket: Ticket) -> None: ...

    @abstractmethod
    async def save(self, ticket: Ticket) -> None:
        """Write back a ticket's presence fields (``attachment``, ``grace_deadline``)."""

    @abstractmethod
    async def earliest_wait_deadline(self, exclude_request_id: str | None) -> int | None:
        """The smallest ``wait_deadline`` among tickets other than the one excluded (the holder's)."""

    @abstractmethod
    async def earliest_grace(self) -> Ticket | None:
        """The ticket with the smallest ``grace_deadline``, if any has one."""

    @abstractmethod
    async def delete_channel(self) -> None:
        """Remove the channel itself (the rules have checked it is empty)."""

    @abstractmethod
    def emit(self, event: Event) -> None:
        """Queue an event for publication when the unit commits."""

    @abstractmethod
    def conclude(self, next_deadline: int | None, depth: int) -> None:
        """Record the channel's nearest deadline and depth after this unit, for the published batch."""


class Backend(ABC):
    """A storage backend: channels, tickets and holders, plus a feed of committed event batches.

    ``durable`` backends keep everything across a restart; they must commit a unit before its events are
    published, so nothing announced is ever lost.
    """

    name: str = "?"
    durable: bool = False
    # Stamped on the batches this process commits, so listeners can tell them from other processes' batches.
    origin: str = ""
    # Transactions this process has committed for units of work (stores without transactions leave it at 0).
    # Fewer commits than units means units are sharing them; the server exports it as a metric.
    unit_commits: int = 0

    @abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema, start the feed."""

    @abstractmethod
    async def close(self) -> None: ...

    async def upgrade(self) -> tuple[int, int]:
        """Bring the store's schema up to this code's version, as ``open`` does, and return the versions before
        and after; works on a backend that is not open (``turnq db upgrade``). A store that is newer than the
        code must refuse with a clear message. Stores without a schema return ``(0, 0)``."""
        return (0, 0)

    @abstractmethod
    async def create_channel(self, spec: ChannelSpec) -> None:
        """Create a channel; raise ``TurnqError(CHANNEL_EXISTS)`` if the name is taken."""

    @abstractmethod
    async def get_channel(self, name: str) -> ChannelView | None: ...

    @abstractmethod
    async def list_channels(self) -> list[ChannelView]: ...

    @abstractmethod
    def unit(self, channel: str) -> AbstractAsyncContextManager[ChannelUnit]:
        """Open a unit of work on a channel; raise ``TurnqError(CHANNEL_NOT_FOUND)`` if there is none."""

    def unit_for_ticket(
        self, channel: str, *, client_id: str | None = None, request_id: str | None = None
    ) -> AbstractAsyncContextManager[ChannelUnit]:
        """Like :meth:`unit`, naming the ticket the caller will look up first (by client or by request id).

        A backend whose every read is a round trip can fetch that ticket, or learn there is none, together with
        the channel; the default simply opens :meth:`unit`.
        """
        return self.unit(channel)

    @abstractmethod
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every committed batch, in commit order per channel."""

    @abstractmethod
    def remove_listener(self, listener: Listener) -> None: ...

    @abstractmethod
    async def deadlines(self) -> dict[str, int]:
        """Each channel's nearest deadline, for a reaper that is starting up."""

    async def heartbeat(self, instance: str, now: int) -> bool:
        """Record that server process ``instance`` is alive.

        Returns False if the backend did not know it as alive (it is new, or was taken for dead and its tickets
        detached), so the process can re-attach the streams it still holds. Backends that serve one process
        only need not track anything.
        """
        return True

    async def detach_stale(
        self, now: int, stale_before: int, min_window_ms: int, *, refresh_detached: bool = False
    ) -> None:
        """Presence across server processes: every ticket attached to an instance not heard from since
        ``stale_before`` is detached and starts a grace of ``max(channel grace_ms, min_window_ms)`` from
        ``now``; with ``refresh_detached`` (a process starting), tickets attached to nobody get that fresh grace
        too. Every process must hear each touched channel's new nearest deadline.

        The default suits a backend that serves one process at a time: at start, everything is detached.
        """
        if refresh_detached:
            await self.restart_grace(now, min_window_ms)

    async def retire(self, instance: str, now: int, min_window_ms: int) -> None:
        """Server process ``instance`` is stopping: its tickets start their grace now (as they would once it
        went silent), so other processes need not wait for its heartbeat to go stale."""
        return None

    @abstractmethod
    async def restart_grace(self, now: int, min_window_ms: int) -> None:
        """Detach every ticket and give it a fresh grace from ``now`` (a server has just started).

        A ticket's new ``grace_deadline`` is ``now + max(channel grace_ms, min_window_ms)``.
        """
