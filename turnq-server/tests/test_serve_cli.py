"""``turnq serve`` as a real subprocess: startup checks, keys, config file, secrets kept out of the output, and a
clean stop on SIGTERM/SIGINT that tells open streams ``server-shutdown`` first."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from serverproc import ServerProcess, channel_path, free_port, run_serve, start_server

pytestmark = pytest.mark.timeout(60)

KEY = "cli-admin-key-4f1d"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers a test starts; every one is killed (if still running) at teardown."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for srv in started:
            srv.close()


def start(servers: list[ServerProcess], tmp_path: Path, *args: str, **kwargs: Any) -> ServerProcess:
    kwargs.setdefault("name", f"serve{len(servers)}")
    srv = start_server(*args, log_dir=tmp_path, **kwargs)
    servers.append(srv)
    return srv


def status_of(srv: ServerProcess, method: str, path: str, body: Any = None, key: str | None = None) -> int:
    return srv.call(method, path, body, key=key)[0]


# ---------------------------------------------------------------------- startup checks


def test_refuses_to_start_without_a_key() -> None:
    result = run_serve("--host", "127.0.0.1", "--port", str(free_port()), "--database-url", "memory://")
    assert result.returncode != 0
    assert "--insecure-no-auth" in result.stderr
    assert "--api-key" in result.stderr


def test_refuses_an_empty_turnq_api_key() -> None:
    result = run_serve("--port", str(free_port()), "--database-url", "memory://", env={"TURNQ_API_KEY": ""})
    assert result.returncode != 0
    assert "--insecure-no-auth" in result.stderr


def test_insecure_no_auth_starts_and_says_so(servers: list[ServerProcess], tmp_path: Path) -> None:
    srv = start(servers, tmp_path, "--insecure-no-auth")
    assert "insecure-no-auth" in srv.output()
    assert "WITHOUT authentication" in srv.output()
    # Anyone is an admin: no key needed, even to create channels.
    assert status_of(srv, "POST", "/channels", {"name": "open"}) == 201
    assert status_of(srv, "GET", "/channels") == 200


def test_unknown_database_scheme_lists_installed_backends() -> None:
    result = run_serve(
        "--port",
        str(free_port()),
        "--api-key",
        KEY,
        "--database-url",
        "nosuchdb://dbuser:hunter2-pw@localhost/turnq",
    )
    assert result.returncode != 0
    assert "nosuchdb" in result.stderr
    assert "memory://" in result.stderr
    assert "installed" in result.stderr
    assert "hunter2-pw" not in result.stderr + result.stdout, "database password printed"
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_startup_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_serve("--port", str(port), "--api-key", KEY, "--database-url", "memory://")
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- keys


def test_api_key_flag_is_repeatable(servers: list[ServerProcess], tmp_path: Path) -> None:
    srv = start(servers, tmp_path, api_keys=["first-key", "second-key"])
    assert status_of(srv, "GET", "/channels", key="first-key") == 200
    assert status_of(srv, "GET", "/channels", key="second-key") == 200
    status, body = srv.call("GET", "/channels", key="third-key")
    assert status == 401
    assert body["code"] == "UNAUTHORIZED"
    status, body = srv.call("GET", "/channels")
    assert (status, body["code"]) == (401, "UNAUTHORIZED")
    # /health needs no key.
    assert status_of(srv, "GET", "/health") == 200


def test_turnq_api_key_environment_variable(servers: list[ServerProcess], tmp_path: Path) -> None:
    srv = start(servers, tmp_path, env={"TURNQ_API_KEY": "env-key-a,env-key-b"})
    assert status_of(srv, "POST", "/channels", {"name": "from-env"}, key="env-key-a") == 201
    assert status_of(srv, "GET", "/channels", key="env-key-b") == 200
    assert status_of(srv, "GET", "/channels", key="env-key-c") == 401


def test_api_key_flag_wins_over_environment(servers: list[ServerProcess], tmp_path: Path) -> None:
    srv = start(servers, tmp_path, api_keys=["flag-key"], env={"TURNQ_API_KEY": "env-key"})
    assert status_of(srv, "GET", "/channels", key="flag-key") == 200
    assert status_of(srv, "GET", "/channels", key="env-key") == 401


# ---------------------------------------------------------------------- config file

CONFIG = """
[[keys]]
name = "ops"
key = "toml-admin-key"
role = "admin"

[[keys]]
name = "worker"
key = "toml-client-key"
role = "client"

[[keys]]
name = "ci"
key_env = "CI_TURNQ_KEY"
role = "client"
channels = ["ci-*"]

[channel_defaults]
lease_ms = 12345
grace_ms = 700
"""


def test_config_file_keys_roles_channel_patterns_and_defaults(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    config = tmp_path / "turnq.toml"
    config.write_text(CONFIG)
    srv = start(servers, tmp_path, "--config", str(config), env={"CI_TURNQ_KEY": "toml-ci-key"})
    admin, client, ci = "toml-admin-key", "toml-client-key", "toml-ci-key"

    # Only an admin creates channels.
    for key in (client, ci):
        status, body = srv.call("POST", "/channels", {"name": "ci-by-client"}, key=key)
        assert (status, body["code"]) == (403, "FORBIDDEN"), body
    assert status_of(srv, "GET", "/channels/ci-by-client", key=admin) == 404, "a refused create changed state"

    # Defaults from [channel_defaults] when the request does not say; the request wins when it does.
    deploy = srv.create_channel("deploy", key=admin)
    assert deploy["leaseMs"] == 12345
    assert deploy["graceMs"] == 700
    build = srv.create_channel("ci-build", key=admin, leaseMs=60_000)
    assert build["leaseMs"] == 60_000
    assert build["graceMs"] == 700

    # The ci key is limited to ci-* channels.
    status, body = srv.call("POST", channel_path("deploy", "enqueue"), {"clientId": "c1"}, key=ci)
    assert (status, body["code"]) == (403, "FORBIDDEN"), body
    status, body = srv.call("GET", channel_path("deploy", "queue"), key=ci)
    assert (status, body["code"]) == (403, "FORBIDDEN"), body
    status, body = srv.call("POST", channel_path("ci-build", "enqueue"), {"clientId": "c1"}, key=ci)
    assert status == 200, body
    status, listing = srv.call("GET", "/channels", key=ci)
    assert status == 200
    assert [c["name"] for c in listing["channels"]] == ["ci-build"]

    # An unrestricted client key enqueues anywhere, but cannot do admin things.
    status, body = srv.call("POST", channel_path("deploy", "enqueue"), {"clientId": "c2"}, key=client)
    assert status == 200, body
    status, body = srv.call("DELETE", channel_path("deploy", "holder"), key=client)
    assert (status, body["code"]) == (403, "FORBIDDEN"), body
    status, body = srv.call("DELETE", channel_path("ci-build"), key=client)
    assert (status, body["code"]) == (403, "FORBIDDEN"), body

    # The admin sees both channels; unknown keys are refused.
    status, listing = srv.call("GET", "/channels", key=admin)
    assert sorted(c["name"] for c in listing["channels"]) == ["ci-build", "deploy"]
    assert status_of(srv, "GET", "/channels", key="not-a-key") == 401


def test_config_file_errors_are_startup_errors(tmp_path: Path) -> None:
    bad_role = tmp_path / "bad-role.toml"
    bad_role.write_text('[[keys]]\nkey = "k"\nrole = "superuser"\n')
    result = run_serve("--config", str(bad_role), "--port", str(free_port()), "--database-url", "memory://")
    assert result.returncode != 0
    assert "role" in result.stderr

    bad_default = tmp_path / "bad-default.toml"
    bad_default.write_text('[[keys]]\nkey = "k"\n[channel_defaults]\nlease_seconds = 3\n')
    result = run_serve(
        "--config", str(bad_default), "--port", str(free_port()), "--database-url", "memory://"
    )
    assert result.returncode != 0
    assert "lease_seconds" in result.stderr

    result = run_serve("--config", str(tmp_path / "missing.toml"), "--port", str(free_port()))
    assert result.returncode != 0
    assert "missing.toml" in result.stderr


# ---------------------------------------------------------------------- secrets


def raw_exchange(srv: ServerProcess, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes as one request; the start of the answer."""
    with socket.create_connection((srv.host, srv.port), timeout=timeout) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_keys_never_appear_in_output_even_with_access_log(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    secret = "S3cr3t-flag-key-9b2e"
    wrong = "Wr0ng-query-key-77aa"
    srv = start(servers, tmp_path, "--access-log", "--log-level", "DEBUG", api_keys=[secret])
    srv.create_channel("sec", key=secret)
    status, body = srv.call("POST", channel_path("sec", "enqueue"), {"clientId": "a"}, key=secret)
    assert status == 200, body
    request_id = body["requestId"]

    # The original client's ?apiKey= on subscribe, with no header.
    with srv.sse(
        f"{channel_path('sec', 'subscribe')}?clientId=a&requestId={request_id}&apiKey={secret}"
    ) as s:
        assert s.status == 200
        s.expect("your-turn")
        status, _ = srv.call(
            "POST", channel_path("sec", "release"), {"clientId": "a", "requestId": request_id}, key=secret
        )
        assert status == 204
        s.until_end()

    # Wrong keys in the query string and in the header: refused, and not echoed either.
    with srv.sse(f"{channel_path('sec', 'subscribe')}?clientId=a&requestId=x&apiKey={wrong}") as s:
        assert s.status == 401
        assert wrong not in s.body().decode()
    status, body = srv.call("GET", f"/channels?apiKey={wrong}")
    assert status == 401
    assert wrong not in str(body)
    status, body = srv.call("GET", "/channels", key=wrong)
    assert status == 401
    assert wrong not in str(body)
    status, _ = srv.call("GET", f"/channels/sec/queue?apiKey={secret}", key=secret)
    assert status == 200

    # Requests the HTTP parser rejects: its error quotes the offending raw line, which must not be logged.
    for raw in (
        f"GET /channels/sec/subscribe?apiKey={secret}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /channels/sec/queue HTTP/1.1\r\nHost: x\r\nx-api-key: {secret}\x7f\r\n\r\n",
        f"GET /channels?apiKey={wrong} HTTP/1.1\r\nHost: x\r\nBad Header: {wrong}\r\n\r\n",
        f"G\x01T /channels?apiKey={secret} HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        assert raw_exchange(srv, raw.encode()).startswith(b"HTTP/1.")
    assert status_of(srv, "GET", "/channels", key=secret) == 200

    assert srv.stop(signal.SIGTERM) == 0
    output = srv.output()
    # The access log did run (so the check below is not vacuous) ...
    assert "/channels/sec/subscribe" in output
    assert "/channels/sec/queue" in output
    # ... and no key, right or wrong, reached it.
    assert secret not in output
    assert wrong not in output
    assert "malformed HTTP request" in output


# ---------------------------------------------------------------------- stopping


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_after_telling_streams(
    servers: list[ServerProcess], tmp_path: Path, sig: signal.Signals
) -> None:
    srv = start(servers, tmp_path, api_keys=[KEY])
    srv.create_channel("stop", key=KEY)
    tickets = []
    for client in ("holder", "waiter"):
        status, body = srv.call("POST", channel_path("stop", "enqueue"), {"clientId": client}, key=KEY)
        assert status == 200, body
        tickets.append((client, body["requestId"]))

    streams = [
        srv.sse(f"{channel_path('stop', 'subscribe')}?clientId={c}&requestId={r}", key=KEY)
        for c, r in tickets
    ]
    observer = srv.sse(channel_path("stop", "observe"), key=KEY)
    try:
        assert all(s.status == 200 for s in [*streams, observer])
        streams[0].expect("your-turn")
        streams[1].expect("queued")

        began = time.monotonic()
        srv.proc.send_signal(sig)
        for stream in [*streams, observer]:
            data = stream.expect("server-shutdown")
            assert isinstance(data.get("reason"), str)
            # Exactly the protocol's framing, then the end of the stream.
            assert stream.raw[-3:] == [
                b"event: server-shutdown\n",
                b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n",
                b"\n",
            ]
            assert stream.until_end() == []
        assert srv.wait(timeout=10) == 0, srv.output()
        assert time.monotonic() - began < 10
    finally:
        for stream in [*streams, observer]:
            stream.close()
    output = srv.output()
    assert "Traceback" not in output, output
    assert '"level": "error"' not in output, output


# ---------------------------------------------------------------------- limits


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/PID/limits")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads the server's limits from /proc")
def test_holds_more_streams_than_a_low_soft_open_file_limit(
    servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Started with a soft limit of 256 open files (a low limit, as systemd's default soft 1,024 is), the server
    raises it to the hard limit and holds 400 waiting streams, each on its own connection."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room for the test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        srv = start(servers, tmp_path, "--api-key", KEY)  # the server inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    server_soft, server_hard = _open_files_limits(srv.pid)
    assert server_soft == server_hard > 256
    assert '"open_files"' in srv.output()

    assert status_of(srv, "POST", "/channels", {"name": "wide", "leaseMs": 60_000}, key=KEY) == 201
    status, _ = srv.call("POST", channel_path("wide", "enqueue"), {"clientId": "holder"}, key=KEY)
    assert status == 200
    streams: list[socket.socket] = []
    try:
        for i in range(400):
            status, body = srv.call("POST", channel_path("wide", "enqueue"), {"clientId": f"w{i}"}, key=KEY)
            assert status == 200, body
            conn = socket.create_connection((srv.host, srv.port), timeout=10)
            streams.append(conn)
            conn.sendall(
                f"GET {channel_path('wide', 'subscribe')}?clientId=w{i}&requestId={body['requestId']} HTTP/1.1\r\n"
                f"Host: {srv.host}\r\nx-api-key: {KEY}\r\n\r\n".encode()
            )
        for i, conn in enumerate(streams):
            received = b""
            while b"event: queued\n" not in received:
                chunk = conn.recv(4096)
                assert chunk, f"stream {i} closed before its queued event: {received!r}"
                received += chunk
            assert received.startswith(b"HTTP/1.1 200"), received[:200]
    finally:
        for conn in streams:
            conn.close()


def test_port_zero_serves_on_the_port_it_says(servers: list[ServerProcess], tmp_path: Path) -> None:
    """``--port 0`` lets the system choose; the startup line names the port actually bound."""
    srv = start(servers, tmp_path, "--api-key", KEY, port=0, wait=False)
    deadline = time.monotonic() + 30
    while (found := re.search(r"turnq serving on http://127\.0\.0\.1:(\d+) ", srv.output())) is None:
        assert srv.running(), srv.output()
        assert time.monotonic() < deadline, f"no startup line: {srv.output()}"
        time.sleep(0.05)
    port = int(found.group(1))
    assert port != 0
    srv.port = port
    status, body = srv.call("GET", "/health")
    assert status == 200 and body["ok"] is True
