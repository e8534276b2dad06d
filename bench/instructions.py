"""Instructions per turn: scenario (a)'s turn path counted by valgrind, for a figure a noisy machine cannot move.

Server CPU time per turn (server_bench.py) drifts by a third or more between minutes on a shared VM, more than
most changes to the server are worth. This counts the user-space instructions the server executes per turn
instead: each server runs under ``valgrind --tool=callgrind`` with counting off, is warmed with ``--warm``
turns, then counts exactly ``--turns`` turns of 20 clients on one channel (scenario a's load). The count is
deterministic to within a fraction of a percent from run to run; it leaves out the kernel's work (the same
number of socket writes per turn for turnq and the floor) and the cost of cache misses.

It needs valgrind (``apt-get install valgrind``); a server under valgrind is some 50 times slower, so a run
takes a minute or two.

    uv run python bench/instructions.py                 # turnq (memory backend) and the floor
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import uvloop

sys.path.insert(0, os.path.dirname(__file__))
import turndriver
from procstats import free_port
from server_bench import FLOOR, KEY, Api, server_command, wait_listening

CLIENTS = 20


async def drive(url: str, turns_per_client: int) -> None:
    api = Api(url)
    name = f"ir-{uuid.uuid4().hex[:8]}"
    await api.create(name)
    api.close()
    await turndriver.drive([[(url, name)] * CLIENTS], turns_per_client, KEY, lambda: None)


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL)


def total_instructions(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


async def measure(backend: str, warm: int, turns: int) -> float:
    """Instructions the server executes per turn, over ``turns`` turns after ``warm`` turns."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *server_command(backend, port),
        ]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # A server under valgrind starts some 50 times slower.
            await wait_listening(port, proc, 300, 0.5)
            await drive(url, warm // CLIENTS)
            pid = str(proc.pid)
            callgrind_control("--instr=on", pid)
            await drive(url, turns // CLIENTS)
            callgrind_control("--dump", pid)
            callgrind_control("--instr=off", pid)
            dumps = sorted(p for p in os.listdir(tmp) if p.startswith("callgrind.out."))
            return total_instructions(os.path.join(tmp, dumps[-1])) / turns
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=f"memory://,{FLOOR}")
    parser.add_argument("--warm", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    rows = []
    for backend in args.backends.split(","):
        rows.append((backend, await measure(backend, args.warm, args.turns)))
        print(f"  done {backend}", file=sys.stderr, flush=True)
    base = dict(rows).get(FLOOR)
    header = f"{'server':12} {'instructions/turn':>18} {'vs floor':>9}"
    print(header)
    print("-" * len(header))
    for backend, per_turn in rows:
        ratio = f"{per_turn / base:9.2f}" if base else f"{'':9}"
        print(f"{backend:12} {per_turn:18,.0f} {ratio}")


if __name__ == "__main__":
    uvloop.run(main())
