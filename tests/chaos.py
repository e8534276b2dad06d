"""What the tests whose servers die mid-run share: the kinds of failure a request can meet, ending a stream another
thread is reading, and an observer that keeps watching a channel through every crash and reconnect."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import traceback
from typing import Any, Protocol

from serverproc import SSEStream

UNAVAILABLE = 503  # BACKEND_UNAVAILABLE: "retry", says the protocol

# Errors of a request that never reached a server: safe to retry (or send elsewhere), nothing can have happened.
NOT_SENT = (ConnectionRefusedError,)
# Errors of a request that may or may not have been applied (the server died mid-way, or did not answer).
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)

Event = tuple[str, dict[str, Any]]


def shut(stream: SSEStream) -> None:
    """End a stream another thread may be blocked reading (shutdown() wakes a blocked recv; close() may
    not)."""
    sock = stream.conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    stream.close()


class Run(Protocol):
    """The part of a test run an observer reports to."""

    deadline: float

    def fail(self, message: str) -> None: ...


class ReconnectingObserver(threading.Thread):
    """Watches a channel until stopped or the run's deadline, reconnecting whenever its stream drops; sees a
    part of the turns (not those announced while it was away), which must agree with what the clients saw."""

    def __init__(self, run: Run, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.run_state = run
        self.events: list[Event] = []
        self.connections = 0
        self.stopping = threading.Event()
        self._stream: SSEStream | None = None
        self._lock = threading.Lock()

    def open(self) -> SSEStream:
        """A new observe stream (may raise TRANSPORT_ERRORS)."""
        raise NotImplementedError

    def unavailable(self, stream: SSEStream) -> None:
        """The observe request was answered 503."""

    def run(self) -> None:
        run = self.run_state
        try:
            while not self.stopping.is_set() and time.monotonic() < run.deadline:
                try:
                    stream = self.open()
                except TRANSPORT_ERRORS:
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self._stream = stream
                if self.stopping.is_set():
                    stream.close()
                    return
                self.connections += 1
                try:
                    if stream.status == UNAVAILABLE:
                        self.unavailable(stream)
                        time.sleep(0.05)
                        continue
                    assert stream.status == 200, f"observe answered {stream.status} {stream.body()!r}"
                    while (event := self._next(stream)) is not None:
                        self.events.append(event)
                finally:
                    stream.close()
        except BaseException:
            if not self.stopping.is_set():
                run.fail(f"{self.name}: {traceback.format_exc()}")

    def _next(self, stream: SSEStream) -> Event | None:
        try:
            return stream.next_event(timeout=max(self.run_state.deadline - time.monotonic(), 0.001))
        except ValueError:
            if stream.raw and not stream.raw[-1].endswith(b"\n"):
                return None
            raise
        except TRANSPORT_ERRORS:
            if self.stopping.is_set():
                return None
            raise

    def stop(self) -> None:
        self.stopping.set()
        with self._lock:
            if self._stream is not None:
                shut(self._stream)
