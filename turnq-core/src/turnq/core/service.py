"""The turn rules, written once over :class:`~turnq.core.store.ChannelUnit`.

Every operation is one unit of work on one channel: it reads what it needs, changes state, emits the events
that announce the change, and records the channel's nearest deadline. Invariants kept here, for every backend:

* the line is ordered by enqueue (``seq``); the front ticket holds whenever the line is not empty, so a
  ticket's *position* (tickets ahead of it) is simply its rank;
* a grant takes a fresh fencing token from the channel's counter;
* a rejected request raises before anything is changed; an expiry discovered by a late request is committed
  first and reported after.

Position updates are coalesced: after a removal at rank ``r`` every ticket behind moves up one, but only the
ticket that is now next in line (position 1) is told at once (``position-updated``); the server refreshes the
other waiters' positions every few seconds. A turn therefore costs at most one position event instead of one
per waiter, and a waiter is never told a wrong position, only at worst a stale (larger) one, as the protocol
allows.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .errors import ErrorCode, TurnqError
from .limits import MAX_LEASE_MS, SUBSCRIBE_WINDOW_MS
from .model import ChannelSpec, ChannelView, Event, Grant, QueueView, Ticket
from .store import Backend, ChannelUnit

Clock = Callable[[], int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# Bits a version-4 UUID fixes: the version nibble (4) and the variant (binary 10).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)
# Request ids' own generator, seeded from the OS: a program that seeds the ``random`` module (tests often do) must
# not make two servers draw the same ids. A forked child reseeds it, as ``random`` does its own.
_request_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_request_ids.seed)


def new_request_id() -> str:
    """A random version-4 UUID in its usual text form, as ``str(uuid.uuid4())`` gives, at a third of its cost.

    The bits come from a generator seeded from the OS rather than from the OS on every call: a request id only has
    to be unique, not secret (the queue view lists every ticket's), and this runs on every enqueue.
    """
    h = "%032x" % ((_request_ids.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The one rank told its new position at once after a removal (see notify_ranks): the next in line.
NOTIFY_RANK = 1


def notify_ranks(start: int, depth: int) -> list[int]:
    """The ranks in ``[max(start, 1), depth)`` that hear a new position at once: only 1, the next in line.

    Being next is the one position a client acts on (it gets ready for its turn); every other position is
    progress, which the server's periodic refresh reports. Telling more ranks at once would cost every handoff
    a frame per rank (each a write to a client) for news a few seconds' delay does not spoil.
    """
    return [NOTIFY_RANK] if start <= NOTIFY_RANK < depth else []


async def nearest_deadline(u: ChannelUnit) -> int | None:
    """When the rules must look at the channel next: the earliest of the holder's lease, the waiters' maximum
    waits and every ticket's grace. Every reaper deadline comes from here."""
    holder = u.holder
    candidates = []
    if holder is not None:
        candidates.append(holder.lease_deadline)
    wait = await u.earliest_wait_deadline(holder.request_id if holder is not None else None)
    if wait is not None:
        candidates.append(wait)
    grace = await u.earliest_grace()
    if grace is not None and grace.grace_deadline is not None:
        candidates.append(grace.grace_deadline)
    return min(candidates) if candidates else None


class _Outcome:
    """What a unit decided to report after committing (an error found while applying an expiry)."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: TurnqError | None = None


class TurnService:
    """The operations clients perform on channels, applied atomically through the backend."""

    def __init__(self, backend: Backend, *, clock: Clock = wall_ms) -> None:
        self.backend = backend
        self.clock = clock

    # ----------------------------------------------------------------- channels

    async def create_channel(self, spec: ChannelSpec) -> ChannelView:
        spec = replace(spec, created_at=self.clock())
        await self.backend.create_channel(spec)
        return ChannelView(spec, 0, None)

    async def get_channel(self, name: str) -> ChannelView:
        view = await self.backend.get_channel(name)
        if view is None:
            raise TurnqError(ErrorCode.CHANNEL_NOT_FOUND, f"channel {name!r} does not exist")
        return view

    async def list_channels(self) -> list[ChannelView]:
        return await self.backend.list_channels()

    async def delete_channel(self, name: str) -> None:
        async with self.backend.unit(name) as u:
            depth = await u.depth()
            if depth:
                raise TurnqError(
                    ErrorCode.CHANNEL_NOT_EMPTY,
                    f"channel {name!r} has {depth} ticket(s); it can be deleted only when nobody holds or waits",
                )
            await u.delete_channel()
            u.emit(Event("channel-deleted", {"channel": name}, final=True))
            u.conclude(None, 0)

    async def queue_view(self, name: str) -> QueueView:
        async with self.backend.unit(name) as u:
            tickets = await u.tickets()
            holder = u.holder
            waiters = tickets[1:] if holder is not None else tickets
            await self._conclude(u)
            return QueueView(name, holder, waiters)

    # ----------------------------------------------------------------- tickets

    async def enqueue(self, channel: str, client_id: str) -> tuple[str, int]:
        """Add a ticket at the back; returns ``(request_id, position)``. The front ticket is granted at once."""
        now = self.clock()
        async with self.backend.unit_for_ticket(channel, client_id=client_id) as u:
            spec = u.spec
            existing = await u.find_by_client(client_id)
            if existing is not None:
                raise TurnqError(
                    ErrorCode.ALREADY_QUEUED,
                    f"client {client_id!r} already has ticket {existing.request_id} on channel {channel!r}",
                )
            depth = await u.depth()
            if spec.max_depth is not None and depth + 1 > spec.max_depth:
                raise TurnqError(
                    ErrorCode.MAX_DEPTH_EXCEEDED,
                    f"channel {channel!r} is full (maxDepth {spec.max_depth})",
                )
            ticket = Ticket(
                client_id=client_id,
                request_id=new_request_id(),
                seq=u.next_seq(),
                enqueued_at=now,
                wait_deadline=now + spec.max_wait_ms if spec.max_wait_ms is not None else None,
                grace_deadline=now + max(spec.grace_ms, SUBSCRIBE_WINDOW_MS),
            )
            await u.push(ticket)
            u.emit(
                Event(
                    "queued",
                    {
                        "channel": channel,
                        "clientId": client_id,
                        "requestId": ticket.request_id,
                        "position": depth,
                    },
                )
            )
            if depth == 0:
                self._grant(u, ticket, now)
            await self._conclude(u, depth + 1)
            return ticket.request_id, depth

    async def attach(
        self, channel: str, client_id: str, request_id: str, attachment: str, *, announce: bool = True
    ) -> None:
        """A subscriber stream opened for a ticket: it becomes the ticket's one live stream.

        Emits the stream's first event (``queued`` or ``your-turn``) through the feed, so it is ordered with
        every later event for the ticket. ``announce=False`` re-attaches a stream that is already open (its
        server had been taken for dead) without telling the client anything it already knows.
        """
        async with self.backend.unit_for_ticket(channel, request_id=request_id) as u:
            ticket = await self._own_ticket(u, client_id, request_id)
            ticket.attachment = attachment
            ticket.grace_deadline = None
            await u.save(ticket)
            if not announce:
                await self._conclude(u)
                return
            u.emit(Event(None, {"attachment": attachment}, request_id=request_id))
            holder = u.holder
            if holder is not None and holder.request_id == request_id:
                u.emit(Event.your_turn(channel, holder))
            else:
                u.emit(Event.position("queued", channel, request_id, await u.rank(ticket)))
            await self._conclude(u)

    async def ticket_state(self, channel: str, request_id: str) -> tuple[Ticket | None, Grant | None, int]:
        """Where a ticket stands: ``(ticket, grant, 0)`` while it holds, ``(ticket, None, position)`` while it
        waits, ``(None, None, -1)`` once it is over. For a stream that may have missed events."""
        try:
            async with self.backend.unit_for_ticket(channel, request_id=request_id) as u:
                ticket = await u.find_by_request(request_id)
                if ticket is None:
                    return None, None, -1
                holder = u.holder
                if holder is not None and holder.request_id == request_id:
                    return ticket, holder, 0
                return ticket, None, await u.rank(ticket)
        except TurnqError as exc:
            if exc.code is ErrorCode.CHANNEL_NOT_FOUND:
                return None, None, -1
            raise

    async def detach(self, channel: str, request_id: str, attachment: str) -> None:
        """A subscriber stream closed. If it was the ticket's live stream, the grace starts (or, with
        ``graceMs`` 0, the ticket is dropped now). A replaced stream's closing changes nothing."""
        now = self.clock()
        try:
            async with self.backend.unit_for_ticket(channel, request_id=request_id) as u:
                ticket = await u.find_by_request(request_id)
                if ticket is None or ticket.attachment != attachment:
                    return
                if u.spec.grace_ms == 0:
                    min_rank = await self._drop(u, ticket, "disconnected", now)
                    await self._settle(u, now, min_rank)
                else:
                    ticket.attachment = None
                    ticket.grace_deadline = now + u.spec.grace_ms
                    await u.save(ticket)
                    await self._conclude(u)
        except TurnqError as exc:
            if exc.code is not ErrorCode.CHANNEL_NOT_FOUND:
                raise

    async def release(
        self, channel: str, client_id: str, request_id: str, success: bool = True, error: str | None = None
    ) -> None:
        """The holder ends its turn; the next ticket is granted."""
        now = self.clock()
        outcome = _Outcome()
        async with self.backend.unit(channel) as u:
            grant = await self._holding(u, client_id, request_id, now, outcome)
            if grant is not None:
                await self._end_turn(u, grant, now, success=success, error=error, reason=None)
                await self._settle(u, now, 0)
        if outcome.error is not None:
            raise outcome.error

    async def abort(self, channel: str, client_id: str, request_id: str | None = None) -> None:
        """Leave the line: a waiter's ticket is removed; a holder's turn ends as ``ABORTED``."""
        now = self.clock()
        async with self.backend.unit_for_ticket(channel, client_id=client_id) as u:
            ticket = await u.find_by_client(client_id)
            if ticket is None or (request_id is not None and ticket.request_id != request_id):
                raise TurnqError(
                    ErrorCode.REQUEST_NOT_FOUND,
                    f"client {client_id!r} has no ticket"
                    + (f" {request_id}" if request_id else "")
                    + f" on channel {channel!r}",
                )
            min_rank = await self._drop(u, ticket, "aborted", now)
            await self._settle(u, now, min_rank)

    async def renew(self, channel: str, client_id: str, request_id: str, lease_ms: int | None = None) -> int:
        """Extend the holder's lease to ``now + lease_ms`` (the channel's lease by default)."""
        now = self.clock()
        outcome = _Outcome()
        deadline = 0
        async with self.backend.unit(channel) as u:
            grant = await self._holding(u, client_id, request_id, now, outcome)
            if grant is not None:
                ms = u.spec.lease_ms if lease_ms is None else min(lease_ms, MAX_LEASE_MS)
                deadline = now + ms
                u.set_holder(replace(grant, lease_deadline=deadline))
                await self._conclude(u)
        if outcome.error is not None:
            raise outcome.error
        return deadline

    async def step(
        self,
        channel: str,
        client_id: str,
        step: str,
        phase: str,
        request_id: str | None = None,
        success: bool | None = None,
        error: str | None = None,
    ) -> None:
        """The holder reports a step starting or ending; observers hear it."""
        now = self.clock()
        outcome = _Outcome()
        async with self.backend.unit(channel) as u:
            grant = await self._holding(u, client_id, request_id, now, outcome)
            if grant is not None:
                data: dict[str, Any] = {"channel": channel, "clientId": client_id, "step": step}
                if phase == "start":
                    u.emit(Event("step-started", data))
                else:
                    data["success"] = True if success is None else success
                    if error is not None:
                        data["error"] = error
                    u.emit(Event("step-ended", data))
                await self._conclude(u)
        if outcome.error is not None:
            raise outcome.error

    async def force_release(self, channel: str) -> None:
        """An administrator ends the current turn (``ADMIN_FORCE_RELEASE``); the next ticket is granted."""
        now = self.clock()
        async with self.backend.unit(channel) as u:
            grant = u.holder
            if grant is None:
                raise TurnqError(ErrorCode.NO_HOLDER, f"nobody holds channel {channel!r}")
            await self._end_turn(
                u, grant, now, success=False, error="ADMIN_FORCE_RELEASE", reason="force_released"
            )
            await self._settle(u, now, 0)

    async def expire(self, channel: str) -> int | None:
        """Apply every deadline that has passed (lease, grace, max wait); idempotent, safe from any process.

        Deadlines are applied instant by instant, in the order they fell due, so a reaper that wakes late
        decides as one waking at each deadline would have: a waiter that reached the front (the lease ran out)
        before its own maximum wait did is granted, not dropped, and a holder that went away before its lease
        ran out is ended as disconnected. Returns the channel's next deadline, or None if it has none (or no
        longer exists).
        """
        now = self.clock()
        try:
            async with self.backend.unit(channel) as u:
                min_rank: int | None = None
                while (due := await nearest_deadline(u)) is not None and due <= now:
                    rank = await self._expire_at(u, due, now)
                    if rank is None:
                        break  # nothing was due after all (a clock that went backwards): never spin
                    min_rank = rank if min_rank is None else min(min_rank, rank)
                if min_rank is None:
                    return await self._conclude(u)
                return await self._settle(u, now, min_rank)
        except TurnqError as exc:
            if exc.code is ErrorCode.CHANNEL_NOT_FOUND:
                return None
            raise

    async def _expire_at(self, u: ChannelUnit, at: int, now: int) -> int | None:
        """Apply the deadlines due at instant ``at``: the lease, then absent tickets, then waiters past their
        maximum wait; then grant the front (with a lease from ``now``). Returns the smallest rank removed, or
        None if nothing was due."""
        min_rank: int | None = None
        grant = u.holder
        if grant is not None and grant.lease_deadline <= at:
            await self._end_turn(u, grant, at, success=False, error="LEASE_EXPIRED", reason="lease_expired")
            min_rank = 0
        while (ticket := await u.earliest_grace()) is not None and ticket.grace_deadline is not None:
            if ticket.grace_deadline > at:
                break
            rank = await self._drop(u, ticket, "disconnected", at)
            min_rank = rank if min_rank is None else min(min_rank, rank)
        while True:
            holder = u.holder
            exclude = holder.request_id if holder is not None else None
            due = await u.earliest_wait_deadline(exclude)
            if due is None or due > at:
                break
            waiters = await u.at_ranks([1] if holder is not None else [0])
            if not waiters:
                break
            rank, ticket = waiters[0]
            if ticket.wait_deadline is None or ticket.wait_deadline > at:
                break  # only the front waiter can be the earliest: FIFO with one maxWaitMs
            await self._drop(u, ticket, "max_wait_exceeded", at)
            min_rank = rank if min_rank is None else min(min_rank, rank)
        if u.holder is None and await u.depth():
            front = await u.at_ranks([0])
            self._grant(u, front[0][1], now)
        return min_rank

    # ----------------------------------------------------------------- rules

    async def _own_ticket(self, u: ChannelUnit, client_id: str, request_id: str) -> Ticket:
        ticket = await u.find_by_request(request_id)
        if ticket is None or ticket.client_id != client_id:
            raise TurnqError(
                ErrorCode.REQUEST_NOT_FOUND,
                f"no ticket {request_id!r} for client {client_id!r} on channel {u.spec.name!r}",
            )
        return ticket

    async def _holding(
        self, u: ChannelUnit, client_id: str, request_id: str | None, now: int, outcome: _Outcome
    ) -> Grant | None:
        """The caller's grant if it holds; raises NOT_YOUR_TURN otherwise. A lease found expired is ended
        here (committed with the unit) and reported as LEASE_EXPIRED through ``outcome``."""
        grant = u.holder
        if (
            grant is None
            or grant.client_id != client_id
            or (request_id is not None and grant.request_id != request_id)
        ):
            raise TurnqError(
                ErrorCode.NOT_YOUR_TURN,
                f"client {client_id!r} does not hold channel {u.spec.name!r}",
            )
        if grant.lease_deadline <= now:
            await self._end_turn(u, grant, now, success=False, error="LEASE_EXPIRED", reason="lease_expired")
            await self._settle(u, now, 0)
            outcome.error = TurnqError(
                ErrorCode.LEASE_EXPIRED,
                f"the lease of client {client_id!r} on channel {u.spec.name!r} ran out before this request",
            )
            return None
        return grant

    def _grant(self, u: ChannelUnit, ticket: Ticket, now: int) -> None:
        grant = Grant(
            client_id=ticket.client_id,
            request_id=ticket.request_id,
            granted_at=now,
            lease_deadline=now + u.spec.lease_ms,
            fencing_token=u.next_fencing_token(),
            enqueued_at=ticket.enqueued_at,
        )
        u.set_holder(grant)
        u.emit(Event.your_turn(u.spec.name, grant))
        u.emit(
            Event(
                "turn-started",
                {
                    "channel": u.spec.name,
                    "clientId": grant.client_id,
                    "requestId": grant.request_id,
                    "fencingToken": grant.fencing_token,
                    "waitedMs": max(0, now - ticket.enqueued_at),
                },
            )
        )

    async def _end_turn(
        self, u: ChannelUnit, grant: Grant, now: int, *, success: bool, error: str | None, reason: str | None
    ) -> None:
        """Remove the holder's ticket and announce the end of its turn (the caller settles the line)."""
        ticket = await u.find_by_request(grant.request_id)
        if ticket is not None:
            await u.remove(ticket)
        u.set_holder(None)
        channel = u.spec.name
        if reason is None:
            u.emit(Event(None, {}, request_id=grant.request_id, final=True))
        else:
            u.emit(
                Event(
                    "timeout",
                    {"channel": channel, "requestId": grant.request_id, "reason": reason},
                    request_id=grant.request_id,
                    final=True,
                )
            )
        data: dict[str, Any] = {
            "channel": channel,
            "clientId": grant.client_id,
            "requestId": grant.request_id,
            "success": success,
            "fencingToken": grant.fencing_token,
            "heldMs": max(0, now - grant.granted_at),
        }
        if error is not None:
            data["error"] = error
        u.emit(Event("turn-completed", data))

    async def _drop(self, u: ChannelUnit, ticket: Ticket, reason: str, now: int) -> int:
        """End a ticket for ``reason`` (holder or waiter); returns the rank it had."""
        grant = u.holder
        if grant is not None and grant.request_id == ticket.request_id:
            error = {"aborted": "ABORTED", "disconnected": "CLIENT_DISCONNECTED"}.get(reason, reason.upper())
            await self._end_turn(u, grant, now, success=False, error=error, reason=reason)
            return 0
        rank = await u.rank(ticket)
        await u.remove(ticket)
        channel = u.spec.name
        u.emit(
            Event(
                "timeout",
                {"channel": channel, "requestId": ticket.request_id, "reason": reason},
                request_id=ticket.request_id,
                final=True,
            )
        )
        u.emit(
            Event(
                "left",
                {
                    "channel": channel,
                    "clientId": ticket.client_id,
                    "requestId": ticket.request_id,
                    "reason": reason,
                },
            )
        )
        return rank

    async def _settle(self, u: ChannelUnit, now: int, min_rank: int) -> int | None:
        """After removals from rank ``min_rank`` on: grant the front if nobody holds, tell moved waiters."""
        depth = await u.depth()
        if u.holder is None and depth:
            front = await u.at_ranks([0])
            self._grant(u, front[0][1], now)
        channel = u.spec.name
        for rank, ticket in await u.at_ranks(notify_ranks(min_rank, depth)):
            u.emit(Event.position("position-updated", channel, ticket.request_id, rank))
        return await self._conclude(u, depth)

    async def _conclude(self, u: ChannelUnit, depth: int | None = None) -> int | None:
        """Record the channel's nearest deadline after this unit, for every process's reaper."""
        deadline = await nearest_deadline(u)
        u.conclude(deadline, await u.depth() if depth is None else depth)
        return deadline
