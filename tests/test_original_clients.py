"""The original turnq README's client snippets, run as real programs against a real ``turnq serve``.

The protocol promises that those snippets work unchanged. Here the README's bash + curl + jq client
(``clients/turnq_bash_client.sh``) and its Java client (``clients/TurnqJavaClient.java``) each wait behind a
holder, get their turn in enqueue order, do their work one at a time, release, and exit 0 by themselves.

Needs on the machine: bash, curl, jq, uuidgen (Debian: ``curl jq uuid-runtime``) and a JDK 11+ (``javac``,
``java``; Debian bookworm: ``openjdk-17-jdk-headless``). A missing tool skips its test, except under CI (``CI``
set), where it fails: CI must have them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import serverproc
from serverproc import ServerProcess, channel_path, killing, start_server, wait_for

pytestmark = pytest.mark.timeout(60)

CLIENTS = Path(__file__).resolve().parent / "clients"
BASH_CLIENT = CLIENTS / "turnq_bash_client.sh"
JAVA_SOURCE = CLIENTS / "TurnqJavaClient.java"
API_KEY = "orig-clients-key"
STEP_TIMEOUT = 10.0
N_CLIENTS = 3
WORK_SECONDS = "0.3"


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)} on PATH (Debian packages: see this module's docstring)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with start_server(api_keys=[API_KEY], log_dir=tmp_path, name="server") as srv:
        yield srv


class Holder:
    """A plain httpx client that takes the turn first and holds it (its stream stays open) until ``release``."""

    def __init__(self, url: str, channel: str, key: str) -> None:
        self.channel = channel
        self.client_id = "python-holder"
        self.http = httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=STEP_TIMEOUT)
        resp = self.http.post(channel_path(channel, "enqueue"), json={"clientId": self.client_id})
        assert resp.status_code == 200, resp.text
        self.request_id: str = resp.json()["requestId"]
        self._stream = self.http.stream(
            "GET",
            channel_path(channel, "subscribe"),
            params={"clientId": self.client_id, "requestId": self.request_id},
        )
        self.response = self._stream.__enter__()
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()

    def wait_turn(self, timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for line in self.lines:  # each read is bounded by the client's read timeout
            if line == "event: your-turn":
                return
            assert time.monotonic() < deadline, "holder did not get its turn in time"
        raise AssertionError("holder's stream ended before your-turn")

    def release(self) -> None:
        resp = self.http.post(
            channel_path(self.channel, "release"),
            json={"clientId": self.client_id, "requestId": self.request_id},
        )
        assert resp.status_code == 204, resp.text

    def wait_stream_end(self, timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for _ in self.lines:
            assert time.monotonic() < deadline, "holder's stream did not end after release"

    def close(self) -> None:
        self._stream.__exit__(None, None, None)
        self.http.close()


@dataclass
class Work:
    phase: str
    label: str
    client_id: str
    at: float


def read_work(path: Path) -> list[Work]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        phase, label, client_id, at = line.split()
        out.append(Work(phase, label, client_id, float(at)))
    return out


def subscriber_count(srv: ServerProcess) -> int:
    status, text = srv.call("GET", "/metrics", key=API_KEY)
    assert status == 200, text
    match = re.search(r'^turnq_active_connections\{type="subscriber"\} ([0-9.]+)$', text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def queue_of(srv: ServerProcess, channel: str) -> dict[str, Any]:
    status, body = srv.call("GET", channel_path(channel, "queue"), key=API_KEY)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def waiters_if(srv: ServerProcess, channel: str, n: int) -> list[dict[str, Any]] | None:
    """The channel's waiters, once there are exactly ``n`` of them."""
    waiting: list[dict[str, Any]] = queue_of(srv, channel)["queue"]
    return waiting if len(waiting) == n else None


Launcher = Callable[[int, dict[str, str], Path], "subprocess.Popen[bytes]"]


def run_behind_holder(srv: ServerProcess, tmp_path: Path, channel: str, launch: Launcher) -> None:
    """Holder takes the turn; N clients start one after the other and queue; none works until the holder
    releases; then all work in enqueue order, never overlapping, and exit 0."""
    srv.create_channel(channel, key=API_KEY, leaseMs=30_000)
    work_file = tmp_path / "work.log"
    env = serverproc.clean_env(
        {
            "TURNQ_URL": srv.url,
            "CHANNEL": channel,
            "TURNQ_API_KEY": API_KEY,
            "TURNQ_WORK_FILE": str(work_file),
            "TURNQ_WORK_SECONDS": WORK_SECONDS,
        }
    )
    holder = Holder(srv.url, channel, API_KEY)
    procs: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []

    def describe() -> str:
        parts = [f"--- client {i} ---\n{p.read_text(errors='replace')}" for i, p in enumerate(outputs)]
        return "\n".join([*parts, f"--- server ---\n{srv.output()}"])

    try:
        with killing(procs):
            holder.wait_turn()
            enqueued: list[str] = []
            for i in range(N_CLIENTS):
                out = tmp_path / f"client-{i}.out"
                outputs.append(out)
                procs.append(launch(i, {**env, "TURNQ_WORK_LABEL": f"client-{i}"}, out))
                waiting = wait_for(
                    lambda n=i + 1: waiters_if(srv, channel, n), STEP_TIMEOUT, f"client {i} to enqueue"
                )
                enqueued.append(waiting[-1]["clientId"])
                assert [e["position"] for e in waiting] == list(range(1, i + 2))
            # Every client is subscribed (holder + N streams) and waiting.
            wait_for(lambda: subscriber_count(srv) == N_CLIENTS + 1, STEP_TIMEOUT, "all clients to subscribe")
            time.sleep(0.8)
            assert read_work(work_file) == [], "a client worked while the holder held the turn"
            assert all(p.poll() is None for p in procs), describe()
            assert queue_of(srv, channel)["holder"]["clientId"] == holder.client_id

            holder.release()
            holder.wait_stream_end()
            for i, proc in enumerate(procs):
                try:
                    code = proc.wait(timeout=STEP_TIMEOUT + 5)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"client {i} did not exit after its turn\n{describe()}")
                assert code == 0, f"client {i} exited {code}\n{describe()}"
    finally:
        holder.close()

    work = read_work(work_file)
    assert [(w.phase, w.label) for w in work] == [
        (phase, f"client-{i}") for i in range(N_CLIENTS) for phase in ("start", "end")
    ], describe()
    assert [w.client_id for w in work[::2]] == enqueued, "turns did not follow enqueue order"
    times = [w.at for w in work]
    assert times == sorted(times), f"work overlapped: {work}"
    final = queue_of(srv, channel)
    assert final["depth"] == 0, final
    assert final["holder"] is None, final
    wait_for(lambda: subscriber_count(srv) == 0, STEP_TIMEOUT, "every client's stream to close")


# ---------------------------------------------------------------------- bash + curl + jq


def test_bash_curl_jq_client_waits_gets_turn_in_order_and_exits(
    server: ServerProcess, tmp_path: Path
) -> None:
    require_tools("bash", "curl", "jq", "uuidgen")

    def launch(i: int, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
        with open(out, "wb") as fh:
            return subprocess.Popen(
                ["bash", str(BASH_CLIENT)], env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh
            )

    run_behind_holder(server, tmp_path, "bash-channel", launch)


def test_bash_client_exits_when_its_wait_times_out(server: ServerProcess, tmp_path: Path) -> None:
    """The bash client has no timeout of its own: it exits only because the server ends its stream when the
    ticket is over (here: max_wait_exceeded while the holder holds)."""
    require_tools("bash", "curl", "jq", "uuidgen")
    channel = "bash-max-wait"
    server.create_channel(channel, key=API_KEY, leaseMs=30_000, maxWaitMs=700)
    work_file = tmp_path / "work.log"
    env = serverproc.clean_env(
        {
            "TURNQ_URL": server.url,
            "CHANNEL": channel,
            "TURNQ_API_KEY": API_KEY,
            "TURNQ_WORK_FILE": str(work_file),
        }
    )
    holder = Holder(server.url, channel, API_KEY)
    out = tmp_path / "client.out"
    try:
        holder.wait_turn()
        with open(out, "wb") as fh, killing([]) as procs:
            proc = subprocess.Popen(
                ["bash", str(BASH_CLIENT)], env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh
            )
            procs.append(proc)
            began = time.monotonic()
            wait_for(lambda: waiters_if(server, channel, 1), STEP_TIMEOUT, "the client to enqueue")
            try:
                code = proc.wait(timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"bash client still running after its max wait ran out\n{server.output()}")
        assert code == 0, out.read_text()
        assert time.monotonic() - began >= 0.5, "the client exited before its max wait ran out"
        assert queue_of(server, channel)["queue"] == []
        assert read_work(work_file) == [], "the client worked although its wait timed out"
        assert queue_of(server, channel)["holder"]["clientId"] == holder.client_id
        holder.release()
        holder.wait_stream_end()
    finally:
        holder.close()


# ---------------------------------------------------------------------- Java


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("javac", "java")
    out = tmp_path_factory.mktemp("java-classes")
    result = subprocess.run(
        ["javac", "-d", str(out), str(JAVA_SOURCE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"javac failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_java_client_waits_gets_turn_in_order_and_exits(
    server: ServerProcess, tmp_path: Path, java_classes: Path
) -> None:
    def launch(i: int, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
        # Settings from the command line for the URL, from the environment for channel and key.
        with open(out, "wb") as fh:
            return subprocess.Popen(
                ["java", "-cp", str(java_classes), "TurnqJavaClient", env["TURNQ_URL"]],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=fh,
            )

    run_behind_holder(server, tmp_path, "java-channel", launch)
