"""Turns on local file locks (see :mod:`turnq.client.local`), with the same face as server-backed turns.

There is no lease to renew and nobody who could take the turn away: a local turn lasts until its block exits or
its process dies, so ``lost`` never turns true and ``lease_expires_at`` is None. Steps have no observers to
report to and are only logged at debug level. The fencing token is the ticket number, which increases with
every grant and is never reused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from types import TracebackType

from .errors import WaitTimeoutError
from .local import LocalQueue, LocalTicket
from .turn import AsyncTurn, PositionCallback, Turn, TurnState

log = logging.getLogger("turnq.client")


def _give_up_arrival(arriving: asyncio.Future[LocalTicket]) -> None:
    if not arriving.cancelled() and arriving.exception() is None:
        arriving.result().give_up()


class _LocalBase:
    _state: TurnState
    _ticket: LocalTicket | None
    _on_position: PositionCallback | None

    def _arrived(self, ticket: LocalTicket) -> None:
        self._ticket = ticket
        self._state.client_id = f"{socket.gethostname()}:{os.getpid()}"
        self._state.request_id = str(ticket.number)
        if self._on_position is not None:
            self._report(ticket.position())

    def _report(self, position: int) -> None:
        if position == self._state.position:
            return
        self._state.position = position
        if self._on_position is not None:
            try:
                self._on_position(position)
            except Exception:
                log.exception("[turnq] on_position callback failed")

    def _granted(self, ticket: LocalTicket) -> None:
        self._state.fencing_token = ticket.number
        self._state.granted = True
        self._report(0)

    @property
    def position(self) -> int | None:
        """Live tickets ahead (probed on each read while waiting); 0 once the turn is held."""
        ticket = self._ticket
        if ticket is None:
            return None
        return ticket.position()

    @property
    def ticket(self) -> LocalTicket | None:
        return self._ticket


class LocalTurn(_LocalBase, Turn):
    def __init__(
        self,
        queue: LocalQueue,
        channel: str,
        *,
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
    ) -> None:
        self._state = TurnState(channel)
        self._queue = queue
        self._timeout = timeout
        self._on_position = on_position
        self._ticket = None

    def __enter__(self) -> LocalTurn:
        started = time.monotonic()
        ticket = self._queue.arrive(self.channel)
        self._arrived(ticket)
        if not ticket.wait(self._timeout):
            raise WaitTimeoutError(self.channel, time.monotonic() - started)
        self._granted(ticket)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ticket is not None:
            self._ticket.release()

    def _report_step(
        self, name: str, event: str, success: bool | None = None, error: str | None = None
    ) -> None:
        log.debug("[turnq] %s step %r %s (success=%s)", self.channel, name, event, success)


class LocalAsyncTurn(_LocalBase, AsyncTurn):
    def __init__(
        self,
        queue: LocalQueue,
        channel: str,
        *,
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
    ) -> None:
        self._state = TurnState(channel)
        self._queue = queue
        self._timeout = timeout
        self._on_position = on_position
        self._ticket = None

    async def __aenter__(self) -> LocalAsyncTurn:
        started = time.monotonic()
        # Taking a ticket holds the channel's queue lock for an instant; it may still block, so not on the loop.
        arriving = asyncio.ensure_future(asyncio.to_thread(self._queue.arrive, self.channel))
        try:
            ticket = await asyncio.shield(arriving)
        except asyncio.CancelledError:
            # The thread finishes taking the ticket regardless; give it up as soon as it exists.
            arriving.add_done_callback(_give_up_arrival)
            raise
        self._arrived(ticket)
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()

        def settle(exc: BaseException | None) -> None:
            if granted.done():
                return
            if exc is None:
                granted.set_result(None)
            else:
                granted.set_exception(exc)

        def on_done(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(settle, exc)

        try:
            ticket.start_wait(on_done)
            await asyncio.wait_for(asyncio.shield(granted), self._timeout)
        except TimeoutError:
            if ticket.give_up():
                raise WaitTimeoutError(self.channel, time.monotonic() - started) from None
        except BaseException:
            if ticket.give_up():
                raise
            # The grant won the race with the cancellation: hand the turn straight back.
            ticket.release()
            raise
        self._granted(ticket)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ticket is not None:
            self._ticket.release()

    async def _report_step(
        self, name: str, event: str, success: bool | None = None, error: str | None = None
    ) -> None:
        log.debug("[turnq] %s step %r %s (success=%s)", self.channel, name, event, success)
