"""The change feed: batches to this process's listeners, in commit order per channel.

Batches this process commits are delivered right after the commit; every other process's arrive through
``LISTEN`` on one dedicated connection, which reconnects by itself. Each batch carries its channel row's version,
so a local batch whose predecessor (committed by another process a moment earlier) has not been heard yet is
held until it has, or for ``HOLD_S`` at most: a notification lost while the listener was reconnecting must not
hold a channel's events back for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
from turnq.backends.sql import ListenerSet
from turnq.core import EventBatch

from .errors import is_unavailable
from .payload import Assembler, Envelope, origin_of

log = logging.getLogger("turnq.backends.postgres")

HOLD_S = 0.5
PING_S = 5.0
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0

Connect = Callable[[], Awaitable[asyncpg.Connection]]


def _set_event(event: asyncio.Event, _conn: object) -> None:
    event.set()


class Feed:
    def __init__(self, listeners: ListenerSet, origin: str, channel: str, connect: Connect) -> None:
        self._listeners = listeners
        self.origin = origin
        self._channel = channel
        self._connect = connect
        self._assembler = Assembler()
        self._seen: dict[int, int] = {}  # channel id -> highest version delivered
        self._held: dict[int, dict[int, EventBatch]] = {}  # channel id -> version -> local batch waiting
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ambiguous: set[tuple[int, int]] = set()  # own commits whose outcome this process never learned
        self._committing: dict[int, int] = {}  # channel id -> first version of an own commit on its way
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None

    # ---------------------------------------------------------------- the listening connection

    async def start(self, wait_s: float) -> None:
        """Start listening; fails (TimeoutError) if the first LISTEN is not in place within ``wait_s``."""
        self._task = asyncio.create_task(self._run(), name="turnq-postgres-listener")
        try:
            async with asyncio.timeout(wait_s):
                await self.listening.wait()
        except TimeoutError:
            await self.stop()
            raise

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for cid in list(self._held):
            self._release_held(cid)

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        connected_before = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set_event, lost))
                await conn.add_listener(self._channel, self._on_notify)
                # Notifications sent while no listener was connected are gone: start counting afresh.
                self._seen.clear()
                self.listening.set()
                delay = RETRY_MIN_S
                if connected_before:
                    log.info("listening for turnq events again")
                    if self.on_reconnect is not None:
                        await self.on_reconnect()
                connected_before = True
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), PING_S)
                    if not lost.is_set():
                        # Notices a connection that died without a word (a dropped network path).
                        await conn.fetchval("SELECT 1", timeout=PING_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("the turnq event listener failed")
                elif self.listening.is_set():
                    log.warning("lost the turnq event listener connection (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _on_notify(self, _conn: Any, pid: int, _channel: str, payload: str) -> None:
        if origin_of(payload) == self.origin and not self._ambiguous:
            return  # delivered when it committed
        try:
            env = self._assembler.feed(pid, payload)
        except (ValueError, KeyError, TypeError):
            log.exception("an unreadable turnq event payload was ignored")
            return
        if env is None:
            return
        if env.origin == self.origin:
            key = (env.channel_id, env.version)
            if key not in self._ambiguous:
                return  # delivered when it committed
            self._ambiguous.discard(key)
        self._remote(env)

    # ---------------------------------------------------------------- ordering

    def local(self, channel_id: int, version: int | None, batch: EventBatch) -> None:
        """A batch this process committed. ``version`` is None for a unit that sent no notification (it changed
        nothing and announced nothing), which needs no place in the order."""
        if version is None:
            self._listeners.publish(batch)
            return
        seen = self._seen.get(channel_id)
        if seen is None or seen >= version - 1:
            self._flush_before(channel_id, version)
            self._deliver(channel_id, version, batch)
            self._release_ready(channel_id)
            return
        self._hold(channel_id, version, batch)

    def committing(self, channel_id: int, version: int) -> None:
        """This process is committing the channel's batches from ``version`` on. Another process can commit the
        next one as soon as ours releases the row lock, and its notification can arrive before our COMMIT's
        answer: such later batches wait until ours are delivered (:meth:`committed`)."""
        self._committing[channel_id] = version

    def committed(self, channel_id: int) -> None:
        """The commit announced by :meth:`committing` is over (its batches delivered, or it failed)."""
        if self._committing.pop(channel_id, None) is not None:
            self._release_ready(channel_id)

    def _hold(self, channel_id: int, version: int, batch: EventBatch) -> None:
        self._held.setdefault(channel_id, {})[version] = batch
        if channel_id not in self._timers:
            self._timers[channel_id] = asyncio.get_running_loop().call_later(
                HOLD_S, self._release_held, channel_id
            )

    def ambiguous(self, channel_id: int, version: int) -> None:
        """A commit whose outcome is unknown (the connection died during COMMIT): if its notification arrives,
        it did commit, and this process's listeners hear it then."""
        self._ambiguous.add((channel_id, version))

    def _remote(self, env: Envelope) -> None:
        first = self._committing.get(env.channel_id)
        if first is not None and env.version > first:
            self._hold(env.channel_id, env.version, env.batch)  # after our commit on its way
            return
        self._flush_before(env.channel_id, env.version)
        self._deliver(env.channel_id, env.version, env.batch)
        self._release_ready(env.channel_id)

    def _flush_before(self, channel_id: int, version: int) -> None:
        """``version`` is about to be delivered: held batches before it wait for notifications that will never come
        (they arrive in commit order, and those sent while the listener was reconnecting are gone), so they go
        first, in order, followed by a resync for what was lost."""
        held = self._held.get(channel_id)
        if not held or min(held) >= version:
            return
        last = None
        for v in sorted(v for v in held if v < version):
            last = held.pop(v)
            self._deliver(channel_id, v, last)
        if not held:
            self._forget_held(channel_id)
        if last is not None and not last.deleted:
            self._listeners.publish(replace(last, events=(), origin="", resync=True))

    def _deliver(self, channel_id: int, version: int, batch: EventBatch) -> None:
        self._listeners.publish(batch)
        if batch.deleted:
            self._seen.pop(channel_id, None)
        elif version > self._seen.get(channel_id, 0):
            self._seen[channel_id] = version

    def _release_ready(self, channel_id: int) -> None:
        held = self._held.get(channel_id)
        while held:
            nxt = self._seen.get(channel_id, 0) + 1
            batch = held.pop(nxt, None)
            if batch is None:
                break
            self._deliver(channel_id, nxt, batch)
        if not held:
            self._forget_held(channel_id)

    def _release_held(self, channel_id: int) -> None:
        """Deliver whatever is still held, in order, without waiting for the missing batches any longer, and
        say that some of the channel's batches were lost (``resync``), so streams are brought up to date."""
        held = self._held.get(channel_id, {})
        last = None
        for version in sorted(held):
            last = held[version]
            self._deliver(channel_id, version, last)
        self._forget_held(channel_id)
        if last is not None and not last.deleted:
            self._listeners.publish(replace(last, events=(), origin="", resync=True))

    def _forget_held(self, channel_id: int) -> None:
        self._held.pop(channel_id, None)
        timer = self._timers.pop(channel_id, None)
        if timer is not None:
            timer.cancel()
