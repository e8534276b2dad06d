"""Backends side by side: memory, SQLite and PostgreSQL serving the same load, next to each store's own floor.

For each backend: 20 clients x 50 zero-work turns on one channel through a real `turnq serve` (turns/s, handoff
p50/p99, server CPU per turn from /proc), and, measured in the same run, the store's single-writer commit rate
(one tiny UPDATE per transaction, same driver, same durability settings), and the commits the server actually made
per turn (``turnq_store_commits_total``). A turn has two operations that must be durable before they are
announced (the enqueue, and the release that grants the next holder); concurrent operations share commits, so
under load a turn costs fewer than two.

    uv run python bench/backends_bench.py [--runs 3] [--backends memory,sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid

import uvloop

sys.path.insert(0, os.path.dirname(__file__))
from server_bench import KEY, Result, Server, scenario_a

PG_DSN = os.environ.get("TURNQ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
FLOOR_SECONDS = 3.0


async def sqlite_commit_rate(path: str) -> float:
    """Commits/s of one aiosqlite writer with the backend's settings (WAL, synchronous=NORMAL)."""
    import aiosqlite

    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        await db.execute("INSERT INTO t VALUES (1, 0)")
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < FLOOR_SECONDS:
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("UPDATE t SET v = v + 1 WHERE id = 1")
            await db.execute("COMMIT")
            n += 1
        return n / (time.perf_counter() - t0)


async def postgres_commit_rate(dsn: str) -> float:
    """Commits/s of one asyncpg connection doing a one-row UPDATE per transaction (fsync'd, as the backend's)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, v int)")
        await conn.execute("INSERT INTO bench_floor VALUES (1, 0) ON CONFLICT DO NOTHING")
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < FLOOR_SECONDS:
            await conn.execute("UPDATE bench_floor SET v = v + 1 WHERE id = 1")
            n += 1
        rate = n / (time.perf_counter() - t0)
        await conn.execute("DROP TABLE bench_floor")
        return rate
    finally:
        await conn.close()


class PostgresDatabase:
    """A fresh database per run, dropped afterwards."""

    def __init__(self, dsn: str) -> None:
        self.admin_dsn = dsn
        self.name = f"turnq_bench_{uuid.uuid4().hex[:10]}"
        base, _, _ = dsn.rpartition("/")
        self.dsn = f"{base}/{self.name}"

    async def __aenter__(self) -> str:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        return self.dsn

    async def __aexit__(self, *exc: object) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


def store_commits(server: Server) -> float:
    """The server's count of committed transactions (``turnq_store_commits_total`` on /metrics)."""
    request = urllib.request.Request(f"{server.url}/metrics", headers={"x-api-key": KEY})
    with urllib.request.urlopen(request, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("turnq_store_commits_total "):
                return float(line.split()[1])
    raise RuntimeError("no turnq_store_commits_total on /metrics")


async def measured(server: Server) -> Result:
    """Scenario a, with the server's commits per turn in ``extra``."""
    before = await asyncio.to_thread(store_commits, server)
    result = await scenario_a(server)
    after = await asyncio.to_thread(store_commits, server)
    result.extra["commits_per_turn"] = (after - before) / result.turns
    return result


async def one_run(backend: str) -> tuple[Result, float | None]:
    with tempfile.TemporaryDirectory() as tmp:
        if backend == "memory":
            async with Server("memory://") as server:
                return await measured(server), None
        if backend == "sqlite":
            async with Server(f"sqlite:///{tmp}/bench.db") as server:
                result = await measured(server)
            return result, await sqlite_commit_rate(f"{tmp}/floor.db")
        async with PostgresDatabase(PG_DSN) as dsn:
            async with Server(dsn) as server:
                result = await measured(server)
            return result, await postgres_commit_rate(dsn)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="memory,sqlite,postgres")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    rows = []
    for backend in args.backends.split(","):
        results, floors = [], []
        for _ in range(args.runs):
            result, floor = await one_run(backend)
            results.append(result)
            if floor is not None:
                floors.append(floor)
        rows.append((backend, results, floors))
        print(f"  done {backend}", file=sys.stderr, flush=True)

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    header = (
        f"{'backend':9} {'turns/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu/turn ms':>11} "
        f"{'commits/turn':>12} {'store commits/s':>15} {'turns/commit floor':>18}"
    )
    print(f"20 clients x 50 turns, one channel; medians of {args.runs} runs")
    print(header)
    print("-" * len(header))
    for backend, results, floors in rows:
        tps = med([r.turns_per_s for r in results])
        floor = med(floors)
        ratio = f"{tps / floor:18.2f}" if floors else f"{'-':>18}"
        floor_text = f"{floor:15.0f}" if floors else f"{'-':>15}"
        print(
            f"{backend:9} {tps:8.0f} {med([r.pct(0.5) for r in results]):7.3f} "
            f"{med([r.pct(0.99) for r in results]):7.3f} {med([r.cpu_per_turn_ms for r in results]):11.3f} "
            f"{med([r.extra['commits_per_turn'] for r in results]):12.2f} {floor_text} {ratio}"
        )


if __name__ == "__main__":
    uvloop.run(main())
