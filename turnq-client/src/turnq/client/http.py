"""The HTTP clients: :class:`AsyncTurnqClient` and its blocking twin :class:`TurnqClient`.

Both send the :mod:`~turnq.client.protocol` calls, so they differ only in how bytes move. Each request goes to the
current server of the :class:`~turnq.client.endpoints.Endpoints` ring; a refused connection moves the ring on and
tries the next server, which is always safe because nothing was sent. An answer lost after sending is retried
elsewhere only for calls that may be repeated (reads and renew).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from httpx_sse import EventSource, SSEError, aconnect_sse, connect_sse

from . import protocol
from .endpoints import Endpoints, key_from_env
from .errors import ServerUnavailableError
from .models import Channel, Enqueued, Event, Health, QueueInfo

if TYPE_CHECKING:
    from .remote_turn import RemoteAsyncTurn
    from .sync_turn import RemoteTurn
    from .turn import AsyncTurn, PositionCallback, Turn

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
# Keep-alives arrive every 15 s; three missed in a row means the stream is dead even if TCP has not noticed.
DEFAULT_STREAM_READ_TIMEOUT = 45.0
# Connection failures that prove the request never reached a server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def new_client_id() -> str:
    """A client id that tells a person where the ticket comes from (host, process) and is unique per turn."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _unavailable(urls: Sequence[str], exc: BaseException) -> ServerUnavailableError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ServerUnavailableError(f"no turnq server answered at {', '.join(urls)} ({detail})")


class _ClientConfig:
    """What both clients share: the server ring, the key header, the timeouts."""

    def __init__(
        self,
        url: str | Sequence[str],
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stream_read_timeout: float = DEFAULT_STREAM_READ_TIMEOUT,
        endpoints: Endpoints | None = None,
    ) -> None:
        self.endpoints = endpoints if endpoints is not None else Endpoints(url)
        self.api_key = key_from_env(api_key)
        self.timeout = timeout
        self.stream_read_timeout = stream_read_timeout
        self._request_timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self._stream_timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0), read=stream_read_timeout)

    @property
    def url(self) -> str:
        """The server in use now."""
        return self.endpoints.current

    def _headers(self, call_auth: bool = True) -> dict[str, str]:
        if call_auth and self.api_key:
            return {"x-api-key": self.api_key}
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.endpoints.urls)!r})"


class AsyncTurnqClient(_ClientConfig):
    """Every protocol action as a coroutine, plus :meth:`turn` for the whole enqueue-to-release cycle."""

    def __init__(
        self,
        url: str | Sequence[str],
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stream_read_timeout: float = DEFAULT_STREAM_READ_TIMEOUT,
        endpoints: Endpoints | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            url, api_key, timeout=timeout, stream_read_timeout=stream_read_timeout, endpoints=endpoints
        )
        self._http = http if http is not None else httpx.AsyncClient(timeout=self._request_timeout)

    async def __aenter__(self) -> AsyncTurnqClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, call: protocol.Call[T]) -> T:
        """Send one protocol call, moving along the server ring when a server cannot be reached."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            url = self.endpoints.current
            try:
                response = await self._http.request(
                    call.method,
                    url + call.path,
                    json=call.json,
                    params=call.params or None,
                    headers=self._headers(call.auth),
                )
            except _NOT_SENT as exc:
                last = exc
                self.endpoints.failed(url)
                continue
            except httpx.TransportError as exc:
                if not call.idempotent:
                    raise _unavailable([url], exc) from exc
                last = exc
                self.endpoints.failed(url)
                continue
            return protocol.decode_body(call, response.status_code, response.content)
        assert last is not None
        raise _unavailable(self.endpoints.urls, last) from last

    # ------------------------------------------------------------------ actions

    async def health(self) -> Health:
        return await self.call(protocol.health())

    async def create_channel(
        self,
        name: str,
        *,
        lease_ms: int | None = None,
        max_depth: int | None = None,
        max_wait_ms: int | None = None,
        grace_ms: int | None = None,
    ) -> Channel:
        return await self.call(
            protocol.create_channel(
                name, lease_ms=lease_ms, max_depth=max_depth, max_wait_ms=max_wait_ms, grace_ms=grace_ms
            )
        )

    async def list_channels(self) -> list[Channel]:
        return await self.call(protocol.list_channels())

    async def get_channel(self, name: str) -> Channel:
        return await self.call(protocol.get_channel(name))

    async def delete_channel(self, name: str) -> None:
        await self.call(protocol.delete_channel(name))

    async def enqueue(self, channel: str, client_id: str | None = None) -> Enqueued:
        return await self.call(protocol.enqueue(channel, client_id or new_client_id()))

    async def release(
        self, channel: str, client_id: str, request_id: str, *, success: bool = True, error: str | None = None
    ) -> None:
        await self.call(protocol.release(channel, client_id, request_id, success=success, error=error))

    async def abort(self, channel: str, client_id: str, request_id: str | None = None) -> None:
        await self.call(protocol.abort(channel, client_id, request_id))

    async def renew(self, channel: str, client_id: str, request_id: str, lease_ms: int | None = None) -> int:
        """Extend the holder's lease; returns the new ``leaseExpiresAt`` (epoch ms)."""
        return await self.call(protocol.renew(channel, client_id, request_id, lease_ms))

    async def step(
        self,
        channel: str,
        client_id: str,
        name: str,
        event: str,
        *,
        request_id: str | None = None,
        success: bool | None = None,
        error: str | None = None,
    ) -> None:
        await self.call(
            protocol.step(
                channel, client_id, name, event, request_id=request_id, success=success, error=error
            )
        )

    async def queue(self, channel: str) -> QueueInfo:
        return await self.call(protocol.queue(channel))

    async def force_release(self, channel: str) -> None:
        await self.call(protocol.force_release(channel))

    # ------------------------------------------------------------------ streams

    @contextlib.asynccontextmanager
    async def _stream(self, path: str, params: dict[str, str] | None) -> AsyncIterator[AsyncIterator[Event]]:
        async with contextlib.AsyncExitStack() as stack:
            url, source = await self._connect(stack, path, params)

            async def events() -> AsyncIterator[Event]:
                try:
                    async for sse in source.aiter_sse():
                        yield protocol.decode_event(sse.event, sse.data)
                except (httpx.TransportError, SSEError) as exc:
                    raise _unavailable([url], exc) from exc

            # Outside the connection attempts on purpose: nothing the caller's block raises is mistaken for a
            # failure to connect.
            yield events()

    async def _connect(
        self, stack: contextlib.AsyncExitStack, path: str, params: dict[str, str] | None
    ) -> tuple[str, EventSource]:
        """Open an event stream on the first server that takes the connection."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            url = self.endpoints.current
            try:
                source = await stack.enter_async_context(
                    aconnect_sse(
                        self._http,
                        "GET",
                        url + path,
                        params=params,
                        headers=self._headers(),
                        timeout=self._stream_timeout,
                    )
                )
            except _NOT_SENT as exc:
                last = exc
                self.endpoints.failed(url)
                continue
            except httpx.TransportError as exc:
                raise _unavailable([url], exc) from exc
            response = source.response
            if response.status_code != 200:
                raise protocol.error_from_response(response.status_code, await response.aread())
            return url, source
        assert last is not None
        raise _unavailable(self.endpoints.urls, last) from last

    def subscribe(
        self, channel: str, client_id: str, request_id: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """The ticket's event stream: ``async with client.subscribe(...) as events: async for e in events``.

        The stream ends after the ticket is over; a drop raises :class:`ServerUnavailableError`.
        """
        path = protocol.channel_path(channel, "subscribe")
        return self._stream(path, protocol.subscribe_params(client_id, request_id))

    def observe(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """The channel's observer stream (turns and steps as they happen), read-only."""
        return self._stream(protocol.channel_path(channel, "observe"), None)

    # ------------------------------------------------------------------ turns

    def turn(
        self,
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
    ) -> RemoteAsyncTurn:
        """A turn as an async context manager: ``async with client.turn("deploy") as turn: ...``."""
        from .remote_turn import RemoteAsyncTurn

        return RemoteAsyncTurn(
            self,
            channel,
            timeout=timeout,
            on_position=on_position,
            renew=renew,
            renew_interval=renew_interval,
            lease_ms=lease_ms,
            client_id=client_id,
            create_missing=create_missing,
            reconnect_for=reconnect_for,
        )

    async def with_turn(self, channel: str, fn: Callable[[AsyncTurn], Awaitable[T]], **options: Any) -> T:
        """Run ``fn(turn)`` inside a turn, the original client's callback style; returns what ``fn`` returns."""
        async with self.turn(channel, **options) as turn:
            return await fn(turn)


class TurnqClient(_ClientConfig):
    """The blocking twin of :class:`AsyncTurnqClient`.

    Plain calls go straight through ``httpx.Client``. A turn needs work in the background while the caller's
    code runs (lease renewal, watching the stream), so turns run on an event loop in a helper thread that the
    client starts on first use; the caller's thread only blocks on results.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stream_read_timeout: float = DEFAULT_STREAM_READ_TIMEOUT,
        endpoints: Endpoints | None = None,
    ) -> None:
        super().__init__(
            url, api_key, timeout=timeout, stream_read_timeout=stream_read_timeout, endpoints=endpoints
        )
        self._http = httpx.Client(timeout=self._request_timeout)
        self._background: _Background | None = None

    def __enter__(self) -> TurnqClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._background is not None:
            self._background.close()
            self._background = None
        self._http.close()

    def call(self, call: protocol.Call[T]) -> T:
        """Send one protocol call, moving along the server ring when a server cannot be reached."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            url = self.endpoints.current
            try:
                response = self._http.request(
                    call.method,
                    url + call.path,
                    json=call.json,
                    params=call.params or None,
                    headers=self._headers(call.auth),
                )
            except _NOT_SENT as exc:
                last = exc
                self.endpoints.failed(url)
                continue
            except httpx.TransportError as exc:
                if not call.idempotent:
                    raise _unavailable([url], exc) from exc
                last = exc
                self.endpoints.failed(url)
                continue
            return protocol.decode_body(call, response.status_code, response.content)
        assert last is not None
        raise _unavailable(self.endpoints.urls, last) from last

    # ------------------------------------------------------------------ actions

    def health(self) -> Health:
        return self.call(protocol.health())

    def create_channel(
        self,
        name: str,
        *,
        lease_ms: int | None = None,
        max_depth: int | None = None,
        max_wait_ms: int | None = None,
        grace_ms: int | None = None,
    ) -> Channel:
        return self.call(
            protocol.create_channel(
                name, lease_ms=lease_ms, max_depth=max_depth, max_wait_ms=max_wait_ms, grace_ms=grace_ms
            )
        )

    def list_channels(self) -> list[Channel]:
        return self.call(protocol.list_channels())

    def get_channel(self, name: str) -> Channel:
        return self.call(protocol.get_channel(name))

    def delete_channel(self, name: str) -> None:
        self.call(protocol.delete_channel(name))

    def enqueue(self, channel: str, client_id: str | None = None) -> Enqueued:
        return self.call(protocol.enqueue(channel, client_id or new_client_id()))

    def release(
        self, channel: str, client_id: str, request_id: str, *, success: bool = True, error: str | None = None
    ) -> None:
        self.call(protocol.release(channel, client_id, request_id, success=success, error=error))

    def abort(self, channel: str, client_id: str, request_id: str | None = None) -> None:
        self.call(protocol.abort(channel, client_id, request_id))

    def renew(self, channel: str, client_id: str, request_id: str, lease_ms: int | None = None) -> int:
        """Extend the holder's lease; returns the new ``leaseExpiresAt`` (epoch ms)."""
        return self.call(protocol.renew(channel, client_id, request_id, lease_ms))

    def step(
        self,
        channel: str,
        client_id: str,
        name: str,
        event: str,
        *,
        request_id: str | None = None,
        success: bool | None = None,
        error: str | None = None,
    ) -> None:
        self.call(
            protocol.step(
                channel, client_id, name, event, request_id=request_id, success=success, error=error
            )
        )

    def queue(self, channel: str) -> QueueInfo:
        return self.call(protocol.queue(channel))

    def force_release(self, channel: str) -> None:
        self.call(protocol.force_release(channel))

    # ------------------------------------------------------------------ streams

    @contextlib.contextmanager
    def _stream(self, path: str, params: dict[str, str] | None) -> Iterator[Iterator[Event]]:
        with contextlib.ExitStack() as stack:
            url, source = self._connect(stack, path, params)

            def events() -> Iterator[Event]:
                try:
                    for sse in source.iter_sse():
                        yield protocol.decode_event(sse.event, sse.data)
                except (httpx.TransportError, SSEError) as exc:
                    raise _unavailable([url], exc) from exc

            yield events()

    def _connect(
        self, stack: contextlib.ExitStack, path: str, params: dict[str, str] | None
    ) -> tuple[str, EventSource]:
        """Open an event stream on the first server that takes the connection."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            url = self.endpoints.current
            try:
                source = stack.enter_context(
                    connect_sse(
                        self._http,
                        "GET",
                        url + path,
                        params=params,
                        headers=self._headers(),
                        timeout=self._stream_timeout,
                    )
                )
            except _NOT_SENT as exc:
                last = exc
                self.endpoints.failed(url)
                continue
            except httpx.TransportError as exc:
                raise _unavailable([url], exc) from exc
            response = source.response
            if response.status_code != 200:
                raise protocol.error_from_response(response.status_code, response.read())
            return url, source
        assert last is not None
        raise _unavailable(self.endpoints.urls, last) from last

    def subscribe(
        self, channel: str, client_id: str, request_id: str
    ) -> contextlib.AbstractContextManager[Iterator[Event]]:
        """The ticket's event stream: ``with client.subscribe(...) as events: for e in events``."""
        path = protocol.channel_path(channel, "subscribe")
        return self._stream(path, protocol.subscribe_params(client_id, request_id))

    def observe(self, channel: str) -> contextlib.AbstractContextManager[Iterator[Event]]:
        """The channel's observer stream (turns and steps as they happen), read-only."""
        return self._stream(protocol.channel_path(channel, "observe"), None)

    # ------------------------------------------------------------------ turns

    def _async_twin(self) -> _Background:
        if self._background is None:
            self._background = _Background(self)
        return self._background

    def turn(
        self,
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
    ) -> RemoteTurn:
        """A turn as a context manager: ``with client.turn("deploy") as turn: ...``."""
        from .sync_turn import RemoteTurn

        background = self._async_twin()
        inner = background.client.turn(
            channel,
            timeout=timeout,
            on_position=on_position,
            renew=renew,
            renew_interval=renew_interval,
            lease_ms=lease_ms,
            client_id=client_id,
            create_missing=create_missing,
            reconnect_for=reconnect_for,
        )
        return RemoteTurn(background.portal, inner)

    def with_turn(self, channel: str, fn: Callable[[Turn], T], **options: Any) -> T:
        """Run ``fn(turn)`` inside a turn, the original client's callback style; returns what ``fn`` returns."""
        with self.turn(channel, **options) as turn:
            return fn(turn)


class _Background:
    """The helper thread's event loop and the async client that lives on it, sharing the sync client's ring."""

    def __init__(self, owner: TurnqClient) -> None:
        from .portal import Portal

        self.portal = Portal()
        self.client = AsyncTurnqClient(
            owner.endpoints.urls,
            owner.api_key,
            timeout=owner.timeout,
            stream_read_timeout=owner.stream_read_timeout,
            endpoints=owner.endpoints,
        )

    def close(self) -> None:
        try:
            self.portal.call(self.client.aclose)
        finally:
            self.portal.close()
