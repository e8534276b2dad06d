"""Replica benchmark: turns over real HTTP/SSE against 1, 2 and 3 `turnq serve` processes on one PostgreSQL.

Scenarios (each run 3 times on a fresh schema; the table shows medians):
  throughput  50 channels x 4 clients x 10 zero-work turns (server_bench.py scenario f), the clients spread
              evenly over the replicas (client i on replica i mod n, so a channel's clients sit on different
              replicas): aggregate turns/s, handoff p50/p99, server CPU per turn (all replicas together)
  affinity    the same, with each channel's clients on one replica (channel j on replica j mod n), as a load
              balancer that routes by channel places them
  handoff     2 clients taking turns on one channel, 300 turns each, both on replica A ("same") or one on A and
              one on B ("cross"), 2 replicas up: handoff p50/p99. The holder releases only once the other client
              is in line (its stream said ``queued``), so every turn is a handoff to a waiting ticket.

Handoff latency is measured inside the load generator: the time from sending the holder's release to receiving
the next holder's your-turn. Targets: a cross-replica handoff costs less than 2x a same-replica one at p50;
throughput with 2 replicas is not below that with 1. Spread, a busy channel's row lock passes back and forth
between replicas and each holder of it commits fewer units at once; by channel, each replica commits its own
channels' units together, as a single server does.

    uv run python bench/replicas_bench.py
    uv run python bench/replicas_bench.py --replicas 1,2 --scenarios throughput --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import uvloop

sys.path.insert(0, os.path.dirname(__file__))
from procstats import ProcStats
from server_bench import Api, Result, Server, handoffs, median, turn_loop
from wire import EventStream

Logs = dict[str, tuple[dict[int, float], dict[int, float]]]
Client = tuple[str, str]  # (server URL, channel)


# ---------------------------------------------------------------------- servers


def with_schema(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
    return urlunsplit(parts._replace(query=query))


@contextlib.asynccontextmanager
async def replicas(dsn: str, n: int) -> AsyncIterator[list[Server]]:
    """``n`` servers on a fresh schema of the database, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    url = with_schema(dsn, schema)
    servers = [Server(url) for _ in range(n)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            # The first one creates the schema; the others start once it is in place.
            await stack.enter_async_context(servers[0])
            await asyncio.gather(*(stack.enter_async_context(s) for s in servers[1:]))
            yield servers
    finally:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


def cpu_seconds(servers: list[Server]) -> float:
    return sum(s.stats.cpu_seconds() for s in servers)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds so far of every ``postgres`` process on this machine (the server is local)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() != "postgres":
                    continue
            found[int(entry)] = ProcStats(int(entry)).cpu_seconds()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class Usage:
    """Server CPU, PostgreSQL CPU and how busy the machine was, between ``start()`` and ``stop()``."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers

    def start(self) -> None:
        self.server0 = cpu_seconds(self.servers)
        self.pg0 = postgres_cpu()
        self.busy0 = machine_busy()

    def stop(self, result: Result) -> None:
        result.cpu_s = cpu_seconds(self.servers) - self.server0
        pg1 = postgres_cpu()
        result.extra["pg_cpu_s"] = sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in pg1.items())
        busy1 = machine_busy()
        result.extra["busy"] = (busy1[0] - self.busy0[0]) / max(busy1[1] - self.busy0[1], 1)


# ---------------------------------------------------------------------- throughput

SPREAD = "throughput spread"
BY_CHANNEL = "throughput by channel"


async def drive(clients: list[Client], turns: int) -> Logs:
    """Every client taking its turns on its own server; each channel's (grants, releases) by token."""
    logs: Logs = {}
    for _, channel in clients:
        logs.setdefault(channel, ({}, {}))
    await asyncio.gather(*(turn_loop(url, channel, turns, *logs[channel]) for url, channel in clients))
    return logs


def drive_in_process(clients: list[Client], turns: int) -> Logs:
    return uvloop.run(drive(clients, turns))


async def throughput(
    servers: list[Server],
    by_channel: bool = False,
    channels: int = 50,
    per_channel: int = 4,
    turns: int = 10,
    processes: int = 2,
) -> Result:
    """Scenario f of server_bench.py with the clients spread over the replicas, or with each channel's clients on
    one replica (``by_channel``). The load comes from ``processes`` generator processes (each channel's clients in
    one of them) so the generator is not the bottleneck; perf_counter is one clock for all of them on Linux, so
    handoffs compare."""
    api = Api(servers[0].url)
    names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(channels)]
    for name in names:
        await api.create(name)
    api.close()
    clients = [(name, k) for name in names for k in range(per_channel)]
    replica_of = {name: j % len(servers) for j, name in enumerate(names)}
    spread = [
        (servers[replica_of[name] if by_channel else i % len(servers)].url, name)
        for i, (name, _) in enumerate(clients)
    ]
    parts_in: list[list[Client]] = [[] for _ in range(processes)]
    for i, name in enumerate(names):
        parts_in[i % processes].extend(c for c in spread if c[1] == name)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Start the workers (and their imports) before the clock starts.
        await asyncio.gather(*(loop.run_in_executor(pool, time.sleep, 0.3) for _ in range(processes)))
        usage = Usage(servers)
        usage.start()
        t0 = time.perf_counter()
        parts = await asyncio.gather(
            *(loop.run_in_executor(pool, drive_in_process, part, turns) for part in parts_in)
        )
        seconds = time.perf_counter() - t0
        result = Result(turns=len(clients) * turns, seconds=seconds)
        usage.stop(result)
    for logs in parts:
        for grants, releases in logs.values():
            result.handoffs_ms.extend(handoffs(grants, releases))
    return result


# ---------------------------------------------------------------------- handoff


async def ping_pong(urls: tuple[str, str], turns: int = 300) -> Result:
    """Two clients on one channel, client k on ``urls[k]``; the holder releases once the other is in line."""
    channel = f"pingpong-{uuid.uuid4().hex[:8]}"
    admin = Api(urls[0])
    await admin.create(channel)
    admin.close()
    grants: dict[int, float] = {}
    releases: dict[int, float] = {}
    in_line = [asyncio.Event(), asyncio.Event()]  # set: client k waits in line, or has finished
    finished = [False, False]

    async def client(k: int) -> None:
        api = Api(urls[k])
        client_id = f"pp-{k}"
        stream: EventStream | None = None
        try:
            for _ in range(turns):
                rid = await api.enqueue(channel, client_id)
                stream = await api.subscribe(channel, client_id, rid, reuse=stream)
                first = await asyncio.wait_for(stream.next(), 30)
                assert first is not None, "the stream ended before your-turn"
                if first[0] == "queued":
                    in_line[k].set()
                    turn = await asyncio.wait_for(stream.until("your-turn"), 30)
                else:
                    assert first[0] == "your-turn", first
                    turn = first[1]
                token = int(turn["fencingToken"])
                grants[token] = time.perf_counter()
                await asyncio.wait_for(in_line[1 - k].wait(), 30)
                if not finished[1 - k]:
                    in_line[1 - k].clear()
                releases[token] = time.perf_counter()
                await api.release(channel, client_id, rid)
                while await asyncio.wait_for(stream.next(), 30) is not None:
                    pass  # the server ends the stream after the release; its connection is then reused
            finished[k] = True
            in_line[k].set()
        finally:
            if stream is not None:
                stream.close()
            api.close()

    t0 = time.perf_counter()
    await asyncio.gather(client(0), client(1))
    result = Result(turns=2 * turns, seconds=time.perf_counter() - t0)
    result.handoffs_ms = handoffs(grants, releases)
    return result


# ---------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", default="1,2,3", help="replica counts for the throughput scenario")
    parser.add_argument("--scenarios", default="throughput,affinity,handoff")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("TURNQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    scenarios = args.scenarios.split(",")

    rows: list[tuple[str, int, list[Result]]] = []
    for scenario, label in (("throughput", SPREAD), ("affinity", BY_CHANNEL)):
        if scenario not in scenarios:
            continue
        for n in (int(x) for x in args.replicas.split(",")):
            runs = []
            for _ in range(args.runs):
                async with replicas(args.postgres_dsn, n) as servers:
                    runs.append(await throughput(servers, by_channel=scenario == "affinity"))
            rows.append((label, n, runs))
            print(f"  done {scenario} with {n} replica(s)", file=sys.stderr, flush=True)
    if "handoff" in scenarios:
        same: list[Result] = []
        cross: list[Result] = []
        for _ in range(args.runs):
            async with replicas(args.postgres_dsn, 2) as servers:
                a, b = servers[0].url, servers[1].url
                same.append(await ping_pong((a, a)))
                cross.append(await ping_pong((a, b)))
        rows.append(("handoff same replica", 2, same))
        rows.append(("handoff cross replica", 2, cross))
        print("  done handoff", file=sys.stderr, flush=True)

    header = (
        f"{'scenario':22} {'replicas':>8} {'turns/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'turnq cpu/turn':>14} {'pg cpu/turn':>11} {'machine busy':>12}"
    )
    print(
        f"medians of {args.runs} runs; CPU per turn in ms (turnq: all replicas together); machine: all cores"
    )
    print(header)
    print("-" * len(header))
    for name, n, runs in rows:
        measured = bool(runs[0].extra)
        cpu = median([r.cpu_per_turn_ms for r in runs]) if measured else float("nan")
        pg = median([1000 * r.extra["pg_cpu_s"] / r.turns for r in runs]) if measured else float("nan")
        busy = f"{100 * median([r.extra['busy'] for r in runs]):11.0f}%" if measured else f"{'':12}"
        print(
            f"{name:22} {n:8d} {median([r.turns_per_s for r in runs]):8.0f} "
            f"{median([r.pct(0.5) for r in runs]):8.3f} {median([r.pct(0.99) for r in runs]):8.3f} "
            f"{cpu:14.3f} {pg:11.3f} {busy}"
        )

    by_name = {(name, n): runs for name, n, runs in rows}
    print()
    same_runs = by_name.get(("handoff same replica", 2))
    cross_runs = by_name.get(("handoff cross replica", 2))
    if same_runs and cross_runs:
        ratio = median([r.pct(0.5) for r in cross_runs]) / median([r.pct(0.5) for r in same_runs])
        verdict = "met" if ratio < 2 else "NOT met"
        print(f"cross-replica / same-replica handoff p50: {ratio:.2f}x (target < 2x): {verdict}")
    for label in (SPREAD, BY_CHANNEL):
        one = by_name.get((label, 1))
        two = by_name.get((label, 2))
        if one and two:
            ratio = median([r.turns_per_s for r in two]) / median([r.turns_per_s for r in one])
            verdict = "met" if ratio >= 1 else "NOT met"
            print(f"{label}: 2 replicas / 1 replica: {ratio:.2f}x (target >= 1x): {verdict}")


if __name__ == "__main__":
    uvloop.run(main())
