"""Local mode beside plain ``fcntl.flock`` and the ``filelock`` package: 20 processes taking turns on one lock.

Run with ``uv run python bench/local_mode.py`` (``--help`` for the knobs). Each process loops: ask for the lock,
take it, let it go at once (no work inside, so the lock's own cost is what shows). Every process records, per
turn, when it asked, when it got the lock and when it let go, on ``CLOCK_MONOTONIC`` (one clock for the whole
system on Linux, so times from different processes compare). One table is printed, each figure the median of the
runs:

* turns/s: turns over the time from the first request to the last release;
* handoff p50/p99: from a holder's release to the next holder's acquire, counted when the next one was already
  waiting (otherwise the lock was simply idle);
* overtakes: the fraction of acquisitions that went ahead of a process which had asked earlier and was still
  waiting. For local mode "asked" is the moment the ticket was taken (arrival order, by definition); for the
  others it is the moment just before the blocking call.

Targets for local mode: 0 overtakes, handoff p99 < 5 ms, at least 1,000 turns/s with 20 processes.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path

Record = tuple[int, int, int]  # asked, acquired, released (ns, CLOCK_MONOTONIC)


def now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def worker_turnq(lock_dir: str, turns: int, barrier: Barrier, out: mp.Queue[list[Record]]) -> None:
    from turnq.client import create_coordinator

    coordinator = create_coordinator(lock_dir=lock_dir)
    records: list[Record] = []
    barrier.wait()
    for _ in range(turns):
        turn = coordinator.turn("bench")
        with turn:
            acquired = now()
            ticket = turn.ticket  # type: ignore[attr-defined]
            released = now()
        records.append((ticket.arrived_ns, acquired, released))
    out.put(records)


def worker_flock(lock_dir: str, turns: int, barrier: Barrier, out: mp.Queue[list[Record]]) -> None:
    fd = os.open(Path(lock_dir) / "plain.lock", os.O_RDWR | os.O_CREAT, 0o666)
    records: list[Record] = []
    barrier.wait()
    for _ in range(turns):
        asked = now()
        fcntl.flock(fd, fcntl.LOCK_EX)
        acquired = now()
        released = now()
        fcntl.flock(fd, fcntl.LOCK_UN)
        records.append((asked, acquired, released))
    out.put(records)


def worker_filelock(lock_dir: str, turns: int, barrier: Barrier, out: mp.Queue[list[Record]]) -> None:
    from filelock import FileLock

    lock = FileLock(str(Path(lock_dir) / "filelock.lock"))
    records: list[Record] = []
    barrier.wait()
    for _ in range(turns):
        asked = now()
        with lock:
            acquired = now()
            released = now()
        records.append((asked, acquired, released))
    out.put(records)


Worker = Callable[[str, int, Barrier, "mp.Queue[list[Record]]"], None]
KINDS: dict[str, Worker] = {
    "turnq local mode": worker_turnq,
    "fcntl.flock": worker_flock,
    "filelock": worker_filelock,
}


def run_once(worker: Worker, processes: int, turns: int) -> list[Record]:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="turnq-bench-") as lock_dir:
        barrier = ctx.Barrier(processes)
        out: mp.Queue[list[Record]] = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(lock_dir, turns, barrier, out)) for _ in range(processes)]
        for p in procs:
            p.start()
        records: list[Record] = []
        for _ in procs:
            records.extend(out.get(timeout=600))
        for p in procs:
            p.join(60)
        return records


def measure(records: list[Record]) -> tuple[float, float, float, float]:
    """turns/s, handoff p50 (ms), handoff p99 (ms), overtaken fraction."""
    start = min(r[0] for r in records)
    end = max(r[2] for r in records)
    rate = len(records) / ((end - start) / 1e9)
    by_acquire = sorted(records, key=lambda r: r[1])
    handoffs = [
        (nxt[1] - prev[2]) / 1e6
        for prev, nxt in itertools.pairwise(by_acquire)
        if nxt[0] < prev[2]  # the next one was already waiting when the lock was let go
    ]
    handoffs.sort()
    p50 = handoffs[len(handoffs) // 2] if handoffs else 0.0
    p99 = handoffs[min(len(handoffs) - 1, int(len(handoffs) * 0.99))] if handoffs else 0.0
    # An acquisition overtook someone if a request made earlier was granted later.
    by_ask = sorted(records, key=lambda r: r[0])
    overtakes = 0
    latest_acquire = -1
    for _asked, acquired, _released in by_ask:
        if latest_acquire > acquired:
            overtakes += 1
        latest_acquire = max(latest_acquire, acquired)
    return rate, p50, p99, overtakes / len(records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=20)
    parser.add_argument("--turns", type=int, default=100, help="turns per process per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in KINDS}
    for run in range(args.runs):
        for name, worker in KINDS.items():
            records = run_once(worker, args.processes, args.turns)
            assert len(records) == args.processes * args.turns
            results[name].append(measure(records))
            print(f"run {run + 1}/{args.runs} {name}: done", file=sys.stderr, flush=True)
    print()
    print(
        f"{args.processes} processes x {args.turns} turns, median of {args.runs} runs "
        f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]})"
    )
    header = f"{'lock':<18} {'turns/s':>9} {'handoff p50':>12} {'handoff p99':>12} {'overtakes':>10}"
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        p50 = statistics.median(r[1] for r in rows)
        p99 = statistics.median(r[2] for r in rows)
        over = statistics.median(r[3] for r in rows)
        print(f"{name:<18} {rate:>9,.0f} {p50:>9.3f} ms {p99:>9.3f} ms {over:>9.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
