"""Helpers for tests that need a real turnq server: start ``turnq serve`` on a free loopback port, cut
connections with a TCP relay, wait for a condition with a bound. Used by turnq's own tests; handy for
applications testing their turnq integration too."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

API_KEY = "test-key"
# The ``turnq`` command installed next to this interpreter.
TURNQ = str(Path(sys.executable).with_name("turnq"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll a test condition (the test's own observation loop, not the code under test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class ServerProcess:
    """``turnq serve`` as a child process, ready (answering ``/health``) once constructed."""

    def __init__(
        self, port: int | None = None, *, api_key: str = API_KEY, database_url: str = "memory://"
    ) -> None:
        port = free_port() if port is None else port
        self.port = port
        self.api_key = api_key
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.gettempdir()) / f"turnq-test-server-{port}.log"
        env = dict(os.environ)
        env.pop("TURNQ_URL", None)
        env.pop("TURNQ_API_KEY", None)
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                TURNQ,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--api-key",
                api_key,
                "--database-url",
                database_url,
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"turnq serve did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()


class TcpProxy:  # A small relay: one thread per connection is plenty for tests.
    """A loopback TCP relay to the server whose connections the test can cut, as a network failure would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in sel.select(timeout=1.0):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    data = src.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.discard(a)
                self._conns.discard(b)

    @property
    def connections(self) -> int:
        """Open relayed sockets (two per connection)."""
        with self._lock:
            return len(self._conns)

    def drop(self) -> None:
        """Cut every open connection (both directions), as a network failure or a crashed proxy would."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting (connections are then refused) and cut the open ones."""
        with self._lock:
            self._closed = True
        self.listener.close()
        self.drop()
