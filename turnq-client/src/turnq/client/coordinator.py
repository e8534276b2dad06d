"""``create_coordinator()``: one object that gives turns, on a server when one is configured and answers, else
on local file locks.

The choice is made once, when the coordinator is created: a server is used when URL(s) and a key are given (or
``TURNQ_URL`` / ``TURNQ_API_KEY`` are set) and ``GET /health`` answers. With ``fallback=True`` (the default, as in
the original turnq) a missing key or an unreachable server logs one warning and the coordinator works locally;
with ``fallback=False`` it raises instead, for deployments where serialising only within one host would be wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from turnq.core import ErrorCode, TurnqError

from .endpoints import key_from_env, urls_from_env
from .errors import ServerUnavailableError
from .local import LocalQueue
from .local_turn import LocalAsyncTurn, LocalTurn
from .turn import AsyncTurn, PositionCallback, Turn

if TYPE_CHECKING:
    # The HTTP stack is imported only when a server is configured, so local mode starts fast.
    from .http import AsyncTurnqClient, TurnqClient
    from .models import Health

T = TypeVar("T")
Mode = Literal["local", "distributed"]
log = logging.getLogger("turnq.client")

DEFAULT_PROBE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the settings ask for before the server is probed: local, or these URLs with this key."""

    urls: list[str]
    api_key: str | None
    fallback: bool

    @property
    def wants_server(self) -> bool:
        return bool(self.urls)

    def missing_key(self) -> str | None:
        """The reason a server cannot be used without probing it, if any."""
        if self.urls and not self.api_key:
            return f"no API key for {', '.join(self.urls)} (pass api_key= or set TURNQ_API_KEY)"
        return None


def _plan(url: str | Sequence[str] | None, api_key: str | None, fallback: bool) -> _Plan:
    return _Plan(urls_from_env(url), key_from_env(api_key), fallback)


def _fall_back_or_raise(plan: _Plan, reason: str, error: TurnqError) -> None:
    if not plan.fallback:
        raise error
    log.warning("[turnq] %s; falling back to local file lock mode", reason)


def _check_health(url: str, health: Callable[[], Health]) -> None:
    """Raise unless the server answered ``GET /health`` with ``ok: true``."""
    try:
        answer = health()
    except ServerUnavailableError:
        raise
    except TurnqError as exc:
        raise ServerUnavailableError(
            f"{url} did not answer GET /health as a turnq server: {exc.message}"
        ) from exc
    if not answer.ok:
        raise ServerUnavailableError(f"{url} reports it is not healthy")


def _announce(mode: Mode, where: str) -> None:
    if mode == "local":
        log.info("[turnq] local file lock mode (%s)", where)
    else:
        log.info("[turnq] distributed — %s", where)


class _CoordinatorBase:
    mode: Mode
    _queue: LocalQueue

    @property
    def lock_dir(self) -> str:
        return str(self._queue.lock_dir)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.mode}>"


class Coordinator(_CoordinatorBase):
    """Blocking turns, local or distributed; build it with :func:`create_coordinator`."""

    def __init__(
        self, client: TurnqClient | None = None, *, lock_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.client = client
        self.mode = "distributed" if client is not None else "local"
        self._queue = LocalQueue(lock_dir)

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def create_channel(
        self,
        name: str,
        *,
        lease_ms: int | None = None,
        max_depth: int | None = None,
        max_wait_ms: int | None = None,
        grace_ms: int | None = None,
    ) -> None:
        """Make sure the channel exists on the server (an existing one is left as it is); local mode: no-op."""
        if self.client is None:
            return
        try:
            self.client.create_channel(
                name, lease_ms=lease_ms, max_depth=max_depth, max_wait_ms=max_wait_ms, grace_ms=grace_ms
            )
        except TurnqError as exc:
            if exc.code is not ErrorCode.CHANNEL_EXISTS:
                raise

    def turn(
        self,
        channel: str,
        *,
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
        renew: bool = True,
        renew_interval: float | None = None,
        lease_ms: int | None = None,
    ) -> Turn:
        """A turn on ``channel``: ``with coordinator.turn("deploy") as turn:``.

        In distributed mode a missing channel is created with the server's defaults (and ``lease_ms``).
        """
        if self.client is None:
            return LocalTurn(self._queue, channel, timeout=timeout, on_position=on_position)
        return self.client.turn(
            channel,
            timeout=timeout,
            on_position=on_position,
            renew=renew,
            renew_interval=renew_interval,
            lease_ms=lease_ms,
            create_missing=True,
        )

    def with_turn(self, channel: str, fn: Callable[[Turn], T], **options: Any) -> T:
        """Run ``fn(turn)`` inside a turn and return its result (the original's ``withTurn``)."""
        with self.turn(channel, **options) as turn:
            return fn(turn)


class AsyncCoordinator(_CoordinatorBase):
    """Async turns, local or distributed; build it with :func:`create_async_coordinator`."""

    def __init__(
        self, client: AsyncTurnqClient | None = None, *, lock_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.client = client
        self.mode = "distributed" if client is not None else "local"
        self._queue = LocalQueue(lock_dir)

    async def __aenter__(self) -> AsyncCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def create_channel(
        self,
        name: str,
        *,
        lease_ms: int | None = None,
        max_depth: int | None = None,
        max_wait_ms: int | None = None,
        grace_ms: int | None = None,
    ) -> None:
        """Make sure the channel exists on the server (an existing one is left as it is); local mode: no-op."""
        if self.client is None:
            return
        try:
            await self.client.create_channel(
                name, lease_ms=lease_ms, max_depth=max_depth, max_wait_ms=max_wait_ms, grace_ms=grace_ms
            )
        except TurnqError as exc:
            if exc.code is not ErrorCode.CHANNEL_EXISTS:
                raise

    def turn(
        self,
        channel: str,
        *,
        timeout: float | None = None,
        on_position: PositionCallback | None = None,
        renew: bool = True,
        renew_interval: float | None = None,
        lease_ms: int | None = None,
    ) -> AsyncTurn:
        """A turn on ``channel``: ``async with coordinator.turn("deploy") as turn:``."""
        if self.client is None:
            return LocalAsyncTurn(self._queue, channel, timeout=timeout, on_position=on_position)
        return self.client.turn(
            channel,
            timeout=timeout,
            on_position=on_position,
            renew=renew,
            renew_interval=renew_interval,
            lease_ms=lease_ms,
            create_missing=True,
        )

    async def with_turn(self, channel: str, fn: Callable[[AsyncTurn], Awaitable[T]], **options: Any) -> T:
        """Run ``await fn(turn)`` inside a turn and return its result (the original's ``withTurn``)."""
        async with self.turn(channel, **options) as turn:
            return await fn(turn)


def create_coordinator(
    url: str | Sequence[str] | None = None,
    api_key: str | None = None,
    fallback: bool = True,
    *,
    lock_dir: str | os.PathLike[str] | None = None,
    request_timeout: float = 10.0,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
) -> Coordinator:
    """A blocking coordinator: distributed if a server is configured and answers, else local (see module doc)."""
    plan = _plan(url, api_key, fallback)
    if not plan.wants_server:
        _announce("local", str(LocalQueue(lock_dir).lock_dir))
        return Coordinator(lock_dir=lock_dir)
    reason = plan.missing_key()
    if reason is not None:
        _fall_back_or_raise(plan, reason, TurnqError(ErrorCode.UNAUTHORIZED, reason))
        return Coordinator(lock_dir=lock_dir)
    from .http import TurnqClient

    probe = TurnqClient(plan.urls, plan.api_key, timeout=probe_timeout)
    try:
        _check_health(probe.url, probe.health)
    except TurnqError as exc:
        _fall_back_or_raise(plan, exc.message, exc)
        return Coordinator(lock_dir=lock_dir)
    finally:
        probe.close()
    client = TurnqClient(
        probe.endpoints.urls, plan.api_key, timeout=request_timeout, endpoints=probe.endpoints
    )
    _announce("distributed", client.url)
    return Coordinator(client, lock_dir=lock_dir)


async def create_async_coordinator(
    url: str | Sequence[str] | None = None,
    api_key: str | None = None,
    fallback: bool = True,
    *,
    lock_dir: str | os.PathLike[str] | None = None,
    request_timeout: float = 10.0,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
) -> AsyncCoordinator:
    """The async twin of :func:`create_coordinator`, with the same choice and fallback rules."""
    plan = _plan(url, api_key, fallback)
    if not plan.wants_server:
        _announce("local", str(LocalQueue(lock_dir).lock_dir))
        return AsyncCoordinator(lock_dir=lock_dir)
    reason = plan.missing_key()
    if reason is not None:
        _fall_back_or_raise(plan, reason, TurnqError(ErrorCode.UNAUTHORIZED, reason))
        return AsyncCoordinator(lock_dir=lock_dir)
    from .http import AsyncTurnqClient

    probe = AsyncTurnqClient(plan.urls, plan.api_key, timeout=probe_timeout)
    try:
        health = await probe.health()
        _check_health(probe.url, lambda: health)
    except TurnqError as exc:
        _fall_back_or_raise(plan, exc.message, exc)
        return AsyncCoordinator(lock_dir=lock_dir)
    finally:
        await probe.aclose()
    client = AsyncTurnqClient(
        probe.endpoints.urls, plan.api_key, timeout=request_timeout, endpoints=probe.endpoints
    )
    _announce("distributed", client.url)
    return AsyncCoordinator(client, lock_dir=lock_dir)
