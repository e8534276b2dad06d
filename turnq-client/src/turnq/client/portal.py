"""An event loop on a helper thread, so blocking code can run the async turn machinery.

The sync API needs work to go on while the caller's own code runs (renewing a lease, reading the event stream).
Rather than write that machinery a second time with threads, the blocking classes hand coroutines to this loop
and wait for their results. An interrupt in the waiting thread (Ctrl-C) cancels the coroutine and waits for its
cleanup (so a ticket is given up before the interrupt propagates).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="turnq-portal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop and block until it is done."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Portal.call from the portal's own thread would deadlock")
        done = threading.Event()
        box: list[asyncio.Future[T]] = []

        def start() -> None:
            task: asyncio.Future[T]
            try:
                task = asyncio.ensure_future(fn(*args))
            except BaseException as exc:
                task = self._loop.create_future()
                task.set_exception(exc)
            box.append(task)
            task.add_done_callback(lambda _: done.set())

        self._loop.call_soon_threadsafe(start)
        try:
            done.wait()
        except BaseException:
            # Callbacks run in order, so ``start`` has run by the time this one does.
            self._loop.call_soon_threadsafe(lambda: box[0].cancel())
            done.wait()
            raise
        return box[0].result()

    def close(self) -> None:
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
