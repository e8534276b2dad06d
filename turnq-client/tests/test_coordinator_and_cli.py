"""create_coordinator's choice and fallback, and the ``turnq`` commands against a real server."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from turnq.client import (
    ErrorCode,
    ServerUnavailableError,
    TurnqClient,
    TurnqError,
    create_async_coordinator,
    create_coordinator,
)
from turnq.client.testing import API_KEY, TURNQ, ServerProcess, free_port, wait_until


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "turnq.client"
    ]


def test_unreachable_server_falls_back_to_local_with_one_warning(
    caplog: pytest.LogCaptureFixture, lock_dir: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO, logger="turnq.client"):
        coordinator = create_coordinator(url, "key", lock_dir=lock_dir)
        with coordinator.turn("fallback") as turn:
            assert turn.fencing_token == 1
        coordinator.close()
    assert coordinator.mode == "local"
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "falling back to local" in warnings[0] and url in warnings[0]
    assert "key" not in warnings[0].replace("local", "")


def test_unreachable_server_without_fallback_raises(lock_dir: Path) -> None:
    with pytest.raises(ServerUnavailableError):
        create_coordinator(f"http://127.0.0.1:{free_port()}", "key", fallback=False, lock_dir=lock_dir)


def test_missing_key_falls_back_or_raises(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, server: ServerProcess, lock_dir: Path
) -> None:
    monkeypatch.delenv("TURNQ_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="turnq.client"):
        assert create_coordinator(server.url, lock_dir=lock_dir).mode == "local"
    assert len(_warnings(caplog)) == 1 and "API key" in _warnings(caplog)[0]
    with pytest.raises(TurnqError) as err:
        create_coordinator(server.url, fallback=False)
    assert err.value.code is ErrorCode.UNAUTHORIZED


def test_environment_selects_distributed_mode(
    monkeypatch: pytest.MonkeyPatch, server: ServerProcess, channel: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TURNQ_URL", f"{dead},{server.url}")
    monkeypatch.setenv("TURNQ_API_KEY", API_KEY)
    with create_coordinator(fallback=False) as coordinator:
        assert coordinator.mode == "distributed"
        coordinator.create_channel(channel, lease_ms=2000)
        coordinator.create_channel(channel)  # exists already: fine
        assert coordinator.with_turn(channel, lambda turn: turn.fencing_token) == 1


async def test_async_coordinator_both_modes(server: ServerProcess, channel: str, lock_dir: Path) -> None:
    remote = await create_async_coordinator(server.url, API_KEY, fallback=False)
    assert remote.mode == "distributed"

    async def body(turn: object) -> str:
        return "done"

    assert await remote.with_turn(channel, body) == "done"  # the channel is created on first use
    await remote.close()
    local = await create_async_coordinator(lock_dir=lock_dir)
    assert local.mode == "local"
    async with local.turn(channel) as turn:
        assert turn.fencing_token == 1 and turn.lease_expires_at is None


def _turnq(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TURNQ, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def server_env(cli_env: dict[str, str], server: ServerProcess) -> dict[str, str]:
    return dict(cli_env, TURNQ_URL=server.url, TURNQ_API_KEY=API_KEY)


def test_admin_commands(server_env: dict[str, str], channel: str, server: ServerProcess) -> None:
    made = _turnq(server_env, "create", channel, "--lease", "1m", "--grace", "2s")
    assert made.returncode == 0, made.stderr
    listed = json.loads(_turnq(server_env, "channels", "--json").stdout)
    mine = next(c for c in listed if c["name"] == channel)
    assert mine["leaseMs"] == 60_000 and mine["graceMs"] == 2000
    assert channel in _turnq(server_env, "channels").stdout
    with TurnqClient(server.url, API_KEY) as client:
        ticket = client.enqueue(channel, "someone")
        client.enqueue(channel, "next-one")
        view = json.loads(_turnq(server_env, "queue", channel, "--json").stdout)
        assert view["holder"]["clientId"] == "someone" and view["queue"][0]["clientId"] == "next-one"
        assert "held by someone" in _turnq(server_env, "queue", channel).stdout
        assert _turnq(server_env, "release", channel).returncode == 2  # --force is required
        forced = _turnq(server_env, "release", "--force", channel)
        assert forced.returncode == 0, forced.stderr
        assert client.queue(channel).holder.client_id == "next-one"  # type: ignore[union-attr]
        again = _turnq(server_env, "create", channel)
        assert again.returncode == 1 and "CHANNEL_EXISTS" in again.stderr
        del ticket


def test_watch_shows_turns_live(server_env: dict[str, str], channel: str, server: ServerProcess) -> None:
    with TurnqClient(server.url, API_KEY) as client:
        client.create_channel(channel)
        watcher = subprocess.Popen(
            [TURNQ, "watch", channel], env=server_env, stdout=subprocess.PIPE, text=True
        )
        try:
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")))  # type: ignore[union-attr]
            reader.start()

            def watching() -> bool:
                probe = client.enqueue(channel, "probe")
                client.abort(channel, "probe", probe.request_id)
                return any("probe" in line for line in lines)

            wait_until(watching, timeout=15, interval=0.2)
            with client.turn(channel, client_id="watched") as turn, turn.step("compile"):
                pass
            client.delete_channel(channel)  # ends the observer stream, and so the command
            assert watcher.wait(10) == 0
            reader.join(5)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
    text = "".join(lines)
    for expected in ("turn-started", "step-started", "step-ended", "turn-completed", "watched"):
        assert expected in text


WORKER = """
import os, time
from turnq.client import create_coordinator
with create_coordinator(fallback=False) as coordinator:
    for _ in range(5):
        with coordinator.turn(os.environ["CH"]) as turn:
            start = time.time_ns()
            time.sleep(0.01)
            with open(os.environ["LOG"], "a") as log:
                log.write(f"{turn.fencing_token} {start} {time.time_ns()} {turn.client_id}\\n")
"""


def test_twenty_processes_five_turns_through_a_server(
    tmp_path: Path, server_env: dict[str, str], channel: str, server: ServerProcess
) -> None:
    log = tmp_path / "turns.log"
    env = dict(server_env, LOG=str(log), CH=channel)
    with TurnqClient(server.url, API_KEY) as client:
        client.create_channel(channel, lease_ms=5000)
        observed: list[tuple[str, str]] = []
        ready = threading.Event()

        def observe() -> None:
            with TurnqClient(server.url, API_KEY) as watcher, watcher.observe(channel) as events:
                ready.set()
                for e in events:
                    if e.name in ("queued", "turn-started"):
                        observed.append((e.name, str(e.data["clientId"])))
                    if e.name == "channel-deleted":
                        return

        t = threading.Thread(target=observe, daemon=True)
        t.start()
        assert ready.wait(10)
        workers = [subprocess.Popen([sys.executable, "-c", WORKER], env=env) for _ in range(20)]
        try:
            for w in workers:
                assert w.wait(timeout=60) == 0
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
        client.delete_channel(channel)
        t.join(10)
    rows = []
    for line in log.read_text().splitlines():
        token, start, end, _ = line.split(" ", 3)
        rows.append((int(token), int(start), int(end)))
    assert len(rows) == 100
    by_start = sorted(rows, key=lambda r: r[1])
    assert [r[0] for r in by_start] == sorted(r[0] for r in rows)
    for before, after in itertools.pairwise(by_start):
        assert before[2] <= after[1], "turns overlapped"
    arrivals = [c for name, c in observed if name == "queued"]
    grants = [c for name, c in observed if name == "turn-started"]
    assert len(arrivals) == 100 and grants == arrivals, "grants did not follow arrival (enqueue) order"


def test_run_interrupted_while_waiting_gives_the_ticket_up(
    server_env: dict[str, str], channel: str, server: ServerProcess
) -> None:
    with TurnqClient(server.url, API_KEY) as client:
        client.create_channel(channel)
        with client.turn(channel):
            waiter = subprocess.Popen([TURNQ, "run", channel, "--", "true"], env=server_env)
            wait_until(lambda: len(client.queue(channel).queue) == 1, timeout=15)
            waiter.send_signal(signal.SIGINT)
            assert waiter.wait(10) == 130
            assert client.queue(channel).queue == []
            timed = _turnq(server_env, "run", "--timeout", "300ms", channel, "--", "true")
            assert timed.returncode == 124 and "given up" in timed.stderr
            assert client.queue(channel).queue == []


def test_run_passes_status_and_environment_and_forwards_sigterm(
    tmp_path: Path, server_env: dict[str, str], channel: str, server: ServerProcess
) -> None:
    out = _turnq(
        server_env, "run", channel, "--", "sh", "-c", 'echo "$TURNQ_CHANNEL $TURNQ_FENCING_TOKEN"; exit 7'
    )
    assert out.returncode == 7
    assert out.stdout.strip() == f"{channel} 1"
    assert _turnq(server_env, "run", channel, "--", "/nonexistent/cmd").returncode == 127
    marker = tmp_path / "got-term"
    script = f"trap 'echo term > {marker}; exit 3' TERM; echo ready; while :; do sleep 0.05; done"
    runner = subprocess.Popen(
        [TURNQ, "run", channel, "--lease", "300ms", "--", "sh", "-c", script],
        env=server_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline().strip() == "ready"
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(10) == 3
    finally:
        if runner.poll() is None:
            runner.kill()
    assert marker.read_text().strip() == "term"
    with TurnqClient(server.url, API_KEY) as client:
        assert client.queue(channel).depth == 0


def test_run_stops_the_command_when_the_turn_is_lost(
    server_env: dict[str, str], channel: str, server: ServerProcess
) -> None:
    with TurnqClient(server.url, API_KEY) as client:
        client.create_channel(channel)
        runner = subprocess.Popen(
            [TURNQ, "run", channel, "--", "sleep", "30"], env=server_env, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_until(lambda: client.queue(channel).holder is not None, timeout=15)
            client.force_release(channel)
            assert runner.wait(15) == 125
            assert runner.stderr is not None and "lost" in runner.stderr.read()
        finally:
            if runner.poll() is None:
                os.kill(runner.pid, signal.SIGKILL)
                runner.wait()


def test_sigkilled_holder_and_waiter_through_a_server(
    tmp_path: Path, server_env: dict[str, str], channel: str, server: ServerProcess
) -> None:
    log = tmp_path / "turns.log"
    env = dict(server_env, LOG=str(log))
    body = 'echo "$TURNQ_FENCING_TOKEN" >> "$LOG"'
    procs: list[subprocess.Popen[bytes]] = []
    with TurnqClient(server.url, API_KEY) as client:
        client.create_channel(channel, grace_ms=500)
        try:
            procs.append(
                subprocess.Popen(
                    [TURNQ, "run", "-q", channel, "--", "sleep", "60"], env=env, start_new_session=True
                )
            )
            wait_until(lambda: client.queue(channel).holder is not None, timeout=15)
            for i in range(4):
                procs.append(
                    subprocess.Popen(
                        [TURNQ, "run", "-q", channel, "--", "sh", "-c", body], env=env, start_new_session=True
                    )
                )
                wait_until(lambda i=i: len(client.queue(channel).queue) == i + 1, timeout=15)
            waiters = [w.client_id for w in client.queue(channel).queue]
            os.killpg(procs[2].pid, signal.SIGKILL)  # the second waiter
            os.killpg(procs[0].pid, signal.SIGKILL)  # the holder
            for p in (procs[1], procs[3], procs[4]):
                assert p.wait(20) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        assert client.queue(channel).depth == 0
    assert len(waiters) == 4
    tokens = [int(x) for x in log.read_text().split()]
    assert len(tokens) == 3 and tokens == sorted(tokens)
