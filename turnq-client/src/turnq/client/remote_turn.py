"""A turn against a turnq server: enqueue, follow the ticket's stream, renew while the body runs, release.

Two background tasks serve a turn. The *watcher* keeps the ticket's event stream open: it learns the position and
the grant from it, and the loss of the turn (a ``timeout`` event) the moment the server decides it. When the stream
drops it resubscribes with the same ``clientId``/``requestId``, moving to the next server if several are
configured, so the ticket keeps its place for as long as the server's grace allows. The *renewer* extends the lease
at a fraction of its length while the body runs; an answer that says the turn is over marks it lost, too.

Losing the turn is never silent: ``turn.lost`` turns true, the next ``step()`` raises :class:`TurnLostError`, and so
does leaving the block, so work that ran without the turn is never reported as a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING

from turnq.core import ErrorCode, TurnqError

from .errors import LOST_CODES, ServerUnavailableError, TurnLostError, WaitTimeoutError
from .http import new_client_id
from .models import Enqueued, Event
from .turn import AsyncTurn, PositionCallback, TurnState, describe_failure

if TYPE_CHECKING:
    from .http import AsyncTurnqClient

log = logging.getLogger("turnq.client")

# How long an enqueue or a release keeps retrying while the service answers 503 or cannot be reached: long enough
# for a server or a PostgreSQL restart, short enough that a real outage surfaces as an error.
UNAVAILABLE_RETRY_S = 15.0
UNAVAILABLE_MAX_DELAY_S = 2.0

# How long a client keeps trying to get its stream back before it counts the ticket as gone. Longer than the
# default grace on purpose: after a server restart every ticket starts a fresh grace, so a client that keeps
# trying through the restart keeps its place.
DEFAULT_RECONNECT_FOR = 30.0
MIN_RENEW_INTERVAL = 0.05


class RemoteAsyncTurn(AsyncTurn):
    def __init__(
        self,
        client: AsyncTurnqClient,
        channel: str,
        *,
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
        renew: bool = True,
        renew_interval: float | None = None,
        lease_ms: int | None = None,
        client_id: str | None = None,
        create_missing: bool = False,
        reconnect_for: float | None = None,
    ) -> None:
        self._state = TurnState(channel)
        self._state.client_id = client_id or new_client_id()
        self._client = client
        self._timeout = timeout
        self._on_position = on_position
        self._renew = renew
        self._renew_interval = renew_interval
        self._lease_ms = lease_ms
        self._create_missing = create_missing
        self._reconnect_for = DEFAULT_RECONNECT_FOR if reconnect_for is None else reconnect_for
        self._granted: asyncio.Future[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closing = False
        self._entered = False

    @property
    def _ids(self) -> tuple[str, str]:
        assert self._state.client_id is not None and self._state.request_id is not None
        return self._state.client_id, self._state.request_id

    # ------------------------------------------------------------------ entering

    async def __aenter__(self) -> RemoteAsyncTurn:
        if self._entered:
            raise RuntimeError("a turn can be entered only once; ask the client for a new one")
        self._entered = True
        ticket = await self._enqueue()
        self._state.request_id = ticket.request_id
        self._granted = asyncio.get_running_loop().create_future()
        self._set_position(ticket.position)
        self._watcher = asyncio.create_task(self._watch(), name=f"turnq-watch-{self.channel}")
        started = time.monotonic()
        try:
            if self._timeout is None:
                await asyncio.shield(self._granted)
            else:
                await asyncio.wait_for(asyncio.shield(self._granted), self._timeout)
        except WaitTimeoutError:
            await self._give_up()
            raise
        except TimeoutError:
            await self._give_up()
            raise WaitTimeoutError(self.channel, time.monotonic() - started) from None
        except BaseException:
            await self._give_up()
            raise
        if self._renew:
            self._renewer = asyncio.create_task(self._renew_loop(), name=f"turnq-renew-{self.channel}")
        return self

    async def _enqueue(self) -> Enqueued:
        """Take a ticket, creating the channel on the way if asked to, and surviving a lost answer or a service
        that is briefly unavailable (a server or its database restarting).

        A client id is unique to this turn, so when an enqueue may have been applied without its answer reaching
        us (a lost connection, a 503 for a commit whose outcome the server could not learn), the ticket is
        looked for in the queue view instead of being taken twice.
        """
        client_id = self._state.client_id
        assert client_id is not None
        deadline = asyncio.get_running_loop().time() + UNAVAILABLE_RETRY_S
        attempt = 0
        created = False
        while True:
            try:
                return await self._client.enqueue(self.channel, client_id)
            except TurnqError as exc:
                if exc.code is ErrorCode.BACKEND_UNAVAILABLE:
                    await _back_off(exc, attempt, deadline)
                    attempt += 1
                    with contextlib.suppress(TurnqError):
                        found = await self._find_own_ticket()
                        if found is not None:
                            return found
                    continue
                if exc.code is ErrorCode.ALREADY_QUEUED:
                    found = await self._find_own_ticket()
                    if found is not None:
                        return found
                    raise
                if exc.code is ErrorCode.CHANNEL_NOT_FOUND and self._create_missing and not created:
                    created = True
                    try:
                        await self._client.create_channel(self.channel, lease_ms=self._lease_ms)
                    except TurnqError as create_exc:
                        if create_exc.code is not ErrorCode.CHANNEL_EXISTS:
                            raise exc from create_exc
                    continue
                raise

    async def _find_own_ticket(self) -> Enqueued | None:
        view = await self._client.queue(self.channel)
        client_id = self._state.client_id
        assert client_id is not None
        if view.holder is not None and view.holder.client_id == client_id:
            return Enqueued(client_id, view.holder.request_id, 0)
        for waiter in view.queue:
            if waiter.client_id == client_id:
                return Enqueued(client_id, waiter.request_id, waiter.position - (1 if view.active else 0))
        return None

    async def _give_up(self) -> None:
        """Leave the line (or end the turn) without reporting a result: on timeout, cancellation or error."""
        self._closing = True
        task = asyncio.ensure_future(self._abort_quietly())
        try:
            await asyncio.shield(task)
        finally:
            await self._stop(self._watcher)

    async def _abort_quietly(self) -> None:
        client_id, request_id = self._ids
        try:
            await self._client.abort(self.channel, client_id, request_id)
        except TurnqError as exc:
            if exc.code is not ErrorCode.REQUEST_NOT_FOUND:
                log.warning("[turnq] could not give up the ticket on %r: %s", self.channel, exc.message)

    # ------------------------------------------------------------------ the stream

    def _set_position(self, position: int) -> None:
        if position == self._state.position:
            return
        self._state.position = position
        if self._on_position is not None:
            try:
                self._on_position(position)
            except Exception:
                log.exception("[turnq] on_position callback failed")

    def _ticket_over(self, reason: str) -> None:
        """The server ended the ticket (or it cannot be found again): wake a waiter or mark the turn lost."""
        if self._closing:
            return
        self._state.mark_lost(reason)
        granted = self._granted
        if granted is not None and not granted.done():
            if reason == "max_wait_exceeded":
                granted.set_exception(
                    WaitTimeoutError(
                        self.channel, None, f"the server's maxWaitMs on {self.channel!r} ran out"
                    )
                )
            else:
                granted.set_exception(TurnLostError(self.channel, reason))

    def _handle(self, event: Event) -> bool:
        """Apply one event; returns True when the ticket is over and the stream will end."""
        data = event.data
        if event.name in ("queued", "position-updated"):
            position = data.get("position")
            if isinstance(position, int) and not self._state.granted:
                self._set_position(position)
        elif event.name == "your-turn":
            expires = data.get("leaseExpiresAt")
            token = data.get("fencingToken")
            self._state.lease_expires_at = expires if isinstance(expires, int) else None
            if isinstance(token, int):
                self._state.fencing_token = token
            self._set_position(0)
            self._state.granted = True
            if self._granted is not None and not self._granted.done():
                self._granted.set_result(None)
        elif event.name == "timeout":
            self._ticket_over(str(data.get("reason", "timeout")))
            return True
        return False

    async def _watch(self) -> None:
        client_id, request_id = self._ids
        backoff = 0.05
        give_up_at: float | None = None
        while True:
            url = self._client.url
            try:
                async with self._client.subscribe(self.channel, client_id, request_id) as events:
                    give_up_at = None
                    backoff = 0.05
                    async for event in events:
                        if self._handle(event):
                            return
                        if event.name == "server-shutdown":
                            log.info("[turnq] server at %s is stopping; resubscribing", url)
                            break
            except ServerUnavailableError as exc:
                log.debug("[turnq] stream on %r dropped: %s", self.channel, exc.message)
            except TurnqError as exc:
                if exc.code is ErrorCode.BACKEND_UNAVAILABLE:
                    # The server answers but its database does not (a restart, a failover): the ticket is
                    # still there; resubscribe like after a dropped stream, within the same time limit.
                    log.debug("[turnq] server unavailable for %r: %s", self.channel, exc.message)
                elif exc.code in (ErrorCode.REQUEST_NOT_FOUND, ErrorCode.CHANNEL_NOT_FOUND):
                    self._ticket_over("disconnected")
                    return
                else:
                    if self._closing:
                        return
                    # Anything else (a revoked key, say) will not fix itself: wake whoever waits with it.
                    granted = self._granted
                    if granted is not None and not granted.done():
                        granted.set_exception(exc)
                    else:
                        self._state.mark_lost(exc.code.value.lower())
                    return
            if self._closing:
                return
            self._client.endpoints.failed(url)
            now = time.monotonic()
            if give_up_at is None:
                give_up_at = now + self._reconnect_for
            elif now >= give_up_at:
                self._ticket_over("disconnected")
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    # ------------------------------------------------------------------ renewing

    async def _interval(self) -> float:
        if self._renew_interval is not None:
            return max(self._renew_interval, MIN_RENEW_INTERVAL)
        lease_ms = self._lease_ms
        if lease_ms is None:
            try:
                lease_ms = (await self._client.get_channel(self.channel)).lease_ms
            except TurnqError:
                expires = self._state.lease_expires_at
                lease_ms = max(expires - int(time.time() * 1000), 1000) if expires else 30_000
        return max(lease_ms / 3000, MIN_RENEW_INTERVAL)

    async def _renew_loop(self) -> None:
        client_id, request_id = self._ids
        interval = await self._interval()
        delay = interval
        while True:
            await asyncio.sleep(delay)
            if self._closing or self.lost:
                return
            try:
                self._state.lease_expires_at = await self._client.renew(
                    self.channel, client_id, request_id, self._lease_ms
                )
                delay = interval
            except ServerUnavailableError as exc:
                log.warning("[turnq] could not renew the lease on %r: %s", self.channel, exc.message)
                delay = min(interval / 3, 1.0)
            except TurnqError as exc:
                if exc.code in LOST_CODES and not self._closing:
                    reason = "lease_expired" if exc.code is ErrorCode.LEASE_EXPIRED else "not_your_turn"
                    self._state.mark_lost(reason)
                    return
                log.warning("[turnq] renewing the lease on %r failed: %s", self.channel, exc.message)
                delay = min(interval / 3, 1.0)

    async def renew_now(self, lease_ms: int | None = None) -> int:
        """Extend the lease right away (on top of the background renewal); returns the new deadline."""
        self._state.check_lost()
        client_id, request_id = self._ids
        try:
            expires = await self._client.renew(
                self.channel, client_id, request_id, lease_ms or self._lease_ms
            )
        except TurnqError as exc:
            self._lost_from(exc)
            raise
        self._state.lease_expires_at = expires
        return expires

    # ------------------------------------------------------------------ using and leaving

    def _lost_from(self, exc: TurnqError) -> None:
        """If ``exc`` says this client no longer holds the turn, record the loss and raise TurnLostError."""
        if isinstance(exc, ServerUnavailableError) or exc.code not in LOST_CODES:
            return
        self._state.mark_lost("lease_expired" if exc.code is ErrorCode.LEASE_EXPIRED else "not_your_turn")
        raise TurnLostError(self.channel, self._state.lost_reason or "not_your_turn") from exc

    async def _report_step(
        self, name: str, event: str, success: bool | None = None, error: str | None = None
    ) -> None:
        client_id, request_id = self._ids
        try:
            await self._client.step(
                self.channel, client_id, name, event, request_id=request_id, success=success, error=error
            )
        except TurnqError as exc:
            self._lost_from(exc)
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        try:
            await self._stop(self._renewer)
            if self.lost:
                if isinstance(exc, TurnLostError):
                    return
                raise TurnLostError(self.channel, self._state.lost_reason or "lost")
            failure = None if exc is None else describe_failure(exc)
            try:
                await self._release(failure)
            except TurnqError as release_exc:
                if isinstance(exc, TurnLostError):
                    return
                self._lost_from(release_exc)
                if exc is None:
                    raise
                log.warning("[turnq] could not release the turn on %r: %s", self.channel, release_exc.message)
        finally:
            await self._stop(self._watcher)

    async def _release(self, failure: str | None) -> None:
        """Release, retrying while the service is unavailable or the answer is lost on the way (a server or its
        database restarting, a dropped connection).

        A retry after an attempt that may have been applied can hear that the ticket is no longer held; that
        means the earlier attempt went through, so it counts as released.
        """
        client_id, request_id = self._ids
        deadline = asyncio.get_running_loop().time() + UNAVAILABLE_RETRY_S
        attempt = 0
        while True:
            try:
                await self._client.release(
                    self.channel, client_id, request_id, success=failure is None, error=failure
                )
                return
            except TurnqError as exc:
                if exc.code is ErrorCode.BACKEND_UNAVAILABLE:
                    await _back_off(exc, attempt, deadline)
                    attempt += 1
                    continue
                if attempt > 0 and exc.code in LOST_CODES and not self._state.lost_event.is_set():
                    return
                raise

    @staticmethod
    async def _stop(task: asyncio.Task[None] | None) -> None:
        """Cancel a helper task and wait for it; the caller's own cancellation still propagates."""
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait([task])


async def _back_off(exc: TurnqError, attempt: int, deadline: float) -> None:
    """Wait before retrying an action the service was unavailable for, or re-raise ``exc`` once the next try
    would come after ``deadline``."""
    delay = min(UNAVAILABLE_MAX_DELAY_S, 0.1 * 2**attempt)
    if asyncio.get_running_loop().time() + delay > deadline:
        raise exc
    await asyncio.sleep(delay)
