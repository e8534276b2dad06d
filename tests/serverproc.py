"""Run ``turnq serve`` as a real subprocess, and talk to it with nothing but the standard library.

Reusable by any test that needs a real server process (CLI tests, original-client tests, crash and restart
tests)::

    with start_server(api_keys=["k"], log_dir=tmp_path) as srv:
        srv.call("POST", "/channels", {"name": "ch"}, key="k")
        with srv.sse("/channels/ch/observe", key="k") as stream:
            ...
        assert srv.stop(signal.SIGTERM) == 0

Every wait here is bounded by a timeout, and a server that is still running when its ``with`` block ends (or
when ``close()`` is called) is killed, so a failing test never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
READ_TIMEOUT = 10.0

# Inherited variables that would change what a started server does; a test passes them explicitly instead.
_SCRUBBED_ENV_PREFIXES = ("TURNQ_",)


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def turnq_command() -> list[str]:
    """How to run the ``turnq`` command of the environment the tests run in."""
    script = Path(sys.executable).with_name("turnq")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "turnq.core.cli"]


def channel_path(channel: str, action: str = "") -> str:
    """``/channels/{name}[/action]`` with the name URL-encoded as the protocol asks."""
    return f"/channels/{quote(channel, safe='')}" + (f"/{action}" if action else "")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``TURNQ_*`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ServerExited(RuntimeError):
    """The server process ended while a test was waiting for it."""


class ServerProcess:
    """One ``turnq serve`` subprocess. Its stdout and stderr go (merged) to ``log_path``."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path, host: str, port: int):
        self.args = list(args)
        self.host = host
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            self.args,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal sent to the test's terminal does not reach the server twice
        )

    # -------------------------------------------------------------- process

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        self._log.flush()
        return self.log_path.read_bytes().decode(errors="replace")

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; ``subprocess.TimeoutExpired`` if it does not."""
        return self.proc.wait(timeout=timeout)

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        """Poll ``GET /health`` until it answers 200; fail early (with the output) if the process ends."""
        deadline = time.monotonic() + timeout
        last_error: object = None
        while time.monotonic() < deadline:
            if not self.running():
                raise ServerExited(
                    f"turnq serve exited with {self.proc.returncode} before it was healthy:\n{self.output()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return json.loads(resp.read())  # type: ignore[no-any-return]
            except (OSError, http.client.HTTPException) as exc:
                last_error = exc
            time.sleep(0.05)
        raise TimeoutError(
            f"turnq serve was not healthy within {timeout}s (last error: {last_error!r}):\n{self.output()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit code; kill -9 and fail if it does not stop in time."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise TimeoutError(
                f"turnq serve did not stop within {timeout}s of signal {sig}:\n{self.output()}"
            ) from None
        finally:
            self._log.flush()

    def kill9(self) -> int:
        """SIGKILL: the crash case (no shutdown code runs). Returns the exit code (-9)."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            self._log.flush()

    def close(self) -> None:
        """Make sure the process is gone (kill -9 if needed) and the log file is closed."""
        try:
            if self.running():
                self.kill9()
        finally:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -------------------------------------------------------------- HTTP

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = READ_TIMEOUT,
    ) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON body or None). HTTP errors are returned, not raised."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if key is not None:
                hdrs["x-api-key"] = key
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("content-type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            ctype = resp.getheader("content-type", "")
            if raw and "json" in ctype:
                return resp.status, json.loads(raw)
            return resp.status, (raw.decode(errors="replace") if raw else None)
        finally:
            conn.close()

    def create_channel(self, name: str, *, key: str | None = None, **settings: Any) -> dict[str, Any]:
        status, body = self.call("POST", "/channels", {"name": name, **settings}, key=key)
        if status != 201:
            raise AssertionError(f"creating channel {name!r}: {status} {body}")
        return body  # type: ignore[no-any-return]

    def sse(
        self, path: str, *, key: str | None = None, headers: Mapping[str, str] | None = None
    ) -> SSEStream:
        """Open an event stream (subscribe or observe)."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["x-api-key"] = key
        return SSEStream(self.host, self.port, path, hdrs)


def start_server(
    *extra_args: str,
    log_dir: Path,
    api_keys: Sequence[str] = (),
    database_url: str | None = "memory://",
    env: Mapping[str, str] | None = None,
    host: str = HOST,
    port: int | None = None,
    wait: bool = True,
    timeout: float = STARTUP_TIMEOUT,
    name: str = "turnq-serve",
) -> ServerProcess:
    """Start ``turnq serve --host HOST --port PORT [--api-key K]... [--database-url URL] EXTRA_ARGS``.

    ``env`` is added to this process's environment (minus any inherited ``TURNQ_*``). With ``wait`` (the
    default) this returns once ``/health`` answers; on any failure the process is killed before raising.
    """
    port = free_port(host) if port is None else port
    args = [*turnq_command(), "serve", "--host", host, "--port", str(port)]
    for key in api_keys:
        args += ["--api-key", key]
    if database_url is not None:
        args += ["--database-url", database_url]
    args += list(extra_args)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    server = ServerProcess(args, clean_env(env), log_path, host, port)
    if wait:
        try:
            server.wait_healthy(timeout)
        except BaseException:
            server.close()
            raise
    return server


def run_serve(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = STARTUP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``turnq serve ARGS`` expecting it to exit by itself (a startup error); output captured."""
    return subprocess.run(
        [*turnq_command(), "serve", *args],
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class SSEStream:
    """A blocking reader of one ``text/event-stream`` response, line by line, every read bounded.

    ``raw`` keeps every line exactly as received (bytes, with its line end), so a test can check the framing.
    """

    def __init__(self, host: str, port: int, path: str, headers: Mapping[str, str]) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=READ_TIMEOUT)
        self.conn.request("GET", path, headers={"accept": "text/event-stream", **headers})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.raw: list[bytes] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended = False

    def body(self) -> bytes:
        """For a non-200 answer: the error body."""
        return self.response.read()

    def readline(self, timeout: float = READ_TIMEOUT) -> bytes:
        """The next raw line (with its line end), or b"" when the server ended the stream."""
        if self.ended:
            return b""
        sock = self.conn.sock
        if sock is not None:
            sock.settimeout(max(timeout, 0.001))
        try:
            line = self.response.readline()
        except TimeoutError:
            raise TimeoutError(f"no SSE line within {timeout}s; so far: {self.raw!r}") from None
        except (http.client.IncompleteRead, ConnectionError):
            line = b""
        if not line:
            self.ended = True
            return b""
        self.raw.append(line)
        return line

    def next_event(self, timeout: float = READ_TIMEOUT) -> tuple[str, dict[str, Any]] | None:
        """The next event (comments skipped), or None when the stream ended. ``timeout`` bounds the whole call."""
        deadline = time.monotonic() + timeout
        name: str | None = None
        data: dict[str, Any] = {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete SSE event within {timeout}s; so far: {self.raw!r}")
            line = self.readline(remaining)
            if not line:
                return None
            text = line.decode().rstrip("\r\n")
            if text.startswith(":"):
                continue
            if text.startswith("event:"):
                name = text[len("event:") :].strip()
            elif text.startswith("data:"):
                data = json.loads(text[len("data:") :].strip())
            elif text == "" and name is not None:
                self.events.append((name, data))
                return name, data

    def expect(self, *names: str, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        """Skip events until one named in ``names``; its data. Fails if the stream ends or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(deadline - time.monotonic(), 0.001))
            if event is None:
                raise AssertionError(f"stream ended while waiting for {names}; got {self.events}")
            if event[0] in names:
                return event[1]

    def until_end(self, timeout: float = READ_TIMEOUT) -> list[tuple[str, dict[str, Any]]]:
        """Read to the end of the stream; the events read on the way."""
        deadline = time.monotonic() + timeout
        seen: list[tuple[str, dict[str, Any]]] = []
        while True:
            event = self.next_event(max(deadline - time.monotonic(), 0.001))
            if event is None:
                return seen
            seen.append(event)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.response.close()
        self.conn.close()

    def __enter__(self) -> SSEStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until it returns something truthy; that value. TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def killing(procs: list[subprocess.Popen[Any]]) -> Iterator[list[subprocess.Popen[Any]]]:
    """On exit, kill (SIGKILL) and reap every process in ``procs`` that is still running."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
