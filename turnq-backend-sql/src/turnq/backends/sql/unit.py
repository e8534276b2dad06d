"""A ChannelUnit for databases: reads answered from what the unit knows, writes held until commit.

A round trip to the database costs far more than the rule code around it, so a unit:

* reads the channel row once, under the channel's lock, together with a *probe* of the tickets most operations
  touch (the tickets at the ranks a release grants and notifies, the earliest grace and wait deadlines), and
  keeps the counters and the holder in memory until commit;
* keeps what it knows true as it pushes, removes and saves tickets (:class:`~.line.Line`,
  :class:`~.front.Front`), so a release that grants the next ticket and an attach usually need no further read;
* holds every ticket write in :class:`PendingWrites` and lets the backend send them all with the channel row
  when the unit commits. Reads that miss the caches are written to see the unit's own pending writes: they
  exclude the tickets it removed or changed and merge in its own versions.

Subclasses supply the few queries (``_q_*``) in their engine's SQL; the backend opens the unit, commits
``pending`` and ``row``, and publishes the batch.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from turnq.core import ChannelUnit, Event, Grant, Ticket

from .front import Front, by_grace, by_wait
from .line import Line
from .rows import ChannelRow

# How many tickets of each deadline ordering the probe reads: two cover "the earliest one other than the
# holder's".
PROBE_LIMIT = 2

# The newest tickets the probe reads: a client attaches right after it enqueues, usually still among these.
PROBE_TAIL = 4

PROBE_LINE, PROBE_GRACE, PROBE_WAIT, PROBE_LINE_FROM_END, PROBE_FOUND = 0, 1, 2, 3, 4


class PendingWrites:
    """Ticket writes a unit has made but not sent: the last word per ticket wins, and a ticket pushed and removed
    in the same unit is never written at all."""

    __slots__ = ("deletes", "inserts", "saves")

    def __init__(self) -> None:
        self.inserts: dict[int, Ticket] = {}
        self.deletes: dict[int, Ticket] = {}
        self.saves: dict[int, Ticket] = {}

    def __bool__(self) -> bool:
        return bool(self.inserts or self.deletes or self.saves)

    def push(self, t: Ticket) -> None:
        self.inserts[t.seq] = t

    def remove(self, t: Ticket) -> None:
        self.saves.pop(t.seq, None)
        if self.inserts.pop(t.seq, None) is None:
            self.deletes[t.seq] = t

    def save(self, t: Ticket) -> None:
        if t.seq not in self.inserts:  # an insert writes the ticket's latest fields anyway
            self.saves[t.seq] = t

    def changed_seqs(self) -> list[int]:
        """Tickets whose stored rows no longer tell the truth (removed or changed by this unit)."""
        return [*self.deletes, *self.saves]


class SqlUnit(ChannelUnit):
    """The caches and rules of a database unit; subclasses implement the ``_q_*`` reads."""

    def __init__(
        self,
        row: ChannelRow,
        probe: Iterable[tuple[int, int, Ticket]] = (),
        clients: Iterable[str] = (),
        requests: Iterable[str] = (),
    ) -> None:
        """``probe`` rows are ``(kind, rank, ticket)``: PROBE_LINE with the ticket's rank, PROBE_LINE_FROM_END
        with its rank counted from the back, PROBE_GRACE / PROBE_WAIT in deadline order, or PROBE_FOUND: a
        ticket of one of the ``clients`` or ``requests`` the probe looked up (so a name it looked up and did not
        find has no ticket, unless this unit pushes one, which it then knows)."""
        self.row = row
        self.spec = row.spec
        self._start = row.state()
        self.events: list[Event] = []
        self.concluded = False
        self.next_deadline: int | None = None
        self.depth_after = 0
        self.deleted = False
        self.pending = PendingWrites()
        self._known: dict[int, Ticket] = {}  # seq -> the one Ticket object this unit hands out for it
        self._graces: dict[int, int | None] = {}  # seq -> grace deadline as stored (or pending)
        self._line = Line(row.ticket_count)
        graces: list[Ticket] = []
        waits: list[Ticket] = []
        for kind, rank, ticket in probe:
            t = self._adopt(ticket)
            if kind == PROBE_LINE:
                self._line.learn(rank, t)
            elif kind == PROBE_LINE_FROM_END:
                self._line.learn(row.ticket_count - 1 - rank, t)
            elif kind == PROBE_GRACE:
                graces.append(t)
            elif kind == PROBE_WAIT:
                waits.append(t)
            # PROBE_FOUND: adopting it is all; find_by_* look through what the unit knows
        self._grace = Front(by_grace, graces, complete=row.graced_count == 0 or len(graces) < PROBE_LIMIT)
        no_waits = row.spec.max_wait_ms is None or row.ticket_count == 0
        self._wait = Front(by_wait, waits, complete=no_waits or len(waits) < PROBE_LIMIT)
        self._probed_clients = set(clients)
        self._probed_requests = set(requests)

    # ---------------------------------------------------------------- what the backend reads after the body

    @property
    def row_changed(self) -> bool:
        return self.row.state() != self._start

    @property
    def changed(self) -> bool:
        """Whether committing this unit writes anything."""
        return self.deleted or bool(self.pending) or self.row_changed

    # ---------------------------------------------------------------- several units in one transaction

    def fingerprint(self) -> tuple[Any, ...]:
        """What a unit body can change, cheaply compared: the rules raise before they change anything, so a
        body that raised and left this as it found it changed nothing."""
        p = self.pending
        return (
            self.row.state(),
            len(p.inserts),
            len(p.deletes),
            len(p.saves),
            len(self.events),
            self.deleted,
        )

    def carry_on(self) -> None:
        """Start the next unit of the same transaction on what this one knows (the backend commits several
        units of a busy channel together): the channel row, the caches and the pending writes carry over; the
        events and the conclusion are the new unit's own. The row lock is held throughout, so what the probe
        found (or found missing) stays true, changed only through the units themselves."""
        self.events = []
        self.concluded = False
        self.next_deadline = None
        self.depth_after = 0

    # ---------------------------------------------------------------- identity

    def _adopt(self, ticket: Ticket) -> Ticket:
        """The unit's own object for this ticket, so a change made through one reference is seen by all."""
        known = self._known.get(ticket.seq)
        if known is not None:
            return known
        self._known[ticket.seq] = ticket
        self._graces[ticket.seq] = ticket.grace_deadline
        return ticket

    def _adopt_stored(self, ticket: Ticket | None) -> Ticket | None:
        """A ticket read from the database, unless this unit has removed it."""
        if ticket is None or ticket.seq in self.pending.deletes:
            return None
        return self._adopt(ticket)

    # ---------------------------------------------------------------- channel fields

    @property
    def holder(self) -> Grant | None:
        return self.row.holder

    def set_holder(self, grant: Grant | None) -> None:
        self.row.holder = grant

    def next_fencing_token(self) -> int:
        self.row.fencing += 1
        return self.row.fencing

    def next_seq(self) -> int:
        self.row.seq += 1
        return self.row.seq

    async def depth(self) -> int:
        return self.row.ticket_count

    # ---------------------------------------------------------------- reads

    async def find_by_client(self, client_id: str) -> Ticket | None:
        for t in self._known.values():
            if t.client_id == client_id:
                return t
        if self._line.complete or client_id in self._probed_clients:
            return None
        return self._adopt_stored(await self._q_find_by_client(client_id))

    async def find_by_request(self, request_id: str) -> Ticket | None:
        for t in self._known.values():
            if t.request_id == request_id:
                return t
        if self._line.complete or request_id in self._probed_requests:
            return None
        return self._adopt_stored(await self._q_find_by_request(request_id))

    async def rank(self, ticket: Ticket) -> int:
        known = self._line.rank_of(ticket.seq)
        if known is not None:
            return known
        if ticket.seq == self.row.seq:
            return self.row.ticket_count - 1  # the newest ticket is still here, so it is last
        stored = await self._q_count_before(ticket.seq)
        rank = stored - sum(1 for s in self.pending.deletes if s < ticket.seq)
        self._line.learn(rank, ticket)
        return rank

    async def at_ranks(self, ranks: Sequence[int]) -> list[tuple[int, Ticket]]:
        found: dict[int, Ticket] = {}
        ask: list[int] = []
        for r in ranks:
            if r >= self.row.ticket_count:
                continue
            t = self._line.get(r)
            if t is not None:
                found[r] = t
            else:
                ask.append(r)  # a stored ticket: the unit's own pushes are all in the line it knows
        if ask:
            for r, t in await self._q_at_ranks(ask, list(self.pending.deletes)):
                found[r] = self._adopt(t)
                self._line.learn(r, found[r])
        return [(r, found[r]) for r in sorted(found)]

    async def tickets(self) -> list[Ticket]:
        stored = [self._adopt(t) for t in await self._q_all() if t.seq not in self.pending.deletes]
        return stored + [self.pending.inserts[s] for s in sorted(self.pending.inserts)]

    async def earliest_wait_deadline(self, exclude_request_id: str | None) -> int | None:
        if self.spec.max_wait_ms is None:
            return None  # wait deadlines exist only on channels with maxWaitMs, which never changes
        for attempt in (0, 1):
            for t in self._wait.items:
                if t.request_id != exclude_request_id:
                    return t.wait_deadline
            if self._wait.complete or attempt:
                return None
            stored = await self._q_first_waits(list(self.pending.deletes), PROBE_LIMIT)
            self._wait.refill([self._adopt(t) for t in stored], PROBE_LIMIT, self.pending.inserts.values())
        return None

    async def earliest_grace(self) -> Ticket | None:
        if self.row.graced_count == 0:
            return None
        if not self._grace.known:
            stored = await self._q_first_graces(self.pending.changed_seqs(), PROBE_LIMIT)
            own = [*self.pending.inserts.values(), *self.pending.saves.values()]
            self._grace.refill([self._adopt(t) for t in stored], PROBE_LIMIT, own)
        return self._grace.items[0] if self._grace.items else None

    # ---------------------------------------------------------------- writes

    async def push(self, ticket: Ticket) -> None:
        self._known[ticket.seq] = ticket
        self._graces[ticket.seq] = ticket.grace_deadline
        self.pending.push(ticket)
        self.row.ticket_count += 1
        self._line.push(ticket)
        if ticket.grace_deadline is not None:
            self.row.graced_count += 1
            self._grace.add(ticket)
        if ticket.wait_deadline is not None:
            self._wait.add(ticket)

    async def remove(self, ticket: Ticket) -> None:
        self.pending.remove(ticket)
        self._known.pop(ticket.seq, None)
        if self._graces.pop(ticket.seq, ticket.grace_deadline) is not None:
            self.row.graced_count -= 1
        self.row.ticket_count -= 1
        self._line.remove(ticket.seq)
        self._grace.discard(ticket.seq)
        self._wait.discard(ticket.seq)

    async def save(self, ticket: Ticket) -> None:
        self.pending.save(ticket)
        old = self._graces.get(ticket.seq, ticket.grace_deadline)
        new = ticket.grace_deadline
        self._graces[ticket.seq] = new
        self.row.graced_count += (new is not None) - (old is not None)
        if old != new:
            self._grace.discard(ticket.seq)
            if new is not None:
                self._grace.add(ticket)

    async def delete_channel(self) -> None:
        self.deleted = True

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def conclude(self, next_deadline: int | None, depth: int) -> None:
        self.concluded = True
        self.next_deadline = next_deadline
        self.depth_after = depth

    # ---------------------------------------------------------------- the engine's queries

    @abstractmethod
    async def _q_find_by_client(self, client_id: str) -> Ticket | None: ...

    @abstractmethod
    async def _q_find_by_request(self, request_id: str) -> Ticket | None: ...

    @abstractmethod
    async def _q_count_before(self, seq: int) -> int:
        """Stored tickets of the channel with a smaller ``seq``."""

    @abstractmethod
    async def _q_at_ranks(self, ranks: list[int], exclude: list[int]) -> list[tuple[int, Ticket]]:
        """The stored tickets at these ranks, counting only tickets whose seq is not in ``exclude``."""

    @abstractmethod
    async def _q_all(self) -> list[Ticket]:
        """Every stored ticket of the channel in seq order."""

    @abstractmethod
    async def _q_first_graces(self, exclude: list[int], limit: int) -> list[Ticket]:
        """The first ``limit`` stored tickets by (grace_deadline, seq), skipping ``exclude``."""

    @abstractmethod
    async def _q_first_waits(self, exclude: list[int], limit: int) -> list[Ticket]:
        """The first ``limit`` stored tickets by (wait_deadline, seq), skipping ``exclude``."""
