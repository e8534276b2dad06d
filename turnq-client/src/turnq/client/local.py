"""Local mode: strict-FIFO turns between processes on one host, with no server, built on ``flock(2)``.

A plain ``flock`` gives mutual exclusion but not order: when the holder lets go, the kernel wakes whichever
waiter it likes, so a process can be overtaken again and again. Local mode turns ``flock`` into a *ticket lock*
(in the family of the MCS/CLH queue locks): every arrival takes a number, and each waiter blocks in the kernel on
the lock file of the ticket just ahead of it, so the line moves one by one in arrival order.

Layout, per channel, in ``$TURNQ_LOCK_DIR`` (default ``<tempdir>/turnq-locks``)::

    <slug>-<hash>/          one directory per channel: a readable slug plus 16 hex digits of SHA-256 of the
                            name, so any name maps to a safe file name and two names never share a directory
        queue.lock          taken (LOCK_EX) only for the instant of an arrival; it also holds the ticket counter
        17.ticket           one file per live ticket, locked LOCK_EX by its owner for the ticket's whole life
        18.ticket

Arrival. Under ``queue.lock``: read the counter, take ``N`` = one more than the counter (or than the highest
ticket file, should the counter ever be lost), write it back in a single fixed-width ``pwrite`` (so a process
killed mid-way can never leave a shorter, smaller number behind), create ``N.ticket`` and lock it LOCK_EX, and
list the ticket files numbered below ``N``: the *predecessors*. Then let go of ``queue.lock``. Because a ticket
file is created and locked inside that critical section, any ticket file another process can see is already
locked by its owner, unless that owner has finished or died.

Waiting. Walk the predecessors from the highest down; for each, block with ``flock(LOCK_SH)`` on its file (a
missing file is skipped), then let go of it and move to the next lower one. Every wait is a blocking system
call: no polling, no timers. When the walk is over, the turn is ours (the ticket number is the fencing token).

Why this is FIFO and crash-safe. Call a ticket *alive* while its owner holds its file's LOCK_EX. A ticket holds
the turn exactly when no lower-numbered ticket is alive. Liveness only ever goes from alive to not alive: the
owner takes LOCK_EX once, at creation, and drops it once, when it releases, gives up, or dies (the kernel drops
the locks of a process that exits, even by SIGKILL). So a predecessor found not alive stays not alive, and one
walk from the highest predecessor down proves that none is alive at its end. Numbers come from one counter under
one lock, so arrival order is ticket order and grants follow it. The walk does not need to know *why* a
predecessor let go:

* the predecessor finished its turn: it had itself waited for every lower ticket, so the rest of the walk finds
  their files gone or unlocked and returns at once, and we hold the turn;
* the predecessor died (or gave up) while waiting: the walk goes on to the next lower live ticket and blocks
  there, so a dead waiter mid-queue is passed through and its successor inherits its place;
* the holder died mid-turn: its lock is dropped like a release, and the next ticket proceeds.

Releasing unlinks the ticket file first and then closes it (dropping the lock). A file found unlocked but still
linked therefore belonged to a process that died; whoever finds it removes it, which is safe because a not-alive
ticket never becomes alive again and numbers are never reused. Files are opened close-on-exec, so a command
started inside a turn does not inherit (and keep alive) its parent's ticket.

A blocking wait with no bound walks in the caller's thread (Ctrl-C interrupts ``flock`` in the main thread and
gives the ticket up). ``flock`` cannot be cancelled otherwise, so a bounded wait, and every async wait, walks on a
daemon helper thread: a timeout or cancellation gives the ticket up at once (unlink and close our own file, which
lets our successor walk past us) and leaves the helper to finish quietly when its predecessor lets go. The async
API awaits the helper's result without blocking the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOCK_DIR_ENV = "TURNQ_LOCK_DIR"
QUEUE_FILE = "queue.lock"
TICKET_SUFFIX = ".ticket"
_COUNTER_WIDTH = 20
_SLUG_LENGTH = 48

_WAITING, _GRANTED, _GIVEN_UP, _RELEASED = "waiting", "granted", "given up", "released"


def default_lock_dir() -> Path:
    """``$TURNQ_LOCK_DIR``, else ``<tempdir>/turnq-locks``."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "turnq-locks"


def channel_dir_name(channel: str) -> str:
    """A file-system-safe, collision-free directory name for a channel: readable slug + hash of the name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", channel).strip("-.")[:_SLUG_LENGTH] or "channel"
    digest = hashlib.sha256(channel.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{slug}-{digest}"


def monotonic_ns() -> int:
    """System-wide monotonic time (comparable between processes on Linux), for measuring handoffs."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _ticket_numbers(directory: Path) -> list[int]:
    numbers = []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(TICKET_SUFFIX) and name[: -len(TICKET_SUFFIX)].isdigit():
                numbers.append(int(name[: -len(TICKET_SUFFIX)]))
    return numbers


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _is_alive(path: Path) -> bool | None:
    """Whether a ticket's owner still holds it; None when the file is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True
        raise
    finally:
        os.close(fd)
    return False


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """A live ticket as ``turnq queue --local`` shows it."""

    number: int
    pid: int | None
    holding: bool


class LocalQueue:
    """The lock directory: hands out tickets on named channels."""

    def __init__(self, lock_dir: str | os.PathLike[str] | None = None) -> None:
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()

    def channel_dir(self, channel: str) -> Path:
        directory = self.lock_dir / channel_dir_name(channel)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def arrive(self, channel: str) -> LocalTicket:
        """Take the next ticket on ``channel``: a place in line, not yet the turn."""
        directory = self.channel_dir(channel)
        queue_fd = os.open(directory / QUEUE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(queue_fd, fcntl.LOCK_EX)
            raw = os.pread(queue_fd, _COUNTER_WIDTH + 1, 0).strip()
            last = int(raw) if raw.isdigit() else 0
            existing = _ticket_numbers(directory)
            number = max(last, max(existing, default=0)) + 1
            os.pwrite(queue_fd, f"{number:0{_COUNTER_WIDTH}d}\n".encode(), 0)
            path = directory / f"{number}{TICKET_SUFFIX}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                os.unlink(path)
                os.close(fd)
                raise
            arrived_ns = monotonic_ns()
        finally:
            os.close(queue_fd)  # drops the queue lock
        predecessors = sorted((n for n in existing if n < number), reverse=True)
        return LocalTicket(channel, number, directory, fd, predecessors, arrived_ns)

    def entries(self, channel: str) -> list[LocalEntry]:
        """The live tickets on ``channel`` in order; the first is the holder (or about to be)."""
        directory = self.lock_dir / channel_dir_name(channel)
        if not directory.is_dir():
            return []
        live: list[LocalEntry] = []
        for number in sorted(_ticket_numbers(directory)):
            path = directory / f"{number}{TICKET_SUFFIX}"
            if _is_alive(path):
                try:
                    raw = path.read_bytes().strip()
                except FileNotFoundError:
                    continue
                live.append(LocalEntry(number, int(raw) if raw.isdigit() else None, not live))
        return live


class LocalTicket:
    """One place in a channel's line, owned by this process until released or given up."""

    def __init__(
        self, channel: str, number: int, directory: Path, fd: int, predecessors: list[int], arrived_ns: int
    ) -> None:
        self.channel = channel
        self.number = number
        self.directory = directory
        self.arrived_ns = arrived_ns
        self._fd = fd
        self._predecessors = predecessors
        self._state = _WAITING
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.directory / f"{self.number}{TICKET_SUFFIX}"

    @property
    def granted(self) -> bool:
        return self._state == _GRANTED

    def position(self) -> int:
        """Live tickets ahead of this one (0 once granted). Probes each predecessor without blocking."""
        if self._state != _WAITING:
            return 0
        return sum(1 for n in self._predecessors if _is_alive(self.directory / f"{n}{TICKET_SUFFIX}"))

    # ------------------------------------------------------------------ waiting

    def _walk(self, block: bool) -> bool:
        """Go down the predecessors; returns True when none is alive, False if one is (non-blocking only)."""
        while self._predecessors:
            if self._state != _WAITING:
                return False
            number = self._predecessors[0]
            path = self.directory / f"{number}{TICKET_SUFFIX}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._predecessors.pop(0)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH if block else fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                if os.fstat(fd).st_nlink:
                    _unlink_quietly(path)  # not alive yet still linked: its owner died
            finally:
                os.close(fd)
            self._predecessors.pop(0)
        return True

    def _grant(self) -> bool:
        with self._lock:
            if self._state != _WAITING:
                return False
            self._state = _GRANTED
            return True

    def start_wait(self, on_done: Callable[[BaseException | None], None]) -> None:
        """Wait for the turn in the background; ``on_done(None)`` runs on grant, ``on_done(exc)`` on failure.

        Nothing is called if the ticket is given up first. When no predecessor is alive the grant happens on
        the spot, in the caller's thread, without starting a helper.
        """
        if self._walk(block=False):
            if self._grant():
                on_done(None)
            return

        def run() -> None:
            try:
                done = self._walk(block=True)
            except BaseException as exc:
                if self._give_up():
                    on_done(exc)
                return
            if done and self._grant():
                on_done(None)

        threading.Thread(target=run, name=f"turnq-local-{self.number}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the turn is granted; False (with the ticket given up) if ``timeout`` passes first.

        An interrupt (Ctrl-C) gives the ticket up and propagates.
        """
        if timeout is None:
            # Unbounded: block right here, saving a helper thread and a wake-up per turn. A signal still
            # interrupts flock in the main thread, and the interrupt gives the ticket up below.
            try:
                walked = self._walk(block=True)
            except BaseException:
                self._give_up()
                raise
            return walked and self._grant()
        done = threading.Event()
        errors: list[BaseException] = []

        def finished(exc: BaseException | None) -> None:
            if exc is not None:
                errors.append(exc)
            done.set()

        try:
            self.start_wait(finished)
            arrived = done.wait(timeout)
        except BaseException:
            self._give_up()
            raise
        if errors:
            raise errors[0]
        if arrived:
            return True
        return not self._give_up()  # the grant may have won the race with the deadline

    # ------------------------------------------------------------------ leaving

    def _close(self) -> None:
        _unlink_quietly(self.path)
        os.close(self._fd)  # drops our lock: our successor's walk moves on

    def _give_up(self) -> bool:
        """Leave the line if still waiting; returns whether this call did."""
        with self._lock:
            if self._state != _WAITING:
                return False
            self._state = _GIVEN_UP
            self._close()
            return True

    def give_up(self) -> bool:
        """Leave the line without taking the turn; False if the turn was already granted."""
        return self._give_up()

    def release(self) -> None:
        """End the turn (or leave the line). Idempotent."""
        with self._lock:
            if self._state in (_GIVEN_UP, _RELEASED):
                return
            self._state = _RELEASED
            self._close()

    def __del__(self) -> None:
        # A ticket dropped without release must not keep the line blocked while this process lives on.
        if getattr(self, "_state", _RELEASED) in (_WAITING, _GRANTED):
            with contextlib.suppress(Exception):
                self.release()
