"""Local mode with real processes: FIFO order, mutual exclusion, SIGKILLed holders and waiters."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from turnq.client import LocalQueue, WaitTimeoutError, create_async_coordinator, create_coordinator
from turnq.client.local import channel_dir_name
from turnq.client.testing import TURNQ, wait_until

# Inside its turn the command logs "token start end" (ns, system clock) with a short pause in between, so any
# overlap between two turns would show.
TURN_BODY = (
    'a=$(date +%s%N); sleep 0.01; echo "$TURNQ_FENCING_TOKEN $a $(date +%s%N) $TURNQ_CHANNEL" >> "$LOG"'
)


def read_turns(log: Path) -> list[tuple[int, int, int]]:
    rows = []
    for line in log.read_text().splitlines():
        token, start, end, _channel = line.split(" ", 3)
        rows.append((int(token), int(start), int(end)))
    return rows


def assert_fifo_and_exclusive(rows: list[tuple[int, int, int]]) -> None:
    by_start = sorted(rows, key=lambda r: r[1])
    tokens = [r[0] for r in by_start]
    assert tokens == sorted(tokens), "grants did not follow ticket (arrival) order"
    assert len(set(tokens)) == len(tokens), "a fencing token repeated"
    for before, after in itertools.pairwise(by_start):
        assert before[2] <= after[1], f"turns overlapped: {before} and {after}"


def test_twenty_processes_five_turns_each_fifo_no_overlap(tmp_path: Path, cli_env: dict[str, str]) -> None:
    log = tmp_path / "turns.log"
    env = dict(cli_env, LOG=str(log))
    loop = f'for i in 1 2 3 4 5; do "{TURNQ}" run --local "deploy/prod" -q -- sh -c \'{TURN_BODY}\' || exit 1; done'
    workers = [subprocess.Popen(["sh", "-c", loop], env=env) for _ in range(20)]
    try:
        for w in workers:
            assert w.wait(timeout=90) == 0
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    rows = read_turns(log)
    assert len(rows) == 100
    assert_fifo_and_exclusive(rows)
    # Every ticket file is gone once everyone has released.
    directory = Path(cli_env["TURNQ_LOCK_DIR"]) / channel_dir_name("deploy/prod")
    assert sorted(p.name for p in directory.iterdir()) == ["queue.lock"]


def _spawn(env: dict[str, str], channel: str, body: str) -> subprocess.Popen[bytes]:
    # Own session, so killing the group takes turnq and its command down together, as a crash would.
    return subprocess.Popen(
        [TURNQ, "run", "--local", channel, "-q", "--", "sh", "-c", body], env=env, start_new_session=True
    )


def test_sigkilled_holder_and_waiter_do_not_block_the_line(
    tmp_path: Path, cli_env: dict[str, str], lock_dir: Path
) -> None:
    log = tmp_path / "turns.log"
    env = dict(cli_env, LOG=str(log))
    queue = LocalQueue(lock_dir)
    ch = "crash"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        holder = _spawn(env, ch, 'echo "$TURNQ_FENCING_TOKEN held" >> "$LOG"; sleep 60')
        procs.append(holder)
        wait_until(lambda: log.exists() and "held" in log.read_text())
        for i in range(5):  # arrive one after the other, so the arrival order is known
            procs.append(_spawn(env, ch, TURN_BODY))
            wait_until(lambda i=i: len(queue.entries(ch)) == i + 2)
        tickets = [e.number for e in queue.entries(ch)]
        # Kill a waiter in the middle of the line, then the holder.
        os.killpg(procs[2].pid, signal.SIGKILL)
        wait_until(lambda: len(queue.entries(ch)) == 5)
        os.killpg(holder.pid, signal.SIGKILL)
        for p in procs[1:]:
            p.wait(timeout=30)
        assert [p.returncode for p in procs[1:]] == [0, -signal.SIGKILL, 0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    lines = [line for line in log.read_text().splitlines() if not line.endswith("held")]
    finished = [int(line.split()[0]) for line in lines]
    expected = [t for t in tickets[1:] if t != tickets[2]]
    assert finished == expected, "the survivors did not get their turns in arrival order"
    assert queue.entries(ch) == []


def test_wait_timeout_gives_the_ticket_up(lock_dir: Path) -> None:
    coordinator = create_coordinator(lock_dir=lock_dir)
    assert coordinator.mode == "local"
    with coordinator.turn("t") as first:
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError), coordinator.turn("t", timeout=0.3):
            pass
        assert 0.25 < time.monotonic() - started < 5
        assert [e.number for e in LocalQueue(lock_dir).entries("t")] == [first.fencing_token]
    with coordinator.turn("t", timeout=5) as second:
        assert second.fencing_token is not None and first.fencing_token is not None
        assert second.fencing_token > first.fencing_token


async def test_async_local_turns_are_fifo_and_cancellable(lock_dir: Path) -> None:
    coordinator = await create_async_coordinator(lock_dir=lock_dir)
    order: list[int] = []
    holder = coordinator.turn("a")
    await holder.__aenter__()

    async def take(i: int) -> None:
        async with coordinator.turn("a"):
            order.append(i)
            await asyncio.sleep(0.01)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(take(i)))
        await asyncio.sleep(0.05)  # one after the other: arrival order 0..4
    tasks[2].cancel()  # a waiter leaves mid-queue
    await asyncio.sleep(0.05)
    assert len(LocalQueue(lock_dir).entries("a")) == 5
    await holder.__aexit__(None, None, None)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert isinstance(results[2], asyncio.CancelledError)
    assert order == [0, 1, 3, 4]
    async with asyncio.timeout(5), coordinator.turn("a", timeout=1) as turn:
        assert turn.position == 0 and not turn.lost


def test_on_position_reports_place_then_zero(lock_dir: Path) -> None:
    coordinator = create_coordinator(lock_dir=lock_dir)
    with coordinator.turn("p"):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from turnq.client import create_coordinator as c\n"
                f"t = c(lock_dir={str(lock_dir)!r}).turn('p', on_position=lambda p: print(p, flush=True))\n"
                "t.__enter__(); t.__exit__(None, None, None)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: len(LocalQueue(lock_dir).entries("p")) == 2)
    out, _ = proc.communicate(timeout=20)
    seen = [int(x) for x in out.split()]
    assert seen == [1, 0]


def test_ctrl_c_on_a_blocking_local_waiter_gives_the_ticket_up(lock_dir: Path) -> None:
    script = (
        "import sys\nfrom turnq.client import create_coordinator\n"
        f"c = create_coordinator(lock_dir={str(lock_dir)!r})\n"
        "try:\n"
        "    with c.turn('k', on_position=lambda p: print('position', p, flush=True)):\n"
        "        print('got it', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(42)\n"
    )
    coordinator = create_coordinator(lock_dir=lock_dir)
    with coordinator.turn("k") as holder:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "position 1"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 42
        finally:
            if proc.poll() is None:
                proc.kill()
        assert [e.number for e in LocalQueue(lock_dir).entries("k")] == [holder.fencing_token]


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a pseudo-terminal")
def test_position_shows_on_a_terminal_only(lock_dir: Path, cli_env: dict[str, str]) -> None:
    coordinator = create_coordinator(lock_dir=lock_dir)
    with coordinator.turn("tty"):
        # ``script`` gives the command a pseudo-terminal, as an interactive shell would.
        on_tty = subprocess.Popen(
            ["script", "-qec", f"{TURNQ} run --local tty -- true", "/dev/null"],
            env=cli_env,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        piped = subprocess.Popen(
            [TURNQ, "run", "--local", "tty", "--", "true"], env=cli_env, stderr=subprocess.PIPE
        )
        wait_until(lambda: len(LocalQueue(lock_dir).entries("tty")) == 3)
    tty_out, _ = on_tty.communicate(timeout=20)
    _, piped_err = piped.communicate(timeout=20)
    assert b"[turnq] waiting on 'tty'" in tty_out
    assert piped_err == b""
