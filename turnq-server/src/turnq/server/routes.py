"""HTTP routes: validate input, check the key, call the rules, answer in the protocol's shapes.

Every input is validated before any state is touched, and every failure leaves as ``{"code", "message"}`` with
the protocol's status (see ``errors.py`` in core and ``answering_in_protocol`` in ``app.py``).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from aiohttp_sse import EventSourceResponse
from multidict import CIMultiDict, istr
from turnq.core.limits import (
    MAX_ERROR_LENGTH,
    MAX_ID_LENGTH,
    MAX_LEASE_MS,
    channel_spec_from_wire,
    check_channel_name,
    check_int,
    check_text,
    malformed,
)

from .auth import ApiKey, Authenticator
from .hub import Stream, encode_json
from .state import ServerState

# Routes are registered in the order this module defines them, and aiohttp tries the routes under /channels one by
# one in that order: the three every turn takes (enqueue, subscribe, release) come first.
routes = web.RouteTableDef()
NO_CONTENT = 204


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE_KEY]


STATE_KEY: web.AppKey[ServerState] = web.AppKey("turnq_state", ServerState)


def _query(request: web.Request) -> dict[str, str]:
    """The query's parameters, the first value of each name (as ``request.query.get`` gives it).

    Parsed here and dropped after use: ``request.query`` would cache its parse (a multidict, a list of pairs and
    their strings, about 700 bytes) on the request, which an open stream keeps for its whole life. yarl parses a
    query as ``parse_qsl(..., keep_blank_values=True)`` does, so the values are the same.
    """
    params: dict[str, str] = {}
    for name, value in parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _key(request: web.Request) -> ApiKey:
    """Identify the caller by ``x-api-key`` (or the original client's ``?apiKey=`` on subscribe)."""
    presented = request.headers.get("x-api-key") or _query(request).get("apiKey")
    return state_of(request).auth.identify(presented)


def _channel(request: web.Request, *, admin: bool = False) -> str:
    """The channel named in the path, once the caller's key is known to be valid and allowed to use it."""
    key = _key(request)
    name = check_channel_name(request.match_info["name"], "channel name")
    Authenticator.require(key, admin=admin, channel=name)
    return name


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise malformed(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise malformed("request body must be a JSON object")
    return body


def _client_id(body: dict[str, Any]) -> str:
    value = check_text("clientId", body.get("clientId"), MAX_ID_LENGTH)
    assert value is not None
    return value


def _request_id(body: dict[str, Any], *, required: bool) -> str | None:
    return check_text("requestId", body.get("requestId"), MAX_ID_LENGTH, required=required)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode_json(data), status=status, content_type="application/json")


# ---------------------------------------------------------------------- streams


# The headers aiohttp_sse gives an SSE response, in its order, named by case-insensitive ``istr`` constants.
SSE_HEADERS: CIMultiDict[str] = CIMultiDict(
    (
        (hdrs.CONTENT_TYPE, "text/event-stream"),
        (hdrs.CACHE_CONTROL, "no-cache"),
        (hdrs.CONNECTION, "keep-alive"),
        (istr("X-Accel-Buffering"), "no"),
    )
)


class ObserverEventSource(EventSourceResponse):
    """The SSE response of one hub stream, which writes the stream's frames until it is told to end.

    The handler validates the request, registers the stream and returns this response unstarted; aiohttp then
    prepares it, as it does every response a handler returns, and ``prepare`` writes the frames (as aiohttp's
    FileResponse sends its file from ``prepare``). So while a stream is open, the handler, the middleware and
    aiohttp's routing coroutines have already returned instead of staying suspended around it: an idle waiter costs
    aiohttp's connection and request state, the stream and one future.

    Keep-alives come from the hub: one timer for every open stream, writing the protocol's ``: keepalive`` comment,
    instead of a sleeping ping task per stream (which would cost each idle waiter a task, a future and a timer).
    """

    def __init__(self, state: ServerState, stream: Stream) -> None:
        # No send timeout: the listening socket gives every connection TCP_USER_TIMEOUT already (listener.py),
        # which aiohttp-sse would otherwise set, look up and restore around each stream.
        super().__init__(sep="\n", send_timeout=None)
        self._turnq_state = state
        self._turnq_stream = stream
        # aiohttp_sse names its headers with plain strings, for which the response's multidict derives and keeps
        # a folded name and an istr each, and grows its table: some 850 bytes held for as long as a stream stays
        # open. The same headers under istr constants cost none of that.
        headers = self.headers
        headers.clear()
        headers.extend(SSE_HEADERS)

    async def _ping(self) -> None:
        return None

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        stream = self._turnq_stream
        try:
            writer = await super().prepare(request)
            # The headers are serialized by now; an idle stream need not keep them (some 200 bytes each).
            self.headers.clear()
            # aiohttp_sse has started its ping task, which with the ``_ping`` above finishes at its first step.
            # Let it go rather than keep a finished task (its coroutine and context) for the stream's life;
            # nothing waits on it or stops it (``wait``, ``stop_streaming`` and ``send`` are not used).
            self._ping_task = None
            # aiohttp's idle-connection timer does nothing while a request is being handled, yet it stays armed (a
            # timer handle per connection) until it fires; drop it for the stream's life. aiohttp arms it again
            # when the response ends and the connection goes back to waiting for a request.
            request.protocol.keep_alive(True)
            while True:
                chunk = stream.take()
                if chunk is not None:
                    # A client that hangs up while a frame is being written makes this raise
                    # ConnectionResetError, which aiohttp takes quietly for a premature disconnection.
                    await self.write(chunk)
                elif stream.closing:
                    return writer
                else:
                    await stream.wait()
        finally:
            self._turnq_state.end_stream(stream)


class TicketEventSource(ObserverEventSource):
    """A subscriber's stream. Its first frame (``queued`` or ``your-turn``) is already waiting when the response
    starts, so the headers go out with it in one write instead of two."""

    _send_headers_immediately = False


def _ticket_ids(request: web.Request) -> tuple[str, str]:
    query = _query(request)
    client_id = check_text("clientId", query.get("clientId"), MAX_ID_LENGTH)
    request_id = check_text("requestId", query.get("requestId"), MAX_ID_LENGTH)
    assert client_id is not None and request_id is not None
    return client_id, request_id


# ---------------------------------------------------------------------- turns


@routes.post("/channels/{name}/enqueue")
async def enqueue(request: web.Request) -> web.Response:
    name = _channel(request)
    body = await _body(request)
    client_id = _client_id(body)
    request_id, position = await state_of(request).service.enqueue(name, client_id)
    return _json({"requestId": request_id, "position": position})


# No HEAD for the streams (aiohttp adds one to every GET route by default): an event stream has no head to give,
# and HEAD is answered 405 before anything is registered.
@routes.get("/channels/{name}/subscribe", allow_head=False)
async def subscribe(request: web.Request) -> web.StreamResponse:
    name = _channel(request)
    client_id, request_id = _ticket_ids(request)
    state = state_of(request)
    attachment = state.new_attachment()
    # Register before attaching, so no event committed after the attach can be missed.
    stream = state.hub.open_ticket_stream(name, request_id, attachment)
    try:
        await state.service.attach(name, client_id, request_id, attachment)
    except BaseException:
        state.hub.discard(stream)
        raise
    # From here nothing suspends until the response's prepare, whose end (however it ends) closes the stream.
    return TicketEventSource(state, stream)


@routes.post("/channels/{name}/release")
async def release(request: web.Request) -> web.Response:
    name = _channel(request)
    body = await _body(request)
    client_id = _client_id(body)
    request_id = _request_id(body, required=True)
    assert request_id is not None
    success, error = True, None
    result = body.get("result")
    if result is not None:
        if not isinstance(result, dict):
            raise malformed("result must be an object {success, error?}")
        success_value = result.get("success", True)
        if not isinstance(success_value, bool):
            raise malformed("result.success must be a boolean")
        success = success_value
        error = check_text("result.error", result.get("error"), MAX_ERROR_LENGTH, required=False)
    await state_of(request).service.release(name, client_id, request_id, success, error)
    return web.Response(status=NO_CONTENT)


@routes.post("/channels/{name}/abort")
async def abort(request: web.Request) -> web.Response:
    name = _channel(request)
    body = await _body(request)
    client_id = _client_id(body)
    request_id = _request_id(body, required=False)
    await state_of(request).service.abort(name, client_id, request_id)
    return web.Response(status=NO_CONTENT)


@routes.post("/channels/{name}/renew")
async def renew(request: web.Request) -> web.Response:
    name = _channel(request)
    body = await _body(request)
    client_id = _client_id(body)
    request_id = _request_id(body, required=True)
    assert request_id is not None
    lease_ms = check_int("leaseMs", body.get("leaseMs"), 1, MAX_LEASE_MS)
    deadline = await state_of(request).service.renew(name, client_id, request_id, lease_ms)
    return _json({"leaseExpiresAt": deadline})


@routes.post("/channels/{name}/steps")
async def steps(request: web.Request) -> web.Response:
    name = _channel(request)
    body = await _body(request)
    client_id = _client_id(body)
    request_id = _request_id(body, required=False)
    step = check_text("step", body.get("step"), MAX_ID_LENGTH)
    assert step is not None
    phase = body.get("event")
    if phase not in ("start", "end"):
        raise malformed('event must be "start" or "end"')
    success = body.get("success")
    if success is not None and not isinstance(success, bool):
        raise malformed("success must be a boolean")
    error = check_text("error", body.get("error"), MAX_ERROR_LENGTH, required=False)
    await state_of(request).service.step(name, client_id, step, phase, request_id, success, error)
    return web.Response(status=NO_CONTENT)


@routes.get("/channels/{name}/observe", allow_head=False)
async def observe(request: web.Request) -> web.StreamResponse:
    name = _channel(request)
    state = state_of(request)
    stream = state.hub.open_observer_stream(name)
    try:
        await state.service.get_channel(name)
    except BaseException:
        state.hub.discard(stream)
        raise
    return ObserverEventSource(state, stream)


# ---------------------------------------------------------------------- channels


@routes.post("/channels")
async def create_channel(request: web.Request) -> web.Response:
    key = _key(request)
    body = await _body(request)
    spec = channel_spec_from_wire(body, state_of(request).config.channel_defaults)
    Authenticator.require(key, admin=True, channel=spec.name)
    view = await state_of(request).service.create_channel(spec)
    return _json(view.to_wire(), status=201)


@routes.get("/channels")
async def list_channels(request: web.Request) -> web.Response:
    key = _key(request)
    views = await state_of(request).service.list_channels()
    return _json({"channels": [v.to_wire() for v in views if key.allows_channel(v.spec.name)]})


@routes.get("/channels/{name}")
async def get_channel(request: web.Request) -> web.Response:
    name = _channel(request)
    return _json((await state_of(request).service.get_channel(name)).to_wire())


@routes.delete("/channels/{name}")
async def delete_channel(request: web.Request) -> web.Response:
    name = _channel(request, admin=True)
    await state_of(request).service.delete_channel(name)
    return web.Response(status=NO_CONTENT)


@routes.get("/channels/{name}/queue")
async def queue(request: web.Request) -> web.Response:
    name = _channel(request)
    state = state_of(request)
    view = await state.service.queue_view(name)
    return _json(view.to_wire(state.service.clock()))


@routes.delete("/channels/{name}/holder")
async def force_release(request: web.Request) -> web.Response:
    name = _channel(request, admin=True)
    await state_of(request).service.force_release(name)
    return web.Response(status=NO_CONTENT)


# ---------------------------------------------------------------------- service


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    state = state_of(request)
    channels = await state.service.list_channels()
    return _json(
        {
            "ok": True,
            "channels": len(channels),
            "uptime": round(time.monotonic() - state.started, 3),
            "backend": state.service.backend.name,
        }
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    _key(request)
    state = state_of(request)
    subscribers, observers = state.hub.counts()
    channels = len(await state.service.list_channels())
    body = state.metrics.render(subscribers, observers, channels)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
