"""``turnq run CHANNEL -- COMMAND``: a command run inside a turn, with the turn's lifetime tied to the command's.

The command starts only once the turn is held and sees ``TURNQ_CHANNEL`` and ``TURNQ_FENCING_TOKEN``. While it
runs the lease is renewed. SIGINT and SIGTERM sent to turnq are passed on to the command (SIGINT only when it did
not come from the terminal, which already delivered it to the whole foreground process group), and turnq waits
for the command to finish before releasing. If the turn is lost anyway, the command is stopped (SIGTERM, then
SIGKILL after ``STOP_GRACE_S``): it must not keep working without the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from turnq.core import TurnqError

from .coordinator import AsyncCoordinator, create_async_coordinator
from .display import PositionDisplay
from .errors import TurnLostError, WaitTimeoutError
from .turn import AsyncTurn

EXIT_WAIT_TIMEOUT = 124
EXIT_TURNQ_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
STOP_GRACE_S = 10.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CommandFailed(Exception):
    """The command's non-zero exit, reported to the server as the turn's failure."""


def _err(message: str) -> None:
    print(f"turnq: {message}", file=sys.stderr, flush=True)


def _terminal_sent_sigint() -> bool:
    """Whether a SIGINT most likely came from the terminal, which sends it to our child as well."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _status(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


async def run_command(
    channel: str,
    command: Sequence[str],
    *,
    url: str | None = None,
    api_key: str | None = None,
    local: bool = False,
    fallback: bool = True,
    wait_timeout: float | None = None,
    lease_ms: int | None = None,
    quiet: bool = False,
) -> int:
    loop = asyncio.get_running_loop()
    try:
        if local:
            coordinator = AsyncCoordinator()
        else:
            coordinator = await create_async_coordinator(url, api_key, fallback)
    except TurnqError as exc:
        _err(exc.message)
        return EXIT_TURNQ_FAILED
    display = PositionDisplay(channel, enabled=not quiet and sys.stderr.isatty())
    received: list[int] = []
    try:
        turn = coordinator.turn(channel, timeout=wait_timeout, on_position=display.update, lease_ms=lease_ms)
        entering = asyncio.ensure_future(turn.__aenter__())

        def interrupt_wait(signum: int) -> None:
            received.append(signum)
            entering.cancel()

        for sig in _SIGNALS:
            loop.add_signal_handler(sig, interrupt_wait, sig)
        refresher = asyncio.ensure_future(display.refresh(turn)) if coordinator.mode == "local" else None
        try:
            await entering
        except asyncio.CancelledError:
            display.clear()
            return 128 + (received[0] if received else signal.SIGINT)
        except WaitTimeoutError as exc:
            display.clear()
            _err(exc.message)
            return EXIT_WAIT_TIMEOUT
        except TurnqError as exc:
            display.clear()
            _err(exc.message)
            return EXIT_TURNQ_FAILED
        finally:
            if refresher is not None:
                refresher.cancel()
        display.clear()
        return await _hold(turn, command, received)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
        await coordinator.close()


async def _hold(turn: AsyncTurn, command: Sequence[str], received: list[int]) -> int:
    """Run the command while holding ``turn``, then leave the turn with the command's outcome."""
    loop = asyncio.get_running_loop()
    processes: list[asyncio.subprocess.Process] = []
    early: list[int] = []

    def forward(signum: int) -> None:
        received.append(signum)
        if not processes:
            early.append(signum)  # the command is being started: deliver the signal once it exists
            return
        if signum == signal.SIGINT and _terminal_sent_sigint():
            return
        with contextlib.suppress(ProcessLookupError):
            processes[0].send_signal(signum)

    # Installed before the command starts, with no await in between since the turn was granted, so a signal
    # can never fall into a gap where nobody passes it on.
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, forward, sig)
    env = dict(os.environ)
    env["TURNQ_CHANNEL"] = turn.channel
    env["TURNQ_FENCING_TOKEN"] = str(turn.fencing_token)
    try:
        process = await asyncio.create_subprocess_exec(*command, env=env)
    except (FileNotFoundError, PermissionError, OSError) as exc:
        status = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
        _err(f"cannot run {command[0]!r}: {exc.strerror or exc}")
        with contextlib.suppress(TurnqError):
            await turn.__aexit__(type(exc), exc, None)
        return status
    processes.append(process)
    for signum in early:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    finished = asyncio.ensure_future(process.wait())
    lost = asyncio.ensure_future(turn.wait_lost())
    await asyncio.wait({finished, lost}, return_when=asyncio.FIRST_COMPLETED)
    if lost.done() and not finished.done():
        _err(f"the turn on {turn.channel!r} was lost ({lost.result()}); stopping the command")
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(finished), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    returncode = await finished
    lost.cancel()
    outcome: BaseException | None = None
    if returncode != 0:
        outcome = CommandFailed(
            f"command exited with status {returncode}"
            if returncode > 0
            else f"command killed by signal {-returncode}"
        )
    try:
        await turn.__aexit__(None if outcome is None else CommandFailed, outcome, None)
    except TurnLostError as exc:
        _err(exc.message)
        return EXIT_TURNQ_FAILED
    except TurnqError as exc:
        _err(f"could not release the turn: {exc.message}")
        return EXIT_TURNQ_FAILED
    return _status(returncode)
