"""A differential check for backends: the same random operations through the memory backend and through yours
must give the same answers, lines and events.

The contract suite checks chosen cases; this finds the ones nobody chose, which matters for a backend that
caches, as the SQL backends' units do. Use it with hypothesis::

    @given(script=scripts())
    @settings(max_examples=30, deadline=None)
    def test_same_as_memory(script):
        asyncio.run(compare_with_memory(lambda: MyBackend(url), script))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from turnq.core import Backend, ChannelSpec, EventBatch, TurnqError, TurnService
from turnq.core.memory import MemoryBackend
from turnq.core.testing import ManualClock

OPS = ("enqueue", "attach", "detach", "release", "abort", "renew", "step", "expire", "force_release", "view")
# Weighted so lines grow long enough for the interesting cases (grants past the probe's ranks, removals from
# the middle) while every operation still shows up.
_WEIGHTED = ("enqueue",) * 6 + ("attach",) * 4 + ("release",) * 3 + ("abort", "detach", "expire") * 2 + OPS
CLIENTS = 8


@dataclass(frozen=True)
class Script:
    spec: ChannelSpec
    steps: list[tuple[str, int, int]]  # (operation, client index, ms to advance the clock first)


@st.composite
def scripts(draw: st.DrawFn, max_steps: int = 40) -> Script:
    spec = ChannelSpec(
        name="diff",
        lease_ms=draw(st.sampled_from([500, 2_000])),
        max_depth=draw(st.sampled_from([None, None, 6])),
        max_wait_ms=draw(st.sampled_from([None, 1_500])),
        grace_ms=draw(st.sampled_from([0, 700])),
    )
    step = st.tuples(
        st.sampled_from(_WEIGHTED),
        st.integers(0, CLIENTS - 1),
        st.sampled_from([0] * 8 + [100, 400, 1_000, 6_000]),
    )
    return Script(spec, draw(st.lists(step, max_size=max_steps)))


class _Run:
    """One backend driven through a script; ``log`` is everything observable, with request ids replaced by
    stable labels so two runs can be compared."""

    def __init__(self, backend: Backend) -> None:
        self.clock = ManualClock()
        self.backend = backend
        self.service = TurnService(backend, clock=self.clock)
        self.batches: list[EventBatch] = []
        self.log: list[Any] = []
        self.tickets: dict[int, str] = {}  # client index -> its latest request id
        self.attachments: dict[int, str] = {}
        self.labels: dict[str, str] = {}
        self.n = 0

    async def step(self, op: str, c: int, advance: int) -> None:
        self.clock.advance(advance)
        s, ch, client = self.service, "diff", f"c{c}"
        rid = self.tickets.get(c, "none")
        try:
            result: Any = None
            if op == "enqueue":
                rid, result = await s.enqueue(ch, client)
                self.tickets[c] = rid
                self.labels[rid] = f"{client}#{len(self.labels)}"
            elif op == "attach":
                self.n += 1
                self.attachments[c] = f"a{self.n}"
                await s.attach(ch, client, rid, self.attachments[c])
            elif op == "detach":
                await s.detach(ch, rid, self.attachments.get(c, "a0"))
            elif op == "release":
                await s.release(ch, client, rid, success=c % 2 == 0)
            elif op == "abort":
                await s.abort(ch, client, rid if c % 2 else None)
            elif op == "renew":
                result = await s.renew(ch, client, rid)
            elif op == "step":
                await s.step(ch, client, "build", "start", rid)
            elif op == "expire":
                result = await s.expire(ch)
            elif op == "force_release":
                await s.force_release(ch)
            elif op == "view":
                result = (await s.queue_view(ch)).to_wire(self.clock.now)
            self.log.append((op, c, "ok", result))
        except TurnqError as exc:
            self.log.append((op, c, exc.code.value))
        view = await s.get_channel(ch)
        line = await s.queue_view(ch)
        self.log.append(("state", view.depth, view.holder, [t.client_id for t in line.waiters]))

    def normalized(self) -> list[Any]:
        pattern = re.compile("|".join(re.escape(r) for r in self.labels) or "$^")
        events = [
            [(e.name, e.data, e.request_id, e.final) for e in b.events]
            + [("batch", b.next_deadline, b.depth)]
            for b in self.batches
        ]
        text = repr((self.log, events))
        return [pattern.sub(lambda m: self.labels[m.group(0)], text)]


async def _play(backend: Backend, script: Script) -> list[Any]:
    run = _Run(backend)
    await backend.open()
    backend.add_listener(run.batches.append)
    try:
        await run.service.create_channel(script.spec)
        for op, c, advance in script.steps:
            await run.step(op, c, advance)
        return run.normalized()
    finally:
        backend.remove_listener(run.batches.append)
        await backend.close()


async def compare_with_memory(make_backend: Callable[[], Backend], script: Script) -> None:
    """Play ``script`` on a fresh memory backend and on ``make_backend()``; fail on the first difference."""
    expected = (await _play(MemoryBackend(), script))[0]
    got = (await _play(make_backend(), script))[0]
    if expected != got:
        i = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), 0)
        raise AssertionError(
            f"backend differs from memory:// for {script}\n"
            f"memory : …{expected[max(0, i - 300) : i + 300]}\n"
            f"backend: …{got[max(0, i - 300) : i + 300]}"
        )
