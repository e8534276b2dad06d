"""The aiohttp application: routes that answer every failure in the protocol's JSON, and the lifecycle (open the
backend, start the reaper, tell streams on shutdown, close)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from turnq.core import Backend, ErrorCode, TurnqError, open_backend, redact_url

from .config import ServerConfig
from .hub import encode_json
from .routes import STATE_KEY, routes
from .state import ServerState

log = logging.getLogger("turnq.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(exc: TurnqError) -> web.Response:
    return web.Response(body=encode_json(exc.to_json()), status=exc.status, content_type="application/json")


def _from_http(exc: web.HTTPException, limit: int) -> TurnqError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return TurnqError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes")
    return TurnqError(ErrorCode.MALFORMED_REQUEST, exc.reason or "bad request")


def answering_in_protocol(handler: Handler, state: ServerState, method: str, path: str) -> Handler:
    """``handler`` with every failure answered as the protocol's ``{code, message}`` and every request counted.

    A wrapper per route rather than an aiohttp middleware: an application with any middleware runs each request
    through two more coroutines (the middleware and aiohttp's own ``current_app`` bookkeeping around it), and the
    route's method and path are known here once instead of being looked up on every request.
    """
    count = state.metrics.requests.counter(method, path)
    limit = state.config.max_body_bytes

    async def answer(request: web.Request) -> web.StreamResponse:
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
            error = _from_http(exc, limit)
            status = error.status
            return _error(error)
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499
            raise
        except Exception:
            log.exception("unhandled error", extra={"method": request.method, "path": request.path})
            return _error(TurnqError(ErrorCode.INTERNAL_ERROR, "internal error; see the server log"))
        finally:
            count(status)

    return answer


async def unmatched(request: web.Request) -> web.StreamResponse:
    """The last route, for every method and path no other route takes: 405 when the path is known, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue
        _match, methods = await resource.resolve(request)
        allowed |= methods
    if allowed:
        response = _error(
            TurnqError(ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {request.path}")
        )
        response.headers[hdrs.ALLOW] = ",".join(sorted(allowed))
        return response
    raise TurnqError(ErrorCode.ROUTE_NOT_FOUND, f"no such endpoint: {request.method} {request.path}")


def create_app(config: ServerConfig, backend: Backend | None = None) -> web.Application:
    """Build the application; the backend is opened on startup and closed on cleanup."""
    if backend is None:
        backend = open_backend(config.database_url)
    state = ServerState(config, backend)
    app = web.Application(client_max_size=config.max_body_bytes)
    app[STATE_KEY] = state
    app.add_routes(
        web.route(
            route.method,
            route.path,
            answering_in_protocol(route.handler, state, route.method, route.path),
            **route.kwargs,
        )
        for route in routes
        if isinstance(route, web.RouteDef)
    )
    app.router.add_route(
        hdrs.METH_ANY, "/{path:.*}", answering_in_protocol(unmatched, state, hdrs.METH_ANY, "unmatched")
    )

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
