"""One server per database file, enforced.

The backend keeps its working state in memory and the file is its journal, so a second process writing the same
file would make both wrong. Opening takes an exclusive ``flock`` on ``<database>.lock`` and keeps it until close;
the kernel drops it when the process dies, ``kill -9`` included, so a crashed server never blocks its restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from turnq.core import ErrorCode, TurnqError


class StoreLock:
    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise: blocking file calls, so run it off the event loop."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TurnqError(
                ErrorCode.BACKEND_UNAVAILABLE,
                f"the SQLite database is in use by another turnq process (pid {holder}, lock {self.path}); "
                "one server serves a SQLite file, use PostgreSQL to run several",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the flock
