"""The aiohttp application: middleware that turns every failure into the protocol's JSON, and the lifecycle
(open the backend, start the reaper, tell streams on shutdown, close)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from turnq.core import Backend, ErrorCode, TurnqError, open_backend, redact_url

from .config import ServerConfig
from .routes import STATE_KEY, routes
from .state import ServerState

log = logging.getLogger("turnq.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc: TurnqError) -> web.Response:
    return web.Response(
        body=json.dumps(exc.to_json()).encode(), status=exc.status, content_type="application/json"
    )


def _from_http(exc: web.HTTPException, request: web.Request) -> TurnqError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[STATE_KEY].config.max_body_bytes
        return TurnqError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes")
    if isinstance(exc, web.HTTPNotFound):
        return TurnqError(ErrorCode.ROUTE_NOT_FOUND, f"no such endpoint: {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return TurnqError(ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {request.path}")
    return TurnqError(ErrorCode.MALFORMED_REQUEST, exc.reason or "bad request")


@web.middleware
async def protocol_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except TurnqError as exc:
        status = exc.status
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http(exc, request)
        status = error.status
        return _error(error)
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        return _error(TurnqError(ErrorCode.INTERNAL_ERROR, "internal error; see the server log"))
    finally:
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "unmatched"
        request.app[STATE_KEY].metrics.count_request(request.method, path, status)


def create_app(config: ServerConfig, backend: Backend | None = None) -> web.Application:
    """Build the application; the backend is opened on startup and closed on cleanup."""
    if backend is None:
        backend = open_backend(config.database_url)
    state = ServerState(config, backend)
    app = web.Application(middlewares=[protocol_middleware], client_max_size=config.max_body_bytes)
    app[STATE_KEY] = state
    app.add_routes(routes)

    async def on_startup(app: web.Application) -> None:
        await state.start()
        log.info(
            "turnq server started",
            extra={"backend": backend.name, "database_url": redact_url(config.database_url)},
        )

    async def on_shutdown(app: web.Application) -> None:
        await state.shutdown_streams("server stopping")

    async def on_cleanup(app: web.Application) -> None:
        await state.stop()
        log.info("turnq server stopped")

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
