"""What every turn offers, whether it runs against a server or on local file locks, async or blocking.

A turn is entered (wait for it), used (``fencing_token``, ``step()``), and exited (release, reporting success or
the body's exception). Its state lives in one :class:`TurnState` so a blocking facade and the async turn it drives
see the same values, and ``lost`` can be read from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import TypeVar

from turnq.core.limits import MAX_ERROR_LENGTH

from .errors import TurnLostError

T = TypeVar("T")
PositionCallback = Callable[[int], None]

log = logging.getLogger("turnq.client")


def describe_failure(exc: BaseException) -> str:
    """A one-line, printable account of an exception that fits the protocol's ``error`` field.

    The server refuses control characters and long texts; a release must never fail because of how the body
    failed, so the text is cleaned here.
    """
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, Exception):
        text = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip() or type(exc).__name__
    if len(clean) > MAX_ERROR_LENGTH:
        clean = clean[: MAX_ERROR_LENGTH - 1] + "…"
    return clean


class TurnState:
    """The facts about one turn, written by whoever learns them and read by the body."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.client_id: str | None = None
        self.request_id: str | None = None
        self.position: int | None = None
        self.fencing_token: int | None = None
        self.lease_expires_at: int | None = None
        self.granted = False
        self.lost_reason: str | None = None
        self.lost_event = threading.Event()
        self._lock = threading.Lock()
        self._lost_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]] = []

    def mark_lost(self, reason: str) -> bool:
        """Record the loss once; returns whether this call was the one that recorded it."""
        with self._lock:
            if self.lost_reason is not None:
                return False
            self.lost_reason = reason
            waiters, self._lost_waiters = self._lost_waiters, []
        self.lost_event.set()
        for loop, future in waiters:
            loop.call_soon_threadsafe(_settle, future, reason)
        log.warning("[turnq] lost the turn on channel %r (%s)", self.channel, reason)
        return True

    def lost_future(self) -> asyncio.Future[str]:
        """A future on the running loop that completes with the reason when the turn is lost."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        with self._lock:
            if self.lost_reason is not None:
                future.set_result(self.lost_reason)
            else:
                self._lost_waiters.append((loop, future))
        return future

    def check_lost(self) -> None:
        if self.lost_reason is not None:
            raise TurnLostError(self.channel, self.lost_reason)


def _settle(future: asyncio.Future[str], reason: str) -> None:
    if not future.done():
        future.set_result(reason)


class _TurnView:
    """Read-only access to the turn's state, shared by the async and blocking bases."""

    _state: TurnState

    @property
    def channel(self) -> str:
        return self._state.channel

    @property
    def client_id(self) -> str | None:
        return self._state.client_id

    @property
    def request_id(self) -> str | None:
        return self._state.request_id

    @property
    def position(self) -> int | None:
        """Tickets ahead of this one while waiting (0 at the front); may lag behind, never runs ahead."""
        return self._state.position

    @property
    def fencing_token(self) -> int | None:
        """Increases with every grant on the channel and never repeats: hand it to the protected resource."""
        return self._state.fencing_token

    @property
    def lease_expires_at(self) -> int | None:
        """When the lease runs out (epoch ms, server clock) unless renewed; None in local mode."""
        return self._state.lease_expires_at

    @property
    def lost(self) -> bool:
        """True once the turn ended without this client releasing it (lease expiry, force-release…)."""
        return self._state.lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        return self._state.lost_reason

    @property
    def lost_event(self) -> threading.Event:
        """Set when the turn is lost; usable from any thread (``turn.lost_event.wait(5)``)."""
        return self._state.lost_event

    def __repr__(self) -> str:
        status = "lost" if self.lost else "held" if self._state.granted else "waiting"
        return f"<{type(self).__name__} {self.channel!r} {status} token={self.fencing_token}>"


class AsyncTurn(_TurnView, ABC):
    """An async turn: ``async with client.turn("deploy") as turn:``."""

    @abstractmethod
    async def __aenter__(self) -> AsyncTurn: ...

    @abstractmethod
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @abstractmethod
    async def _report_step(
        self, name: str, event: str, success: bool | None = None, error: str | None = None
    ) -> None:
        """Tell the server (and so the observers) that a step started or ended."""

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> AsyncIterator[None]:
        """Report a named step around a block: ``async with turn.step("migrate"):``."""
        self._state.check_lost()
        await self._report_step(name, "start")
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._report_step(name, "end", success=False, error=describe_failure(exc))
            raise
        self._state.check_lost()
        await self._report_step(name, "end", success=True)

    async def with_step(self, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        """The original client's ``ctx.withStep(name, fn)``: run ``fn()`` as a reported step."""
        async with self.step(name):
            return await fn()

    async def wait_lost(self) -> str:
        """Wait until the turn is lost; returns the reason. Meant to be raced against the work."""
        return await self._state.lost_future()


class Turn(_TurnView, ABC):
    """A blocking turn: ``with client.turn("deploy") as turn:``."""

    @abstractmethod
    def __enter__(self) -> Turn: ...

    @abstractmethod
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @abstractmethod
    def _report_step(
        self, name: str, event: str, success: bool | None = None, error: str | None = None
    ) -> None:
        """Tell the server (and so the observers) that a step started or ended."""

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Report a named step around a block: ``with turn.step("migrate"):``."""
        self._state.check_lost()
        self._report_step(name, "start")
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._report_step(name, "end", success=False, error=describe_failure(exc))
            raise
        self._state.check_lost()
        self._report_step(name, "end", success=True)

    def with_step(self, name: str, fn: Callable[[], T]) -> T:
        """The original client's ``ctx.withStep(name, fn)``: run ``fn()`` as a reported step."""
        with self.step(name):
            return fn()

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the turn is lost or ``timeout`` passes; returns whether it was lost."""
        return self._state.lost_event.wait(timeout)
