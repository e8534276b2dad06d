"""Crash tests: a real ``turnq serve`` killed with SIGKILL and started again on the same port and database.

Every test runs once per durable backend: ``sqlite`` (a fresh file) and ``postgres`` (a fresh database on
the server named by ``TURNQ_TEST_POSTGRES_DSN``, else in a testcontainers PostgreSQL when Docker runs;
skipped with the reason otherwise, or while the PostgreSQL backend is not installed).

* ``test_holder_and_waiters_survive_kill9``: a holder and ten waiters with open streams; after kill -9 and a
  restart the queue view is the same (holder, fencing token, lease deadline, waiters in order), the clients
  resubscribe within the grace and finish in FIFO order, and every token granted after the restart is greater
  than every token granted before it.
* ``test_turns_survive_random_sigkills``: ten clients doing twenty turns each while the server is killed and
  restarted at ten random moments. The clients retry like real ones (resubscribe, retry an ambiguous enqueue
  or release and recover from ``ALREADY_QUEUED``/``NOT_YOUR_TURN``); afterwards no ticket is lost, no turn is
  granted twice, no fencing token is reused, hold intervals never overlap and grants follow enqueue order.

The random moments come from a seed printed with the results; set ``TURNQ_CRASH_SEED`` to replay one, and
``TURNQ_CRASH_SERVER_ARGS`` (e.g. ``--access-log``) to pass more options to every server started. Every
wait is bounded; readiness is polled through ``/health``. The server logs of every generation stay in the
test's ``tmp_path`` (``server-GG-A-PORT.log``).
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import random
import secrets
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
from chaos import NOT_SENT, TRANSPORT_ERRORS, UNAVAILABLE, ReconnectingObserver
from serverproc import HOST, ServerExited, ServerProcess, SSEStream, channel_path, free_port, start_server
from turnq.core import backend_schemes

pytestmark = pytest.mark.timeout(180)

API_KEY = "crash-key"
CHANNEL = "crash/turns"  # a "/" in the name: paths carry it URL-encoded
POSTGRES_DSN_ENV = "TURNQ_TEST_POSTGRES_DSN"
SEED_ENV = "TURNQ_CRASH_SEED"
SERVER_ARGS = os.environ.get("TURNQ_CRASH_SERVER_ARGS", "").split()  # e.g. --access-log, to investigate
HTTP_TIMEOUT = 5.0


# ---------------------------------------------------------------------- backends


def _docker_running() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False  # (asking the docker library would leak a socket when no daemon answers)
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env()
    except Exception:
        return False
    try:
        client.ping()
    except Exception:
        return False
    finally:
        client.close()
    return True


def _postgres_container() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
    return PostgresContainer(
        "postgres:16-alpine", username="postgres", password="postgres", dbname="test", driver=None
    )


@pytest.fixture(scope="session")
def postgres_server_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL server these tests may create databases on."""
    if "postgresql" not in backend_schemes():
        pytest.skip(
            "the PostgreSQL backend is not installed "
            "(turnq.core.backend_schemes() has no postgresql:// scheme)"
        )
    dsn = os.environ.get(POSTGRES_DSN_ENV)
    if dsn:
        yield dsn
        return
    if not _docker_running():
        pytest.skip(f"{POSTGRES_DSN_ENV} is not set and Docker is not available for a PostgreSQL container")
    container = _postgres_container()
    container.start()
    try:
        yield str(container.get_connection_url())
    finally:
        container.stop()


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _admin(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _drop_database(dsn: str, database: str) -> None:
    import asyncpg

    try:
        await _admin(dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    except asyncpg.PostgresSyntaxError:  # PostgreSQL before 13: end the sessions, then drop
        await _admin(
            dsn,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'",
            f'DROP DATABASE IF EXISTS "{database}"',
        )


@pytest.fixture
def postgres_url(postgres_server_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    database = f"turnq_crash_{secrets.token_hex(6)}"
    asyncio.run(_admin(postgres_server_dsn, f'CREATE DATABASE "{database}"'))
    try:
        yield _with_database(postgres_server_dsn, database)
    finally:
        asyncio.run(_drop_database(postgres_server_dsn, database))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'turnq.db'}"
    return str(request.getfixturevalue("postgres_url"))


# ---------------------------------------------------------------------- server across restarts


def stable_port(host: str = HOST) -> int:
    """A free port below the kernel's ephemeral range, so that while the server is down no outgoing
    connection (and no ``free_port()`` of a test running beside this one) can take it before the restart
    binds it again."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port(host)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, low) if low > 20_100 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    return free_port(host)


class CrashServer:
    """``turnq serve`` on one port and one database, across any number of kill -9 and restart cycles."""

    def __init__(self, database_url: str, log_dir: Path) -> None:
        self.database_url = database_url
        self.log_dir = log_dir
        self.port = stable_port()
        self.generation = 0
        self.proc: ServerProcess | None = None
        self.api = Api(HOST, self.port, API_KEY)

    def start(self) -> None:
        """Start the next generation and wait until ``/health`` answers."""
        assert self.proc is None or not self.proc.running()
        for attempt in range(5):
            name = f"server-{self.generation:02d}-{attempt}"
            try:
                self.proc = start_server(
                    *SERVER_ARGS,
                    api_keys=[API_KEY],
                    log_dir=self.log_dir,
                    database_url=self.database_url,
                    port=self.port,
                    name=name,
                )
            except ServerExited as exc:
                # Only a port taken by someone else is retried; any other failed restart is a finding.
                if "cannot listen" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2)
                continue
            self.generation += 1
            return

    def kill9(self) -> None:
        assert self.proc is not None
        code = self.proc.kill9()
        output = self.proc.output()
        self.proc.close()
        assert code == -9, f"server exited with {code} before the SIGKILL:\n{output}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}"
            for path in sorted(self.log_dir.glob("server-*.log"))
        )

    def error_lines(self) -> list[str]:
        """Log lines of every generation that report a failure inside the server."""
        return [
            line
            for line in self.logs().splitlines()
            if '"level": "error"' in line or '"level": "critical"' in line or line.startswith("Traceback")
        ]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()

    def __enter__(self) -> CrashServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Api:
    """Plain HTTP calls to ``host:port`` with a fresh connection each, safe to use from many threads."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host = host
        self.port = port
        self.key = key

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"x-api-key": self.key}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["content-type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if raw and "json" in resp.getheader("content-type", ""):
                return resp.status, json.loads(raw)
            return resp.status, raw.decode(errors="replace") if raw else None
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer = self.call(method, path, body)
        assert got == status, f"{method} {path} {body}: expected {status}, got {got} {answer}"
        return answer

    def create_channel(self, **settings: Any) -> None:
        self.ok("POST", "/channels", {"name": CHANNEL, **settings}, status=201)

    def queue_view(self) -> dict[str, Any]:
        view: dict[str, Any] = self.ok("GET", channel_path(CHANNEL, "queue"))
        return view

    def enqueue(self, client_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.ok("POST", channel_path(CHANNEL, "enqueue"), {"clientId": client_id})
        return answer

    def release(self, client_id: str, request_id: str) -> None:
        self.ok(
            "POST", channel_path(CHANNEL, "release"), {"clientId": client_id, "requestId": request_id}, 204
        )

    def subscribe(self, client_id: str, request_id: str) -> SSEStream:
        query = urlencode({"clientId": client_id, "requestId": request_id})
        return SSEStream(
            self.host, self.port, f"{channel_path(CHANNEL, 'subscribe')}?{query}", {"x-api-key": self.key}
        )

    def observe(self) -> SSEStream:
        return SSEStream(self.host, self.port, channel_path(CHANNEL, "observe"), {"x-api-key": self.key})


def _comparable(view: dict[str, Any]) -> dict[str, Any]:
    """A queue view without what moves with the clock (``waitingMs``)."""
    return {**view, "queue": [{k: v for k, v in w.items() if k != "waitingMs"} for w in view["queue"]]}


# ---------------------------------------------------------------------- 1. holder and ten waiters


def test_holder_and_waiters_survive_kill9(database_url: str, tmp_path: Path) -> None:
    n_waiters = 10
    with CrashServer(database_url, tmp_path) as server:
        api = server.api
        api.create_channel(leaseMs=30_000, graceMs=20_000)

        # A few turns first, so the token counter has a history a restart could lose.
        tokens_before: list[int] = []
        for i in range(3):
            rid = api.enqueue(f"warmup-{i}")["requestId"]
            with api.subscribe(f"warmup-{i}", rid) as stream:
                tokens_before.append(stream.expect("your-turn")["fencingToken"])
                api.release(f"warmup-{i}", rid)

        holder = api.enqueue("holder")
        assert holder["position"] == 0
        streams = {"holder": api.subscribe("holder", holder["requestId"])}
        turn = streams["holder"].expect("your-turn")
        tokens_before.append(turn["fencingToken"])
        waiters: list[tuple[str, str]] = []
        for i in range(n_waiters):
            client_id = f"waiter-{i:02d}"
            answer = api.enqueue(client_id)
            assert answer["position"] == i + 1
            waiters.append((client_id, answer["requestId"]))
            streams[client_id] = api.subscribe(client_id, answer["requestId"])
            assert streams[client_id].expect("queued")["position"] == i + 1

        before = api.queue_view()
        assert before["holder"]["clientId"] == "holder"
        assert before["holder"]["requestId"] == holder["requestId"]
        assert before["holder"]["fencingToken"] == turn["fencingToken"]
        assert before["holder"]["leaseExpiresAt"] == turn["leaseExpiresAt"]
        assert [(w["clientId"], w["requestId"]) for w in before["queue"]] == waiters

        server.kill9()
        for client_id, stream in streams.items():
            events = stream.until_end(timeout=5)
            assert not [e for e in events if e[0] == "timeout"], f"{client_id}: {events}"
            stream.close()
        server.start()

        after = api.queue_view()
        assert _comparable(after) == _comparable(before), "the line changed across kill -9 and restart"

        with api.observe() as observer:
            # Every client comes back within the grace with the same clientId/requestId.
            streams = {"holder": api.subscribe("holder", holder["requestId"])}
            again = streams["holder"].expect("your-turn", "timeout")
            assert again == turn, "the holder's turn changed across the restart"
            for i, (client_id, request_id) in enumerate(waiters):
                streams[client_id] = api.subscribe(client_id, request_id)
                queued = streams[client_id].expect("queued", "timeout")
                assert queued == {"channel": CHANNEL, "requestId": request_id, "position": i + 1}

            api.release("holder", holder["requestId"])
            assert streams["holder"].until_end(timeout=5) == []
            tokens_after: list[int] = []
            for client_id, request_id in waiters:
                event = streams[client_id].expect("your-turn", "timeout")
                assert event["requestId"] == request_id, f"{client_id} got {event}"
                holding = api.queue_view()["holder"]
                assert (holding["clientId"], holding["requestId"]) == (client_id, request_id)
                assert holding["fencingToken"] == event["fencingToken"]
                tokens_after.append(event["fencingToken"])
                api.release(client_id, request_id)
                assert not [e for e in streams[client_id].until_end(timeout=5) if e[0] == "timeout"]

            # The observer saw the holder finish, then each waiter's turn start in enqueue order.
            seen: list[tuple[str, str, Any]] = []
            while len([s for s in seen if s[0] == "turn-started"]) < n_waiters:
                event = observer.next_event(timeout=5)
                assert event is not None, f"the observer stream ended; it saw {observer.events}"
                name, data = event
                if name in ("turn-started", "turn-completed"):
                    seen.append((name, data["clientId"], data.get("fencingToken")))
        for stream in streams.values():
            stream.close()

        assert seen[0] == ("turn-completed", "holder", turn["fencingToken"])
        started = [(c, t) for name, c, t in seen if name == "turn-started"]
        assert started == list(zip([c for c, _ in waiters], tokens_after, strict=True))
        assert tokens_after == sorted(set(tokens_after)), f"tokens not strictly increasing: {tokens_after}"
        assert min(tokens_after) > max(tokens_before), (tokens_before, tokens_after)
        assert api.queue_view()["depth"] == 0
        assert not server.error_lines(), "\n".join(server.error_lines())


# ---------------------------------------------------------------------- 2. random kills under load


@dataclass
class Turn:
    """One ticket of one client, as the client saw it. Times are this process's ``time.monotonic()``."""

    client_id: str
    index: int
    request_id: str = ""
    enqueue_start: float = 0.0  # the first enqueue attempt was sent
    enqueue_end: float = 0.0  # the answer that gave the requestId arrived
    token: int | None = None
    your_turn_at: float = 0.0  # your-turn received
    release_sent: float = 0.0  # the first release attempt was sent
    release_end: float = 0.0
    enqueue_attempts: int = 0
    subscriptions: int = 0
    release_attempts: int = 0
    enqueue_ambiguous: bool = False  # an attempt was sent and got no answer
    release_ambiguous: bool = False
    recovered_enqueue: bool = False  # an ambiguous enqueue, then 409 ALREADY_QUEUED: found in the queue view
    recovered_release: bool = False  # an ambiguous release, then 403 NOT_YOUR_TURN: confirmed in the view


@dataclass
class Shared:
    deadline: float
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    timeouts: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # 503 answers, retried
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: threading.Event = field(default_factory=threading.Event)
    # The chaos loop can ask to hear of the next enqueue or release about to be sent, to kill the server
    # while that request is in flight.
    armed: str | None = None
    fired: threading.Event = field(default_factory=threading.Event)

    def arm(self, kind: str) -> None:
        with self.lock:
            self.armed = kind
            self.fired.clear()

    def sending(self, kind: str) -> None:
        if self.armed == kind:
            with self.lock:
                if self.armed == kind:
                    self.armed = None
                    self.fired.set()

    def saw_unavailable(self, who: str, what: str, body: Any) -> None:
        with self.lock:
            self.unavailable.append(f"{who}: {what}: {body}")

    def turn_done(self) -> None:
        with self.lock:
            self.completed += 1

    def fail(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)
        self.failed.set()


class Worker(threading.Thread):
    """A client that survives server crashes: retries with a short backoff, resubscribes on a dropped stream,
    and resolves ambiguous enqueues and releases through the queue view."""

    def __init__(self, api: Api, client_id: str, turns: int, shared: Shared, seed: int) -> None:
        super().__init__(name=client_id, daemon=True)
        self.api = api
        self.client_id = client_id
        self.n_turns = turns
        self.shared = shared
        self.rng = random.Random(seed)
        self.turns: list[Turn] = []

    def run(self) -> None:
        try:
            for index in range(self.n_turns):
                if self.shared.failed.is_set():
                    return
                turn = Turn(self.client_id, index)
                self.turns.append(turn)
                self._enqueue(turn)
                stream = self._wait_turn(turn)
                try:
                    time.sleep(self.rng.uniform(0.0005, 0.004))  # the work
                    self._release(turn)
                finally:
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

    def _view(self) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                status, body = self.api.call("GET", channel_path(CHANNEL, "queue"))
            except TRANSPORT_ERRORS:
                status, body = 0, None
            if status in (0, UNAVAILABLE):
                if status:
                    self.shared.saw_unavailable(self.client_id, "queue view", body)
                self._pause(attempt, "the queue view")
                attempt += 1
                continue
            assert status == 200, f"queue view: {status} {body}"
            return body  # type: ignore[no-any-return]

    def _path(self, action: str) -> str:
        return channel_path(CHANNEL, action)

    # -------------------------------------------------------------- one turn

    def _enqueue(self, turn: Turn) -> None:
        ambiguous = False
        attempt = 0
        turn.enqueue_start = time.monotonic()
        while True:
            turn.enqueue_attempts += 1
            self.shared.sending("enqueue")
            try:
                status, body = self.api.call("POST", self._path("enqueue"), {"clientId": self.client_id})
            except TRANSPORT_ERRORS as exc:
                ambiguous = ambiguous or not isinstance(exc, NOT_SENT)
                turn.enqueue_ambiguous = turn.enqueue_ambiguous or ambiguous
                self._pause(attempt, "enqueue")
                attempt += 1
                continue
            if status == UNAVAILABLE:  # the backend failed; the enqueue may have been committed
                self.shared.saw_unavailable(self.client_id, "enqueue", body)
                ambiguous = turn.enqueue_ambiguous = True
                self._pause(attempt, "enqueue")
                attempt += 1
                continue
            if status == 200:
                turn.request_id = body["requestId"]
                break
            if status == 409 and body.get("code") == "ALREADY_QUEUED" and ambiguous:
                # An earlier attempt took effect before the server died: find that ticket.
                view = self._view()
                mine = [
                    w["requestId"]
                    for w in [view["holder"] or {}, *view["queue"]]
                    if w.get("clientId") == self.client_id
                ]
                assert len(mine) == 1, f"{self.client_id}: 409 after an ambiguous enqueue, but view {view}"
                turn.request_id = mine[0]
                turn.recovered_enqueue = True
                break
            raise AssertionError(f"{self.client_id}: enqueue answered {status} {body}")
        turn.enqueue_end = time.monotonic()

    def _wait_turn(self, turn: Turn) -> SSEStream:
        """Subscribe (again, after every drop) until your-turn; returns the open stream."""
        attempt = 0
        while True:
            try:
                stream = self.api.subscribe(self.client_id, turn.request_id)
            except TRANSPORT_ERRORS:
                self._pause(attempt, "subscribe")
                attempt += 1
                continue
            turn.subscriptions += 1
            if stream.status == UNAVAILABLE:
                self.shared.saw_unavailable(self.client_id, "subscribe", stream.body())
                stream.close()
                self._pause(attempt, "subscribe")
                attempt += 1
                continue
            if stream.status != 200:
                body = stream.body()
                stream.close()
                raise AssertionError(
                    f"{self.client_id}: subscribe for turn {turn.index} answered {stream.status} {body!r}"
                )
            attempt = 0
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
                return stream
            stream.close()
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

    def _release(self, turn: Turn) -> None:
        ambiguous = False
        attempt = 0
        body_out = {"clientId": self.client_id, "requestId": turn.request_id}
        while True:
            sent = time.monotonic()
            turn.release_sent = turn.release_sent or sent
            turn.release_attempts += 1
            self.shared.sending("release")
            try:
                status, body = self.api.call("POST", self._path("release"), body_out)
            except TRANSPORT_ERRORS as exc:
                ambiguous = ambiguous or not isinstance(exc, NOT_SENT)
                turn.release_ambiguous = turn.release_ambiguous or ambiguous
                self._pause(attempt, "release")
                attempt += 1
                continue
            if status == UNAVAILABLE:  # the backend failed; the release may have been committed
                self.shared.saw_unavailable(self.client_id, "release", body)
                ambiguous = turn.release_ambiguous = True
                self._pause(attempt, "release")
                attempt += 1
                continue
            if status == 204:
                break
            if status == 403 and body.get("code") == "NOT_YOUR_TURN" and ambiguous:
                # An earlier attempt took effect before the server died: the ticket must be gone.
                view = self._view()
                ids = [w.get("requestId") for w in [view["holder"] or {}, *view["queue"]]]
                assert turn.request_id not in ids, f"{self.client_id}: 403 on release, but view {view}"
                turn.recovered_release = True
                break
            raise AssertionError(f"{self.client_id}: release of turn {turn.index} answered {status} {body}")
        turn.release_end = time.monotonic()


class Observer(ReconnectingObserver):
    """Watches the channel, reconnecting after every crash; sees a part of the turns (not those announced
    while it was away), which must agree with what the clients saw."""

    def __init__(self, api: Api, shared: Shared) -> None:
        super().__init__(shared, "observer")
        self.api = api
        self.shared = shared

    def open(self) -> SSEStream:
        return self.api.observe()

    def unavailable(self, stream: SSEStream) -> None:
        self.shared.saw_unavailable("observer", "observe", stream.body())


def test_turns_survive_random_sigkills(database_url: str, tmp_path: Path) -> None:
    n_clients, turns_each, kills = 10, 20, 10
    total = n_clients * turns_each
    seed = int(os.environ.get(SEED_ENV) or secrets.randbits(32))
    rng = random.Random(seed)
    started = time.monotonic()
    shared = Shared(deadline=started + 100)
    kill_at: list[int] = []  # completed turns at each kill

    with CrashServer(database_url, tmp_path) as server:
        api = server.api
        api.create_channel(leaseMs=20_000, graceMs=20_000)
        observer = Observer(api, shared)
        workers = [
            Worker(api, f"client-{i:02d}", turns_each, shared, rng.randrange(2**32)) for i in range(n_clients)
        ]
        observer.start()
        for worker in workers:
            worker.start()
        try:
            # Kill at random moments spread over the run, shortly after a random number of turns has
            # completed: at any point, or just as some client sends an enqueue, or a release (the ambiguous
            # cases).
            targets = sorted(rng.sample(range(2, total - 10), kills))
            for i, target in enumerate(targets):
                while shared.completed < target and not shared.failed.is_set():
                    if time.monotonic() > shared.deadline:
                        shared.fail(f"stuck at {shared.completed} completed turns")
                    time.sleep(0.002)
                if shared.failed.is_set():
                    break
                kind = (None, "enqueue", "release")[i % 3]
                if kind is None:
                    time.sleep(rng.uniform(0, 0.04))
                else:
                    shared.arm(kind)
                    shared.fired.wait(timeout=5)
                    time.sleep(rng.uniform(0, 0.003))
                kill_at.append(shared.completed)
                server.kill9()
                time.sleep(rng.uniform(0, 0.3))
                server.start()
            for worker in workers:
                worker.join(timeout=max(shared.deadline - time.monotonic(), 0.1))
        finally:
            if any(w.is_alive() for w in workers):
                shared.failed.set()  # the clients still running give up at their next retry
            observer.stop()
            observer.join(timeout=10)
        elapsed = time.monotonic() - started
        try:
            final_view = api.queue_view()
        except TRANSPORT_ERRORS as exc:
            final_view = {"error": repr(exc)}

    turns = [t for w in workers for t in w.turns]
    summary = (
        f"seed={seed} ({SEED_ENV} replays it) backend={database_url.split(':', 1)[0]} "
        f"elapsed={elapsed:.1f}s kills after {kill_at} completed turns; "
        f"enqueue retries={sum(t.enqueue_attempts - 1 for t in turns)} "
        f"(ambiguous: {sum(t.enqueue_ambiguous for t in turns)}, "
        f"recovered via 409: {sum(t.recovered_enqueue for t in turns)}), "
        f"resubscribes={sum(t.subscriptions - 1 for t in turns)}, "
        f"release retries={sum(t.release_attempts - 1 for t in turns)} "
        f"(ambiguous: {sum(t.release_ambiguous for t in turns)}, "
        f"recovered via 403: {sum(t.recovered_release for t in turns)}), "
        f"observer connections={observer.connections}, events={len(observer.events)}"
    )
    print(summary)
    assert not shared.errors, (
        summary + "\n" + "\n".join(shared.errors) + "\n\nserver logs:\n" + server.logs()[-20_000:]
    )
    assert not any(w.is_alive() for w in workers), summary
    assert len(kill_at) == kills
    # The database stayed up the whole time: no answer may say it was unreachable, and nothing may fail
    # inside the server.
    assert not shared.unavailable, "503 BACKEND_UNAVAILABLE with the database up:\n" + "\n".join(
        shared.unavailable
    )
    assert not server.error_lines(), "\n".join(server.error_lines())

    # No ticket lost: every client finished all its turns, and no ticket ended any other way than by release.
    assert not shared.timeouts, shared.timeouts
    assert [len(w.turns) for w in workers] == [turns_each] * n_clients
    assert all(t.token is not None and t.release_end > 0 for t in turns)
    assert final_view.get("depth") == 0, final_view
    completed = [d for n, d in observer.events if n == "turn-completed"]
    assert all(d["success"] for d in completed), [d for d in completed if not d["success"]]
    assert not [d for n, d in observer.events if n in ("left", "timeout")]

    # No turn granted twice, no token reused: requestIds and tokens match one to one, also in what the
    # observer saw of the grants; the observer saw the tokens rise.
    token_of = {t.request_id: t.token for t in turns}
    assert len(token_of) == total, "a requestId was given to two turns"
    assert len(set(token_of.values())) == total, "a fencing token was given to two turns"
    grants = [d for n, d in observer.events if n == "turn-started"]
    for grant in grants:
        assert token_of.get(grant["requestId"]) == grant["fencingToken"], (
            grant,
            token_of.get(grant["requestId"]),
        )
    observed = [g["fencingToken"] for g in grants]
    assert observed == sorted(set(observed)), f"the observer saw tokens out of order: {observed}"

    # Mutual exclusion: hold intervals (your-turn received .. first release sent) never overlap; and in grant
    # order the tokens strictly increase.
    by_grant = sorted(turns, key=lambda t: t.your_turn_at)
    for a, b in itertools.pairwise(by_grant):
        assert a.your_turn_at <= a.release_sent, a
        assert a.release_sent < b.your_turn_at, f"overlapping turns:\n{a}\n{b}"
        assert a.token is not None and b.token is not None and a.token < b.token, (
            f"tokens out of order:\n{a}\n{b}"
        )

    # Grants in enqueue order: a ticket whose enqueue was answered before another's was sent is granted first.
    for a in turns:
        for b in turns:
            if a.enqueue_end < b.enqueue_start:
                assert a.token is not None and b.token is not None
                assert a.token < b.token, f"granted out of enqueue order:\n{a}\n{b}"
