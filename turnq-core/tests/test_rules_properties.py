"""Property tests of the turn rules: random sequences of operations against a simple reference model.

A hypothesis state machine drives :class:`TurnService` over :class:`MemoryBackend` with a manual clock through
enqueues, subscribes and dropped streams, releases, aborts, renewals, steps, force-releases, clock jumps and the
reaper, each with right and wrong identities. The model is a plain list of tickets in FIFO order; after every
step the service's line, holder, tickets and published events are checked against it:

* one holder, always the model's front; grants follow enqueue order; fencing tokens only increase;
* every position told to a ticket is at least its true one and never goes up; an enqueue answers the true one;
* a ticket's stream gets exactly one final event, with the right reason, when the ticket ends, and then nothing;
* a rejected operation publishes nothing and changes nothing;
* every batch carries the true depth and the true nearest deadline;
* the reaper is idempotent and leaves no passed deadline behind; a late reaper applies the deadlines in the
  order they fell due, so it decides as a timely one would have (a late grant's lease starts when it is made).

Deadlines take effect when the reaper runs (``expire``), as in the server; other operations see the line as it
is, except that a holder whose lease has run out cannot act any more (its turn ends, ``LEASE_EXPIRED``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import event as tally
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from turnq.core.errors import ErrorCode, TurnqError
from turnq.core.limits import MAX_LEASE_MS, SUBSCRIBE_WINDOW_MS
from turnq.core.memory import MemoryBackend
from turnq.core.model import ChannelSpec, EventBatch, Grant
from turnq.core.service import TurnService
from turnq.core.testing import ManualClock, Recorder

T = TypeVar("T")

CHANNEL = "props/ch"
CLIENTS = [f"c{i}" for i in range(8)]
PICK = st.integers(
    min_value=0, max_value=10_000
)  # an index into a list the machine keeps; taken modulo its length

# What a ticket's end is called: the reason of its final ``timeout``, or "released" for the holder's release.
HOLDER_ERRORS = {
    "lease_expired": "LEASE_EXPIRED",
    "aborted": "ABORTED",
    "disconnected": "CLIENT_DISCONNECTED",
    "force_released": "ADMIN_FORCE_RELEASE",
}


# --------------------------------------------------------------------------- the reference model


@dataclass
class MTicket:
    client: str
    rid: str
    seq: int
    enqueued_at: int
    wait: int | None
    grace: int | None
    attachment: str | None = None


@dataclass
class MHolder:
    rid: str
    client: str
    lease: int
    token: int | None = None  # learnt from the grant's ``turn-started``


@dataclass
class Outcome:
    """What the model expects of one operation."""

    error: ErrorCode | None = None
    endings: dict[str, tuple[str, bool]] = field(default_factory=dict)  # rid -> (kind, was the holder)
    grants: list[str] = field(default_factory=list)
    publishes: bool = True

    @property
    def rejected(self) -> bool:
        return self.error is not None and self.error is not ErrorCode.LEASE_EXPIRED


class Model:
    """The line as a list, the front holding; deadlines applied only when asked."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.line: list[MTicket] = []
        self.holder: MHolder | None = None
        self.seq = 0

    # ---------------------------------------------------------------- queries

    def ticket(self, rid: str) -> MTicket | None:
        return next((t for t in self.line if t.rid == rid), None)

    def by_client(self, client: str) -> MTicket | None:
        return next((t for t in self.line if t.client == client), None)

    def rank(self, rid: str) -> int:
        return next(i for i, t in enumerate(self.line) if t.rid == rid)

    def waiters(self) -> list[MTicket]:
        return self.line[1:] if self.holder is not None else list(self.line)

    def next_deadline(self) -> int | None:
        candidates = [t.wait for t in self.waiters() if t.wait is not None]
        candidates += [t.grace for t in self.line if t.grace is not None]
        if self.holder is not None:
            candidates.append(self.holder.lease)
        return min(candidates, default=None)

    def holding_error(self, client: str, rid: str | None) -> ErrorCode | None:
        h = self.holder
        if h is None or h.client != client or (rid is not None and h.rid != rid):
            return ErrorCode.NOT_YOUR_TURN
        return None

    # ---------------------------------------------------------------- changes

    def _end(self, out: Outcome, ticket: MTicket, kind: str) -> None:
        was_holder = self.holder is not None and self.holder.rid == ticket.rid
        self.line.remove(ticket)
        if was_holder:
            self.holder = None
        assert ticket.rid not in out.endings
        out.endings[ticket.rid] = (kind, was_holder)

    def _settle(self, out: Outcome, now: int) -> None:
        if self.holder is None and self.line:
            front = self.line[0]
            self.holder = MHolder(front.rid, front.client, now + self.spec.lease_ms)
            out.grants.append(front.rid)

    def enqueue_error(self, client: str) -> ErrorCode | None:
        if self.by_client(client) is not None:
            return ErrorCode.ALREADY_QUEUED
        if self.spec.max_depth is not None and len(self.line) + 1 > self.spec.max_depth:
            return ErrorCode.MAX_DEPTH_EXCEEDED
        return None

    def enqueue(self, client: str, rid: str, now: int) -> tuple[Outcome, int]:
        self.seq += 1
        spec = self.spec
        ticket = MTicket(
            client=client,
            rid=rid,
            seq=self.seq,
            enqueued_at=now,
            wait=now + spec.max_wait_ms if spec.max_wait_ms is not None else None,
            grace=now + max(spec.grace_ms, SUBSCRIBE_WINDOW_MS),
        )
        position = len(self.line)
        self.line.append(ticket)
        out = Outcome()
        self._settle(out, now)
        return out, position

    def attach(self, client: str, rid: str, attachment: str) -> Outcome:
        ticket = self.ticket(rid)
        if ticket is None or ticket.client != client:
            return Outcome(ErrorCode.REQUEST_NOT_FOUND)
        ticket.attachment = attachment
        ticket.grace = None
        return Outcome()

    def detach(self, rid: str, attachment: str, now: int) -> Outcome:
        ticket = self.ticket(rid)
        if ticket is None or ticket.attachment != attachment:
            return Outcome(publishes=False)
        out = Outcome()
        if self.spec.grace_ms == 0:
            self._end(out, ticket, "disconnected")
            self._settle(out, now)
        else:
            ticket.attachment = None
            ticket.grace = now + self.spec.grace_ms
        return out

    def _late_holder(self, now: int) -> Outcome | None:
        """A holder acting after its lease ran out: its turn ends now and the request is refused."""
        assert self.holder is not None
        if self.holder.lease > now:
            return None
        out = Outcome(ErrorCode.LEASE_EXPIRED)
        self._end(out, self.line[0], "lease_expired")
        self._settle(out, now)
        return out

    def release(self, client: str, rid: str, now: int) -> Outcome:
        error = self.holding_error(client, rid)
        if error is not None:
            return Outcome(error)
        late = self._late_holder(now)
        if late is not None:
            return late
        out = Outcome()
        self._end(out, self.line[0], "released")
        self._settle(out, now)
        return out

    def abort(self, client: str, rid: str | None, now: int) -> Outcome:
        ticket = self.by_client(client)
        if ticket is None or (rid is not None and ticket.rid != rid):
            return Outcome(ErrorCode.REQUEST_NOT_FOUND)
        out = Outcome()
        self._end(out, ticket, "aborted")
        self._settle(out, now)
        return out

    def renew(self, client: str, rid: str, lease_ms: int | None, now: int) -> tuple[Outcome, int]:
        error = self.holding_error(client, rid)
        if error is not None:
            return Outcome(error), 0
        late = self._late_holder(now)
        if late is not None:
            return late, 0
        assert self.holder is not None
        ms = self.spec.lease_ms if lease_ms is None else min(lease_ms, MAX_LEASE_MS)
        self.holder.lease = now + ms
        return Outcome(), now + ms

    def step(self, client: str, rid: str | None, now: int) -> Outcome:
        error = self.holding_error(client, rid)
        if error is not None:
            return Outcome(error)
        return self._late_holder(now) or Outcome()

    def force_release(self, now: int) -> Outcome:
        if self.holder is None:
            return Outcome(ErrorCode.NO_HOLDER)
        out = Outcome()
        self._end(out, self.line[0], "force_released")
        self._settle(out, now)
        return out

    def expire(self, now: int) -> Outcome:
        """Every deadline up to ``now``, instant by instant, as a reaper waking at each one would apply them.

        At one instant the holder's lease ends first, then absent tickets are dropped, then waiters past their
        maximum wait (with nobody holding, the front one too); the front is granted after the instant, with a
        lease from ``now``. So a waiter that reached the front before its wait ran out is granted, however
        late the reaper comes.
        """
        out = Outcome()
        while (t := self.next_deadline()) is not None and t <= now:
            if self.holder is not None and self.holder.lease <= t:
                self._end(out, self.line[0], "lease_expired")
            for ticket in sorted(
                (x for x in self.line if x.grace is not None and x.grace <= t),
                key=lambda x: (x.grace, x.seq),
            ):
                self._end(out, ticket, "disconnected")
            for ticket in self.waiters():
                if ticket.wait is not None and ticket.wait <= t:
                    self._end(out, ticket, "max_wait_exceeded")
            self._settle(out, now)
        return out


# --------------------------------------------------------------------------- the state machine


Snapshot = tuple[Grant | None, tuple[tuple[Any, ...], ...]]


class TurnRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = ManualClock()
        self.backend = MemoryBackend()
        self.service = TurnService(self.backend, clock=self.clock)
        self.recorder = Recorder()
        self.run(self.backend.open())
        self.backend.add_listener(self.recorder)
        self.model: Model
        self.names = itertools.count()
        self.rids: list[tuple[str, str]] = []  # every (client, requestId) ever issued, in enqueue order
        self.order: dict[str, int] = {}  # requestId -> index in enqueue order
        self.attachments: list[tuple[str, str]] = []  # every (requestId, attachment) ever opened
        self.finished: dict[str, str] = {}  # requestId -> how its stream ended
        self.told: dict[str, int] = {}  # requestId -> last position its stream was told
        self.last_grant = -1  # enqueue index of the last ticket granted
        self.last_token = 0
        self.snapshot: Snapshot = (None, ())

    def teardown(self) -> None:
        self.runner.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    # ---------------------------------------------------------------- checking

    def observe(self) -> Snapshot:
        """The service's line, compared with the model (a queue view publishes a batch: checked too)."""
        start = len(self.recorder.batches)
        view = self.run(self.service.queue_view(CHANNEL))
        self.check_batches(start, expected=1)
        model = self.model
        line = ([view.holder.request_id] if view.holder else []) + [t.request_id for t in view.waiters]
        assert line == [t.rid for t in model.line]
        if model.holder is None:
            assert view.holder is None
        else:
            h = view.holder
            assert h is not None
            assert (h.client_id, h.lease_deadline, h.fencing_token) == (
                model.holder.client,
                model.holder.lease,
                model.holder.token,
            )
        channel = self.run(self.backend.get_channel(CHANNEL))
        assert channel is not None and channel.depth == len(model.line)
        rows = tuple((t.client, t.rid, t.enqueued_at, t.wait, t.grace, t.attachment) for t in model.line)
        live = self.run(self._all_tickets())
        actual = tuple(
            (t.client_id, t.request_id, t.enqueued_at, t.wait_deadline, t.grace_deadline, t.attachment)
            for t in live
        )
        assert actual == rows
        if live:  # the front ticket holds whenever the line is not empty
            assert view.holder is not None and view.holder.request_id == live[0].request_id
        assert [t.request_id for t in view.waiters] == [t.rid for t in model.waiters()]
        # every ticket that ended was told so once; no live ticket was
        assert set(self.finished) == set(self.order) - {t.rid for t in model.line}
        return (view.holder, actual)

    async def _all_tickets(self) -> list[Any]:
        async with self.backend.unit(CHANNEL) as u:
            return list(await u.tickets())

    def check_batches(self, start: int, expected: int) -> list[EventBatch]:
        batches = self.recorder.batches[start:]
        assert len(batches) == expected, [b.events for b in batches]
        for batch in batches:
            assert batch.channel == CHANNEL
            assert batch.depth == len(self.model.line)
            assert batch.next_deadline == self.model.next_deadline()
        return batches

    def check(self, out: Outcome, start: int, raised: ErrorCode | None) -> None:
        """One operation's effects: the error, the batch and its events, then the state."""
        assert raised == out.error
        tally(f"answer: {out.error.value if out.error else 'ok'}")
        for kind, was_holder in out.endings.values():
            tally(f"ended: {kind} ({'holder' if was_holder else 'waiter'})")
        if out.rejected:
            assert self.recorder.batches[start:] == []
            assert self.observe() == self.snapshot
            return
        batches = self.check_batches(start, 1 if out.publishes else 0)
        finals: dict[str, str] = {}
        grants: list[str] = []
        completed: dict[str, dict[str, Any]] = {}
        left: dict[str, str] = {}
        told_now: dict[str, int] = {}
        your_turn: dict[str, dict[str, Any]] = {}
        tokens: dict[str, int] = {}
        for batch in batches:
            for event in batch.events:
                rid = event.request_id
                if rid is not None:
                    assert rid not in self.finished, f"event {event} after the end of {rid}"
                    if event.final:
                        kind = "released" if event.name is None else event.data["reason"]
                        if event.name is not None:
                            assert event.name == "timeout"
                            assert event.data["requestId"] == rid
                        self.finished[rid] = kind
                        finals[rid] = kind
                    elif event.name in ("queued", "position-updated"):
                        assert event.data["requestId"] == rid
                        position = event.data["position"]
                        assert position <= self.told.get(rid, position), "a position went up"
                        self.told[rid] = position
                        told_now[rid] = position
                    elif event.name == "your-turn":
                        assert event.data["requestId"] == rid
                        your_turn.setdefault(rid, event.data)
                elif event.name == "turn-started":
                    rid = event.data["requestId"]
                    token = event.data["fencingToken"]
                    assert token > self.last_token, "fencing token did not increase"
                    self.last_token = token
                    assert self.order[rid] > self.last_grant, "grant out of enqueue order"
                    self.last_grant = self.order[rid]
                    grants.append(rid)
                    tokens[rid] = token
                    if self.model.holder is not None and self.model.holder.rid == rid:
                        self.model.holder.token = token
                elif event.name == "turn-completed":
                    completed[event.data["requestId"]] = event.data
                elif event.name == "left":
                    left[event.data["requestId"]] = event.data["reason"]
        assert grants == out.grants
        for rid in grants:
            turn = your_turn[rid]
            assert turn["leaseExpiresAt"] == self.clock.now + self.model.spec.lease_ms
            assert turn["fencingToken"] == tokens[rid]
        assert finals == {rid: kind for rid, (kind, _) in out.endings.items()}
        for rid, (kind, was_holder) in out.endings.items():
            if was_holder:
                assert rid in completed and rid not in left
                if kind != "released":
                    assert completed[rid]["success"] is False
                    assert completed[rid]["error"] == HOLDER_ERRORS[kind]
            else:
                assert left.get(rid) == kind and rid not in completed
        assert set(completed) | set(left) == set(out.endings)
        for rid, position in told_now.items():
            assert self.model.ticket(rid) is not None, "a position told to a ticket that is gone"
            assert position >= self.model.rank(rid), "a waiter was told a position ahead of its true one"
        self.snapshot = self.observe()

    def call(self, coro: Coroutine[Any, Any, T]) -> tuple[T | None, ErrorCode | None]:
        try:
            return self.run(coro), None
        except TurnqError as exc:
            return None, exc.code

    def pick_rid(self, pick: int) -> tuple[str, str]:
        return self.rids[pick % len(self.rids)]

    def other_client(self, client: str, pick: int) -> str:
        others = [c for c in CLIENTS if c != client]
        return others[pick % len(others)]

    # ---------------------------------------------------------------- rules

    @initialize(
        lease_ms=st.sampled_from([300, 1000, 4000]),
        max_wait_ms=st.sampled_from([None, 300, 1000, 2500, 9000]),
        grace_ms=st.sampled_from([0, 500, 2000]),
        max_depth=st.sampled_from([None, None, 3, 5]),
        prefill=st.integers(min_value=0, max_value=6),
        subscribed=st.integers(min_value=0, max_value=63),
    )
    def create(
        self,
        lease_ms: int,
        max_wait_ms: int | None,
        grace_ms: int,
        max_depth: int | None,
        prefill: int,
        subscribed: int,
    ) -> None:
        """A channel, and maybe a line already: ``prefill`` clients, those in the ``subscribed`` mask attached."""
        spec = ChannelSpec(
            name=CHANNEL, lease_ms=lease_ms, max_wait_ms=max_wait_ms, grace_ms=grace_ms, max_depth=max_depth
        )
        self.run(self.service.create_channel(spec))
        self.model = Model(spec)
        self.snapshot = self.observe()
        for i in range(prefill):
            self.enqueue([CLIENTS[i]])
        for i, ticket in enumerate(list(self.model.line)):
            if subscribed >> i & 1:
                self._attach(ticket.client, ticket.rid)

    @rule(clients=st.lists(st.sampled_from(CLIENTS), min_size=1, max_size=3))
    def enqueue(self, clients: list[str]) -> None:
        for client in clients:
            error = self.model.enqueue_error(client)
            start = len(self.recorder.batches)
            result, raised = self.call(self.service.enqueue(CHANNEL, client))
            if error is not None:
                self.check(Outcome(error), start, raised)
                continue
            assert raised is None and result is not None
            rid, position = result
            assert rid not in self.order
            self.order[rid] = len(self.rids)
            self.rids.append((client, rid))
            out, expected_position = self.model.enqueue(client, rid, self.clock.now)
            assert position == expected_position, "enqueue answered a wrong position"
            self.check(out, start, raised)
            told = [e.data for e in self.recorder.batches[start].events if e.name == "queued"]
            assert [d["position"] for d in told] == [position]

    @precondition(lambda self: self.rids)
    @rule(pick=PICK, live=st.booleans(), wrong_client=st.booleans())
    def attach(self, pick: int, live: bool, wrong_client: bool) -> None:
        """Subscribe: a live ticket, or any ticket ever issued; sometimes as the wrong client."""
        if live and self.model.line:
            ticket = self.model.line[pick % len(self.model.line)]
            client, rid = ticket.client, ticket.rid
        else:
            client, rid = self.pick_rid(pick)
        if wrong_client and pick % 3 == 0:
            client = self.other_client(client, pick)
        self._attach(client, rid)

    def _attach(self, client: str, rid: str) -> None:
        attachment = f"s{next(self.names)}"
        start = len(self.recorder.batches)
        out = self.model.attach(client, rid, attachment)
        _, raised = self.call(self.service.attach(CHANNEL, client, rid, attachment))
        self.check(out, start, raised)
        if out.error is not None:
            return
        self.attachments.append((rid, attachment))
        # The stream's first events: the control message that makes it the live one, then the current state.
        events = [e for e in self.recorder.batches[start].events if e.request_id == rid]
        assert len(events) == 2
        assert events[0].name is None and events[0].data == {"attachment": attachment}
        holder = self.model.holder
        if holder is not None and holder.rid == rid:
            assert events[1].name == "your-turn"
            assert events[1].data["leaseExpiresAt"] == holder.lease
            assert events[1].data["fencingToken"] == holder.token
        else:
            assert events[1].name == "queued"
            assert events[1].data["position"] == self.model.rank(rid)

    @precondition(lambda self: self.attachments)
    @rule(pick=PICK, current=st.booleans())
    def detach(self, pick: int, current: bool) -> None:
        """A stream drops: a ticket's live stream, or any stream ever opened (replaced, or its ticket gone)."""
        live = [(t.rid, t.attachment) for t in self.model.line if t.attachment is not None]
        if current and live:
            rid, attachment = live[pick % len(live)]
        else:
            rid, attachment = self.attachments[pick % len(self.attachments)]
        start = len(self.recorder.batches)
        out = self.model.detach(rid, attachment, self.clock.now)
        _, raised = self.call(self.service.detach(CHANNEL, rid, attachment))
        self.check(out, start, raised)

    @precondition(lambda self: self.rids)
    @rule(by_holder=st.booleans(), success=st.booleans(), client=st.sampled_from(CLIENTS), pick=PICK)
    def release(self, by_holder: bool, success: bool, client: str, pick: int) -> None:
        """The holder releases, or anyone with any request id (the holder's client with a stale one, ...)."""
        holder = self.model.holder
        if by_holder and holder is not None:
            client, rid = holder.client, holder.rid
        else:
            rid = self.pick_rid(pick)[1]
        error = None if success else "boom"
        start = len(self.recorder.batches)
        out = self.model.release(client, rid, self.clock.now)
        _, raised = self.call(self.service.release(CHANNEL, client, rid, success, error))
        self.check(out, start, raised)
        if out.error is None:
            data = next(e.data for e in self.recorder.batches[start].events if e.name == "turn-completed")
            assert data["success"] is success and data.get("error") == error

    @rule(
        who=st.sampled_from(["holder", "waiter", "anyone"]),
        which=st.sampled_from(["none", "own", "any"]),
        client=st.sampled_from(CLIENTS),
        pick=PICK,
    )
    def abort(self, who: str, which: str, client: str, pick: int) -> None:
        """Leave the line: the holder, a waiter or any client, with no request id, its own, or any ever issued."""
        waiters = self.model.waiters()
        if who == "holder" and self.model.holder is not None:
            client = self.model.holder.client
        elif who == "waiter" and waiters:
            client = waiters[pick % len(waiters)].client
        rid: str | None = None
        if which == "own":
            own = self.model.by_client(client)
            rid = own.rid if own is not None else None
        elif which == "any" and self.rids:
            rid = self.pick_rid(pick)[1]
        start = len(self.recorder.batches)
        out = self.model.abort(client, rid, self.clock.now)
        _, raised = self.call(self.service.abort(CHANNEL, client, rid))
        self.check(out, start, raised)

    @precondition(lambda self: self.rids)
    @rule(
        by_holder=st.booleans(),
        client=st.sampled_from(CLIENTS),
        pick=PICK,
        lease_ms=st.none() | st.integers(min_value=1, max_value=5000),
    )
    def renew(self, by_holder: bool, client: str, pick: int, lease_ms: int | None) -> None:
        holder = self.model.holder
        if by_holder and holder is not None:
            client, rid = holder.client, holder.rid
        else:
            rid = self.pick_rid(pick)[1]
        start = len(self.recorder.batches)
        out, deadline = self.model.renew(client, rid, lease_ms, self.clock.now)
        result, raised = self.call(self.service.renew(CHANNEL, client, rid, lease_ms))
        self.check(out, start, raised)
        if out.error is None:
            assert result == deadline

    @precondition(lambda self: self.rids)
    @rule(
        by_holder=st.booleans(),
        client=st.sampled_from(CLIENTS),
        which=st.sampled_from(["none", "right", "any"]),
        pick=PICK,
        phase=st.sampled_from(["start", "end"]),
    )
    def step(self, by_holder: bool, client: str, which: str, pick: int, phase: str) -> None:
        holder = self.model.holder
        if by_holder and holder is not None:
            client = holder.client
        rid: str | None = None
        if which == "right" and holder is not None:
            rid = holder.rid
        elif which == "any":
            rid = self.pick_rid(pick)[1]
        start = len(self.recorder.batches)
        out = self.model.step(client, rid, self.clock.now)
        _, raised = self.call(self.service.step(CHANNEL, client, "build", phase, rid))
        self.check(out, start, raised)
        if out.error is None:
            names = [e.name for e in self.recorder.batches[start].events]
            assert names == ["step-started" if phase == "start" else "step-ended"]

    @rule()
    def force_release(self) -> None:
        start = len(self.recorder.batches)
        out = self.model.force_release(self.clock.now)
        _, raised = self.call(self.service.force_release(CHANNEL))
        self.check(out, start, raised)

    @rule(ms=st.sampled_from([1, 300, 500, 1000, 2000, 5000]) | st.integers(0, 8000))
    def advance(self, ms: int) -> None:
        """Time passes and nobody reaps: the next operations meet deadlines that have passed."""
        self.clock.advance(ms)

    @rule()
    def expire(self) -> None:
        now = self.clock.now
        start = len(self.recorder.batches)
        out = self.model.expire(now)
        result, raised = self.call(self.service.expire(CHANNEL))
        self.check(out, start, raised)
        deadline = self.model.next_deadline()
        assert result == deadline
        assert deadline is None or deadline > now, "the reaper left a deadline that has passed"
        # Idempotent: a second pass at the same instant changes nothing and announces nothing.
        start = len(self.recorder.batches)
        again, raised = self.call(self.service.expire(CHANNEL))
        assert raised is None and again == deadline
        (batch,) = self.check_batches(start, 1)
        assert batch.events == ()
        assert self.observe() == self.snapshot

    @rule(ms=st.integers(0, 8000))
    def advance_with_timely_reaper(self, ms: int) -> None:
        """Time passes as a server's reaper sees it: waking at every deadline on the way."""
        target = self.clock.now + ms
        for _ in range(100):
            deadline = self.model.next_deadline()
            if deadline is None or deadline > target:
                break
            self.clock.now = max(self.clock.now, deadline)
            self.expire()
        else:
            raise AssertionError("the reaper never caught up")
        self.clock.now = target


TurnRules.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestTurnRules = TurnRules.TestCase
