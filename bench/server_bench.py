"""Server benchmark: turns over real HTTP/SSE against a `turnq serve` subprocess.

Scenarios (each run 3 times, the backends' runs interleaved; the table shows medians):
  a  20 clients x 50 zero-work turns on one channel: turns/s, handoff p50/p99, server CPU per turn
  b  50 channels x 4 clients, each turn held 40 ms (about half the server's capacity): aggregate turns/s,
     handoff p50/p99 under load
  c  2,000 waiters enqueued and subscribed, then drained: total time, turns/s of the first vs last 10%
  d  5,000 idle subscribed waiters: server RSS per waiter
  f  b's 50 channels x 4 clients with zero-work turns: the server's capacity, in turns/s

Handoff latency is measured inside the load generator: the time from sending the holder's release to receiving
the next holder's your-turn. Server CPU comes from /proc/PID/stat, so the load generator sharing the machine does
not blur it. Scenarios a, b and f are driven by turndriver.py, a callback client whose connections are open before
the clock starts; their extra columns say whether the figures are the server's: gen_cpu_ms is the generator's own
CPU per turn, server_core the share of one core the server used (near 1: the server is the bottleneck).

Why b holds its turns: with zero-work turns every channel is always in a handoff (the next holder is already
waiting), so by Little's law the mean handoff is channels / turns/s whatever the server does. In f, 50 channels
on a server doing about 2,000 turns/s give a handoff of about 25 ms: the time a release waits behind the other 49
channels' work, not the server's latency (a handoff under 5 ms there would take 10,000 turns/s from one process).
b offers the same channels a load the server can carry, so its handoff is the server's latency under load; f
keeps the saturated run for what it does measure, throughput. In a, one channel has no other channels' work to
wait behind, so its handoff is the server's latency even at saturation.

The baseline ``floor`` (floor_server.py) runs the same scenarios against the turn path written as textbook aiohttp +
aiohttp-sse code with none of turnq's features: what the frameworks alone cost on this machine, in the same run.

    uv run python bench/server_bench.py                      # memory backend and the floor, all scenarios
    uv run python bench/server_bench.py --backends memory,sqlite --scenarios a,b
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop

sys.path.insert(0, os.path.dirname(__file__))
import turndriver
from procstats import ProcStats, free_port
from wire import Connection, EventStream

KEY = "bench-key"
# Turns every scenario driven by turndriver runs before its clock starts (see run_channels).
WARM_CLIENTS, WARM_TURNS = 20, 20
FLOOR_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor_server.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    turns: int = 0
    seconds: float = 0.0
    handoffs_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.handoffs_ms:
            return float("nan")
        data = sorted(self.handoffs_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def cpu_per_turn_ms(self) -> float:
        return 1000 * self.cpu_s / self.turns if self.turns else float("nan")


FLOOR = "floor"  # the baseline of floor_server.py, run where a backend's URL would be given


def server_command(backend: str, port: int) -> list[str]:
    """The command that starts ``backend`` (a database URL, or FLOOR for floor_server.py) on ``port``."""
    if backend == FLOOR:
        return [sys.executable, FLOOR_SERVER, "--port", str(port), "--api-key", KEY]
    return [
        sys.executable,
        "-m",
        "turnq.core.cli",
        "serve",
        "--port",
        str(port),
        "--api-key",
        KEY,
        "--database-url",
        backend,
        "--log-level",
        "WARNING",
    ]


async def wait_listening(
    port: int, proc: subprocess.Popen[bytes], timeout_s: float, interval_s: float, log: str | None = None
) -> None:
    """Return once the server started as ``proc`` accepts connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("server did not start" + (f"; see {log}" if log else ""))
        await asyncio.sleep(interval_s)


class Server:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Server:
        self.log = tempfile.NamedTemporaryFile(prefix="turnq-bench-", suffix=".log", delete=False)  # noqa: SIM115
        command = server_command(self.database_url, self.port)
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.stats = ProcStats(self.proc.pid)
        await wait_listening(self.port, self.proc, 30, 0.05, self.log.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Api:
    """The protocol calls the benchmark makes, over one keep-alive connection per simulated client."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn = Connection(self.host, self.port, KEY)

    async def create(self, name: str, **settings: Any) -> None:
        status, body = await self.conn.post("/channels", {"name": name, **settings})
        assert status == 201, body

    async def enqueue(self, channel: str, client_id: str) -> str:
        status, body = await self.conn.post(f"/channels/{channel}/enqueue", {"clientId": client_id})
        assert status == 200, body
        return str(body["requestId"])

    async def release(self, channel: str, client_id: str, request_id: str) -> None:
        status, body = await self.conn.post(
            f"/channels/{channel}/release", {"clientId": client_id, "requestId": request_id}
        )
        assert status == 204, body

    async def subscribe(
        self, channel: str, client_id: str, request_id: str, reuse: EventStream | None = None
    ) -> EventStream:
        return await EventStream.open(
            self.host,
            self.port,
            KEY,
            f"/channels/{channel}/subscribe?clientId={client_id}&requestId={request_id}",
            reuse,
        )

    def close(self) -> None:
        self.conn.close()


async def turn_loop(
    url: str, channel: str, turns: int, grants: dict[int, float], releases: dict[int, float]
) -> None:
    """One client's turns with the coroutine client of wire.py; replicas_bench.py drives its clients with it.
    Scenarios a and b use turndriver.py, which does the same turn at half the CPU."""
    api = Api(url)
    client_id = uuid.uuid4().hex
    stream: EventStream | None = None
    try:
        for _ in range(turns):
            # One timeout scope per turn: cheaper than wait_for, which wraps every await in a task.
            async with asyncio.timeout(120):
                rid = await api.enqueue(channel, client_id)
                stream = await api.subscribe(channel, client_id, rid, reuse=stream)
                turn = await stream.until("your-turn")
                token = int(turn["fencingToken"])
                grants[token] = time.perf_counter()
                releases[token] = time.perf_counter()
                await api.release(channel, client_id, rid)
                while await stream.next() is not None:
                    pass  # the server ends the stream after the release; its connection is then reused
    finally:
        if stream is not None:
            stream.close()
        api.close()


def handoffs(grants: dict[int, float], releases: dict[int, float]) -> list[float]:
    return [1000 * (grants[t + 1] - releases[t]) for t in releases if t + 1 in grants]


async def run_channels(
    server: Server, channels: int, clients: int, turns: int, processes: int = 1, hold_s: float = 0.0
) -> Result:
    """``clients`` clients on each of ``channels`` channels taking ``turns`` zero-work turns, driven by the lean
    generator of turndriver.py. ``processes`` > 1 splits the channels over that many load-generator processes
    (each channel's clients stay in one, so one process sees all of a channel's tokens). The clock and the server
    CPU reading start once every process has its connections open."""
    api = Api(server.url)
    names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(channels)]
    for name in names:
        await api.create(name)
    # Warm the fresh server up (its first requests pay for lazy imports, caches and heap growth) on a channel of
    # its own, so the figures are a running server's, not a starting one's.
    warm = f"warm-{uuid.uuid4().hex[:8]}"
    await api.create(warm)
    api.close()
    await turndriver.drive([[(server.url, warm)] * WARM_CLIENTS], WARM_TURNS, KEY, lambda: None)
    parts = [
        [(server.url, name) for name in names[i::processes] for _ in range(clients)] for i in range(processes)
    ]
    cpu0 = 0.0

    def on_start() -> None:
        nonlocal cpu0
        cpu0 = server.stats.cpu_seconds()

    driven = await turndriver.drive(parts, turns, KEY, on_start, hold_s=hold_s)
    cpu = server.stats.cpu_seconds() - cpu0
    result = Result(turns=channels * clients * turns, seconds=driven.seconds, cpu_s=cpu)
    # Whether the numbers are the server's: the generator's own CPU per turn, and how much of its one core the
    # server used (near 1 means the server is saturated and a handoff waits behind the other channels' work).
    result.extra["gen_cpu_ms"] = 1000 * driven.cpu_s / result.turns
    result.extra["server_core"] = cpu / driven.seconds
    for logs in driven.logs:
        for grants, releases in logs.values():
            result.handoffs_ms.extend(handoffs(grants, releases))
    return result


async def scenario_a(server: Server) -> Result:
    return await run_channels(server, 1, 20, 50)


async def scenario_b(server: Server) -> Result:
    # Each turn held 40 ms: the 50 channels offer about half of what the server can do, so a handoff shows the
    # server's latency under load, not the length of its queue (see the module's docstring, and f).
    return await run_channels(server, 50, 4, 10, processes=2, hold_s=0.040)


async def scenario_f(server: Server) -> Result:
    # Two generator processes (the scenario's historical split); with turndriver one would do as well: the
    # server is the bottleneck either way.
    return await run_channels(server, 50, 4, 10, processes=2)


async def scenario_c(server: Server, waiters: int = 2000) -> Result:
    api = Api(server.url)
    ch = f"deep-{uuid.uuid4().hex[:8]}"
    await api.create(ch, leaseMs=600_000, graceMs=600_000)
    holder_rid = await api.enqueue(ch, "holder")
    grants: list[float] = []
    rids = [await api.enqueue(ch, f"w{i}") for i in range(waiters)]  # in order, so FIFO order is known
    streams = []
    for i, rid in enumerate(rids):
        stream = await api.subscribe(ch, f"w{i}", rid)
        assert (await stream.next() or ("",))[0] == "queued"
        streams.append(stream)

    async def waiter(i: int, stream: EventStream) -> None:
        own = Api(server.url)
        try:
            await stream.until("your-turn")
            grants.append(time.perf_counter())
            await own.release(ch, f"w{i}", rids[i])
        finally:
            stream.close()
            own.close()

    tasks = [asyncio.create_task(waiter(i, s)) for i, s in enumerate(streams)]
    # Start the drain as soon as every waiter is reading its stream, not after an idle pause: after even half a
    # second idle, this host runs both processes at half speed for the next 50 ms or so (some 100 turns, as
    # many with 400 waiters as with 2,000), which the first 10% would otherwise measure instead of the depth.
    # One yield is enough: the loop runs every new task up to its first read before it comes back here.
    await asyncio.sleep(0)
    cpu0 = server.stats.cpu_seconds()
    t0 = time.perf_counter()
    await api.release(ch, "holder", holder_rid)
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    api.close()
    seconds = grants[-1] - t0
    cpu = server.stats.cpu_seconds() - cpu0
    tenth = waiters // 10
    if os.environ.get("TURNQ_BENCH_TRACE"):
        gaps = [1000 * (b - a) for a, b in zip([t0, *grants], grants, strict=False)]
        big = sorted(range(len(gaps)), key=lambda i: -gaps[i])[:8]
        print("largest gaps (index, ms):", [(i, round(gaps[i], 2)) for i in sorted(big)], file=sys.stderr)
        print(
            "median gap first/last 10%:",
            statistics.median(gaps[:tenth]),
            statistics.median(gaps[-tenth:]),
            file=sys.stderr,
        )
    first = tenth / (grants[tenth - 1] - t0)
    last = tenth / (grants[-1] - grants[-tenth - 1])
    return Result(
        turns=waiters,
        seconds=seconds,
        cpu_s=cpu,
        extra={"first10_tps": first, "last10_tps": last, "first/last": first / last},
    )


async def scenario_d(server: Server, waiters: int = 5000) -> Result:
    api = Api(server.url)
    ch = f"idle-{uuid.uuid4().hex[:8]}"
    await api.create(ch, leaseMs=600_000, graceMs=600_000)
    await api.enqueue(ch, "holder")
    await asyncio.sleep(0.5)
    rss0 = server.stats.rss_bytes()
    streams = []
    for i in range(waiters):
        rid = await api.enqueue(ch, f"w{i}")
        stream = await api.subscribe(ch, f"w{i}", rid)
        assert (await stream.next() or ("",))[0] == "queued"
        streams.append(stream)
    await asyncio.sleep(1.0)
    rss1 = server.stats.rss_bytes()
    for stream in streams:
        stream.close()
    api.close()
    return Result(turns=0, extra={"KiB_per_waiter": (rss1 - rss0) / waiters / 1024})


SCENARIOS: dict[str, Callable[[Server], Awaitable[Result]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "d": scenario_d,
    "f": scenario_f,
}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backends",
        default=f"memory,{FLOOR}",
        help=f"comma-separated: memory, sqlite, postgres, and {FLOOR} (the baseline of floor_server.py)",
    )
    parser.add_argument("--scenarios", default="a,b,c,d,f")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("TURNQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    # The load generator holds thousands of streams too; keep its full collections out of the measurements.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # Runs are interleaved (every backend's run 1 of a scenario, then every backend's run 2, ...) so that a machine
    # whose speed drifts over minutes, as shared VMs do, slows every column alike instead of one backend's runs.
    backends = args.backends.split(",")
    results: dict[tuple[str, str], list[Result]] = {}
    for name in args.scenarios.split(","):
        for i in range(args.runs):
            for backend in backends:
                with tempfile.TemporaryDirectory() as tmp:
                    url = {
                        "memory": "memory://",
                        "sqlite": f"sqlite:///{tmp}/bench.db",
                        "postgres": args.postgres_dsn,
                        FLOOR: FLOOR,
                    }[backend]
                    async with Server(url) as server:
                        results.setdefault((backend, name), []).append(await SCENARIOS[name](server))
            print(f"  done {name} run {i + 1}", file=sys.stderr, flush=True)
    rows = [
        (backend, name, results[backend, name]) for backend in backends for name in args.scenarios.split(",")
    ]

    header = f"{'backend':9} {'scen':4} {'turns/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu/turn ms':>12}  extra (medians of {args.runs} runs)"
    print(header)
    print("-" * len(header))
    for backend, name, runs in rows:
        extra_keys = runs[0].extra.keys()
        extra = "  ".join(f"{k}={median([r.extra[k] for r in runs]):.3g}" for k in extra_keys)
        if name == "c":
            extra = f"total_s={median([r.seconds for r in runs]):.3g}  " + extra
        print(
            f"{backend:9} {name:4} {median([r.turns_per_s for r in runs]):9.0f} "
            f"{median([r.pct(0.5) for r in runs]):8.3f} {median([r.pct(0.99) for r in runs]):8.3f} "
            f"{median([r.cpu_per_turn_ms for r in runs]):12.3f}  {extra}"
        )


if __name__ == "__main__":
    uvloop.run(main())
