"""The floor: the protocol's turn path as textbook aiohttp + aiohttp-sse code, with nothing else.

server_bench.py runs it as the ``floor`` baseline, next to turnq, so one table shows how much of turnq's CPU per
turn and memory per waiter is the frameworks' and how much is turnq's own, on the same machine in the same run.

It does what a turn in the benchmarks needs and no more: create a channel, enqueue, subscribe (``queued``, then
``your-turn`` with a fencing token), release (204, then the stream ends), one holder and FIFO per channel, the
API key checked. It has none of what makes turnq a service: no input validation, roles, leases, max wait, grace,
reaper, position updates, observers, metrics, logs, persistence or shutdown handling. It is written the way the
aiohttp and aiohttp-sse documentation shows (a coroutine per stream awaiting a future, ``sse_response`` as a
context manager with its ping task and send timeout), on uvloop like ``turnq serve``.

    python bench/floor_server.py --port 3100 --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections import deque
from dataclasses import dataclass, field

import uvloop
from aiohttp import web
from aiohttp_sse import sse_response

routes = web.RouteTableDef()


@dataclass
class Ticket:
    client_id: str
    request_id: str
    granted: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    released: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Channel:
    name: str
    line: deque[Ticket] = field(default_factory=deque)
    tickets: dict[str, Ticket] = field(default_factory=dict)
    fencing: int = 0

    def grant_front(self) -> None:
        if self.line and not self.line[0].granted.done():
            self.fencing += 1
            self.line[0].granted.set_result(self.fencing)


CHANNELS: web.AppKey[dict[str, Channel]] = web.AppKey("channels", dict)
KEY: web.AppKey[str] = web.AppKey("key", str)


def channel_of(request: web.Request) -> Channel:
    if request.headers.get("x-api-key") != request.app[KEY]:
        raise web.HTTPUnauthorized()
    channel = request.app[CHANNELS].get(request.match_info["name"])
    if channel is None:
        raise web.HTTPNotFound()
    return channel


@routes.post("/channels")
async def create(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[CHANNELS][body["name"]] = Channel(body["name"])
    return web.json_response({"name": body["name"]}, status=201)


@routes.post("/channels/{name}/enqueue")
async def enqueue(request: web.Request) -> web.Response:
    channel = channel_of(request)
    body = await request.json()
    ticket = Ticket(body["clientId"], str(uuid.uuid4()))
    channel.line.append(ticket)
    channel.tickets[ticket.request_id] = ticket
    channel.grant_front()
    return web.json_response({"requestId": ticket.request_id, "position": len(channel.line) - 1})


@routes.get("/channels/{name}/subscribe")
async def subscribe(request: web.Request) -> web.StreamResponse:
    channel = channel_of(request)
    ticket = channel.tickets[request.query["requestId"]]
    async with sse_response(request, sep="\n") as response:
        if not ticket.granted.done():
            position = channel.line.index(ticket)
            await response.send(
                json.dumps({"channel": channel.name, "requestId": ticket.request_id, "position": position}),
                event="queued",
            )
        token = await ticket.granted
        turn = {"channel": channel.name, "requestId": ticket.request_id, "fencingToken": token}
        await response.send(json.dumps(turn), event="your-turn")
        await ticket.released
    return response


@routes.post("/channels/{name}/release")
async def release(request: web.Request) -> web.Response:
    channel = channel_of(request)
    body = await request.json()
    ticket = channel.tickets.pop(body["requestId"])
    channel.line.remove(ticket)
    ticket.released.set_result(None)
    channel.grant_front()
    return web.Response(status=204)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    app = web.Application()
    app[CHANNELS] = {}
    app[KEY] = args.api_key
    app.add_routes(routes)
    web.run_app(
        app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
