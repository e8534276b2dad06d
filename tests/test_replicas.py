"""Scale-out: three real ``turnq serve`` processes on one PostgreSQL database serve the same channels, and losing
one of them (or PostgreSQL itself, for a moment) loses nothing.

Each test starts three replicas (A, B, C) on a fresh database and runs 30 clients on 3 channels, 10 turns each
(300 turns). Clients spread over the replicas; on every other turn a client enqueues on one replica, subscribes
on the next and releases on the third, so every replica takes every kind of request and a ticket's ``your-turn``
is produced by a release on one replica and delivered by another (heard through ``LISTEN/NOTIFY``). An observer
per channel watches from replica C.

* ``test_three_replicas_share_channels``: all three replicas stay up.
* ``test_replica_killed_mid_run``: replica A is killed with SIGKILL while clients hold streams on it. Half of the
  clients use the turnq client library (``TurnqClient([A, B, C])``, ``client.turn(channel)``), which moves to the
  next URL and resubscribes; the others are hand-written clients that try the next replica when one refuses, and
  those whose stream was on A come back only after the survivors have taken A for dead (its tickets then start a
  fresh grace); they keep their places. Besides, on a channel of its own, a holder and a waiter whose streams were
  on A never come back: their tickets must not stay stuck, and the waiter behind them (on B) gets the turn.
* ``test_postgres_restarted_mid_run[restart|outage]``: the local PostgreSQL cluster is stopped and started again
  (down 1 s; and down longer than the presence timeout, so the replicas take each other for dead and re-attach
  their streams); requests in between get 503 ``BACKEND_UNAVAILABLE`` or connection errors and are retried. Marked
  ``pg_restart``: it restarts the machine's cluster, so like the backend's own restart test it runs only when
  selected, with ``-m pg_restart`` or ``TURNQ_TEST_PG_RESTART=1`` (which CI sets). The cluster is running again
  when the test ends, whatever happened.

Every test then checks, per channel: no ticket lost (every turn granted and released, no ``timeout`` event, the
line empty at the end), no turn granted twice and no fencing token reused, hold intervals that never overlap,
tokens strictly increasing in grant order, grants in enqueue order (a ticket whose enqueue was answered before
another's was sent is granted first), and what the observer saw agrees (but not its order: see
``check_observer``). Finally every live replica still takes requests and still hears the others. Every wait is
bounded; server logs stay in the test's ``tmp_path`` (``replica-X-PORT.log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import random
import shutil
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from chaos import NOT_SENT, TRANSPORT_ERRORS, UNAVAILABLE, ReconnectingObserver
from serverproc import ServerProcess, SSEStream, channel_path, start_server

# A fresh database per test, created and dropped by the crash tests' fixtures.
from test_crash_restart import postgres_server_dsn, postgres_url  # noqa: F401

pytestmark = pytest.mark.timeout(120)

API_KEY = "replicas-key"
N_REPLICAS = 3
CHANNELS = ("replicas/a", "replicas/b", "replicas/c")  # "/" in the names: paths carry them URL-encoded
N_CLIENTS = 30
TURNS_EACH = 10
LEASE_MS = 30_000
GRACE_MS = 15_000
RUN_S = 75.0  # every client gives up (and the test fails) this long after the start
HTTP_TIMEOUT = 10.0
STALE_S = 5.0  # a replica silent this long is taken for dead (turnq.server.state.STALE_MS)
COMEBACK_S = STALE_S + 3.0  # hand-written clients cut off by the kill come back after the survivors noticed
ABANDONED_GRACE_S = 5.0  # the grace a dead replica's tickets get: max(graceMs, SUBSCRIBE_WINDOW_MS)
# How long PostgreSQL stays stopped: a quick restart, and an outage longer than the presence timeout (when it is
# back, the first replica to beat takes the others for dead, detaches their tickets with a fresh grace, and they
# re-attach their open streams at their next beat).
PG_DOWN_S = {"restart": 1.0, "outage": STALE_S + 2.0}


# ---------------------------------------------------------------------- replicas


class Replicas:
    """N ``turnq serve`` processes on one database, started together."""

    def __init__(self, database_url: str, log_dir: Path, n: int = N_REPLICAS) -> None:
        self.names = [chr(ord("A") + i) for i in range(n)]
        self.procs: list[ServerProcess] = []
        try:
            for name in self.names:
                self.procs.append(
                    start_server(
                        api_keys=[API_KEY],
                        log_dir=log_dir,
                        database_url=database_url,
                        wait=False,
                        name=f"replica-{name}",
                    )
                )
            for proc in self.procs:
                proc.wait_healthy()
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.procs)

    def kill9(self, index: int) -> None:
        code = self.procs[index].kill9()
        assert code == -9, f"replica {self.names[index]} exited with {code} before the SIGKILL"

    def logs(self) -> str:
        return "\n".join(
            f"--- replica {name}\n{proc.output()}" for name, proc in zip(self.names, self.procs, strict=True)
        )

    def url_names(self) -> dict[str, str]:
        return {proc.url: name for name, proc in zip(self.names, self.procs, strict=True)}

    def error_lines(self, indices: tuple[int, ...] | None = None) -> list[str]:
        """Log lines of the replicas ``indices`` (default all) that report a failure inside a server."""
        chosen = range(len(self.procs)) if indices is None else indices
        return [
            f"{self.names[i]}: {line}"
            for i in chosen
            for line in self.procs[i].output().splitlines()
            if '"level": "error"' in line or '"level": "critical"' in line or line.startswith("Traceback")
        ]

    def close(self) -> None:
        for proc in self.procs:
            proc.close()

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Router:
    """Plain HTTP to the replicas, a fresh connection per request, safe from many threads.

    A request goes to the replica asked for; one that refuses the connection (nothing was sent) is passed over
    for the next, as a client given several URLs does. Every answer says which replica gave it."""

    def __init__(self, replicas: Replicas) -> None:
        self.targets = [
            (name, proc.host, proc.port) for name, proc in zip(replicas.names, replicas.procs, strict=True)
        ]

    def _order(self, prefer: int) -> list[tuple[str, str, int]]:
        n = len(self.targets)
        return [self.targets[(prefer + i) % n] for i in range(n)]

    def call(
        self, prefer: int, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT
    ) -> tuple[int, Any, str]:
        last: BaseException | None = None
        for name, host, port in self._order(prefer):
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {"x-api-key": API_KEY}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    headers["content-type"] = "application/json"
                try:
                    conn.request(method, path, body=data, headers=headers)
                except NOT_SENT as exc:
                    last = exc
                    continue
                resp = conn.getresponse()
                raw = resp.read()
                if raw and "json" in resp.getheader("content-type", ""):
                    return resp.status, json.loads(raw), name
                return resp.status, raw.decode(errors="replace") if raw else None, name
            finally:
                conn.close()
        assert last is not None
        raise last

    def ok(self, prefer: int, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer, _ = self.call(prefer, method, path, body)
        assert got == status, f"{method} {path} {body}: expected {status}, got {got} {answer}"
        return answer

    def stream(self, prefer: int, path: str) -> tuple[SSEStream, str]:
        last: BaseException | None = None
        for name, host, port in self._order(prefer):
            try:
                return SSEStream(host, port, path, {"x-api-key": API_KEY}), name
            except NOT_SENT as exc:
                last = exc
        assert last is not None
        raise last

    def subscribe(self, prefer: int, channel: str, client_id: str, request_id: str) -> tuple[SSEStream, str]:
        query = urlencode({"clientId": client_id, "requestId": request_id})
        return self.stream(prefer, f"{channel_path(channel, 'subscribe')}?{query}")


# ---------------------------------------------------------------------- what the clients saw


@dataclass
class Turn:
    """One ticket as its client saw it. Times are this process's ``time.monotonic()``."""

    client_id: str
    channel: str
    index: int
    request_id: str = ""
    enqueue_start: float = 0.0  # the first enqueue attempt was sent
    enqueue_end: float = 0.0  # the answer that gave the requestId arrived
    token: int | None = None
    your_turn_at: float = 0.0
    release_sent: float = 0.0  # the first release attempt was sent
    release_end: float = 0.0
    enqueued_on: str = ""  # the replica that answered the enqueue
    granted_on: str = ""  # the replica whose stream delivered your-turn
    released_on: str = ""  # the replica that answered the release
    subscriptions: int = 0
    retries: int = 0  # requests sent again (refused, cut off, 503)
    recovered: int = 0  # ambiguous enqueues/releases resolved through the queue view


@dataclass
class Shared:
    deadline: float
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    timeouts: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # 503 answers, retried
    comebacks: int = 0  # hand-written clients that stayed away after losing their stream
    # open subscriber streams: client id -> replica name
    streams_on: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: threading.Event = field(default_factory=threading.Event)

    def turn_done(self) -> None:
        with self.lock:
            self.completed += 1

    def saw_unavailable(self, who: str, what: str, body: Any) -> None:
        with self.lock:
            self.unavailable.append(f"{who}: {what}: {body}")

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)
        self.failed.set()

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        end = min(time.monotonic() + timeout, self.deadline)
        while not predicate():
            if self.failed.is_set():
                raise AssertionError(f"a client failed while waiting for {what}:\n" + "\n".join(self.errors))
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what} ({self.completed} turns completed)")
            time.sleep(0.005)


class Worker(threading.Thread):
    """A hand-written client that survives a replica's death and a database restart.

    Its home replica answers most of its requests; on even turns it enqueues on one replica, subscribes on the
    next and releases on the third. A replica that refuses a connection is passed over for the next one. A
    request cut off or answered 503 is retried; an ambiguous enqueue or release is resolved through the queue
    view (409 ``ALREADY_QUEUED`` / 403 ``NOT_YOUR_TURN``). With ``comeback_s`` set, after its stream is cut off
    the client stays away that long once before resubscribing (with the same clientId and requestId).
    """

    def __init__(
        self,
        router: Router,
        client_id: str,
        channel: str,
        home: int,
        shared: Shared,
        turns: int = TURNS_EACH,
        comeback_s: float = 0.0,
    ) -> None:
        super().__init__(name=client_id, daemon=True)
        self.router = router
        self.client_id = client_id
        self.channel = channel
        self.home = home
        self.shared = shared
        self.n_turns = turns
        self.comeback_s = comeback_s
        self.rng = random.Random(client_id)
        self.turns: list[Turn] = []

    def run(self) -> None:
        try:
            for index in range(self.n_turns):
                if self.shared.failed.is_set():
                    return
                turn = Turn(self.client_id, self.channel, index)
                self.turns.append(turn)
                spread = index % 2 == 0
                enqueue_on, subscribe_on, release_on = (
                    (self.home + index, self.home + index + 1, self.home + index + 2)
                    if spread
                    else (self.home,) * 3
                )
                self._enqueue(turn, enqueue_on)
                stream = self._wait_turn(turn, subscribe_on)
                try:
                    time.sleep(self.rng.uniform(0.001, 0.004))  # the work
                    self._release(turn, release_on)
                finally:
                    with self.shared.lock:
                        self.shared.streams_on.pop(self.client_id, None)
                    stream.close()
                self.shared.turn_done()
        except BaseException:
            self.shared.fail(f"{self.client_id}: {traceback.format_exc()}")

    # -------------------------------------------------------------- helpers

    def _pause(self, attempt: int, what: str) -> None:
        if time.monotonic() > self.shared.deadline:
            raise TimeoutError(f"{self.client_id}: gave up on {what} at the test's deadline")
        if self.shared.failed.is_set():
            raise RuntimeError("another client failed")
        time.sleep(min(0.02 * 2**attempt, 0.25))

    def _path(self, action: str) -> str:
        return channel_path(self.channel, action)

    def _view(self, prefer: int) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                status, body, _ = self.router.call(prefer, "GET", self._path("queue"))
            except TRANSPORT_ERRORS:
                status, body = 0, None
            if status == 200:
                return body  # type: ignore[no-any-return]
            if status == UNAVAILABLE:
                self.shared.saw_unavailable(self.client_id, "queue view", body)
            elif status != 0:
                raise AssertionError(f"{self.client_id}: queue view answered {status} {body}")
            self._pause(attempt, "the queue view")
            attempt += 1

    # -------------------------------------------------------------- one turn

    def _enqueue(self, turn: Turn, prefer: int) -> None:
        ambiguous = False
        attempt = 0
        turn.enqueue_start = time.monotonic()
        while True:
            try:
                status, body, name = self.router.call(
                    prefer, "POST", self._path("enqueue"), {"clientId": self.client_id}
                )
            except TRANSPORT_ERRORS as exc:
                ambiguous = ambiguous or not isinstance(exc, NOT_SENT)
                turn.retries += 1
                self._pause(attempt, "enqueue")
                attempt += 1
                continue
            if status == UNAVAILABLE:  # the backend failed; the enqueue may have been committed
                self.shared.saw_unavailable(self.client_id, "enqueue", body)
                ambiguous = True
                turn.retries += 1
                self._pause(attempt, "enqueue")
                attempt += 1
                continue
            if status == 200:
                turn.request_id = body["requestId"]
                turn.enqueued_on = name
                break
            if status == 409 and body.get("code") == "ALREADY_QUEUED" and ambiguous:
                # An earlier attempt took effect although its answer was lost: find that ticket.
                view = self._view(prefer)
                mine = [
                    w["requestId"]
                    for w in [view["holder"] or {}, *view["queue"]]
                    if w.get("clientId") == self.client_id
                ]
                assert len(mine) == 1, f"{self.client_id}: 409 after an ambiguous enqueue, but view {view}"
                turn.request_id = mine[0]
                turn.enqueued_on = name
                turn.recovered += 1
                break
            raise AssertionError(f"{self.client_id}: enqueue answered {status} {body}")
        turn.enqueue_end = time.monotonic()

    def _wait_turn(self, turn: Turn, prefer: int) -> SSEStream:
        """Subscribe (again, after every drop) until your-turn; returns the open stream."""
        attempt = 0
        stayed_away = False
        while True:
            try:
                stream, name = self.router.subscribe(prefer, self.channel, self.client_id, turn.request_id)
            except TRANSPORT_ERRORS:
                turn.retries += 1
                self._pause(attempt, "subscribe")
                attempt += 1
                continue
            turn.subscriptions += 1
            if stream.status == UNAVAILABLE:
                self.shared.saw_unavailable(self.client_id, "subscribe", stream.body())
                stream.close()
                turn.retries += 1
                self._pause(attempt, "subscribe")
                attempt += 1
                continue
            if stream.status != 200:
                body = stream.body()
                stream.close()
                raise AssertionError(
                    f"{self.client_id}: subscribe for turn {turn.index} on {name} answered "
                    f"{stream.status} {body!r}"
                )
            attempt = 0
            with self.shared.lock:
                self.shared.streams_on[self.client_id] = name
            try:
                event = self._next_turn_event(stream, turn)
            except BaseException:
                stream.close()
                raise
            if event is not None:
                assert event["requestId"] == turn.request_id, (
                    f"{self.client_id}: your-turn {event} for {turn}"
                )
                turn.your_turn_at = time.monotonic()
                turn.token = event["fencingToken"]
                turn.granted_on = name
                return stream
            with self.shared.lock:
                self.shared.streams_on.pop(self.client_id, None)
            stream.close()
            if self.comeback_s and not stayed_away:
                # Cut off (its replica died): stay away until the survivors have taken that replica for dead.
                stayed_away = True
                with self.shared.lock:
                    self.shared.comebacks += 1
                end = time.monotonic() + self.comeback_s
                while time.monotonic() < end:
                    self._pause(0, "coming back")
            self._pause(attempt, "resubscribe")

    def _next_turn_event(self, stream: SSEStream, turn: Turn) -> dict[str, Any] | None:
        """Read until your-turn (its data) or until the stream drops (None). A timeout ends the test."""
        while True:
            remaining = self.shared.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.client_id}: no your-turn for turn {turn.index} by the deadline")
            try:
                event = stream.next_event(timeout=remaining)
            except ValueError:
                # A frame cut in the middle by the crash: the last line has no line end.
                if stream.raw and not stream.raw[-1].endswith(b"\n"):
                    return None
                raise
            except TRANSPORT_ERRORS:
                return None
            if event is None:
                return None
            name, data = event
            if name == "your-turn":
                return data
            if name == "timeout":
                with self.shared.lock:
                    self.shared.timeouts.append({"clientId": self.client_id, **data})
                raise AssertionError(f"{self.client_id}: ticket ended while waiting: {data}")
            if name == "server-shutdown":
                return None

    def _release(self, turn: Turn, prefer: int) -> None:
        ambiguous = False
        attempt = 0
        body_out = {"clientId": self.client_id, "requestId": turn.request_id}
        turn.release_sent = time.monotonic()
        while True:
            try:
                status, body, name = self.router.call(prefer, "POST", self._path("release"), body_out)
            except TRANSPORT_ERRORS as exc:
                ambiguous = ambiguous or not isinstance(exc, NOT_SENT)
                turn.retries += 1
                self._pause(attempt, "release")
                attempt += 1
                continue
            if status == UNAVAILABLE:  # the backend failed; the release may have been committed
                self.shared.saw_unavailable(self.client_id, "release", body)
                ambiguous = True
                turn.retries += 1
                self._pause(attempt, "release")
                attempt += 1
                continue
            if status == 204:
                turn.released_on = name
                break
            if status == 403 and body.get("code") == "NOT_YOUR_TURN" and ambiguous:
                # An earlier attempt took effect although its answer was lost: the ticket must be gone.
                view = self._view(prefer)
                ids = [w.get("requestId") for w in [view["holder"] or {}, *view["queue"]]]
                assert turn.request_id not in ids, f"{self.client_id}: 403 on release, but view {view}"
                turn.released_on = name
                turn.recovered += 1
                break
            raise AssertionError(f"{self.client_id}: release of turn {turn.index} answered {status} {body}")
        turn.release_end = time.monotonic()


class LibraryWorker(threading.Thread):
    """A client written with the turnq client library: ``TurnqClient([A, B, C])`` and ``client.turn(channel)``.

    Its URL list starts at its home replica; the library stays there until a connection is refused or a stream
    drops, then moves to the next URL and resubscribes with the same clientId/requestId."""

    def __init__(
        self, urls: list[str], url_names: dict[str, str], client_id: str, channel: str, shared: Shared
    ) -> None:
        super().__init__(name=client_id, daemon=True)
        self.urls = urls
        self.url_names = url_names
        self.client_id = client_id
        self.channel = channel
        self.shared = shared
        self.rng = random.Random(client_id)
        self.turns: list[Turn] = []

    def run(self) -> None:
        from turnq.client import TurnqClient

        try:
            with TurnqClient(self.urls, API_KEY, timeout=HTTP_TIMEOUT) as client:
                for index in range(TURNS_EACH):
                    if self.shared.failed.is_set():
                        return
                    turn = Turn(self.client_id, self.channel, index)
                    self.turns.append(turn)
                    self._turn(client, turn)
                    self.shared.turn_done()
        except BaseException:
            self.shared.fail(f"{self.client_id}: {traceback.format_exc()}")

    def _turn(self, client: Any, turn: Turn) -> None:
        def enqueued(_position: int) -> None:
            # Called first with the enqueue's answer, before the ticket's stream opens.
            if not turn.enqueue_end:
                turn.enqueue_end = time.monotonic()

        wait_s = max(self.shared.deadline - time.monotonic(), 1.0)
        turn.enqueue_start = time.monotonic()
        with client.turn(
            self.channel,
            client_id=f"{self.client_id}-t{turn.index}",
            on_position=enqueued,
            timeout=wait_s,
            renew=False,
            reconnect_for=GRACE_MS / 1000,
        ) as held:
            turn.your_turn_at = time.monotonic()
            turn.token = held.fencing_token
            turn.request_id = held.request_id or ""
            turn.granted_on = self.url_names[client.url]
            time.sleep(self.rng.uniform(0.001, 0.004))  # the work
            turn.release_sent = time.monotonic()
        turn.release_end = time.monotonic()
        turn.released_on = self.url_names[client.url]


class Observer(ReconnectingObserver):
    """Watches one channel from one replica, reconnecting if its stream drops; sees a part of the turns."""

    def __init__(self, router: Router, prefer: int, channel: str, shared: Shared) -> None:
        super().__init__(shared, f"observer-{channel}")
        self.router = router
        self.prefer = prefer
        self.channel = channel

    def open(self) -> SSEStream:
        return self.router.stream(self.prefer, channel_path(self.channel, "observe"))[0]


# ---------------------------------------------------------------------- a run and its checks


@dataclass
class Run:
    replicas: Replicas
    router: Router
    shared: Shared
    workers: list[Worker | LibraryWorker]
    observers: list[Observer]
    started: float

    @property
    def turns(self) -> list[Turn]:
        return [t for w in self.workers for t in w.turns]

    def finish(self) -> None:
        """Wait for every client (until the test's deadline), then stop the observers."""
        try:
            for worker in self.workers:
                worker.join(timeout=max(self.shared.deadline - time.monotonic(), 0.1))
        finally:
            self.stop()

    def stop(self) -> None:
        if any(w.is_alive() for w in self.workers):
            self.shared.failed.set()  # the clients still running give up at their next retry
        for observer in self.observers:
            observer.stop()
        for thread in [*self.observers, *self.workers]:
            thread.join(timeout=10)

    def summary(self) -> str:
        turns = self.turns
        spread = sum(1 for t in turns if len({t.enqueued_on, t.granted_on, t.released_on}) == 3)
        return (
            f"{len(turns)} turns in {time.monotonic() - self.started:.1f}s; "
            f"enqueue/stream/release on three different replicas: {spread}; "
            f"retried requests: {sum(t.retries for t in turns)}, "
            f"resubscribes: {sum(max(t.subscriptions - 1, 0) for t in turns)}, "
            f"ambiguous requests resolved through the view: {sum(t.recovered for t in turns)}, "
            f"503 answers: {len(self.shared.unavailable)}, clients that stayed away: {self.shared.comebacks}"
        )


@contextlib.contextmanager
def running(
    database_url: str,
    log_dir: Path,
    library: Callable[[int], bool] = lambda i: False,
    comeback_s: float = 0.0,
) -> Iterator[Run]:
    """Three replicas, three channels, 30 clients started. ``run.finish()`` waits for the clients; on leaving,
    clients still running are told to give up, and the replicas are stopped."""
    with Replicas(database_url, log_dir) as replicas:
        router = Router(replicas)
        for channel in CHANNELS:
            router.ok(
                0, "POST", "/channels", {"name": channel, "leaseMs": LEASE_MS, "graceMs": GRACE_MS}, 201
            )
        started = time.monotonic()
        shared = Shared(deadline=started + RUN_S)
        urls = [proc.url for proc in replicas.procs]
        workers: list[Worker | LibraryWorker] = []
        for i in range(N_CLIENTS):
            channel = CHANNELS[i % len(CHANNELS)]
            home = (i // len(CHANNELS)) % len(replicas)
            client_id = f"client-{i:02d}"
            if library(i):
                ring = urls[home:] + urls[:home]
                workers.append(LibraryWorker(ring, replicas.url_names(), client_id, channel, shared))
            else:
                workers.append(Worker(router, client_id, channel, home, shared, comeback_s=comeback_s))
        observers = [Observer(router, len(replicas) - 1, channel, shared) for channel in CHANNELS]
        run = Run(replicas, router, shared, workers, observers, started)
        for thread in [*observers, *workers]:
            thread.start()
        try:
            yield run
        finally:
            run.stop()


def check_run(run: Run, *, database_up: bool = True, alive: tuple[int, ...] = (0, 1, 2)) -> None:
    """Every invariant, per channel, plus: every replica that should be up still serves and hears. With
    ``database_up`` false, 503 answers are expected."""
    shared = run.shared
    summary = run.summary()
    print(summary)
    assert not shared.errors, (
        summary + "\n" + "\n".join(shared.errors) + "\n\nserver logs:\n" + run.replicas.logs()[-30_000:]
    )
    assert not any(w.is_alive() for w in run.workers), summary
    if database_up:
        assert not shared.unavailable, "503 BACKEND_UNAVAILABLE with the database up:\n" + "\n".join(
            shared.unavailable
        )

    # No ticket lost: every client finished all its turns; no ticket ended any other way than by release.
    assert not shared.timeouts, shared.timeouts
    assert [len(w.turns) for w in run.workers] == [TURNS_EACH] * N_CLIENTS
    turns = run.turns
    assert all(t.token is not None and t.release_end > 0 for t in turns)
    assert all(0 < t.enqueue_start <= t.enqueue_end <= t.your_turn_at for t in turns)
    first_alive = alive[0]
    for channel in CHANNELS:
        view = run.router.ok(first_alive, "GET", channel_path(channel, "queue"))
        assert view["depth"] == 0 and view["holder"] is None, view
        check_channel(channel, [t for t in turns if t.channel == channel])
    late = 0
    for observer in run.observers:
        late += check_observer(
            observer, {t.request_id: t.token for t in turns if t.channel == observer.channel}
        )
    print(f"observers saw {late} grants after a later one")

    # Events reach whichever replica holds the stream: many grants were delivered by a replica other than the
    # one that took the release that caused them.
    cross = 0
    for channel in CHANNELS:
        by_grant = sorted((t for t in turns if t.channel == channel), key=lambda t: t.your_turn_at)
        cross += sum(1 for a, b in itertools.pairwise(by_grant) if a.released_on != b.granted_on)
    assert cross >= len(turns) // 10, f"only {cross} grants crossed replicas; {summary}"
    check_replicas_talk(run.router, run.replicas, alive)


def check_channel(channel: str, turns: list[Turn]) -> None:
    assert len(turns) == N_CLIENTS // len(CHANNELS) * TURNS_EACH
    # No turn granted twice, no token reused: requestIds and tokens are one to one.
    assert len({t.request_id for t in turns}) == len(turns), f"{channel}: a requestId was given to two turns"
    assert len({t.token for t in turns}) == len(turns), f"{channel}: a fencing token was given to two turns"
    # Mutual exclusion: hold intervals (your-turn received .. release sent) never overlap; in grant order the
    # tokens strictly increase.
    by_grant = sorted(turns, key=lambda t: t.your_turn_at)
    for a, b in itertools.pairwise(by_grant):
        assert a.your_turn_at <= a.release_sent, a
        assert a.release_sent < b.your_turn_at, f"{channel}: overlapping turns:\n{a}\n{b}"
        assert a.token is not None and b.token is not None and a.token < b.token, (
            f"{channel}: tokens out of grant order:\n{a}\n{b}"
        )
    # FIFO: a ticket whose enqueue was answered before another's was sent is granted first.
    for a in turns:
        for b in turns:
            if a.enqueue_end < b.enqueue_start:
                assert a.token is not None and b.token is not None
                assert a.token < b.token, f"{channel}: granted out of enqueue order:\n{a}\n{b}"


def check_observer(observer: Observer, token_of: dict[str, int | None]) -> int:
    """The observer saw a part of the turns (not those announced while it reconnected); what it saw agrees.
    Returns how many of the grants it saw came after a later one.

    The order is not asserted: a replica delivers a batch it committed once it has read the COMMIT's answer, and
    when it reads its LISTEN connection first, other replicas' later batches reach its observers before its own
    (right after its LISTEN connection comes back, the first batch it commits on a channel can overtake too)."""
    grants = [d for n, d in observer.events if n == "turn-started"]
    assert grants, f"the observer of {observer.channel} saw no turn start"
    for grant in grants:
        assert token_of.get(grant["requestId"]) == grant["fencingToken"], (
            grant,
            token_of.get(grant["requestId"]),
        )
    observed = [g["fencingToken"] for g in grants]
    assert len(observed) == len(set(observed)), f"{observer.channel}: a grant announced twice: {observed}"
    completed = [d for n, d in observer.events if n == "turn-completed"]
    assert all(d["success"] for d in completed), [d for d in completed if not d["success"]]
    assert not [e for e in observer.events if e[0] in ("left", "timeout")], observer.events
    return sum(1 for i, token in enumerate(observed) if token < max(observed[:i], default=0))


def check_replicas_talk(router: Router, replicas: Replicas, alive: tuple[int, ...]) -> None:
    """Each live replica takes requests, and a grant caused on it reaches a stream on the next live one."""
    channel = "replicas/after"
    router.ok(alive[0], "POST", "/channels", {"name": channel, "leaseMs": LEASE_MS, "graceMs": GRACE_MS}, 201)
    for i, here in enumerate(alive):
        there = alive[(i + 1) % len(alive)]
        holder = router.ok(here, "POST", channel_path(channel, "enqueue"), {"clientId": f"holder-{here}"})
        waiter = router.ok(here, "POST", channel_path(channel, "enqueue"), {"clientId": f"waiter-{here}"})
        assert (holder["position"], waiter["position"]) == (0, 1)
        stream, name = router.subscribe(there, channel, f"waiter-{here}", waiter["requestId"])
        with stream:
            assert name == replicas.names[there]
            assert stream.expect("queued", "your-turn")["position"] == 1
            router.ok(
                here,
                "POST",
                channel_path(channel, "release"),
                {"clientId": f"holder-{here}", "requestId": holder["requestId"]},
                204,
            )
            event = stream.expect("your-turn", "timeout", timeout=10)
            assert event["requestId"] == waiter["requestId"], event
            router.ok(
                there,
                "POST",
                channel_path(channel, "release"),
                {"clientId": f"waiter-{here}", "requestId": waiter["requestId"]},
                204,
            )


# ---------------------------------------------------------------------- 1. three replicas


def test_three_replicas_share_channels(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    with running(postgres_url, tmp_path) as run:
        run.finish()
        check_run(run)
        assert not run.replicas.error_lines(), "\n".join(run.replicas.error_lines())


# ---------------------------------------------------------------------- 2. a replica killed


def test_replica_killed_mid_run(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    victim = 0
    total = N_CLIENTS * TURNS_EACH
    # Half the clients (in groups of three, one per channel) use the client library; of the others, those cut
    # off by the kill stay away until the survivors have taken the dead replica for dead.
    with running(
        postgres_url, tmp_path, library=lambda i: (i // len(CHANNELS)) % 2 == 0, comeback_s=COMEBACK_S
    ) as run:
        shared = run.shared
        workers = {w.client_id: w for w in run.workers}
        name = run.replicas.names[victim]

        def hand_written_stream_on_victim() -> bool:
            with shared.lock:
                on = [c for c, r in shared.streams_on.items() if r == name]
            return shared.completed >= total // 4 and any(isinstance(workers[c], Worker) for c in on)

        shared.wait_until(
            "a third of the turns with a stream on the victim", hand_written_stream_on_victim, 40
        )
        # Besides: on a channel of its own, a holder and a waiter on the victim that will never come back, and a
        # waiter behind them on a survivor.
        with Abandoned(run.router, victim, survivor=victim + 1) as abandoned:
            killed_at = shared.completed
            run.replicas.kill9(victim)
            killed = time.monotonic()
            run.finish()
            print(f"replica {name} killed after {killed_at} completed turns")
            alive = tuple(i for i in range(N_REPLICAS) if i != victim)
            check_run(run, alive=alive)
            # The survivors take the victim for dead once it has been silent for STALE_S (its presence row goes)
            # ... (the run itself may finish sooner than that)
            deadline = killed + STALE_S + 10
            while len(instances := _instances(postgres_url)) != len(alive) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(instances) == len(alive), instances
            # ... and its abandoned tickets did not stay stuck: after the grace, the waiter behind them holds.
            waited = abandoned.wait_for_turn(deadline=killed + STALE_S + 1 + ABANDONED_GRACE_S + 10)
            assert waited - killed >= STALE_S - 1.5, (
                f"the abandoned tickets were dropped {waited - killed:.1f}s after the kill"
            )
            print(
                f"abandoned tickets dropped; the waiter behind them got the turn {waited - killed:.1f}s after the kill"
            )
        assert shared.comebacks >= 1, "no hand-written client had its stream cut off by the kill"
        # The library's clients whose home was the dead replica finished their turns elsewhere.
        moved = [
            w
            for w in run.workers
            if isinstance(w, LibraryWorker) and w.urls[0] == run.replicas.procs[victim].url
        ]
        assert moved and all(t.granted_on != name for w in moved for t in w.turns[-2:])
        survivors = run.replicas.error_lines(alive)
        assert not survivors, "\n".join(survivors)


class Abandoned:
    """On a channel of its own (with a short grace): a holder and a waiter whose streams are on ``victim`` and
    whose clients never come back, and a waiter behind them on ``survivor``."""

    CHANNEL = "replicas/abandoned"

    def __init__(self, router: Router, victim: int, survivor: int) -> None:
        self.router = router
        path = channel_path(self.CHANNEL, "enqueue")
        router.ok(
            victim, "POST", "/channels", {"name": self.CHANNEL, "leaseMs": LEASE_MS, "graceMs": 1000}, 201
        )
        self.streams: list[SSEStream] = []
        try:
            for client_id, where, expected in (
                ("gone-holder", victim, "your-turn"),
                ("gone-waiter", victim, "queued"),
            ):
                request_id = router.ok(victim, "POST", path, {"clientId": client_id})["requestId"]
                stream, name = router.subscribe(where, self.CHANNEL, client_id, request_id)
                self.streams.append(stream)
                assert name == router.targets[where][0]
                stream.expect(expected)
            self.request_id = router.ok(survivor, "POST", path, {"clientId": "stays"})["requestId"]
            self.stream, _ = router.subscribe(survivor, self.CHANNEL, "stays", self.request_id)
            self.streams.append(self.stream)
            assert self.stream.expect("queued")["position"] == 2
            self.survivor = survivor
        except BaseException:
            self.close()
            raise

    def wait_for_turn(self, deadline: float) -> float:
        """When the waiter on the survivor got your-turn (this process's monotonic clock)."""
        event = self.stream.expect("your-turn", "timeout", timeout=max(deadline - time.monotonic(), 0.1))
        got = time.monotonic()
        assert event["requestId"] == self.request_id and "fencingToken" in event, event
        view = self.router.ok(self.survivor, "GET", channel_path(self.CHANNEL, "queue"))
        assert view["holder"]["clientId"] == "stays" and view["depth"] == 1, view
        self.router.ok(
            self.survivor,
            "POST",
            channel_path(self.CHANNEL, "release"),
            {"clientId": "stays", "requestId": self.request_id},
            204,
        )
        return got

    def close(self) -> None:
        for stream in self.streams:
            stream.close()

    def __enter__(self) -> Abandoned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _instances(database_url: str) -> list[str]:
    """The server processes the database knows as alive."""

    async def query() -> list[str]:
        import asyncpg

        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return [str(r[0]) for r in await conn.fetch("SELECT instance FROM turnq_instances")]
        finally:
            await conn.close()

    return asyncio.run(query())


# ---------------------------------------------------------------------- 3. PostgreSQL restarted


def _cluster_version(config: pytest.Config, dsn: str) -> str:
    """The one local cluster the DSN points at; skip unless restarting it was asked for, or there is none."""
    if not ("pg_restart" in (config.getoption("markexpr") or "") or os.environ.get("TURNQ_TEST_PG_RESTART")):
        pytest.skip(
            "restarts the local PostgreSQL server: select with -m pg_restart or TURNQ_TEST_PG_RESTART=1"
        )
    host = urlsplit(dsn).hostname or "localhost"
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if (
        host not in ("127.0.0.1", "localhost", "::1")
        or len(versions) != 1
        or not shutil.which("pg_ctlcluster")
    ):
        pytest.skip("needs exactly one local PostgreSQL cluster (pg_ctlcluster) behind the test DSN")
    return versions[0]


def _pg_ctl(version: str, action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _accepting(dsn: str) -> bool:
    parts = urlsplit(dsn)
    result = subprocess.run(
        ["pg_isready", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-t", "2"],
        check=False,
        timeout=10,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return result.returncode == 0


def _wait_accepting(dsn: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _accepting(dsn):
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL did not accept connections within {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def cluster_left_running(version: str, dsn: str) -> Iterator[None]:
    """Whatever happens inside, the cluster is started again and accepts connections on leaving."""
    try:
        yield
    finally:
        if not _accepting(dsn):
            with contextlib.suppress(subprocess.SubprocessError):
                _pg_ctl(version, "start")
        _wait_accepting(dsn)


@pytest.mark.pg_restart
@pytest.mark.parametrize("down", list(PG_DOWN_S))
def test_postgres_restarted_mid_run(
    down: str,
    request: pytest.FixtureRequest,
    postgres_server_dsn: str,  # noqa: F811
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    version = _cluster_version(request.config, postgres_server_dsn)
    down_s = PG_DOWN_S[down]
    total = N_CLIENTS * TURNS_EACH
    with cluster_left_running(version, postgres_server_dsn), running(postgres_url, tmp_path) as run:
        shared = run.shared
        shared.wait_until("a third of the turns", lambda: shared.completed >= total // 3, 40)
        stopped_at = shared.completed
        _pg_ctl(version, "stop")
        time.sleep(down_s)
        during = shared.completed - stopped_at
        _pg_ctl(version, "start")
        _wait_accepting(postgres_server_dsn)
        run.finish()
        taken_for_dead = [
            name
            for name, proc in zip(run.replicas.names, run.replicas.procs, strict=True)
            if "had been taken for dead" in proc.output()
        ]
        print(
            f"PostgreSQL stopped after {stopped_at} turns for {down_s}s ({during} completed meanwhile); "
            f"replicas taken for dead and back: {taken_for_dead}"
        )
        check_run(run, database_up=False)
        assert stopped_at < total, "the run was over before PostgreSQL stopped"
        assert shared.unavailable, "no request was answered 503 while PostgreSQL was down"
        for name, proc in zip(run.replicas.names, run.replicas.procs, strict=True):
            # every replica noticed, and its listener came back by itself
            assert "listening for turnq events again" in proc.output(), (
                f"replica {name}:\n{proc.output()[-5000:]}"
            )
        assert not run.replicas.error_lines(), "\n".join(run.replicas.error_lines())
