"""Server benchmark: turns over real HTTP/SSE against a `turnq serve` subprocess.

Scenarios (each run 3 times; the table shows medians):
  a  20 clients x 50 zero-work turns on one channel: turns/s, handoff p50/p99, server CPU per turn
  b  50 channels x 4 clients: aggregate turns/s, handoff p50/p99, server CPU per turn
  c  2,000 waiters enqueued and subscribed, then drained: total time, turns/s of the first vs last 10%
  d  5,000 idle subscribed waiters: server RSS per waiter

Handoff latency is measured inside this one process: the time from sending the holder's release to receiving
the next holder's your-turn. Server CPU comes from /proc/PID/stat, so the load generator sharing the machine does
not blur it.

    uv run python bench/server_bench.py                      # memory backend, all scenarios
    uv run python bench/server_bench.py --backends memory,sqlite --scenarios a,b
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

import aiohttp

sys.path.insert(0, os.path.dirname(__file__))
from procstats import ProcStats, free_port

KEY = "bench-key"
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


class Server:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Server:
        self.log = tempfile.NamedTemporaryFile(prefix="turnq-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "turnq.core.cli",
                "serve",
                "--port",
                str(self.port),
                "--api-key",
                KEY,
                "--database-url",
                self.database_url,
                "--log-level",
                "WARNING",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.stats = ProcStats(self.proc.pid)
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with s.get(f"{self.url}/health") as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"server did not start; see {self.log.name}")
                await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.s = session
        self.url = url
        self.h = {"x-api-key": KEY, "content-type": "application/json"}

    async def create(self, name: str, **settings: Any) -> None:
        async with self.s.post(
            f"{self.url}/channels", data=json.dumps({"name": name, **settings}), headers=self.h
        ) as r:
            assert r.status == 201, await r.text()

    async def enqueue(self, channel: str, client_id: str) -> str:
        async with self.s.post(
            f"{self.url}/channels/{channel}/enqueue", data=json.dumps({"clientId": client_id}), headers=self.h
        ) as r:
            body = await r.json()
            assert r.status == 200, body
            return str(body["requestId"])

    async def release(self, channel: str, client_id: str, request_id: str) -> None:
        async with self.s.post(
            f"{self.url}/channels/{channel}/release",
            data=json.dumps({"clientId": client_id, "requestId": request_id}),
            headers=self.h,
        ) as r:
            assert r.status == 204, await r.text()

    async def subscribe(self, channel: str, client_id: str, request_id: str) -> aiohttp.ClientResponse:
        r = await self.s.get(
            f"{self.url}/channels/{channel}/subscribe?clientId={client_id}&requestId={request_id}",
            headers={"x-api-key": KEY},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        assert r.status == 200, await r.text()
        return r


async def wait_turn(resp: aiohttp.ClientResponse, timeout: float = 120) -> dict[str, Any]:
    """Read frames until your-turn; returns its data."""
    name = ""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), timeout)
        if not line:
            raise RuntimeError("stream ended before your-turn")
        if line.startswith(b"event: "):
            name = line[7:-1].decode()
        elif line.startswith(b"data: ") and name == "your-turn":
            return json.loads(line[6:])  # type: ignore[no-any-return]


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))


async def turn_loop(
    api: Api, channel: str, turns: int, grants: dict[int, float], releases: dict[int, float]
) -> None:
    client_id = uuid.uuid4().hex
    for _ in range(turns):
        rid = await api.enqueue(channel, client_id)
        resp = await api.subscribe(channel, client_id, rid)
        try:
            turn = await wait_turn(resp)
            token = int(turn["fencingToken"])
            grants[token] = time.perf_counter()
            releases[token] = time.perf_counter()
            await api.release(channel, client_id, rid)
        finally:
            resp.close()


def handoffs(grants: dict[int, float], releases: dict[int, float]) -> list[float]:
    return [1000 * (grants[t + 1] - releases[t]) for t in releases if t + 1 in grants]


async def run_channels(server: Server, channels: int, clients: int, turns: int) -> Result:
    async with session() as s:
        api = Api(s, server.url)
        names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(channels)]
        for name in names:
            await api.create(name)
        logs = {name: ({}, {}) for name in names}
        cpu0 = server.stats.cpu_seconds()
        t0 = time.perf_counter()
        await asyncio.gather(
            *(turn_loop(api, name, turns, *logs[name]) for name in names for _ in range(clients))
        )
        seconds = time.perf_counter() - t0
        cpu = server.stats.cpu_seconds() - cpu0
        result = Result(turns=channels * clients * turns, seconds=seconds, cpu_s=cpu)
        for grants, releases in logs.values():
            result.handoffs_ms.extend(handoffs(grants, releases))
        return result


async def scenario_a(server: Server) -> Result:
    return await run_channels(server, 1, 20, 50)


async def scenario_b(server: Server) -> Result:
    return await run_channels(server, 50, 4, 10)


async def scenario_c(server: Server, waiters: int = 2000) -> Result:
    async with session() as s:
        api = Api(s, server.url)
        ch = f"deep-{uuid.uuid4().hex[:8]}"
        await api.create(ch, leaseMs=600_000, graceMs=600_000)
        holder_rid = await api.enqueue(ch, "holder")
        grants: list[float] = []
        ready = 0
        all_ready = asyncio.Event()

        async def waiter(i: int, rid: str) -> None:
            nonlocal ready
            resp = await api.subscribe(ch, f"w{i}", rid)
            try:
                ready += 1
                if ready == waiters:
                    all_ready.set()
                await wait_turn(resp, timeout=300)
                grants.append(time.perf_counter())
                await api.release(ch, f"w{i}", rid)
            finally:
                resp.close()

        rids = []
        for i in range(waiters):  # enqueue in order, so FIFO order is known
            rids.append(await api.enqueue(ch, f"w{i}"))
        tasks = [asyncio.create_task(waiter(i, rid)) for i, rid in enumerate(rids)]
        await asyncio.wait_for(all_ready.wait(), 120)
        await asyncio.sleep(0.5)
        cpu0 = server.stats.cpu_seconds()
        t0 = time.perf_counter()
        await api.release(ch, "holder", holder_rid)
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        seconds = grants[-1] - t0
        cpu = server.stats.cpu_seconds() - cpu0
        tenth = waiters // 10
        first = tenth / (grants[tenth - 1] - t0)
        last = tenth / (grants[-1] - grants[-tenth - 1])
        return Result(
            turns=waiters,
            seconds=seconds,
            cpu_s=cpu,
            extra={"first10_tps": first, "last10_tps": last, "ratio": first / last},
        )


async def scenario_d(server: Server, waiters: int = 5000) -> Result:
    async with session() as s:
        api = Api(s, server.url)
        ch = f"idle-{uuid.uuid4().hex[:8]}"
        await api.create(ch, leaseMs=600_000, graceMs=600_000)
        await api.enqueue(ch, "holder")
        await asyncio.sleep(0.5)
        rss0 = server.stats.rss_bytes()
        sem = asyncio.Semaphore(200)
        streams: list[aiohttp.ClientResponse] = []

        async def waiter(i: int) -> None:
            async with sem:
                rid = await api.enqueue(ch, f"w{i}")
                resp = await api.subscribe(ch, f"w{i}", rid)
                line = await asyncio.wait_for(resp.content.readline(), 60)
                assert line == b"event: queued\n"
                streams.append(resp)

        await asyncio.wait_for(asyncio.gather(*(waiter(i) for i in range(waiters))), 300)
        await asyncio.sleep(1.0)
        rss1 = server.stats.rss_bytes()
        for resp in streams:
            resp.close()
        return Result(turns=0, extra={"bytes_per_waiter": (rss1 - rss0) / waiters})


SCENARIOS: dict[str, Callable[[Server], Awaitable[Result]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "d": scenario_d,
}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="memory", help="comma-separated: memory, sqlite, postgres")
    parser.add_argument("--scenarios", default="a,b,c,d")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("TURNQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    rows = []
    for backend in args.backends.split(","):
        for name in args.scenarios.split(","):
            runs = []
            for _ in range(args.runs):
                with tempfile.TemporaryDirectory() as tmp:
                    url = {
                        "memory": "memory://",
                        "sqlite": f"sqlite:///{tmp}/bench.db",
                        "postgres": args.postgres_dsn,
                    }[backend]
                    async with Server(url) as server:
                        runs.append(await SCENARIOS[name](server))
            rows.append((backend, name, runs))
            print(f"  done {backend}/{name}", file=sys.stderr, flush=True)

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
    asyncio.run(main())
