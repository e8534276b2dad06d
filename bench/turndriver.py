"""A lean load generator for the turn benchmarks: every simulated client is a small state machine driven from
``asyncio.Protocol.data_received`` callbacks.

Why: the benchmarks share a 2-core machine with the server, so every bit of CPU and every scheduling delay the
generator adds is charged to the server's figures. The coroutine client of wire.py (a StreamReader, a coroutine
per client, a future per await) costs about 0.15 ms of CPU per turn in scenario f; this one about 0.075 ms: a turn
is a few callbacks and byte searches, request bytes are prepared once per client, and the arrival time is taken
on entry to ``data_received``, before any parsing, not when a coroutine gets round to it.

What a client does is what ``server_bench.turn_loop`` does: one keep-alive connection for its POSTs and one for
its streams, both reused turn after turn (the stream connection once the server has ended the previous stream
cleanly); a turn is enqueue -> subscribe -> your-turn -> release -> end of stream. Handoff is measured the same
way: from just before the holder's release is written to the arrival of the next holder's ``your-turn``, paired
by fencing token.

One thing differs on purpose: connections are opened before the clock starts, a bounded number at a time, each
proven accepted by a ``GET /health`` round trip. Opening scenario f's 400 connections at once overflowed the
server's listen queue (aiohttp's backlog is 128; ``turnq serve`` now listens with a deeper one, and the floor
baseline still has aiohttp's), and every dropped SYN is retried by the kernel only after 1 s, so some channels
started a second late: the turns/s figure measured the retransmit timer, and the handoff figure was taken while
only part of the channels were running. The run itself opens no connection, and the server CPU it reports no
longer includes accepting 400 connections.

Nothing is taken on trust: every status is checked (enqueue 200, subscribe 200, release 204), every
``your-turn`` must name the client's own ticket, fencing tokens must rise strictly on each channel, a stream may
end only after its release, every channel must see exactly ``clients x turns`` grants and releases, and any other
event, a lost connection or a client that makes no progress within the turn timeout aborts the run with
``BenchError``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.context import SpawnProcess
from typing import Protocol, cast
from urllib.parse import quote, urlsplit

import uvloop

perf_counter = time.perf_counter

Plan = Sequence[tuple[str, str]]  # one (server URL, channel) per simulated client
Logs = dict[str, tuple[dict[int, float], dict[int, float]]]  # channel -> (grants, releases) by fencing token

# Connections being opened at once, per process: with 2 processes at most 64 wait in the listen queue (128).
CONNECT_CONCURRENCY = 32


class BenchError(RuntimeError):
    """The server answered what a correct turn does not produce, or a wait ran out: the run is void."""


class Owner(Protocol):
    """What an ``HttpConn`` reports to; the ``t`` arguments are the ``perf_counter`` of the data's arrival."""

    def on_response(self, conn: HttpConn, status: int, body: bytes, t: float) -> None: ...

    def on_stream_open(self, conn: HttpConn, t: float) -> None: ...

    def on_event(self, conn: HttpConn, name: bytes, data: bytes, t: float) -> None: ...

    def on_stream_end(self, conn: HttpConn, t: float) -> None: ...

    def on_failure(self, conn: HttpConn, exc: BaseException) -> None: ...


_HEAD, _BODY, _CHUNKS = 0, 1, 2


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection whose responses are parsed as they arrive.

    A response with a Content-Length is delivered whole to ``on_response``. A chunked response (an SSE stream)
    is announced by ``on_stream_open``, then each SSE frame goes to ``on_event`` (comments are dropped), and the
    terminating chunk to ``on_stream_end``, after which the connection carries the next request. The owner can
    be swapped between requests, so one connection serves the warm-up round trip and then its client.
    """

    def __init__(self) -> None:
        self.owner: Owner | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._buf = b""
        self._sse = b""
        self._state = _HEAD
        self._status = 0
        self._need = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.owner is not None:
            self.owner.on_failure(self, exc or BenchError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        t = perf_counter()
        owner = self.owner
        if owner is None:
            raise BenchError(f"unexpected data on an idle connection: {data[:200]!r}")
        try:
            self._parse(owner, self._buf + data if self._buf else data, t)
        except Exception as exc:
            owner.on_failure(self, exc)

    def _parse(self, owner: Owner, buf: bytes, t: float) -> None:
        pos, n = 0, len(buf)
        while pos < n:
            if self._state == _CHUNKS:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(buf[pos:nl].partition(b";")[0], 16)
                end = nl + 2 + size
                if n < end + 2:
                    break
                if buf[end : end + 2] != b"\r\n":
                    raise BenchError(f"malformed chunk: {buf[pos : end + 2][:200]!r}")
                pos = end + 2
                if size == 0:
                    self._state = _HEAD
                    if self._sse:
                        raise BenchError(f"stream ended inside a frame: {self._sse[:200]!r}")
                    owner.on_stream_end(self, t)
                    continue
                sse = self._sse + buf[nl + 2 : end] if self._sse else buf[nl + 2 : end]
                start = 0
                while (stop := sse.find(b"\n\n", start)) >= 0:
                    frame, start = sse[start:stop], stop + 2
                    if not frame.startswith(b":"):
                        name, data = _frame(frame)
                        owner.on_event(self, name, data, t)
                self._sse = sse[start:]
            elif self._state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = buf[pos : end + 2].lower()
                pos = end + 4
                status = int(head[9:12])
                if b"\r\ntransfer-encoding: chunked\r\n" in head:
                    if status != 200:
                        raise BenchError(f"a chunked response with status {status}")
                    self._state = _CHUNKS
                    owner.on_stream_open(self, t)
                    continue
                i = head.find(b"\r\ncontent-length:")
                length = int(head[i + 17 : head.find(b"\r\n", i + 2)]) if i >= 0 else 0
                if length:
                    self._state, self._status, self._need = _BODY, status, length
                else:
                    owner.on_response(self, status, b"", t)
            else:
                end = pos + self._need
                if n < end:
                    break
                self._state = _HEAD
                body, pos = buf[pos:end], end
                owner.on_response(self, self._status, body, t)
        self._buf = buf[pos:] if pos < n else b""


def _frame(frame: bytes) -> tuple[bytes, bytes]:
    """(event name, data) of one SSE frame; the server writes exactly ``event: NAME\\ndata: JSON``."""
    name, data = b"", b""
    for line in frame.split(b"\n"):
        if line.startswith(b"event: "):
            name = line[7:]
        elif line.startswith(b"data: "):
            data = line[6:]
    return name, data


class _RoundTrip:
    """Owner for one request whose whole response is awaited: the warm-up ``GET /health``."""

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

    def on_response(self, conn: HttpConn, status: int, body: bytes, t: float) -> None:
        if not self.future.done():
            self.future.set_result((status, body))

    def on_stream_open(self, conn: HttpConn, t: float) -> None:
        self.on_failure(conn, BenchError("a stream where a plain response was expected"))

    def on_event(self, conn: HttpConn, name: bytes, data: bytes, t: float) -> None:
        self.on_failure(conn, BenchError(f"an event where a plain response was expected: {name!r}"))

    def on_stream_end(self, conn: HttpConn, t: float) -> None:
        self.on_failure(conn, BenchError("a stream end where a plain response was expected"))

    def on_failure(self, conn: HttpConn, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class ChannelLog:
    """Grant and release times of one channel by fencing token; all of a channel's clients are in one process,
    so this one object sees every grant and can check the tokens rise strictly."""

    name: str
    grants: dict[int, float] = field(default_factory=dict)
    releases: dict[int, float] = field(default_factory=dict)
    last_token: int = 0

    def granted(self, token: int, t: float) -> None:
        if token <= self.last_token:
            raise BenchError(f"channel {self.name}: fencing token {token} after {self.last_token}")
        self.last_token = token
        self.grants[token] = t


# A client's states (strings, so a failure message can name them).
_ENQUEUING = "enqueuing"
_SUBSCRIBING = "subscribing"
_WAITING = "waiting"
_RELEASING = "releasing"
_DONE = "done"


class TurnClient:
    """One simulated client: ``turns`` turns on one channel, as a state machine.

    enqueuing (POST enqueue, expect 200) -> subscribing (GET subscribe, expect a 200 stream) -> waiting
    (``queued`` and ``position-updated`` are passed over) -> on ``your-turn``: hold the turn for ``hold_s``
    (zero-work turns: none) and write the release -> releasing (expect the 204 and the end of the stream, in
    either order) -> the next turn.
    """

    def __init__(
        self,
        run: TurnRun,
        log: ChannelLog,
        host: str,
        key: str,
        client_id: str,
        turns: int,
        hold_s: float = 0.0,
    ) -> None:
        self.run, self.log, self.client_id, self.left = run, log, client_id, turns
        self.hold_s = hold_s
        self.post = HttpConn()
        self.stream = HttpConn()
        self.state = _DONE
        self.deadline = 0.0
        self.request_id = ""
        self.released = self.ended = False
        path = "/channels/" + quote(log.name, safe="")
        common = f"Host: {host}\r\nx-api-key: {key}\r\n"
        body = json.dumps({"clientId": client_id}, separators=(",", ":")).encode()
        self._enqueue = (
            f"POST {path}/enqueue HTTP/1.1\r\n{common}content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._release_head = (
            f"POST {path}/release HTTP/1.1\r\n{common}content-type: application/json\r\ncontent-length: "
        ).encode()
        self._release_body = json.dumps({"clientId": client_id}, separators=(",", ":"))[:-1].encode()
        self._subscribe_head = (
            f"GET {path}/subscribe?clientId={quote(client_id, safe='')}&requestId=".encode()
        )
        self._subscribe_tail = f" HTTP/1.1\r\n{common}\r\n".encode()

    def describe(self) -> str:
        return f"client {self.client_id} on {self.log.name} ({self.state}, {self.left} turns left)"

    def start_turn(self) -> None:
        self.deadline = perf_counter() + self.run.turn_timeout
        self.state = _ENQUEUING
        self.post.write(self._enqueue)

    def _fail(self, why: str) -> None:
        self.run.fail(BenchError(f"{self.describe()}: {why}"))

    def on_response(self, conn: HttpConn, status: int, body: bytes, t: float) -> None:
        if self.run.finished:
            return
        if conn is self.post and self.state == _ENQUEUING:
            if status != 200:
                self._fail(f"enqueue answered {status} {body[:200]!r}")
                return
            self.request_id = str(json.loads(body)["requestId"])
            self.state = _SUBSCRIBING
            self.stream.write(
                self._subscribe_head + quote(self.request_id, safe="").encode() + self._subscribe_tail
            )
        elif conn is self.post and self.state == _RELEASING and not self.released:
            if status != 204:
                self._fail(f"release answered {status} {body[:200]!r}")
                return
            self.released = True
            if self.ended:
                self._turn_over()
        else:
            self._fail(f"unexpected response {status} {body[:200]!r} (a failed subscribe?)")

    def on_stream_open(self, conn: HttpConn, t: float) -> None:
        if self.run.finished:
            return
        if conn is not self.stream or self.state != _SUBSCRIBING:
            self._fail("unexpected stream")
            return
        self.state = _WAITING

    def on_event(self, conn: HttpConn, name: bytes, data: bytes, t: float) -> None:
        if self.run.finished:
            return
        if conn is not self.stream or self.state != _WAITING:
            self._fail(f"unexpected event {name!r} {data[:200]!r}")
        elif name == b"your-turn":
            turn = json.loads(data)
            if turn["requestId"] != self.request_id or turn["channel"] != self.log.name:
                self._fail(f"your-turn for another ticket: {data[:200]!r}")
                return
            token = int(turn["fencingToken"])
            try:
                self.log.granted(token, t)
            except BenchError as exc:
                self.run.fail(exc)
                return
            self.state = _RELEASING
            self.released = self.ended = False
            if self.hold_s:
                asyncio.get_running_loop().call_later(self.hold_s, self._release, token)
            else:
                self._release(token)
        elif name not in (b"queued", b"position-updated"):
            self._fail(f"unexpected event {name!r} {data[:200]!r}")

    def _release(self, token: int) -> None:
        if self.run.finished:
            return
        body = b'%s,"requestId":"%s"}' % (self._release_body, self.request_id.encode())
        request = b"%s%d\r\n\r\n%s" % (self._release_head, len(body), body)
        self.log.releases[token] = perf_counter()
        self.post.write(request)

    def on_stream_end(self, conn: HttpConn, t: float) -> None:
        if self.run.finished:
            return
        if conn is not self.stream or self.state != _RELEASING or self.ended:
            self._fail("the stream ended before the release")
            return
        self.ended = True
        if self.released:
            self._turn_over()

    def on_failure(self, conn: HttpConn, exc: BaseException) -> None:
        if not self.run.finished:
            self.run.fail(BenchError(f"{self.describe()}: {exc!r}"))

    def _turn_over(self) -> None:
        self.left -= 1
        if self.left:
            self.start_turn()
        else:
            self.state = _DONE
            self.run.client_done()


class TurnRun:
    """Clients of one process: ``connect()`` before the clock starts, then ``run()``."""

    def __init__(
        self, plan: Plan, turns: int, key: str, turn_timeout: float = 60.0, hold_s: float = 0.0
    ) -> None:
        self.turns, self.turn_timeout = turns, turn_timeout
        self.logs: dict[str, ChannelLog] = {}
        self.clients: list[TurnClient] = []
        self.addresses: list[tuple[str, int]] = []
        for i, (url, channel) in enumerate(plan):
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None, url
            log = self.logs.setdefault(channel, ChannelLog(channel))
            client = TurnClient(self, log, parts.netloc, key, f"c{i}-{uuid.uuid4().hex[:12]}", turns, hold_s)
            self.clients.append(client)
            self.addresses.append((parts.hostname, parts.port))
        self.pending = len(self.clients)
        self.finished = False
        self.done: asyncio.Future[None] | None = None
        self.ended_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    async def connect(self, timeout: float = 60.0) -> None:
        """Open every client's two connections, ``CONNECT_CONCURRENCY`` at a time, each proven accepted by a
        ``GET /health`` round trip, so no SYN is dropped and none is left in the listen queue."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(conn: HttpConn, host: str, port: int) -> None:
            async with gate:
                await loop.create_connection(lambda: conn, host, port)
                trip = _RoundTrip()
                conn.owner = trip
                conn.write(b"GET /health HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), port))
                status, body = await trip.future
                if status != 200:
                    raise BenchError(f"GET /health answered {status} {body[:200]!r}")

        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    *(
                        one(conn, *address)
                        for client, address in zip(self.clients, self.addresses, strict=True)
                        for conn in (client.post, client.stream)
                    )
                )
        except BaseException:
            self.close()
            raise
        for client in self.clients:
            if client.post.lost or client.stream.lost:
                self.close()
                raise BenchError(f"{client.describe()}: a connection closed right after it was opened")
            client.post.owner = client.stream.owner = client

    async def run(self) -> None:
        """Every client's turns, all started at once; returns when all are done, raises ``BenchError`` at the
        first wrong answer, lost connection or client stuck for ``turn_timeout``."""
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self._watchdog = loop.call_later(1.0, self._watch)
        try:
            for client in self.clients:
                client.start_turn()
            async with asyncio.timeout(self.turn_timeout * self.turns + 10):
                await self.done
            self._check_counts()
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self.close()

    def _watch(self) -> None:
        """Once a second: fail the run if a client has been in one turn longer than ``turn_timeout``."""
        now = perf_counter()
        for client in self.clients:
            if client.state != _DONE and now > client.deadline:
                self.fail(BenchError(f"{client.describe()}: no progress in {self.turn_timeout} s"))
                return
        assert self.done is not None
        if not self.done.done():
            self._watchdog = asyncio.get_running_loop().call_later(1.0, self._watch)

    def _check_counts(self) -> None:
        per_channel = {name: 0 for name in self.logs}
        for client in self.clients:
            per_channel[client.log.name] += self.turns
        for name, log in self.logs.items():
            if len(log.grants) != per_channel[name] or len(log.releases) != per_channel[name]:
                raise BenchError(
                    f"channel {name}: {len(log.grants)} grants and {len(log.releases)} releases,"
                    f" {per_channel[name]} expected"
                )

    def client_done(self) -> None:
        self.pending -= 1
        if not self.pending:
            self.ended_at = perf_counter()
            self.finished = True
            assert self.done is not None
            if not self.done.done():
                self.done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.finished:
            return
        self.finished = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.finished = True
        for client in self.clients:
            client.post.close()
            client.stream.close()

    def channel_logs(self) -> Logs:
        return {name: (log.grants, log.releases) for name, log in self.logs.items()}


# ---------------------------------------------------------------------- several load-generator processes


@dataclass
class Driven:
    """A finished run: wall time from the start signal to the last client's last turn, the CPU time the
    load-generator processes spent meanwhile (all together), and every channel's grant and release times."""

    seconds: float
    cpu_s: float
    logs: list[Logs]


async def drive(
    plan_parts: Sequence[Plan],
    turns: int,
    key: str,
    on_start: Callable[[], None],
    timeout: float = 300.0,
    hold_s: float = 0.0,
) -> Driven:
    """Run each part of the plan in its own process (or, for a single part, in this one).

    The clock starts once every process has its connections open: ``on_start`` is called then (the caller reads
    the server's CPU time there) and the start signal is sent. perf_counter is CLOCK_MONOTONIC on Linux, one
    clock for every process, so end times and handoffs from all processes compare.
    """
    if len(plan_parts) == 1:
        run = TurnRun(plan_parts[0], turns, key, hold_s=hold_s)
        async with asyncio.timeout(timeout):
            await run.connect()
            on_start()
            t0, cpu0 = perf_counter(), time.process_time()
            await run.run()
        return Driven(run.ended_at - t0, time.process_time() - cpu0, [run.channel_logs()])

    ctx = multiprocessing.get_context("spawn")
    pipes: list[Pipe] = []
    procs: list[SpawnProcess] = []
    try:
        for part in plan_parts:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(theirs, list(part), turns, key, hold_s), daemon=True)
            proc.start()
            theirs.close()
            pipes.append(mine)
            procs.append(proc)
        async with asyncio.timeout(timeout):
            await _all(pipes, "ready")
            on_start()
            t0 = perf_counter()
            for pipe in pipes:
                pipe.send(("go", None))
            results = [cast(_Done, done) for done in await _all(pipes, "done")]
        return Driven(
            max(ended for ended, _, _ in results) - t0,
            sum(cpu for _, cpu, _ in results),
            [logs for _, _, logs in results],
        )
    except BaseException:
        for proc in procs:
            proc.kill()  # a failed or abandoned run: the other processes' figures are of no use
        raise
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for pipe in pipes:
            pipe.close()


async def _all(pipes: list[Pipe], kind: str) -> list[object]:
    """The next message of every pipe, which must be ``kind``; raises at the first process that failed
    instead of waiting for the others to finish."""

    async def one(pipe: Pipe) -> object:
        return _expect(await _receive(pipe), kind)

    tasks = [asyncio.ensure_future(one(pipe)) for pipe in pipes]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        # Let them unregister their pipes from the loop before anyone closes those (a closed fd left registered
        # is polled forever once its number is reused).
        await asyncio.gather(*tasks, return_exceptions=True)


async def _receive(pipe: Pipe) -> tuple[str, object]:
    """The next message on a pipe, without blocking the event loop while it is awaited."""
    loop = asyncio.get_running_loop()
    fd = pipe.fileno()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    os.set_blocking(fd, True)  # the loop made it non-blocking; recv() expects a whole message
    try:
        message: tuple[str, object] = pipe.recv()
    except EOFError:
        raise BenchError("a load-generator process exited without a word") from None
    return message


def _expect(message: tuple[str, object], kind: str) -> object:
    """The payload of a message that must be ``kind``; a worker's "error" carries its traceback."""
    what, payload = message
    if what == "error":
        raise BenchError(f"a load-generator process failed: {payload}")
    if what != kind:
        raise BenchError(f"expected {kind!r} from the other process, got {what!r}")
    return payload


_Done = tuple[float, float, Logs]  # a worker's end time, CPU seconds and logs


def _worker(pipe: Pipe, plan: list[tuple[str, str]], turns: int, key: str, hold_s: float) -> None:
    """A load-generator process: connect, say ready, wait for go, run, send back (end time, CPU, logs)."""
    # As in the parent: no full collection in the middle of a measurement.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        pipe.send(("done", uvloop.run(_work(pipe, plan, turns, key, hold_s))))
    except BenchError as exc:
        pipe.send(("error", str(exc)))  # says what went wrong and where; the stack would add nothing
    except BaseException as exc:
        pipe.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
    finally:
        pipe.close()


async def _work(pipe: Pipe, plan: list[tuple[str, str]], turns: int, key: str, hold_s: float) -> _Done:
    run = TurnRun(plan, turns, key, hold_s=hold_s)
    await run.connect()
    pipe.send(("ready", None))
    async with asyncio.timeout(120):
        _expect(await _receive(pipe), "go")
    cpu0 = time.process_time()
    await run.run()
    return run.ended_at, time.process_time() - cpu0, run.channel_logs()
